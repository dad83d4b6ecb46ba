"""File locks: flock and OFD byte-range locks across real processes, on every
backend; cancellation through the blocking bridge; errors."""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, aclosing
from pathlib import Path

import anyio
import pytest

import aipc

from ._helpers import child_process, read_line

pytestmark = pytest.mark.anyio

LockKind = type[aipc.FileLock] | type[aipc.RangeLock]


@pytest.fixture(
    params=[
        pytest.param(aipc.FileLock, id="flock"),
        pytest.param(aipc.RangeLock, id="range"),
    ]
)
def kind(request: pytest.FixtureRequest) -> LockKind:
    """Both kinds of lock: whole-file flock and an OFD range lock (whole file)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "lock")


def borrowed_threads() -> int:
    """Worker threads in use: a thread stuck in the kernel keeps its token."""
    return anyio.to_thread.current_default_thread_limiter().borrowed_tokens


def kernel_locks(path: str) -> list[str]:
    """The lines of /proc/locks about ``path``'s inode ("->" marks a waiter)."""
    st = os.stat(path)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    with open("/proc/locks") as f:
        return [line for line in f if inode in line]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Wait for a state another thread or process reaches (a handshake with the
    kernel, not a guess at how long it takes)."""
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.001)


async def blocked_in_kernel(path: str, waiters: int = 1) -> None:
    """Wait until ``waiters`` requests on ``path`` sleep in the kernel."""
    await wait_until(
        lambda: sum("->" in line for line in kernel_locks(path)) >= waiters
    )


# --- across processes ---------------------------------------------------------

# The read and the write are plain pread/pwrite on the child's own descriptor
# of the locked file: a few microseconds on a local file in the page cache.
# Through anyio.Path (a worker thread each) the same run takes 10 to 20 s per
# backend on a 2-core machine, about 1 ms per increment, all of it thread
# hand-offs; test_file_io_under_the_lock and the example cover that way.
# sched_yield() between the read and the write lets the other children run
# there: without the lock the total then comes out far off (1,000 to 10,000),
# and with it most increments wait in the kernel for another child's release.
COUNTER = """
import os, sys, anyio, aipc
from tests._helpers import run_backend
kind, path, rounds, backend = sys.argv[1:]
async def main():
    lock = getattr(aipc, kind)(path, create=False)
    fd = os.open(lock.path, os.O_RDWR | os.O_CLOEXEC)
    try:
        print("ready", flush=True)
        for _ in range(int(rounds)):
            async with lock:
                value = int(os.pread(fd, 32, 0))
                os.sched_yield()
                os.pwrite(fd, str(value + 1).encode(), 0)
    finally:
        os.close(fd)  # another descriptor of the file: the lock is not dropped
        await lock.aclose()
    print(lock.statistics().waits, flush=True)
run_backend(main, backend)
"""

PROCESSES = 8
ROUNDS = 1000


async def test_counter_is_exact_across_processes(
    kind: LockKind, path: str, backend_id: str
) -> None:
    # the file under the lock is the counter itself
    Path(path).write_text("0")
    started = time.perf_counter()
    async with AsyncExitStack() as stack, aclosing(kind(path)) as gate:
        # hold the lock until every child is ready, so that they all contend
        await gate.acquire()
        children = [
            await stack.enter_async_context(
                child_process(
                    COUNTER, args=[kind.__name__, path, str(ROUNDS), backend_id]
                )
            )
            for _ in range(PROCESSES)
        ]
        for _, stdout in children:
            assert await read_line(stdout, 30) == b"ready"
        gate.release()
        counting = time.perf_counter()
        waits = 0
        with anyio.fail_after(50):
            for proc, stdout in children:
                waits += int(await read_line(stdout, 50))
                assert await proc.wait() == 0
        done = time.perf_counter()
    assert Path(path).read_text() == str(PROCESSES * ROUNDS)
    print(
        f"{kind.__name__} {backend_id}: {PROCESSES}x{ROUNDS} increments in "
        f"{done - counting:.2f} s ({counting - started:.2f} s to start the "
        f"children), {waits} waits in the kernel",
        file=sys.stderr,
    )


HOLDER = """
import sys, anyio, aipc
from tests._helpers import run_backend
kind, path, backend, shared = sys.argv[1:]
async def main():
    lock = getattr(aipc, kind)(path, create=False)
    await lock.acquire(shared=shared == "shared")
    print("held", flush=True)
    await anyio.sleep_forever()
run_backend(main, backend)
"""


async def test_kill_9_of_the_holder_lets_a_waiter_in(
    kind: LockKind, path: str, backend_id: str
) -> None:
    Path(path).touch()
    async with (
        aclosing(kind(path)) as lock,
        child_process(HOLDER, args=[kind.__name__, path, backend_id, "exclusive"]) as (
            proc,
            stdout,
        ),
    ):
        assert await read_line(stdout) == b"held"
        with pytest.raises(anyio.WouldBlock):
            lock.acquire_nowait()
        got = anyio.Event()

        async def waiter() -> None:
            await lock.acquire()
            got.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await blocked_in_kernel(path)
            proc.kill()
            with anyio.fail_after(1):
                await got.wait()
        assert lock.locked
        assert await proc.wait() == -9


async def test_shared_lock_held_by_another_process(
    kind: LockKind, path: str, backend_id: str
) -> None:
    Path(path).touch()
    async with (
        aclosing(kind(path)) as lock,
        child_process(HOLDER, args=[kind.__name__, path, backend_id, "shared"]) as (
            proc,
            stdout,
        ),
    ):
        assert await read_line(stdout) == b"held"
        with pytest.raises(anyio.WouldBlock):
            lock.acquire_nowait()
        lock.acquire_nowait(shared=True)  # another reader is welcome
        lock.release()
        with anyio.move_on_after(0.05) as scope:
            await lock.acquire()  # a writer is not
        assert scope.cancelled_caught
        proc.kill()
        with anyio.fail_after(1):
            await lock.acquire()


# --- cancellation -------------------------------------------------------------


async def test_cancelled_blocked_acquire_leaves_the_lock_free(
    kind: LockKind, path: str
) -> None:
    async with (
        aclosing(kind(path)) as holder,
        aclosing(kind(path)) as waiter,
        aclosing(kind(path)) as other,
    ):
        holder.acquire_nowait()
        threads = borrowed_threads()
        with anyio.CancelScope() as scope:

            async def cancel_once_blocked() -> None:
                await blocked_in_kernel(path)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_blocked)
                await waiter.acquire()
        assert scope.cancelled_caught
        assert borrowed_threads() == threads  # the worker thread came back
        assert not any("->" in line for line in kernel_locks(path))
        assert not waiter.locked
        assert waiter.statistics() == aipc.LockStatistics(0, 1, 1)
        holder.release()
        other.acquire_nowait()  # at once: nobody took it meanwhile


async def test_cancel_racing_the_grant_never_leaves_the_lock_held(
    kind: LockKind, path: str
) -> None:
    # The holder releases and the waiter is cancelled at the same moment: the
    # kernel may grant the lock just before the interrupt lands. Either way the
    # cancelled waiter must not hold it afterwards.
    async with (
        aclosing(kind(path)) as holder,
        aclosing(kind(path)) as waiter,
        aclosing(kind(path)) as other,
    ):
        threads = borrowed_threads()
        for _ in range(20):
            holder.acquire_nowait()
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter.acquire)
                await blocked_in_kernel(path)
                holder.release()
                tg.cancel_scope.cancel()
            assert not waiter.locked
            assert borrowed_threads() == threads
            other.acquire_nowait()
            other.release()
        assert waiter.statistics().cancelled_waits == 20


async def test_deadline_from_a_cancel_scope(kind: LockKind, path: str) -> None:
    async with aclosing(kind(path)) as holder, aclosing(kind(path)) as waiter:
        holder.acquire_nowait()
        with pytest.raises(TimeoutError), anyio.fail_after(0.05):
            await waiter.acquire()
        holder.release()
        waiter.acquire_nowait()


async def test_cancelled_before_waiting_takes_nothing(
    kind: LockKind, path: str
) -> None:
    async with aclosing(kind(path)) as lock, aclosing(kind(path)) as other:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await lock.acquire()
        assert scope.cancelled_caught
        assert not lock.locked
        other.acquire_nowait()


async def test_closing_ends_a_waiting_acquire(kind: LockKind, path: str) -> None:
    async with aclosing(kind(path)) as holder:
        holder.acquire_nowait()
        threads = borrowed_threads()
        waiter = kind(path)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await waiter.acquire()

                tg.start_soon(wait)
                await blocked_in_kernel(path)
                await waiter.aclose()
                assert waiter.closed
        assert borrowed_threads() == threads
        assert waiter.statistics().cancelled_waits == 1
        assert "closed" in repr(waiter)


async def test_sync_close_ends_a_waiting_acquire(kind: LockKind, path: str) -> None:
    async with aclosing(kind(path)) as holder, aclosing(kind(path)) as other:
        holder.acquire_nowait()
        waiter = kind(path)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def wait() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await waiter.acquire()

                tg.start_soon(wait)
                await blocked_in_kernel(path)
                waiter.close()  # the waiting task closes the fd when its thread is back
        holder.release()
        other.acquire_nowait()


# --- semantics ----------------------------------------------------------------


async def test_shared_admits_several_holders_and_excludes_exclusive(
    kind: LockKind, path: str
) -> None:
    async with (
        aclosing(kind(path)) as a,
        aclosing(kind(path)) as b,
        aclosing(kind(path)) as writer,
    ):
        await a.acquire(shared=True)
        b.acquire_nowait(shared=True)
        with pytest.raises(anyio.WouldBlock):
            writer.acquire_nowait()
        got = anyio.Event()

        async def write() -> None:
            async with writer:
                got.set()
                with pytest.raises(anyio.WouldBlock):
                    a.acquire_nowait(shared=True)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                await blocked_in_kernel(path)
                a.release()
                assert not got.is_set()  # b still reads
                b.release()
                await got.wait()
        assert not writer.locked


async def test_shared_context_manager(kind: LockKind, path: str) -> None:
    async with aclosing(kind(path)) as lock, aclosing(kind(path)) as other:
        async with lock.shared():
            assert lock.locked
            assert "shared" in repr(lock)
            other.acquire_nowait(shared=True)
            other.release()
            with pytest.raises(anyio.WouldBlock):
                other.acquire_nowait()
        assert not lock.locked
        async with lock as same:
            assert same is lock
            assert "exclusive" in repr(lock)
            with pytest.raises(anyio.WouldBlock):
                other.acquire_nowait(shared=True)
        other.acquire_nowait()


async def test_two_objects_in_one_process_exclude_each_other(
    kind: LockKind, path: str
) -> None:
    async with aclosing(kind(path)) as a, aclosing(kind(path)) as b:
        a.acquire_nowait()
        with pytest.raises(anyio.WouldBlock):
            b.acquire_nowait()
        with pytest.raises(anyio.WouldBlock):
            b.acquire_nowait(shared=True)
        a.release()
        b.acquire_nowait()


async def test_byte_ranges(path: str) -> None:
    async with (
        aclosing(aipc.RangeLock(path, 0, 10)) as low,
        aclosing(aipc.RangeLock(path, 10, 10)) as high,
        aclosing(aipc.RangeLock(path, 5, 10)) as middle,
        aclosing(aipc.RangeLock(path, 100)) as tail,
        aclosing(aipc.RangeLock(path, 2**40, 1)) as far,
    ):
        low.acquire_nowait()
        high.acquire_nowait()  # [0, 10) and [10, 20) do not overlap
        with pytest.raises(anyio.WouldBlock):
            middle.acquire_nowait(shared=True)  # [5, 15) overlaps both
        tail.acquire_nowait()  # [100, end and beyond)
        with pytest.raises(anyio.WouldBlock):
            far.acquire_nowait()  # past the end of the (empty) file still counts
        low.release()
        with pytest.raises(anyio.WouldBlock):
            middle.acquire_nowait()  # [10, 15) is still taken
        high.release()
        middle.acquire_nowait()
        assert tail.start == 100
        assert tail.length == 0
        assert "start=100 length=0" in repr(tail)


async def test_flock_and_range_locks_are_independent(path: str) -> None:
    # documented: on local filesystems the two kinds do not see each other
    async with (
        aclosing(aipc.FileLock(path)) as whole,
        aclosing(aipc.RangeLock(path)) as ranged,
    ):
        whole.acquire_nowait()
        ranged.acquire_nowait()


async def test_closing_another_descriptor_of_the_file_keeps_the_lock(
    kind: LockKind, path: str
) -> None:
    # what classic F_SETLK gets wrong: any close of the file drops the lock
    async with aclosing(kind(path)) as lock, aclosing(kind(path)) as other:
        await lock.acquire()
        async with await anyio.open_file(lock.path, "r+b") as f:
            await f.write(b"data")
        os.close(os.open(path, os.O_RDONLY))
        with pytest.raises(anyio.WouldBlock):
            other.acquire_nowait()


async def test_aclose_releases(kind: LockKind, path: str) -> None:
    async with aclosing(kind(path)) as other:
        lock = kind(path)
        await lock.acquire()
        await lock.aclose()
        await lock.aclose()  # idempotent
        assert not lock.locked
        assert lock.closed
        other.acquire_nowait()
        held = kernel_locks(path)
        assert len(held) == 1  # other's, and nobody waiting
        assert "->" not in held[0]


async def test_aclose_releases_even_when_cancelled(kind: LockKind, path: str) -> None:
    async with aclosing(kind(path)) as other:
        lock = kind(path)
        lock.acquire_nowait()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await lock.aclose()
        assert lock.closed
        other.acquire_nowait()


async def test_upgrade_is_release_then_acquire(kind: LockKind, path: str) -> None:
    async with aclosing(kind(path)) as lock:
        await lock.acquire(shared=True)
        with pytest.raises(RuntimeError, match=r"already holds the lock \(shared\)"):
            await lock.acquire()
        with pytest.raises(RuntimeError, match="already holds the lock"):
            lock.acquire_nowait(shared=True)
        lock.release()
        await lock.acquire()
        assert lock.statistics() == aipc.LockStatistics(2, 0, 0)


async def test_release_of_what_is_not_held(kind: LockKind, path: str) -> None:
    async with aclosing(kind(path)) as lock:
        with pytest.raises(RuntimeError, match="that does not hold the lock"):
            lock.release()
    with pytest.raises(anyio.ClosedResourceError):
        lock.release()
    with pytest.raises(anyio.ClosedResourceError):
        lock.acquire_nowait()
    with pytest.raises(anyio.ClosedResourceError):
        await lock.acquire()


async def test_second_task_acquiring_one_object_is_busy(
    kind: LockKind, path: str
) -> None:
    async with aclosing(kind(path)) as holder, aclosing(kind(path)) as lock:
        holder.acquire_nowait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lock.acquire)
            await blocked_in_kernel(path)
            with pytest.raises(anyio.BusyResourceError):
                await lock.acquire()
            with pytest.raises(anyio.BusyResourceError):
                lock.acquire_nowait()
            tg.cancel_scope.cancel()


async def test_file_io_under_the_lock(kind: LockKind, path: str) -> None:
    async with aclosing(kind(path)) as lock:
        async with lock, await anyio.open_file(lock.path, "w") as f:
            await f.write("42")
        async with lock.shared():
            assert await anyio.Path(lock.path).read_text() == "42"


# --- creation, errors, leaks --------------------------------------------------


async def test_created_0600_and_never_removed(kind: LockKind, path: str) -> None:
    old = os.umask(0o077)
    try:
        async with aclosing(kind(path, mode=0o644)) as lock:
            assert lock.path == path
    finally:
        os.umask(old)
    st = os.stat(path)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o644  # exactly, whatever the umask
    os.unlink(path)
    async with aclosing(kind(Path(path))):
        pass
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o640)
    async with aclosing(kind(path, mode=0o600)):
        pass
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # an existing file: as is


def test_bad_paths(kind: LockKind, tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"cannot open path to lock it \(.*; create=False\)"
    ):
        kind(tmp_path / "missing", create=False)
    with pytest.raises(
        FileNotFoundError, match=r"cannot open path to lock it .*'.*/nodir/x'"
    ):
        kind(tmp_path / "nodir" / "x")
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        kind(tmp_path)
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(ValueError, match="is a FIFO; a lock needs a regular file"):
        kind(tmp_path / "fifo")
    with pytest.raises(ValueError, match="is a character device"):
        kind("/dev/null")
    with pytest.raises(ValueError, match="path must not be empty"):
        kind("")
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        kind(b"/tmp/x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be a permission mask within"):
        kind(tmp_path / "m", mode=0o4755)
    with pytest.raises(TypeError, match="mode must be an int, not str"):
        kind(tmp_path / "m", mode="600")  # type: ignore[arg-type]
    assert not (tmp_path / "m").exists()
    os.unlink(tmp_path / "fifo")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may open any file")
def test_unreadable_path(kind: LockKind, tmp_path: Path) -> None:
    target = tmp_path / "ro"
    target.touch(0o400)
    with pytest.raises(PermissionError, match="opens its file for reading and writing"):
        kind(target)


@pytest.mark.parametrize(
    ("start", "length", "exc", "message"),
    [
        (-1, 0, ValueError, "start must be >= 0, got -1"),
        (0, -5, ValueError, r"length must be >= 0 \(0: to the end of the file\)"),
        (2**63, 0, ValueError, "start \\+ length must be at most 2\\*\\*63"),
        (2**62, 2**62 + 1, ValueError, "got start=4611686018427387904"),
        (1.5, 0, TypeError, "start must be an int, not float"),
        (0, None, TypeError, "length must be an int, not NoneType"),
        (True, 0, TypeError, "start must be an int, not bool"),
    ],
)
def test_bad_ranges(
    start: object, length: object, exc: type[Exception], message: str, path: str
) -> None:
    with pytest.raises(exc, match=message):
        aipc.RangeLock(path, start, length)  # type: ignore[arg-type]
    assert not os.path.exists(path)  # checked before anything is created


async def test_largest_range(path: str) -> None:
    async with (
        aclosing(aipc.RangeLock(path, 2**63 - 1)) as last_byte,
        aclosing(aipc.RangeLock(path, 0, 2**63 - 1)) as all_but_last,
        aclosing(aipc.RangeLock(path, 1, 2**63 - 1)) as up_to_the_last,
    ):
        last_byte.acquire_nowait()
        all_but_last.acquire_nowait()
        with pytest.raises(anyio.WouldBlock):  # a valid range, taken
            up_to_the_last.acquire_nowait()


def test_unclosed_lock_warns_and_releases(kind: LockKind, path: str) -> None:
    lock = kind(path)
    lock.acquire_nowait()
    with pytest.warns(ResourceWarning, match="unclosed (file|range) lock on"):
        del lock  # the last reference: the finalizer runs here
    other = kind(path)
    try:
        other.acquire_nowait()
    finally:
        other.close()


async def test_repr_and_statistics(kind: LockKind, path: str) -> None:
    lock = kind(path)
    assert repr(lock).startswith(f"<{kind.__name__} {path!r}")
    assert "unlocked fd=" in repr(lock)
    async with lock:
        pass
    async with lock.shared():
        pass
    assert lock.statistics() == aipc.LockStatistics(
        acquisitions=2, waits=0, cancelled_waits=0
    )
    assert "acquisitions=2" in repr(lock)
    await lock.aclose()
    assert repr(lock).endswith("closed acquisitions=2>")


async def test_async_with_leaves_the_object_open(kind: LockKind, path: str) -> None:
    lock = kind(path)
    try:
        for _ in range(3):
            async with lock:
                assert lock.locked
            assert not lock.locked
        assert not lock.closed
    finally:
        await lock.aclose()


async def test_body_that_closes_the_lock(kind: LockKind, path: str) -> None:
    lock = kind(path)
    async with lock:
        await lock.aclose()  # leaving the block then has nothing to release
    assert lock.closed
