"""Anonymous pipes: the stream contract, limits, hand-off and peer death."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import random
import signal
import warnings

import anyio
import pytest

import aipc
from aipc._core._fd import LARGE_OPERATION as LARGE
from aipc._core._fd import FdHandle

from ._helpers import child_process, read_line

pytestmark = pytest.mark.anyio


async def test_round_trip_and_eof() -> None:
    r, w = aipc.create_pipe()
    async with r, w:
        await w.send(b"hello")
        assert await r.receive() == b"hello"
        await w.aclose()
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await r.receive()
        # the end of the stream is sticky
        with pytest.raises(anyio.EndOfStream):
            await r.receive()


async def test_receive_respects_max_bytes() -> None:
    r, w = aipc.create_pipe()
    async with r, w:
        await w.send(b"abcdef")
        assert await r.receive(4) == b"abcd"
        assert await r.receive(4) == b"ef"


@pytest.fixture(params=["compiled", "python"])
def receive_steps(request: pytest.FixtureRequest) -> str:
    """A receive's common case: compiled (``_corec.ReceiveCore._creceive``),
    or the Python steps alone (``_cfast`` off on the same stream)."""
    from aipc._core import _fd

    if request.param == "compiled" and _fd._corec is None:
        pytest.skip("the compiled helper aipc/_core/_corec.c is not built")
    return str(request.param)


async def test_receive_asks_before_reading_an_emptied_pipe(receive_steps: str) -> None:
    """After a receive that emptied the pipe, even one that read exactly
    ``max_bytes`` after a wait (request/response traffic), the next one asks
    the kernel what is queued instead of making a read that fails; a read
    that left bytes behind is followed by a plain read."""
    r, w = aipc.create_pipe()
    async with r, w:
        failed = 0
        if receive_steps == "python":
            r._cfast = False  # every read is then the wrapper's below
            os_read = r._read

            def read(fd: int, size: int) -> bytes:
                nonlocal failed
                try:
                    return os_read(fd, size)
                except BlockingIOError:
                    failed += 1
                    raise

            r._read = read
        got: list[bytes] = []

        async def receive_one() -> None:
            got.append(await r.receive(8))

        for i in range(4):
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive_one)
                    await anyio.wait_all_tasks_blocked()
                    await w.send(b"request%d" % i)
            assert r._expect_empty  # it had to wait: the next one asks
        assert got == [b"request%d" % i for i in range(4)]
        assert r.statistics().waits == 4
        if receive_steps == "python":
            assert failed == 1  # the first receive's only: it knew nothing yet
        # bytes already there: the question finds them and the read is made
        # at once, without a wait
        await w.send(b"request4")
        assert await r.receive(8) == b"request4"
        assert r._expect_empty  # it saw no more than it took
        await w.send(b"chunk-1.chunk-2.")
        assert await r.receive(8) == b"chunk-1."
        assert not r._expect_empty  # it saw 16 bytes: the next one just reads
        assert await r.receive(8) == b"chunk-2."
        assert r.statistics().waits == 4
        assert r.statistics().syscalls == 7
        if receive_steps == "python":
            assert failed == 1


async def test_compiled_receive_common_case() -> None:
    """``_creceive``'s contract with the Python steps: the bytes, returned and
    counted or kept in ``_pending`` for the checkpoint; False to wait; None
    with nothing consumed for anything else."""
    from aipc._core import _fd

    if _fd._corec is None:
        pytest.skip("the compiled helper aipc/_core/_corec.c is not built")
    r, w = aipc.create_pipe()
    async with r, w:
        assert r._creceive(8) is False  # empty: the read failed, nothing counted
        r._expect_empty = True
        assert r._creceive(8) is False  # FIONREAD saw nothing: no read at all
        assert r.statistics() == aipc.StreamStatistics(0, 0, 0, 0)
        await w.send(b"12345678abc")
        for bad in (0, -1, 8.0, True):
            assert r._creceive(bad) is None  # the Python steps raise for it
        got = r._creceive(8)
        if got is None:  # the checkpoint does not skip: it is the receive's
            assert r._pending == b"12345678"
            assert await r.receive(100) == b"12345678"
        else:
            assert got == b"12345678"
        assert r.statistics().bytes == 8
        assert r.statistics().syscalls == 1
        assert not r._expect_empty  # FIONREAD saw 11 bytes
        r._pending = b"kept"
        assert r._creceive(8) is None  # kept bytes come first, in Python
        assert await r.receive(8) == b"kept"
        assert await r.receive(8) == b"abc"
        await w.aclose()
        # after a short read FIONREAD answers: nothing queued, so wait (and
        # the wait sees the end); a read made at once sees it itself
        assert r._creceive(8) is False
        r._expect_empty = False
        assert r._creceive(8) is None  # the end of the stream: Python says it
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await r.receive(8)
        r.close()
        assert r._creceive(8) is None  # closed: Python raises
        with pytest.raises(anyio.ClosedResourceError):
            await r.receive(8)


async def test_compiled_send_common_case() -> None:
    """``_csend``'s contract with the Python steps: True when all was
    written, the count written when the Python steps go on (0: the pipe is
    full), None with nothing written for anything else."""
    from aipc._core import _fd

    if _fd._corec is None:
        pytest.skip("the compiled helper aipc/_core/_corec.c is not built")
    r, w = aipc.create_pipe()
    async with r, w:
        for other in (bytearray(b"x"), memoryview(b"x"), b""):
            assert w._csend(other) is None  # only bytes, and never empty
        assert w._buffer_size == 0  # the pipe's size is not known yet: large
        assert w._csend(bytes(LARGE + 1)) is None  # sends go through Python
        assert w.statistics() == aipc.StreamStatistics(0, 0, 0, 0)
        done = w._csend(b"abc")
        if done is None:  # the checkpoint makes its pass: the send's
            assert w.statistics().bytes == 0
            await w.send(b"abc")
        else:
            assert done is True
        assert w.statistics() == aipc.StreamStatistics(3, 1, 1, 0)
        with anyio.fail_after(5):
            assert await r.receive() == b"abc"
        filled = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                filled += os.write(w.fileno(), bytes(4096))
        got = w._csend(b"x")
        assert got == 0 or got is None  # full: the Python steps wait
        assert w.statistics().bytes == 3
        while filled:
            filled -= len(os.read(r.fileno(), filled))
        await r.aclose()
        assert w._csend(b"x") is None  # EPIPE: the Python steps raise it
        with pytest.raises(anyio.BrokenResourceError):
            await w.send(b"x")
        w.close()
        assert w._csend(b"x") is None  # closed: the Python steps raise it
        with pytest.raises(anyio.ClosedResourceError):
            await w.send(b"x")


@pytest.mark.parametrize("steps", ["compiled", "python"])
async def test_bulk_transfer_is_exact_on_both_steps(steps: str) -> None:
    """Sends of random sizes (partial writes, full pipes, large sends paced
    by the pipe's size) against receives of random sizes: every byte
    arrives once and in order, with the compiled common cases or without."""
    from aipc._core import _fd

    if steps == "compiled" and _fd._corec is None:
        pytest.skip("the compiled helper aipc/_core/_corec.c is not built")
    rng = random.Random(5)
    payload = rng.randbytes(3 << 20)
    r, w = aipc.create_pipe(capacity=256 * 1024)
    async with r, w:
        if steps == "python":
            r._cfast = w._cfast = False
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(payload):
                got.extend(await r.receive(rng.randint(1, 200_000)))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain)
                view, sent = memoryview(payload), 0
                while sent < len(payload):
                    size = rng.choice((1, 100, 4096, 5000, 65536, 300_000))
                    await w.send(bytes(view[sent : sent + size]))
                    sent += size
        assert got == payload
        assert w.statistics().bytes == r.statistics().bytes == len(payload)


def test_fds_are_cloexec_and_nonblocking() -> None:
    r, w = aipc.create_pipe()
    try:
        for end in (r, w):
            fd = end.fileno()
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        r.close()
        w.close()


async def test_broken_pipe_is_an_exception_not_sigpipe() -> None:
    r, w = aipc.create_pipe()
    async with w:
        await r.aclose()
        with pytest.raises(anyio.BrokenResourceError):
            await w.send(b"x")
        with pytest.raises(anyio.BrokenResourceError):
            await w.send(b"x")


async def test_broken_pipe_with_default_sigpipe_disposition() -> None:
    # An embedding application may have restored SIGPIPE's default action (which
    # kills the process); aipc blocks it around the write.
    previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        r, w = aipc.create_pipe()
        async with w:
            await r.aclose()
            with pytest.raises(anyio.BrokenResourceError):
                await w.send(b"x")
        assert signal.SIGPIPE not in signal.sigpending()
        assert signal.SIGPIPE not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.signal(signal.SIGPIPE, previous)


async def test_capacity() -> None:
    r, w = aipc.create_pipe(capacity=1 << 20)
    async with r, w:
        assert r.capacity == w.capacity == 1 << 20
        assert w.set_capacity(8192) >= 8192
        assert r.capacity >= 8192


@pytest.mark.parametrize("bad", [0, -1])
def test_capacity_must_be_positive(bad: int) -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match=r"capacity must be at least 1 byte"):
        aipc.create_pipe(capacity=bad)
    assert set(os.listdir("/proc/self/fd")) == before


def test_capacity_type() -> None:
    with pytest.raises(TypeError, match="capacity must be an int"):
        aipc.create_pipe(capacity=1.5)  # type: ignore[arg-type]


def test_capacity_over_system_limit_names_the_limit() -> None:
    limit = aipc.pipe_max_size()
    with pytest.raises(aipc.LimitExceededError) as info:
        aipc.create_pipe(capacity=limit + 1)
    assert info.value.argument == "capacity"
    assert info.value.limit == limit
    assert "pipe-max-size" in str(info.value)
    assert isinstance(info.value, ValueError)


async def test_pipe_buf_writes_are_atomic_between_writers() -> None:
    r, w1 = aipc.create_pipe()
    w2 = aipc.PipeSendStream.from_fd(os.dup(w1.fileno()))
    chunk_a, chunk_b = b"a" * aipc.PIPE_BUF, b"b" * aipc.PIPE_BUF
    received = bytearray()

    async def writer(w: aipc.PipeSendStream, chunk: bytes) -> None:
        async with w:
            for _ in range(50):
                await w.send(chunk)

    async with r:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer, w1, chunk_a)
                tg.start_soon(writer, w2, chunk_b)
                while True:
                    try:
                        received += await r.receive(1 << 16)
                    except anyio.EndOfStream:
                        break
    assert len(received) == 100 * aipc.PIPE_BUF
    for i in range(0, len(received), aipc.PIPE_BUF):
        block = received[i : i + aipc.PIPE_BUF]
        assert block in (chunk_a, chunk_b)


async def test_close_wakes_waiting_receiver() -> None:
    r, w = aipc.create_pipe()
    async with w:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def receiver() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await r.receive()

                tg.start_soon(receiver)
                await anyio.wait_all_tasks_blocked()
                await r.aclose()


async def test_close_wakes_waiting_sender() -> None:
    r, w = aipc.create_pipe(capacity=4096)
    async with r:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def sender() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await w.send(b"x" * 100_000)

                tg.start_soon(sender)
                await anyio.wait_all_tasks_blocked()
                await w.aclose()


async def test_cancelled_receive_loses_nothing() -> None:
    r, w = aipc.create_pipe()
    async with r, w:
        # cancelled while waiting: nothing was there to lose
        with anyio.move_on_after(0.01) as scope:
            await r.receive()
        assert scope.cancelled_caught
        # cancelled after the bytes were read: they come with the next receive
        await w.send(b"payload")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await r.receive()
        assert scope.cancelled_caught
        with anyio.fail_after(5):
            assert await r.receive() == b"payload"


async def test_cancelled_send_writes_nothing() -> None:
    r, w = aipc.create_pipe()
    async with r, w:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await w.send(b"never")
        assert scope.cancelled_caught
        await w.send(b"sent")
        with anyio.fail_after(5):
            assert await r.receive() == b"sent"
        assert w.statistics().bytes == 4


async def test_stale_fd_number_is_never_touched() -> None:
    r1, w1 = aipc.create_pipe()
    old = r1.fileno()
    await r1.aclose()
    r2, w2 = aipc.create_pipe()  # the kernel hands out the lowest free number
    assert r2.fileno() == old
    async with r2, w2, w1:
        await r1.aclose()  # idempotent: must not close r2's fd
        r1.close()
        with pytest.raises(anyio.ClosedResourceError):
            await r1.receive()
        await w2.send(b"still mine")
        with anyio.fail_after(5):
            assert await r2.receive() == b"still mine"


def test_unclosed_stream_warns_and_closes() -> None:
    r, w = aipc.create_pipe()
    fd = r.fileno()
    w.close()
    with pytest.warns(ResourceWarning, match=f"unclosed pipe fd={fd}"):  # noqa: PT031
        del r  # refcounting finalizes it here
        gc.collect()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_handle_rejects_bad_fd() -> None:
    with pytest.raises(ValueError, match="fd must be >= 0"):
        FdHandle(-1, "pipe")
    with pytest.raises(TypeError, match="fd must be an int"):
        FdHandle("3", "pipe")  # type: ignore[arg-type]


def test_from_fd_checks_kind_and_direction() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="is the write end"):
            aipc.PipeReceiveStream.from_fd(w)
        with pytest.raises(ValueError, match="is the read end"):
            aipc.PipeSendStream.from_fd(r)
    finally:
        os.close(r)
        os.close(w)
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(ValueError, match="is not a pipe or FIFO"):
            aipc.PipeReceiveStream.from_fd(fd)
    finally:
        os.close(fd)
    closed = os.open("/dev/null", os.O_RDONLY)
    os.close(closed)
    with pytest.raises(ValueError, match="is not an open file descriptor"):
        aipc.PipeReceiveStream.from_fd(closed)


async def test_from_fd_never_makes_a_shared_description_nonblocking() -> None:
    # os.pipe() gives blocking descriptions, as a shell or parent would hand down
    r, w = os.pipe()
    shared_r = os.dup(r)  # another holder of the same open file description
    shared_w = os.dup(w)
    rs = aipc.PipeReceiveStream.from_fd(r)
    ws = aipc.PipeSendStream.from_fd(w)
    try:
        assert not fcntl.fcntl(shared_r, fcntl.F_GETFL) & os.O_NONBLOCK
        assert not fcntl.fcntl(shared_w, fcntl.F_GETFL) & os.O_NONBLOCK
        async with rs, ws:
            await ws.send(b"through a private description")
            with anyio.fail_after(5):
                assert await rs.receive() == b"through a private description"
            os.write(shared_w, b"old holder")
            with anyio.fail_after(5):
                assert await rs.receive() == b"old holder"
    finally:
        os.close(shared_r)
        os.close(shared_w)


CHILD_ECHO = """
import sys, anyio, aipc
from tests._helpers import run_backend
async def main():
    rx = aipc.PipeReceiveStream.from_fd(int(sys.argv[1]))
    tx = aipc.PipeSendStream.from_fd(int(sys.argv[2]))
    async with rx, tx:
        print("ready", flush=True)
        while True:
            try:
                data = await rx.receive()
            except anyio.EndOfStream:
                break
            await tx.send(data.upper())
run_backend(main, sys.argv[3])
"""


async def test_child_process_echo(backend_id: str) -> None:
    to_child_r, to_child_w = aipc.create_pipe()
    from_child_r, from_child_w = aipc.create_pipe()
    fds = [to_child_r.fileno(), from_child_w.fileno()]
    async with (
        to_child_w,
        from_child_r,
        child_process(CHILD_ECHO, pass_fds=fds, args=[*map(str, fds), backend_id]) as (
            proc,
            stdout,
        ),
    ):
        await to_child_r.aclose()
        await from_child_w.aclose()
        assert await read_line(stdout) == b"ready"
        with anyio.fail_after(10):
            for i in range(100):
                msg = f"message {i}".encode()
                await to_child_w.send(msg)
                got = b""
                while len(got) < len(msg):
                    got += await from_child_r.receive()
                assert got == msg.upper()
            await to_child_w.aclose()
            with pytest.raises(anyio.EndOfStream):
                await from_child_r.receive()
            assert await proc.wait() == 0


CHILD_HOLDS = """
import sys, os, time
print("ready", flush=True)
time.sleep(60)
"""


async def test_child_death_wakes_receiver_with_end_of_stream() -> None:
    r, w = aipc.create_pipe()
    async with r, child_process(CHILD_HOLDS, pass_fds=[w.fileno()]) as (proc, stdout):
        await w.aclose()
        assert await read_line(stdout) == b"ready"
        async with anyio.create_task_group() as tg:

            async def receiver() -> None:
                with anyio.fail_after(1), pytest.raises(anyio.EndOfStream):
                    await r.receive()

            tg.start_soon(receiver)
            await anyio.wait_all_tasks_blocked()
            proc.kill()


async def test_child_death_wakes_sender_with_broken_resource() -> None:
    r, w = aipc.create_pipe(capacity=4096)
    async with w, child_process(CHILD_HOLDS, pass_fds=[r.fileno()]) as (proc, stdout):
        await r.aclose()
        assert await read_line(stdout) == b"ready"
        async with anyio.create_task_group() as tg:

            async def sender() -> None:
                with anyio.fail_after(1), pytest.raises(anyio.BrokenResourceError):
                    while True:
                        await w.send(b"x" * 65536)

            tg.start_soon(sender)
            await anyio.wait_all_tasks_blocked()
            proc.kill()


def test_repr_and_statistics() -> None:
    r, w = aipc.create_pipe()
    try:
        assert f"fd={r.fileno()}" in repr(r)
        assert r.statistics() == aipc.StreamStatistics(0, 0, 0, 0)
    finally:
        r.close()
        w.close()
    assert "closed" in repr(r)


def test_sync_warning_filter_is_error() -> None:
    # the suite runs with warnings as errors (pyproject filterwarnings)
    with pytest.raises(UserWarning):
        warnings.warn("x", UserWarning, stacklevel=1)
