"""Shared fixtures: the three backends, and leak checks that fail a test which
leaves fds, FIFOs or registry records behind."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import uvloop

# A private registry for the whole run, so that the suite neither reads nor
# writes the user's, and so that leftovers are ours to see.
_STATE = tempfile.mkdtemp(prefix="aipc-test-state-")
os.environ["AIPC_STATE_DIR"] = _STATE

BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


#: The signals tests send and receive (STYLE.md: SIGUSR1/2 and realtime only).
TEST_SIGNALS = {
    signal.SIGUSR1,
    signal.SIGUSR2,
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Block the test signals in the main thread before any thread starts, and
    start each backend once before any test.

    Blocking first is what docs/signals.md recommends to programs: every thread
    started afterwards (trio's and anyio's worker threads, which outlive the
    tests that start them) inherits the block, so the kernel never hands a test
    signal to a thread, and every one reaches the signalfd with its sender
    info. The fallback for threads that do not block a signal has its own
    tests, with a thread that unblocks it.

    Starting the backends once means that the descriptors a loop library opens
    once per process (uvloop keeps a pipe) are not taken for leaks.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, TEST_SIGNALS)

    async def nothing() -> None:
        pass

    for param in BACKENDS:
        name, options = param.values[0]  # type: ignore[misc]
        anyio.run(nothing, backend=name, backend_options=options)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the run's private registry (each test checked it was left empty)."""
    shutil.rmtree(_STATE, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Every async test runs on asyncio, asyncio+uvloop and trio."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def backend_id(anyio_backend: tuple[str, dict[str, object]]) -> str:
    """ "asyncio", "uvloop" or "trio": what a child process should run on."""
    return "uvloop" if anyio_backend[1] else anyio_backend[0]


def _open_fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the fd of the listdir itself
    return out


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves open fds or aipc registry records behind."""
    before = _open_fds()
    records_before = set(os.listdir(_STATE))
    yield
    gc.collect()
    after = _open_fds()
    leaked = {fd: target for fd, target in after.items() if before.get(fd) != target}
    records = set(os.listdir(_STATE)) - records_before
    assert not leaked, f"test leaked file descriptors: {leaked}"
    assert not records, f"test left aipc registry records: {records}"


@pytest.fixture
def fifo_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for FIFOs; the test fails if it leaves a FIFO in it."""
    yield tmp_path
    left = [p.name for p in tmp_path.iterdir() if stat.S_ISFIFO(p.lstat().st_mode)]
    assert not left, f"test left FIFOs behind: {left}"
