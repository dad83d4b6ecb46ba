"""Run trio's own stream checker, ``trio.testing.check_one_way_stream``, on aipc
streams, on every backend.

trio's checker speaks ``trio.abc.SendStream`` / ``trio.abc.ReceiveStream``;
:class:`TrioSendStream` and :class:`TrioReceiveStream` wrap an anyio byte
stream in that interface:

- ``receive_some(max_bytes=None)`` -> ``receive(max_bytes)`` (65536 for None),
  with ``EndOfStream`` -> ``b""``; any other ``max_bytes`` (0, -1, 1.5) is passed
  through, so the ``ValueError`` / ``TypeError`` trio expects come from aipc;
- ``send_all`` -> ``send``; ``wait_send_all_might_not_block`` -> ``wait_writable``;
  ``aclose`` -> ``aclose``;
- anyio's ``ClosedResourceError`` / ``BrokenResourceError`` /
  ``BusyResourceError`` -> trio's, chained to the original.

**On trio** the checker runs in the test's own ``trio.run`` and the adapter
calls the aipc stream directly; apart from the synchronous translation above it
adds nothing, so trio's ``assert_checkpoints`` and cancellation checks see
aipc's own checkpoints and cancellation.

**On asyncio and uvloop** the checker can only run inside ``trio.run``, so it
runs in a worker thread (``anyio.to_thread.run_sync(trio.run, ...)``) while the
aipc streams live on the test's event loop in the main thread. Every adapter
call is forwarded to that loop through an :class:`anyio.from_thread.BlockingPortal`
(``start_task_soon``, which returns a ``concurrent.futures.Future``) and its
outcome is awaited from trio with ``trio.to_thread.run_sync(...,
abandon_on_cancel=True)``. What the adapter itself contributes there:

- *Checkpoints.* The cross-thread hop is a trio checkpoint, so on these
  backends trio's ``assert_checkpoints`` is satisfied by the adapter, not by
  aipc. Checkpoints are checked natively on all three backends by our own
  anyio suite (``tests/_conformance.py``).
- *Cancellation is really forwarded.* The forwarded call runs in an anyio
  cancel scope on the loop. If trio is already cancelled when the adapter is
  called, that scope starts cancelled, so aipc's own behaviour in a cancelled
  scope on asyncio is what trio observes. If trio cancels the call while it
  waits, the adapter cancels the scope on the loop and waits (shielded) until
  the loop side has finished; then it reports what really happened: trio's
  ``Cancelled`` if aipc raised the cancellation, else aipc's result or error
  (the way a trio primitive whose abort failed returns its result), so bytes
  that aipc did receive are never dropped by the adapter. (The portal's own
  future cancellation is not used for this: it discards a result that arrives
  after the future was cancelled. ``BlockingPortal.call_async`` does the same.)
- *Scheduling.* trio's ``wait_all_tasks_blocked`` sees a task blocked in the
  hop as blocked, possibly before the forwarded call has reached its own wait
  on the loop. The portal starts forwarded calls in order, so the checks that
  rely on it (close wakes a blocked receive, the clogged-stream order) still
  see the call first; our own suite checks those orders natively.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NoReturn

import anyio
import anyio.from_thread
import anyio.to_thread
import sniffio
import trio
import trio.testing
from anyio.abc import ByteReceiveStream, ByteSendStream

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TrioReceiveStream",
    "TrioSendStream",
    "check_one_way_stream_with_trio",
    "run_in_trio",
]

DEFAULT_MAX_BYTES = 65536

#: A forwarded call that has not finished this long after its cancellation is
#: a hang on the loop side.
_CANCEL_GRACE = 10.0

_TRANSLATION: tuple[tuple[type[Exception], type[Exception]], ...] = (
    (anyio.ClosedResourceError, trio.ClosedResourceError),
    (anyio.BrokenResourceError, trio.BrokenResourceError),
    (anyio.BusyResourceError, trio.BusyResourceError),
)

AipcMaker = Callable[[], Awaitable[tuple[ByteSendStream, ByteReceiveStream]]]


def _raise_translated(exc: Exception) -> NoReturn:
    for anyio_type, trio_type in _TRANSLATION:
        if isinstance(exc, anyio_type):
            raise trio_type(str(exc)) from exc
    raise exc


class _Direct:
    """The aipc streams live in this trio run: call them directly."""

    async def call(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        try:
            return await afn(*args)
        except Exception as exc:
            _raise_translated(exc)


class _LoopCall:
    """One forwarded call, run on the portal's loop inside its own cancel scope."""

    def __init__(
        self, afn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], cancelled: bool
    ) -> None:
        self._afn = afn
        self._args = args
        self._cancel_requested = cancelled
        self._scope: anyio.CancelScope | None = None

    async def run(self) -> tuple[str, Any]:
        """Runs on the loop. Returns ("value", v), ("error", exc) or
        ("cancelled", None); never raises, so the future always carries it."""
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._cancel_requested:
                scope.cancel()
            try:
                return ("value", await self._afn(*self._args))
            except Exception as exc:
                return ("error", exc)
        return ("cancelled", None)

    def cancel(self) -> None:
        """Runs on the loop (through the portal)."""
        self._cancel_requested = True
        if self._scope is not None:
            self._scope.cancel()


class _Forwarder:
    """trio runs in a worker thread; the aipc streams live on the portal's loop."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal) -> None:
        self._portal = portal

    async def call(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        # already cancelled here: start the loop side cancelled too, so that it
        # is aipc's behaviour in a cancelled scope that trio observes
        cancelled_now = trio.current_effective_deadline() == -math.inf
        call = _LoopCall(afn, args, cancelled_now)
        future = self._portal.start_task_soon(call.run)
        cancellation: trio.Cancelled | None = None
        try:
            outcome = await trio.to_thread.run_sync(
                future.result, abandon_on_cancel=True
            )
        except trio.Cancelled as exc:
            cancellation = exc
            self._portal.call(call.cancel)
            with trio.CancelScope(shield=True):
                try:
                    outcome = await trio.to_thread.run_sync(
                        future.result, _CANCEL_GRACE
                    )
                except TimeoutError:
                    raise AssertionError(
                        f"{afn!r} did not finish within {_CANCEL_GRACE} s of its "
                        "cancellation on the event loop"
                    ) from None
        kind, value = outcome
        if kind == "cancelled":
            if cancellation is None:
                raise RuntimeError(f"{afn!r} was cancelled on the loop, not by trio")
            try:
                raise cancellation
            finally:
                del cancellation
        if kind == "error":
            _raise_translated(value)
        return value


_Caller = _Direct | _Forwarder


class TrioSendStream(trio.abc.SendStream):
    """An anyio ``ByteSendStream`` (with ``wait_writable``) as a trio SendStream."""

    def __init__(self, stream: ByteSendStream, caller: _Caller) -> None:
        self.stream = stream
        self._caller = caller

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._caller.call(self.stream.send, data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._caller.call(self.stream.wait_writable)  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self._caller.call(self.stream.aclose)


class TrioReceiveStream(trio.abc.ReceiveStream):
    """An anyio ``ByteReceiveStream`` as a trio ReceiveStream."""

    def __init__(self, stream: ByteReceiveStream, caller: _Caller) -> None:
        self.stream = stream
        self._caller = caller

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        # None is the only value translated: 0, -1 and 1.5 go to aipc as they are
        n = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        try:
            data: bytes = await self._caller.call(self.stream.receive, n)
        except anyio.EndOfStream:
            return b""
        return data

    async def aclose(self) -> None:
        await self._caller.call(self.stream.aclose)


def _trio_maker(
    maker: AipcMaker, caller: _Caller, made: list[ByteSendStream | ByteReceiveStream]
) -> Callable[[], Awaitable[tuple[TrioSendStream, TrioReceiveStream]]]:
    async def make() -> tuple[TrioSendStream, TrioReceiveStream]:
        s, r = await caller.call(_make_recorded, maker, made)
        return TrioSendStream(s, caller), TrioReceiveStream(r, caller)

    return make


async def _make_recorded(
    maker: AipcMaker, made: list[ByteSendStream | ByteReceiveStream]
) -> tuple[ByteSendStream, ByteReceiveStream]:
    s, r = await maker()
    made += (s, r)
    return s, r


async def run_in_trio(
    fn: Callable[[_Caller], Awaitable[None]], *, timeout: float = 60
) -> None:
    """Run ``await fn(caller)`` in trio, within ``timeout`` seconds.

    On trio: in this run, with a direct caller. On asyncio/uvloop: in
    ``trio.run`` in a worker thread, with a caller that forwards to this loop.
    ``caller.call(afn, *args)`` runs ``afn(*args)`` where the aipc objects live.
    """
    if sniffio.current_async_library() == "trio":
        with trio.fail_after(timeout):
            await fn(_Direct())
        return

    async def main(forwarder: _Forwarder) -> None:
        with trio.fail_after(timeout):
            await fn(forwarder)

    async with anyio.from_thread.BlockingPortal() as portal:
        await anyio.to_thread.run_sync(trio.run, partial(main, _Forwarder(portal)))


async def check_one_way_stream_with_trio(
    stream_maker: AipcMaker, clogged_stream_maker: AipcMaker | None
) -> None:
    """``trio.testing.check_one_way_stream`` on the streams the makers return.

    The makers are the same as for ``tests/_conformance.py``: async callables
    returning an aipc ``(send_stream, receive_stream)`` pair; they run where the
    streams live. Every stream made is closed at the end, even if the check
    fails half-way.
    """
    made: list[ByteSendStream | ByteReceiveStream] = []

    async def check(caller: _Caller) -> None:
        await trio.testing.check_one_way_stream(
            _trio_maker(stream_maker, caller, made),
            None
            if clogged_stream_maker is None
            else _trio_maker(clogged_stream_maker, caller, made),
        )

    try:
        await run_in_trio(check)
    finally:
        for stream in made:
            await anyio.aclose_forcefully(stream)
