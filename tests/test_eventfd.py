"""EventFd: counter and semaphore modes, limits, hand-off to a child."""

from __future__ import annotations

import os

import anyio
import pytest

import aipc

from ._helpers import child_process, read_line

pytestmark = pytest.mark.anyio


async def test_counter_mode_returns_and_resets_the_count() -> None:
    async with aipc.EventFd() as efd:
        efd.set()
        efd.set(41)
        with anyio.fail_after(5):
            assert await efd.wait() == 42
        with pytest.raises(anyio.WouldBlock):
            efd.wait_nowait()


async def test_initial_value() -> None:
    async with aipc.EventFd(7) as efd:
        assert efd.wait_nowait() == 7


async def test_semaphore_mode_takes_one_unit() -> None:
    async with aipc.EventFd(semaphore=True) as sem:
        assert sem.semaphore
        sem.set(3)
        with anyio.fail_after(5):
            assert [await sem.wait() for _ in range(3)] == [1, 1, 1]
        with pytest.raises(anyio.WouldBlock):
            sem.wait_nowait()


async def test_wait_sleeps_until_set() -> None:
    async with aipc.EventFd() as efd:
        got: list[int] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    got.append(await efd.wait())

                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                efd.set(5)
        assert got == [5]
        assert efd.statistics().sleeps == 1


async def test_overflow_is_a_clear_error_and_changes_nothing() -> None:
    async with aipc.EventFd() as efd:
        efd.set(aipc.EVENTFD_MAX)
        with pytest.raises(aipc.EventFdOverflowError) as info:
            efd.set(1)
        assert info.value.limit == aipc.EVENTFD_MAX
        assert "exceed its maximum" in str(info.value)
        assert efd.wait_nowait() == aipc.EVENTFD_MAX


@pytest.mark.parametrize(
    ("value", "exc", "message"),
    [
        (0, ValueError, "value must be between 1 and 18446744073709551614, got 0"),
        (-5, ValueError, "value must be between 1"),
        (2**64 - 1, ValueError, "value must be between 1"),
        (1.0, TypeError, "value must be an int, not float"),
    ],
)
def test_bad_values(value: object, exc: type[Exception], message: str) -> None:
    efd = aipc.EventFd()
    try:
        with pytest.raises(exc, match=message):
            efd.set(value)  # type: ignore[arg-type]
    finally:
        efd.close()


def test_bad_initial() -> None:
    with pytest.raises(ValueError, match="initial must be between 0 and 4294967295"):
        aipc.EventFd(-1)
    with pytest.raises(ValueError, match="initial must be between 0 and 4294967295"):
        aipc.EventFd(2**32)


async def test_cancelled_wait_takes_nothing() -> None:
    async with aipc.EventFd() as efd:
        efd.set(3)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await efd.wait()
        assert scope.cancelled_caught
        assert efd.wait_nowait() == 3


async def test_close_wakes_waiter() -> None:
    efd = aipc.EventFd()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await efd.wait()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await efd.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        efd.set()


async def test_concurrent_waits_are_busy() -> None:
    async with aipc.EventFd() as efd:
        with anyio.fail_after(5), pytest.RaisesGroup(anyio.BusyResourceError):
            async with anyio.create_task_group() as tg:
                tg.start_soon(efd.wait)
                tg.start_soon(efd.wait)


def test_from_fd_checks_the_kind_and_mode() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="is not an open eventfd"):
            aipc.EventFd.from_fd(r)
    finally:
        os.close(r)
        os.close(w)
    fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK | os.EFD_SEMAPHORE)
    try:
        with pytest.raises(ValueError, match="is a semaphore-mode eventfd"):
            aipc.EventFd.from_fd(fd, semaphore=False)
    finally:
        os.close(fd)
    blocking = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with pytest.raises(ValueError, match="will not switch it to non-blocking"):
            aipc.EventFd.from_fd(blocking, semaphore=False)
    finally:
        os.close(blocking)


CHILD = """
import sys, anyio, aipc
from tests._helpers import run_backend
async def main():
    async with aipc.EventFd.from_fd(int(sys.argv[1])) as ping, \\
            aipc.EventFd.from_fd(int(sys.argv[2])) as pong:
        print("ready", flush=True)
        total = 0
        while total < 100:
            total += await ping.wait()
            pong.set(1)
        print(total, flush=True)
run_backend(main, sys.argv[3])
"""


async def test_across_processes(backend_id: str) -> None:
    async with aipc.EventFd() as ping, aipc.EventFd(semaphore=True) as pong:
        fds = [ping.fileno(), pong.fileno()]
        async with child_process(
            CHILD, pass_fds=fds, args=[*map(str, fds), backend_id]
        ) as (proc, stdout):
            assert await read_line(stdout) == b"ready"
            with anyio.fail_after(10):
                for _ in range(100):
                    ping.set(1)
                    assert await pong.wait() == 1
                assert await read_line(stdout) == b"100"
                assert await proc.wait() == 0


async def test_cancelled_wait_never_writes_to_a_reused_fd_number() -> None:
    # A wait that took the count, then is cancelled at its checkpoint while
    # another task closes the handle and a new eventfd gets the same number:
    # the count must not be "put back" into the new one.
    for _ in range(20):
        old = aipc.EventFd(5)
        new: list[aipc.EventFd] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(old.wait)
            await anyio.lowlevel.checkpoint()  # the waiter reads, then yields
            number = old.fileno()
            old.close()
            new.append(aipc.EventFd())
            tg.cancel_scope.cancel()
        async with new[0] as fresh:
            if fresh.fileno() == number:
                with pytest.raises(anyio.WouldBlock):
                    fresh.wait_nowait()
