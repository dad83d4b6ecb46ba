"""The blocking bridge: kernel waits that have no pollable fd run in a worker
thread, under one contract: a cancelled wait either never happened or is undone.

Only blocking FIFO opens use it so far: ``open(2)`` on a FIFO waits for the other
side with no descriptor to poll. A cancelled open is *interrupted* by briefly
opening the other side ourselves (non-blocking; read-write when the other side
is the writer, since a non-blocking write-only open fails without a reader),
which makes the blocked ``open`` return. That descriptor stays open until the
thread is done, so the interrupt also works if the thread has not reached its
``open`` yet. The fd the thread got is then closed: nothing leaks and the
worker thread is never left blocked.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import anyio
from anyio import to_thread

__all__ = ["open_interruptible"]


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
    done = anyio.Event()

    def run() -> None:
        try:
            outcome.append(os.open(path, flags))
        except BaseException as exc:  # handed to the awaiting task below
            outcome.append(exc)

    async def worker() -> None:
        try:
            # not abandonable: the thread always finishes and reports its fd
            await to_thread.run_sync(run)
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                kick = -1
                try:
                    kick = interrupt()
                except OSError:
                    pass  # the open finished already, or the path went away
                await done.wait()
                if kick >= 0:
                    os.close(kick)
                if outcome and isinstance(outcome[0], int):
                    os.close(outcome[0])
            raise
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result
