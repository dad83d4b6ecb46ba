"""Every script in examples/, and every Python block in README.md and docs/,
runs to completion, prints its result and cleans up.

Each example is run as a subprocess with ``sys.executable -W error`` (and
``PYTHONWARNINGS=error``, so that the child processes the examples start are
just as strict), with ``PYTHONPATH`` set to the project root. These tests are
synchronous and do not run once per backend: each example picks its own event
loop (``asyncio.run`` or ``trio.run``), which is the point of the example.

Clean-up is checked from outside: the examples run with ``TMPDIR`` pointing at
an empty directory that must be empty again afterwards (no FIFO left behind),
and with the suite's private ``AIPC_STATE_DIR`` (set by conftest.py), whose
autouse fixture fails the test if a registry record is left.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = PROJECT_ROOT / "examples"
DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]

UNIX_SERVICE = [
    "service: listening, socket files mode 600",
    "service: admitted a peer running as this user: True",
    "client: user.sock knows my pid: True",
    "client: admin.sock closed the connection",
    "service: admin.sock accepted 0, refused 1",
    "service: socket files removed: True",
]

#: example script -> lines it must print
EXPECTED = {
    "pass_pipe_to_unrelated_process.py": [
        "the peer is the helper: True",
        "parent read 3 lines written by the helper",
    ],
    "pipe_child_asyncio.py": ["consumer got 100 messages"],
    "pipe_child_trio.py": ["consumer got 100 messages"],
    "channel_pipe_trio.py": [
        "worker squared 20 numbers; sum 2470",
        "worker exited with 0",
    ],
    "channel_tcp_asyncio.py": [
        "client got 10 results; sum 285",
        "server handled 10 jobs, exit code 0",
    ],
    "eventfd_wakeup.py": ["counter mode: one wait took 6", "parent woke 5 times"],
    "fifo_rendezvous.py": ["reader got 100 lines from 2 writers"],
    "lock_shared_by_asyncio_and_trio.py": [
        "asyncio process: 250 increments",
        "trio process: 250 increments",
        "final total: 500",
    ],
    "mq_work_queue_trio.py": [
        "producer sent 20 jobs",
        "3 workers squared 20 numbers; sum 2870",
    ],
    "ring_producer_consumer_asyncio.py": [
        "first message, read in place: item 0",
        "consumer got 1000 messages, sum 499500",
    ],
    "ring_rendezvous_trio.py": [
        "producer a: 100 messages",
        "producer b: 100 messages",
        "consumer got 200 messages from 2 producers",
    ],
    "supervisor_asyncio.py": [
        "worker 1 started: hello, world",
        "reloaded config: greeting=hi",
        "worker 1 answered: hi, world",
        "worker 1 exited with 3; restarting",
        "worker 2 started: hi, world",
        "stopping on SIGTERM",
        "worker 2 exited with 0",
        "stopped after 1 restart",
    ],
    "supervisor_trio.py": [
        "worker 1 started: hello, world",
        "reloaded config: greeting=hi",
        "worker 1 answered: hi, world",
        "worker 1 exited with 3; restarting",
        "worker 2 started: hi, world",
        "stopping on SIGTERM",
        "worker 2 exited with 0",
        "stopped after 1 restart",
    ],
    "unix_service_peer_uid.py": UNIX_SERVICE,
    "unix_service_peer_uid_trio.py": UNIX_SERVICE,
    "wait_for_anything.py": [
        "pipe: b'hello from the child'",
        "SIGUSR1 from the child, value 42",
        "child exited with 7",
    ],
}

TIMEOUT = 30  # seconds; each example finishes in about one


def _run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -W error *argv`` strictly, in and with TMPDIR at tmp_path."""
    env = dict(
        os.environ,
        PYTHONPATH=str(PROJECT_ROOT),
        PYTHONWARNINGS="error",
        TMPDIR=str(tmp_path),
    )
    return subprocess.run(
        [sys.executable, "-W", "error", *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _python_blocks() -> dict[str, str]:
    """Every fenced ``python`` block of the docs, keyed by "file:line"."""
    fence = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
    blocks = {}
    for path in DOCS:
        text = path.read_text()
        for match in fence.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks[f"{path.relative_to(PROJECT_ROOT)}:{line}"] = match.group(1)
    return blocks


BLOCKS = _python_blocks()


def test_every_example_is_tested() -> None:
    """A new script in examples/ must be added to EXPECTED."""
    scripts = {path.name for path in EXAMPLES_DIR.glob("*.py")}
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize(("script", "expected"), sorted(EXPECTED.items()))
def test_example_runs(script: str, expected: list[str], tmp_path: Path) -> None:
    """The example exits 0 within the timeout, prints its lines, leaves nothing."""
    result = _run([str(EXAMPLES_DIR / script)], tmp_path)
    assert result.returncode == 0, (
        f"{script} exited with {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert result.stderr == ""
    assert result.stdout.splitlines() == expected
    assert list(tmp_path.iterdir()) == []


def test_docs_have_python_blocks() -> None:
    """The block collection below finds the snippets (a broken regex would not)."""
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("code", list(BLOCKS.values()), ids=list(BLOCKS))
def test_docs_python_block_runs(code: str, tmp_path: Path) -> None:
    """Each Python block in README.md and docs/ is a complete program that runs
    cleanly: exit 0, nothing on stderr, nothing left in TMPDIR."""
    result = _run(["-c", code], tmp_path)
    assert result.returncode == 0, (
        f"exited with {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []
