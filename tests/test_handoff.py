"""Hand-off: aipc objects given to a child by name and rebuilt with inherit()."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import aipc
from aipc import _handoff

from ._helpers import aipc_child, child_process, read_line

pytestmark = pytest.mark.anyio

NOWHERE = ["/nonexistent/aipc-never-started"]  # FileNotFoundError if spawned

PIPE_CHILD = """
import os, sys
import aipc
from anyio.streams.buffered import BufferedByteReceiveStream
from tests._helpers import run_backend

async def main():
    requests = aipc.inherit("requests", aipc.PipeReceiveStream)
    replies = aipc.inherit("replies", aipc.PipeSendStream)
    print("variable gone:", "AIPC_HANDOFF" not in os.environ, flush=True)
    async with requests, replies:
        async for chunk in requests:
            await replies.send(chunk.upper())

run_backend(main, sys.argv[1])
"""


async def test_pipe_pair(backend_id: str) -> None:
    requests_receive, requests_send = aipc.create_pipe()
    replies_receive, replies_send = aipc.create_pipe()
    async with requests_receive, requests_send, replies_receive, replies_send:
        handoff = {"requests": requests_receive, "replies": replies_send}
        async with aipc_child(PIPE_CHILD, args=[backend_id], handoff=handoff) as (
            proc,
            stdout,
        ):
            # close the parent's copies of the child's ends, or neither side
            # would see end of stream when the other closes
            await requests_receive.aclose()
            await replies_send.aclose()
            assert await read_line(stdout) == b"variable gone: True"
            with anyio.fail_after(10):
                await requests_send.send(b"hello ")
                await requests_send.send(b"child")
                await requests_send.aclose()
                data = b"".join([chunk async for chunk in replies_receive])
                assert data == b"HELLO CHILD"
                assert await proc.wait() == 0


EVENTFD_CHILD = """
import sys
import aipc
from tests._helpers import run_backend

async def main():
    counter = aipc.inherit("counter", aipc.EventFd)
    sem = aipc.inherit("sem", aipc.EventFd)
    async with counter, sem:
        print(counter.semaphore, sem.semaphore, flush=True)
        total = await counter.wait()  # the parent set 5 in one go
        sem.set(total)
        print(total, flush=True)

run_backend(main, sys.argv[1])
"""


async def test_eventfd_both_modes(backend_id: str) -> None:
    async with aipc.EventFd() as counter, aipc.EventFd(semaphore=True) as sem:
        handoff = {"counter": counter, "sem": sem}
        async with aipc_child(EVENTFD_CHILD, args=[backend_id], handoff=handoff) as (
            proc,
            stdout,
        ):
            assert await read_line(stdout) == b"False True"
            counter.set(5)  # in one go: two sets could wake the child between
            with anyio.fail_after(10):
                assert await read_line(stdout) == b"5"
                assert [await sem.wait() for _ in range(5)] == [1] * 5
                assert await proc.wait() == 0


PROCESS_CHILD = """
import sys
import aipc
from tests._helpers import run_backend

async def main():
    async with aipc.inherit("sibling", aipc.Process) as sibling:
        print(sibling.pid, flush=True)
        sibling.kill()
        # not our child: we see it exit, the status is its parent's
        print(await sibling.wait(), flush=True)

run_backend(main, sys.argv[1])
"""

SLEEPER = """
import time
print("ready", flush=True)
time.sleep(60)
"""


async def test_process(backend_id: str) -> None:
    async with aipc_child(SLEEPER) as (sibling, sibling_stdout):
        assert await read_line(sibling_stdout) == b"ready"
        handoff = {"sibling": sibling}
        async with aipc_child(PROCESS_CHILD, args=[backend_id], handoff=handoff) as (
            proc,
            stdout,
        ):
            assert await read_line(stdout) == str(sibling.pid).encode()
            with anyio.fail_after(10):
                assert await sibling.wait() == -9
                assert await read_line(stdout) == b"None"
                assert await proc.wait() == 0


FIFO_CHILD = """
import sys
import aipc
from tests._helpers import run_backend

async def main():
    receive = aipc.inherit("receive", aipc.FifoReceiveStream)
    send = aipc.inherit("send", aipc.FifoSendStream)
    async with receive, send:
        print(receive.path == send.path, receive.keep_open, flush=True)
        await send.send(b"from the child")
        print((await receive.receive()).decode(), flush=True)

run_backend(main, sys.argv[1])
"""


async def test_fifo_ends(backend_id: str, fifo_dir: Path) -> None:
    """FIFO ends keep their class, path and keep_open mode in the child."""
    fifo = aipc.create_fifo(fifo_dir / "f", unlink_on_close=True)
    rx = await aipc.open_fifo_receiver(fifo.path, keep_open=True)
    async with fifo, rx, await aipc.open_fifo_sender(fifo.path) as tx:
        handoff = {"receive": rx, "send": tx}
        async with aipc_child(FIFO_CHILD, args=[backend_id], handoff=handoff) as (
            proc,
            stdout,
        ):
            assert await read_line(stdout) == b"True True"
            assert await read_line(stdout) == b"from the child"
            with anyio.fail_after(10):
                assert await proc.wait() == 0


ERRORS_CHILD = """
import sys
import aipc
from tests._helpers import run_backend

def attempt(*args):
    try:
        aipc.inherit(*args)
    except (LookupError, TypeError, ValueError) as exc:
        print(type(exc).__name__, exc, flush=True)

async def main():
    attempt("nothing-such")
    attempt("efd", aipc.PipeReceiveStream)
    attempt("efd", "EventFd")
    attempt(7)
    async with aipc.inherit("efd") as efd:
        print(type(efd).__name__, flush=True)
        attempt("efd")
        attempt("nothing-such")

run_backend(main, sys.argv[1])
"""


async def test_inherit_errors(backend_id: str) -> None:
    async with aipc.EventFd() as efd, aipc.EventFd() as other:
        handoff = {"efd": efd, "other": other}
        async with aipc_child(ERRORS_CHILD, args=[backend_id], handoff=handoff) as (
            proc,
            stdout,
        ):
            lines = [(await read_line(stdout)).decode() for _ in range(7)]
            with anyio.fail_after(10):
                assert await proc.wait() == 0
    assert lines == [
        "LookupError nothing named 'nothing-such' was handed to this process; "
        "on offer: 'efd', 'other'",
        "TypeError 'efd' was handed over as EventFd, not PipeReceiveStream",
        "TypeError kind must be a class, not str",
        "TypeError name must be a str, not int",
        "EventFd",
        "LookupError 'efd' was inherited already: its descriptors belong to the "
        "object the first inherit() returned",
        "LookupError nothing named 'nothing-such' was handed to this process; "
        "on offer: 'other'",
    ]


async def test_inherit_without_a_handoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIPC_HANDOFF", raising=False)
    with pytest.raises(
        LookupError,
        match=r"nothing was handed to this process: the AIPC_HANDOFF environment "
        r"variable is not set, so it was not started by aipc.open_process",
    ):
        aipc.inherit("anything")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{", "not JSON"),
        ("[]", 'expected {"version": 1, "objects": {...}}'),
        ('{"version": 2, "objects": {}}', "version 2, but this aipc reads version 1"),
        (
            '{"version": 1, "objects": {"a": {"kind": "eventfd", "fds": [-1]}}}',
            "the entry for 'a' is not a kind, fds and meta",
        ),
    ],
)
async def test_malformed_variable(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIPC_HANDOFF", value)
    with pytest.raises(ValueError, match=f"AIPC_HANDOFF .* is malformed: {message}"):
        aipc.inherit("a")
    assert os.environ["AIPC_HANDOFF"] == value  # left for a fixed retry


UNKNOWN_KIND_CHILD = """
import sys
import aipc

try:
    aipc.inherit("future")
except ValueError as exc:
    print(exc)
"""


async def test_unknown_kind() -> None:
    variable = json.dumps(
        {
            "version": 1,
            "objects": {"future": {"kind": "hologram", "fds": [], "meta": {}}},
        }
    )
    code = (
        f"import os; os.environ['AIPC_HANDOFF'] = {variable!r}\n" + UNKNOWN_KIND_CHILD
    )
    async with child_process(code) as (proc, stdout):
        line = await read_line(stdout)
        with anyio.fail_after(10):
            assert await proc.wait() == 0
    known = ", ".join(sorted(_handoff._KINDS))
    assert line == (
        b"'future' is a 'hologram', which this version of aipc cannot rebuild "
        b"(it knows " + known.encode() + b")"
    )
    assert "pipe-send" in known


async def test_bad_handoff_is_refused_before_spawning(fifo_dir: Path) -> None:
    with pytest.raises(
        TypeError,
        match=r"handoff\['x'\]: int objects cannot be handed to a child process; "
        "these can: " + re.escape(_handoff._handable_names()),
    ):
        await aipc.open_process(NOWHERE, handoff={"x": 3})
    with pytest.raises(TypeError, match="handoff names must be str, not int"):
        await aipc.open_process(NOWHERE, handoff={1: aipc.EventFd})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="handoff must be a mapping of names"):
        await aipc.open_process(NOWHERE, handoff=[1])  # type: ignore[arg-type]
    async with aipc.EventFd() as efd:
        with pytest.raises(ValueError, match="handoff names must not be empty"):
            await aipc.open_process(NOWHERE, handoff={"": efd})
        with pytest.raises(
            ValueError,
            match=r"handoff\['b'\] and handoff\['a'\] are the same descriptor",
        ):
            await aipc.open_process(NOWHERE, handoff={"a": efd, "b": efd})
    with pytest.raises(anyio.ClosedResourceError):
        await aipc.open_process(NOWHERE, handoff={"closed": efd})

    # a subclass would be rebuilt in the child as the aipc class it extends
    class MyPipe(aipc.PipeReceiveStream):
        pass

    receive, send = aipc.create_pipe()
    mine = MyPipe.from_fd(os.dup(receive.fileno()))
    async with receive, send, mine:
        with pytest.raises(
            TypeError,
            match=r"MyPipe objects cannot be handed to a child process "
            r"\(it would be rebuilt there as a PipeReceiveStream\)",
        ):
            await aipc.open_process(NOWHERE, handoff={"mine": mine})
    # and a good hand-off reaches the spawn, which fails
    async with aipc.EventFd() as efd:
        with pytest.raises(FileNotFoundError):
            await aipc.open_process(NOWHERE, handoff={"efd": efd})


ENV_CHILD = """
import json, os
print(json.dumps(sorted(os.environ)))
"""


async def test_environment() -> None:
    async with aipc.EventFd() as efd:
        # env=None: a copy of os.environ plus the variable; os.environ unchanged
        async with aipc_child(
            "import os; print('AIPC_HANDOFF' in os.environ)", handoff={"efd": efd}
        ) as (proc, stdout):
            assert await read_line(stdout) == b"True"
            with anyio.fail_after(10):
                assert await proc.wait() == 0
        assert "AIPC_HANDOFF" not in os.environ
        # an explicit env: copied, the variable added, the caller's left alone
        env = {"ONLY": "this"}
        async with await aipc.open_process(
            [sys.executable, "-c", ENV_CHILD],
            handoff={"efd": efd},
            env=env,
            stdin=None,
            stderr=None,
        ) as proc:
            assert proc.stdout is not None
            stdout = BufferedByteReceiveStream(proc.stdout)
            line = await read_line(stdout)
            with anyio.fail_after(10):
                assert await proc.wait() == 0
        assert env == {"ONLY": "this"}
        keys = json.loads(line)
        assert "AIPC_HANDOFF" in keys
        assert "ONLY" in keys
        assert "PYTHONPATH" not in keys
