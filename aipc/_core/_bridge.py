"""The blocking bridge: kernel waits that have no pollable fd run in a worker
thread, under one contract: a cancelled wait either never happened or is undone.

:func:`run_interruptible` is the general form. The blocking call runs in a
worker thread; if the awaiting task is cancelled, the thread is sent
``SIGURG`` (:data:`INTERRUPT_SIGNAL`) until the call returns. The signal has a
handler that does nothing and is installed without ``SA_RESTART``, so a call
blocked in the kernel fails with ``EINTR`` before it took anything. The signal
is sent again and again because it may arrive just before the thread enters
the system call, where it interrupts nothing. If the call completed anyway (it
won the race), ``undo`` reverses it: the token is released, the lock dropped,
the message put back. Nothing is lost or held, and no thread stays blocked.
``SIGURG`` is otherwise only sent for out-of-band socket data to a process that
asked for it, and its default action is to ignore it (Go's runtime uses it the
same way).

Calls under the bridge must make *one* attempt and raise ``InterruptedError``
on ``EINTR``: Python's own wrappers (``fcntl.flock``, ``os.read``...) retry on
``EINTR`` (PEP 475), so the callers use ``ctypes`` or extension functions that
report it.

:func:`open_interruptible` is the FIFO form: ``open(2)`` on a FIFO is
interrupted by briefly opening the other side ourselves (non-blocking;
read-write when the other side is the writer, since a non-blocking write-only
open fails without a reader), which makes the blocked ``open`` return. That
descriptor stays open until the thread is done, so the interrupt also works if
the thread has not reached its ``open`` yet. The fd the thread got is then
closed.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
from anyio import to_thread

from . import _sys
from ._fd import checkpoint

__all__ = ["INTERRUPT_SIGNAL", "open_interruptible", "run_interruptible"]

#: The signal that interrupts a worker thread blocked in the kernel.
INTERRUPT_SIGNAL = signal.SIGURG

# how often a cancelled wait re-sends the interrupt, in seconds
_RESEND = 0.001

T = TypeVar("T")

_handler_lock = threading.Lock()
_handler_installed = False


def _install_handler() -> None:
    global _handler_installed
    with _handler_lock:
        if not _handler_installed:
            _sys.install_interrupt_handler(INTERRUPT_SIGNAL)
            _handler_installed = True


class _Call(Generic[T]):
    """One blocking call's shared state between the thread and the task."""

    __slots__ = ("cancelled", "error", "has_result", "result", "thread")

    def __init__(self) -> None:
        self.thread: int | None = None
        self.cancelled = False
        self.has_result = False
        self.result: T | None = None
        self.error: BaseException | None = None


async def _in_thread(
    run: Callable[[], None], on_cancel: Callable[[anyio.Event], Awaitable[None]]
) -> None:
    """Run ``run`` in a worker thread. If cancelled: await ``on_cancel(done)``
    (shielded; ``done`` is set once the thread has finished), wait for the
    thread, and re-raise."""
    done = anyio.Event()

    async def worker() -> None:
        try:
            # not abandonable: the thread always finishes and reports
            await to_thread.run_sync(run)
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await on_cancel(done)
                await done.wait()
            raise


async def run_interruptible(
    call: Callable[[], T], undo: Callable[[T], None] | None = None
) -> T:
    """Run the blocking ``call()`` in a worker thread and return its result.

    ``call`` makes one attempt and raises ``InterruptedError`` on ``EINTR``; a
    stray interruption (not ours) makes it try again. Its other exceptions
    propagate.

    **Cancellation:** the thread is interrupted with :data:`INTERRUPT_SIGNAL`
    until ``call`` returns. If it returned a result all the same, ``undo``
    receives it (and must reverse it); the task then sees the cancellation.
    """
    await checkpoint()
    _install_handler()
    state: _Call[T] = _Call()

    def run() -> None:
        state.thread = threading.get_ident()
        # The signal is unblocked only while this thread runs the call: an
        # interrupt sent after the call returned stays pending here, blocked,
        # instead of breaking whatever the pool thread runs next; the next
        # bridge call in this thread takes it (a no-op) as it unblocks.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [INTERRUPT_SIGNAL])
        try:
            while not state.cancelled:
                try:
                    state.result = call()
                except InterruptedError:
                    continue  # ours (the loop checks) or a stray signal: again
                except BaseException as exc:  # handed to the awaiting task
                    state.error = exc
                else:
                    state.has_result = True
                return
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, [INTERRUPT_SIGNAL])

    async def interrupt(done: anyio.Event) -> None:
        state.cancelled = True
        while not done.is_set():
            thread = state.thread
            if thread is not None:
                signal.pthread_kill(thread, INTERRUPT_SIGNAL)
            with anyio.move_on_after(_RESEND):
                await done.wait()

    try:
        await _in_thread(run, interrupt)
    except anyio.get_cancelled_exc_class():
        if state.has_result and undo is not None:
            undo(state.result)  # type: ignore[arg-type]
        raise
    if state.error is not None:
        raise state.error
    return state.result  # type: ignore[return-value]


async def open_interruptible(
    path: str, flags: int, interrupt: Callable[[], int]
) -> int:
    """Run the blocking ``os.open(path, flags)`` in a worker thread.

    ``interrupt`` must make that open return (for a FIFO: open the other side
    non-blocking) and return the fd it opened, which is closed afterwards.

    **Cancellation:** the open is interrupted and any fd it returned is closed;
    the worker thread is never left blocked.
    """
    outcome: list[int | BaseException] = []
    kicks: list[int] = []

    def run() -> None:
        try:
            outcome.append(os.open(path, flags))
        except BaseException as exc:  # handed to the awaiting task below
            outcome.append(exc)

    async def kick(done: anyio.Event) -> None:
        try:
            kicks.append(interrupt())
        except OSError:
            pass  # the open finished already, or the path went away

    try:
        await _in_thread(run, kick)
    except anyio.get_cancelled_exc_class():
        for fd in kicks:
            os.close(fd)
        if outcome and isinstance(outcome[0], int):
            os.close(outcome[0])
        raise
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result
