"""A reusable conformance suite for anyio one-way byte streams.

Modelled on trio's ``trio/testing/_check_streams.py`` (``check_one_way_stream``),
restated in anyio terms so that it runs natively on asyncio, uvloop and trio:
streams are :class:`anyio.abc.ByteSendStream` / :class:`anyio.abc.ByteReceiveStream`,
``receive(max_bytes)`` raises :exc:`anyio.EndOfStream` at the end, errors are
anyio's ``ClosedResourceError`` / ``BrokenResourceError`` / ``BusyResourceError``,
and concurrency uses anyio task groups, cancel scopes and
:func:`anyio.wait_all_tasks_blocked`.

Beyond trio's checker it checks what aipc promises (DESIGN.md, contract 3, "a
cancelled operation did not happen"): a send cancelled before it ran, or while
it waited with a small item, wrote nothing; a receive cancelled after it read
keeps the bytes for the next receive, also when the cancellation races the
arrival of data (with anyio cancel scopes on every backend, and with a plain
``Task.cancel()`` on asyncio, which can land after the loop completed the
task's wait); error paths (closed, broken, end of stream) are checkpoints too;
``EndOfStream`` repeats; a large transfer is byte-exact.

**Makers.** A *stream maker* is an async callable returning a connected
``(send_stream, receive_stream)`` pair. The suite assumes the stream buffers
at least a few KiB, so that a task may send a few bytes and then receive them
itself (pipes, FIFOs and sockets do). A *clogged* maker returns a pair whose
buffer is already full: ``send`` (and ``wait_writable``, when the send stream
has one) block until the receiver reads. The filler may be any bytes that do
not contain :data:`MARKER`.

**Checkpoints.** Every operation that may block must be a checkpoint whether
it returns or raises (except for argument and ``BusyResourceError`` errors). On
trio this is :func:`trio.testing.assert_checkpoints` (a schedule point and a
cancel point). On asyncio and uvloop, a callback queued with ``call_soon`` just
before the operation must have run by the time it returns, that is, the task
yielded to the event loop; anyio delivers a cancellation at every such yield,
so a schedule point is also a cancel point there.

Every check is in :data:`CHECKS` (name -> coroutine function) so that a test
can run them one by one; :func:`check_one_way_stream` runs them all.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import sniffio
from anyio.abc import ByteReceiveStream, ByteSendStream

__all__ = [
    "CHECKS",
    "MARKER",
    "StreamMaker",
    "check_one_way_stream",
]

StreamMaker = Callable[[], Awaitable[tuple[ByteSendStream, ByteReceiveStream]]]
Check = Callable[[StreamMaker, StreamMaker | None], Awaitable[None]]

#: Sent by the checks that look for bytes that must *not* arrive; shorter than
#: PIPE_BUF, so a pipe writes it whole or not at all.
MARKER = b"<aipc-conformance-marker>"

#: Each check must finish within this many seconds.
CHECK_TIMEOUT = 20

LARGE_TRANSFER_SIZE = 4 * 1024 * 1024
LARGE_CHUNK_MAX = 256 * 1024

CHECKS: dict[str, Check] = {}


def _check(fn: Check) -> Check:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


# ---- helpers ---------------------------------------------------------------


@asynccontextmanager
async def _pair(
    maker: StreamMaker,
) -> AsyncIterator[tuple[ByteSendStream, ByteReceiveStream]]:
    """A fresh pair, forcefully closed (both ends) whatever happens."""
    s, r = await maker()
    try:
        assert isinstance(s, ByteSendStream), f"{s!r} is not a ByteSendStream"
        assert isinstance(r, ByteReceiveStream), f"{r!r} is not a ByteReceiveStream"
        yield s, r
    finally:
        try:
            await anyio.aclose_forcefully(s)
        finally:
            await anyio.aclose_forcefully(r)


def _name(afn: Callable[..., Any]) -> str:
    return getattr(afn, "__qualname__", repr(afn))


async def _checkpointed(afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``await afn(*args)`` and assert that it was a checkpoint, whether it
    returned or raised an ``Exception`` (a cancellation passes through)."""
    error: Exception | None = None
    value: Any = None
    if sniffio.current_async_library() == "trio":
        import trio.testing

        # the call is captured inside the block, so that trio's helper checks
        # raising calls too (it skips blocks that exit with an exception)
        with trio.testing.assert_checkpoints():
            try:
                value = await afn(*args)
            except Exception as exc:
                error = exc
    else:
        import asyncio

        ran: list[None] = []
        handle = asyncio.get_running_loop().call_soon(ran.append, None)
        try:
            try:
                value = await afn(*args)
            except Exception as exc:
                error = exc
        finally:
            handle.cancel()
        if not ran:
            outcome = f"raised {error!r}" if error else "returned"
            raise AssertionError(
                f"{_name(afn)}{args!r:.60} did not yield to the event loop "
                f"(not a checkpoint); it {outcome}"
            )
    if error is not None:
        try:
            raise error
        finally:
            del error
    return value


@contextmanager
def _raises(expected: type[BaseException], what: str) -> Iterator[None]:
    """Like ``pytest.raises`` but rejects an exception group around it."""
    __tracebackhide__ = True
    try:
        yield
    except expected:
        return
    except BaseExceptionGroup as group:
        raise AssertionError(
            f"{what}: expected a bare {expected.__name__}, got a group: {group!r}"
        ) from group
    raise AssertionError(f"{what}: expected {expected.__name__}, nothing was raised")


async def _send(s: ByteSendStream, data: bytes | bytearray | memoryview) -> None:
    assert await _checkpointed(s.send, data) is None


async def _receive(r: ByteReceiveStream, max_bytes: int | None = None) -> bytes:
    if max_bytes is None:
        data = await _checkpointed(r.receive)
    else:
        data = await _checkpointed(r.receive, max_bytes)
    assert isinstance(data, bytes), f"receive returned {type(data).__name__}"
    assert data, "receive returned b'' (end of stream must raise EndOfStream)"
    if max_bytes is not None:
        assert len(data) <= max_bytes, f"receive({max_bytes}) returned {len(data)}"
    return data


async def _aclose(resource: ByteSendStream | ByteReceiveStream) -> None:
    await _checkpointed(resource.aclose)


async def _receive_exactly(r: ByteReceiveStream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        got += await _receive(r, n - len(got))
    return bytes(got)


async def _drain(r: ByteReceiveStream) -> bytes:
    """Everything until EndOfStream."""
    got = bytearray()
    while True:
        try:
            got += await r.receive(1 << 20)
        except anyio.EndOfStream:
            return bytes(got)


async def _expect_cancelled(afn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """``afn(*args)`` in an already-cancelled scope must raise the cancellation."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await afn(*args)
        raise AssertionError(
            f"{_name(afn)}{args!r:.60} in a cancelled scope returned instead of "
            "raising the cancellation (not a cancel point)"
        )
    assert scope.cancelled_caught


async def _exactly_one_busy(
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
    *,
    stagger: bool,
) -> None:
    """Run ``first`` and ``second`` concurrently: exactly one of them must raise
    BusyResourceError (the other is then cancelled). With ``stagger``, ``second``
    starts once ``first`` is blocked, and must be the one that fails."""
    busy: list[str] = []
    with anyio.fail_after(CHECK_TIMEOUT / 2):
        async with anyio.create_task_group() as tg:

            async def run(name: str, afn: Callable[[], Awaitable[Any]]) -> None:
                try:
                    await afn()
                except anyio.BusyResourceError:
                    busy.append(name)

            tg.start_soon(run, "first", first)
            if stagger:
                await anyio.wait_all_tasks_blocked()
            tg.start_soon(run, "second", second)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    if stagger:
        assert busy == ["second"], f"expected the second call to be busy, got {busy}"
    else:
        assert len(busy) == 1, f"expected exactly one busy call, got {busy}"


def _has_wait_writable(s: ByteSendStream) -> bool:
    return callable(getattr(s, "wait_writable", None))


# ---- checks ----------------------------------------------------------------


@_check
async def check_send_receive(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """Send one byte and receive it, concurrently."""
    async with _pair(make) as (s, r):
        got: list[bytes] = []
        async with anyio.create_task_group() as tg:

            async def receive_one() -> None:
                got.append(await _receive(r, 1))

            tg.start_soon(receive_one)
            tg.start_soon(_send, s, b"x")
        assert got == [b"x"]

        # and the other way round: the receiver starts first and waits
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive_one)
            await anyio.wait_all_tasks_blocked()
            await _send(s, b"y")
        assert got == [b"x", b"y"]


@_check
async def check_empty_send(make: StreamMaker, make_clogged: StreamMaker | None) -> None:
    """b"" may be sent, means nothing, and is not an end of stream."""
    async with _pair(make) as (s, r):
        await _send(s, b"")
        await _send(s, bytearray())
        await _send(s, memoryview(b""))
        await _send(s, b"y")
        assert await _receive(r, 10) == b"y"


@_check
async def check_buffer_types(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """send accepts bytes, bytearray, memoryview and a memoryview slice."""
    async with _pair(make) as (s, r):
        await _send(s, b"1")
        await _send(s, bytearray(b"2"))
        await _send(s, memoryview(b"3"))
        await _send(s, memoryview(b"-45-")[1:3])
        buf = bytearray(b"6")
        await _send(s, buf)
        buf[0] = ord("X")  # the stream must not keep a reference and send it later
        assert await _receive_exactly(r, 6) == b"123456"


@_check
async def check_max_bytes(make: StreamMaker, make_clogged: StreamMaker | None) -> None:
    """max_bytes: validated (ValueError, TypeError), a bound, optional."""
    async with _pair(make) as (s, r):
        await _send(s, b"abcdef")
        for bad in (0, -1):
            with _raises(ValueError, f"receive({bad})"):
                await r.receive(bad)
        with _raises(TypeError, "receive(1.5)"):
            await r.receive(1.5)  # type: ignore[arg-type]
        # a refused call neither consumed data nor left the stream busy
        assert await _receive(r, 1) == b"a"
        assert await _receive(r, 2) == b"bc"
        assert await _receive(r) == b"def"  # the default max_bytes


@_check
async def check_concurrent_receive_busy(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """Two tasks receiving at once: BusyResourceError; the stream stays usable."""
    async with _pair(make) as (s, r):
        await _exactly_one_busy(
            lambda: r.receive(1), lambda: r.receive(1), stagger=True
        )
        await _exactly_one_busy(
            lambda: r.receive(1), lambda: r.receive(1), stagger=False
        )
        await _send(s, b"ok")
        assert await _receive_exactly(r, 2) == b"ok"


@_check
async def check_concurrent_send_busy(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """Two tasks sending at once on a clogged stream: BusyResourceError."""
    if make_clogged is None:
        return
    async with _pair(make_clogged) as (s, _r):
        await _exactly_one_busy(
            lambda: s.send(b"1"), lambda: s.send(b"2"), stagger=True
        )
    async with _pair(make_clogged) as (s, _r):
        await _exactly_one_busy(
            lambda: s.send(b"1"), lambda: s.send(b"2"), stagger=False
        )
    if not _has_wait_writable(s):
        return
    async with _pair(make_clogged) as (s, _r):
        ww = s.wait_writable  # type: ignore[attr-defined]
        await _exactly_one_busy(ww, ww, stagger=True)
    async with _pair(make_clogged) as (s, _r):
        ww = s.wait_writable  # type: ignore[attr-defined]
        await _exactly_one_busy(ww, lambda: s.send(b"3"), stagger=True)
    async with _pair(make_clogged) as (s, _r):
        ww = s.wait_writable  # type: ignore[attr-defined]
        await _exactly_one_busy(lambda: s.send(b"4"), ww, stagger=True)


@_check
async def check_receiver_closed(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """Closing the receiver: the sender eventually gets BrokenResourceError and
    stays broken; the receiver gets ClosedResourceError; repeated aclose is
    fine; then the sender closed: ClosedResourceError, even for b""."""
    async with _pair(make) as (s, r):

        async def send_until_broken() -> None:
            with _raises(anyio.BrokenResourceError, "send after the receiver closed"):
                while True:
                    await _send(s, b"x" * 100)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_until_broken)
            tg.start_soon(_aclose, r)

        for _ in range(2):  # it stays broken
            with _raises(anyio.BrokenResourceError, "send on a broken stream"):
                await _send(s, b"x" * 100)
        with _raises(anyio.ClosedResourceError, "receive on a closed stream"):
            await _receive(r, 4096)
        await _aclose(r)
        await _aclose(r)

        await _aclose(s)
        with _raises(anyio.ClosedResourceError, "send on a closed stream"):
            await _send(s, b"x" * 100)
        with _raises(anyio.ClosedResourceError, "send(b'') on a closed stream"):
            await _send(s, b"")
        if _has_wait_writable(s):
            with _raises(anyio.ClosedResourceError, "wait_writable on a closed stream"):
                await _checkpointed(s.wait_writable)  # type: ignore[attr-defined]
        await _aclose(s)
        await _aclose(s)


@_check
async def check_closed_receiver(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """A closed receiver raises ClosedResourceError, even with data pending."""
    async with _pair(make) as (s, r):
        await _send(s, b"pending")
        await _aclose(r)
        for _ in range(2):
            with _raises(anyio.ClosedResourceError, "receive on a closed stream"):
                await _receive(r, 10)
        with _raises(anyio.ClosedResourceError, "receive() on a closed stream"):
            await _receive(r)


@_check
async def check_send_then_close(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """Send then close before anything is read: the data, then EndOfStream
    (every time)."""
    async with _pair(make) as (s, r):

        async def send_then_close() -> None:
            await _send(s, b"y")
            await _aclose(s)

        async def receive_then_eof() -> None:
            await anyio.wait_all_tasks_blocked()
            assert await _receive(r, 1) == b"y"
            for _ in range(2):
                with _raises(anyio.EndOfStream, "receive at the end of the stream"):
                    await _receive(r, 1)
            await _aclose(r)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_then_close)
            tg.start_soon(receive_then_eof)


@_check
async def check_close_without_data(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """A receiver blocked on an empty stream sees EndOfStream when the sender
    closes."""
    async with _pair(make) as (s, r):
        async with anyio.create_task_group() as tg:

            async def receive_eof() -> None:
                with _raises(anyio.EndOfStream, "receive when the sender closed"):
                    await r.receive(10)

            tg.start_soon(receive_eof)
            await anyio.wait_all_tasks_blocked()
            await _aclose(s)
        with _raises(anyio.EndOfStream, "receive after the end of the stream"):
            await _receive(r)


@_check
async def check_forceful_close(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """aclose_forcefully on either end."""
    async with _pair(make) as (s, r):
        await anyio.aclose_forcefully(r)
        with _raises(anyio.BrokenResourceError, "send after a forceful receiver close"):
            while True:
                await _send(s, b"x" * 100)
        with _raises(anyio.ClosedResourceError, "receive after a forceful close"):
            await _receive(r, 4096)

    async with _pair(make) as (s, r):
        await anyio.aclose_forcefully(s)
        with _raises(anyio.ClosedResourceError, "send after a forceful close"):
            await _send(s, b"123")
        # the receiver sees a clean end of stream, or (tolerated) a broken one;
        # never data, never a hang
        try:
            await _receive(r, 1)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        else:
            raise AssertionError("receive returned data after the sender closed")


@_check
async def check_cancelled_aclose(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """aclose in a cancelled scope still closes."""
    async with _pair(make) as (s, r):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await r.aclose()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await s.aclose()
        with _raises(anyio.ClosedResourceError, "send after a cancelled aclose"):
            await _send(s, b"123")
        with _raises(anyio.ClosedResourceError, "receive after a cancelled aclose"):
            await _receive(r, 4096)


@_check
async def check_already_cancelled(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """Operations in an already-cancelled scope raise the cancellation and lose
    nothing: the send wrote nothing, the receive keeps what it read."""
    async with _pair(make) as (s, r):
        await _expect_cancelled(s.send, MARKER)
        await _expect_cancelled(s.send, b"")
        await _expect_cancelled(r.receive, 10)
        await _expect_cancelled(r.receive)

        await _send(s, b"abcdef")
        # with data available: the receive may have read some of it already,
        # and must then keep it for the next receive
        await _expect_cancelled(r.receive, 2)
        await _expect_cancelled(r.receive, 10)
        await _expect_cancelled(r.receive)
        # the stream still works (the sender is closed first, so that lost
        # bytes fail the check instead of hanging it)
        await _send(s, b"gh")
        await _aclose(s)
        first = await _receive(r, 1)
        assert first == b"a", f"a cancelled receive lost data: next was {first!r}"
        await _expect_cancelled(r.receive, 10)
        # the cancelled receives lost nothing and the cancelled sends wrote nothing
        got = await _drain(r)
        assert got == b"bcdefgh", (
            f"expected b'bcdefgh' after the cancelled calls, got {got!r}"
        )
        await _aclose(r)


@_check
async def check_already_cancelled_wait_writable(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """wait_writable in an already-cancelled scope raises the cancellation, also
    when the stream is writable at once."""
    async with _pair(make) as (s, _r):
        if not _has_wait_writable(s):
            return
        await _expect_cancelled(s.wait_writable)  # type: ignore[attr-defined]
    if make_clogged is not None:
        async with _pair(make_clogged) as (s, _r):
            await _expect_cancelled(s.wait_writable)  # type: ignore[attr-defined]


@_check
async def check_cancel_blocked_receive(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """A receive cancelled while it waits loses nothing; the stream stays usable."""
    async with _pair(make) as (s, r):
        async with anyio.create_task_group() as tg:
            tg.start_soon(r.receive, 10)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        await _send(s, b"after")
        assert await _receive_exactly(r, 5) == b"after"


@_check
async def check_cancel_blocked_send(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """A small send cancelled while it waits on a clogged stream wrote nothing."""
    if make_clogged is None:
        return
    async with _pair(make_clogged) as (s, r):
        completed = False
        async with anyio.create_task_group() as tg:

            async def send_marker() -> None:
                nonlocal completed
                await s.send(MARKER)
                completed = True

            tg.start_soon(send_marker)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert not completed, "a send on a clogged stream returned without a reader"
        if _has_wait_writable(s):
            with anyio.CancelScope() as scope:
                scope.cancel()
                await s.wait_writable()  # type: ignore[attr-defined]
        await _aclose(s)
        assert MARKER not in await _drain(r), "the cancelled send wrote its data"


async def _rest_of(r: ByteReceiveStream, chunk: bytes, got: bytes, what: str) -> None:
    """After a receive that raced a cancellation and returned ``got`` (b"" if it
    was cancelled): the rest of ``chunk`` must be there for the next receives."""
    while len(got) < len(chunk):
        # only waits if bytes were lost, and then fails
        with anyio.move_on_after(5) as scope:
            got += await r.receive(16)
        if scope.cancelled_caught:
            raise AssertionError(f"{what}: sent {chunk!r}, received only {got!r}")
    assert got == chunk, f"{what}: sent {chunk!r}, received {got!r}"


@_check
async def check_cancel_racing_receive(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """A blocked receive cancelled at varying moments around the arrival of
    data (0 to 3 scheduling rounds after the send): whatever the timing, every
    byte arrives exactly once and in order, through that receive or the next."""
    async with _pair(make) as (s, r):

        async def receive_some(
            got: list[bytes],
            *,
            task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
        ) -> None:
            task_status.started()
            got.append(await r.receive(16))

        for i in range(32):
            chunk = bytes([i]) * (1 + i % 5)
            got: list[bytes] = []

            async with anyio.create_task_group() as tg:
                # the receive runs on from started() until it blocks (no need to
                # wait until every task is blocked: any timing must be correct)
                await tg.start(receive_some, got)
                await s.send(chunk)
                for _ in range(i % 4):
                    await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()
            await _rest_of(r, chunk, b"".join(got), f"round {i}")


@_check
async def check_cancel_racing_receive_plain_asyncio(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """asyncio only: a receive cancelled by a plain ``Task.cancel()`` (as
    ``asyncio.timeout`` and ``wait_for`` do) at varying moments around the
    arrival of data loses nothing.

    Unlike an anyio cancel scope, which waits until the task is really blocked,
    a plain cancel can land after the loop completed the task's wait and before
    the task ran: one scheduling round after the send, ``loop.call_soon`` puts
    it right behind the loop's readiness callback."""
    if sniffio.current_async_library() != "asyncio":
        return
    import asyncio

    loop = asyncio.get_running_loop()
    async with _pair(make) as (s, r):
        for i in range(32):
            chunk = bytes([i]) * (1 + i % 5)
            task = loop.create_task(r.receive(16))
            await asyncio.sleep(0)  # the task runs until it blocks
            await s.send(chunk)
            for _ in range(i % 4):
                await asyncio.sleep(0)
            loop.call_soon(task.cancel)
            await asyncio.wait({task})
            got = b"" if task.cancelled() else task.result()
            await _rest_of(r, chunk, got, f"round {i}")


@_check
async def check_cancel_racing_send(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """A small send blocked on a clogged stream, cancelled at varying moments
    after the receiver made room: it was written whole if and only if it
    returned."""
    if make_clogged is None:
        return
    for room in (1, 4096, 65536):
        for rounds in range(4):
            async with _pair(make_clogged) as (s, r):
                completed = False
                received = bytearray()

                async def send_marker(
                    *,
                    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
                ) -> None:
                    nonlocal completed
                    task_status.started()
                    await s.send(MARKER)
                    completed = True

                async with anyio.create_task_group() as tg:
                    await tg.start(send_marker)
                    received += await r.receive(room)
                    for _ in range(rounds):
                        await anyio.lowlevel.checkpoint()
                    tg.cancel_scope.cancel()
                await _aclose(s)
                received += await _drain(r)
                count = received.count(MARKER)
                assert count == int(completed), (
                    f"room={room} rounds={rounds}: the send "
                    f"{'returned' if completed else 'was cancelled'} and the "
                    f"marker arrived {count} times"
                )


@_check
async def check_close_wakes_receive(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """A task blocked in receive wakes with ClosedResourceError when another task
    closes the stream (gracefully or forcefully)."""
    for close in (_aclose, anyio.aclose_forcefully):
        async with _pair(make) as (_s, r):

            async def receive_expecting_closed() -> None:
                with _raises(anyio.ClosedResourceError, "receive woken by aclose"):
                    await r.receive(10)

            async with anyio.create_task_group() as tg:
                tg.start_soon(receive_expecting_closed)
                await anyio.wait_all_tasks_blocked()
                await close(r)


@_check
async def check_close_wakes_send(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """A task blocked in send (or wait_writable) on a clogged stream wakes with
    ClosedResourceError when another task closes the stream."""
    if make_clogged is None:
        return
    for close in (_aclose, anyio.aclose_forcefully):
        async with _pair(make_clogged) as (s, _r):

            async def send_expecting_closed() -> None:
                with _raises(anyio.ClosedResourceError, "send woken by aclose"):
                    await s.send(b"xyzzy")

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_expecting_closed)
                await anyio.wait_all_tasks_blocked()
                await close(s)

        if _has_wait_writable(s):
            async with _pair(make_clogged) as (s, _r):

                async def wait_expecting_closed() -> None:
                    with _raises(
                        anyio.ClosedResourceError, "wait_writable woken by aclose"
                    ):
                        await s.wait_writable()  # type: ignore[attr-defined]

                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait_expecting_closed)
                    await anyio.wait_all_tasks_blocked()
                    await close(s)


@_check
async def check_receiver_close_wakes_send(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """A task blocked in send on a clogged stream wakes with BrokenResourceError
    when the receiver closes; wait_writable returns (or raises
    BrokenResourceError), before or after the close."""
    if make_clogged is None:
        return
    async with _pair(make_clogged) as (s, r):

        async def send_expecting_broken() -> None:
            with _raises(
                anyio.BrokenResourceError, "send woken by the receiver's close"
            ):
                await s.send(b"xyzzy")

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_expecting_broken)
            await anyio.wait_all_tasks_blocked()
            await _aclose(r)
        with _raises(anyio.BrokenResourceError, "send on a broken stream"):
            await _send(s, b"xyzzy")

    if not _has_wait_writable(s):
        return
    async with _pair(make_clogged) as (s, r):

        async def wait_writable() -> None:
            try:
                await _checkpointed(s.wait_writable)  # type: ignore[attr-defined]
            except anyio.BrokenResourceError:
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_writable)
            await anyio.wait_all_tasks_blocked()
            await _aclose(r)

    async with _pair(make_clogged) as (s, r):
        await _aclose(r)
        await wait_writable()


@_check
async def check_clogged(make: StreamMaker, make_clogged: StreamMaker | None) -> None:
    """On a clogged stream, send (and wait_writable) wait until the receiver
    reads, and then complete."""
    if make_clogged is None:
        return
    async with _pair(make_clogged) as (s, r):
        record: list[str] = []

        async def sender() -> None:
            record.append("sender sleeping")
            await _send(s, MARKER)
            record.append("sender woke")

        async def receiver() -> None:
            await anyio.wait_all_tasks_blocked()
            record.append("receiver starting")
            got = bytearray()
            while not got.endswith(MARKER):
                got += await _receive(r, 16384)
            assert got.count(MARKER) == 1, "the clogged send was written twice"

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(receiver)
        assert record == ["sender sleeping", "receiver starting", "sender woke"]

    if not _has_wait_writable(s):
        return
    async with _pair(make_clogged) as (s, r):
        record = []

        async def waiter(scope: anyio.CancelScope) -> None:
            record.append("waiter sleeping")
            await _checkpointed(s.wait_writable)  # type: ignore[attr-defined]
            record.append("waiter woke")
            scope.cancel()

        async def reader() -> None:
            await anyio.wait_all_tasks_blocked()
            record.append("receiver starting")
            while True:
                await r.receive(16384)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, tg.cancel_scope)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(reader)
        assert record == ["waiter sleeping", "receiver starting", "waiter woke"]


@_check
async def check_wait_writable_on_empty(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """wait_writable on an empty stream returns (and is a checkpoint)."""
    async with _pair(make) as (s, _r):
        if _has_wait_writable(s):
            await _checkpointed(s.wait_writable)  # type: ignore[attr-defined]


@_check
async def check_large_transfer(
    make: StreamMaker, make_clogged: StreamMaker | None
) -> None:
    """4 MiB of random bytes in random-sized sends and receives, byte-exact."""
    data = random.Random(0).randbytes(LARGE_TRANSFER_SIZE)
    got = bytearray()
    async with _pair(make) as (s, r):

        async def sender() -> None:
            rng = random.Random(1)
            view = memoryview(data)
            while view:
                n = rng.randint(1, LARGE_CHUNK_MAX)
                await s.send(view[:n])
                view = view[n:]
            await s.aclose()

        async def receiver() -> None:
            rng = random.Random(2)
            while True:
                max_bytes = rng.randint(1, LARGE_CHUNK_MAX)
                try:
                    chunk = await r.receive(max_bytes)
                except anyio.EndOfStream:
                    return
                assert 0 < len(chunk) <= max_bytes
                got.extend(chunk)

        async with anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            tg.start_soon(sender)
    if got != data:  # do not let pytest diff 4 MiB
        first = next(
            (i for i, (a, b) in enumerate(zip(got, data, strict=False)) if a != b),
            min(len(got), len(data)),
        )
        raise AssertionError(
            f"received {len(got)} bytes of {len(data)}; first difference at {first}"
        )


async def run_check(
    name: str, stream_maker: StreamMaker, clogged_stream_maker: StreamMaker | None
) -> None:
    """Run the check ``name`` of :data:`CHECKS` within :data:`CHECK_TIMEOUT`."""
    with anyio.fail_after(CHECK_TIMEOUT):
        await CHECKS[name](stream_maker, clogged_stream_maker)


async def check_one_way_stream(
    stream_maker: StreamMaker, clogged_stream_maker: StreamMaker | None
) -> None:
    """Run every check of this suite on a one-way byte stream implementation.

    Args:
        stream_maker: async callable returning a connected
            ``(ByteSendStream, ByteReceiveStream)`` pair.
        clogged_stream_maker: None, or a maker whose pair is clogged: ``send``
            (and ``wait_writable``) block until the receiver has read; the
            filler must not contain :data:`MARKER`.

    Raises:
        AssertionError: a check failed (its docstring says what it checks).
    """
    for name in CHECKS:
        await run_check(name, stream_maker, clogged_stream_maker)
