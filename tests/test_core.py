"""The integration layer: close order, readiness registration, errors, bridge."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable

import anyio
import pytest
import uvloop

import aipc
from aipc._core import _sys
from aipc._core._bridge import open_interruptible, run_interruptible
from aipc._core._errors import translate_os_error
from aipc._core._fd import FdHandle, reopen_private_nonblocking

pytestmark = pytest.mark.anyio


def test_error_mapping() -> None:
    closed = translate_os_error(OSError(errno.EBADF, "x"), closed=True, what="pipe")
    assert isinstance(closed, anyio.ClosedResourceError)
    foreign = OSError(errno.EBADF, "x")
    assert translate_os_error(foreign, closed=False, what="pipe") is foreign
    for code in (errno.EPIPE, errno.ECONNRESET):
        broken = translate_os_error(OSError(code, "x"), closed=False, what="pipe")
        assert isinstance(broken, anyio.BrokenResourceError)
        assert "pipe" in str(broken)
    other = OSError(errno.EIO, "x")
    assert translate_os_error(other, closed=False, what="pipe") is other


def test_limit_error_carries_its_data() -> None:
    exc = aipc.LimitExceededError("capacity", 10, 5, "/proc/x", "raise it")
    assert (exc.argument, exc.value, exc.limit, exc.limit_name, exc.hint) == (
        "capacity",
        10,
        5,
        "/proc/x",
        "raise it",
    )
    assert str(exc) == "capacity=10 exceeds /proc/x (5); raise it"
    assert isinstance(exc, aipc.AipcError)


async def test_handle_close_order_wakes_waiter_then_closes() -> None:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    handle = FdHandle(r, "pipe")
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await handle.wait_readable()

                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                handle.close()
        assert handle.closed
        assert handle.fd == -1
        with pytest.raises(anyio.ClosedResourceError):
            handle.fileno()
        with pytest.raises(anyio.ClosedResourceError):
            await handle.wait_readable()
        handle.close()  # idempotent
    finally:
        os.close(w)


async def test_readable_fd_without_waiter_does_not_spin() -> None:
    # The persistent registration must drop itself when the fd is ready and
    # nobody waits, or a level-triggered loop would call it forever.
    r, w = aipc.create_pipe()
    async with r, w:
        await w.send(b"a")
        assert await r.receive() == b"a"
        await w.send(b"b")  # readable now, and nobody is waiting
        with anyio.fail_after(5):
            for _ in range(100):
                await anyio.lowlevel.checkpoint()
        watcher = r._handle._rwatch
        if watcher is not None:  # asyncio and uvloop
            assert not watcher.registered
        assert await r.receive() == b"b"


async def test_detach_gives_up_ownership() -> None:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    handle = FdHandle(r, "pipe")
    assert handle.detach() == r
    assert handle.closed
    os.fstat(r)  # still open: detach does not close
    os.close(r)
    os.close(w)


def test_reopen_refuses_unreopenable_blocking_fds() -> None:
    import socket

    a, b = socket.socketpair()
    try:
        a.setblocking(True)
        with pytest.raises(ValueError, match="cannot be reopened privately"):
            reopen_private_nonblocking(a.fileno(), "socket")
    finally:
        a.close()
        b.close()


async def test_interruptible_open_completes(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "f")
    os.mkfifo(path, 0o600)
    try:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fd = await open_interruptible(path, os.O_WRONLY | os.O_CLOEXEC, lambda: -1)
            os.close(fd)
        finally:
            os.close(reader)
    finally:
        os.unlink(path)


async def test_interruptible_open_cancelled_leaves_no_thread(
    tmp_path: os.PathLike[str],
) -> None:
    path = os.path.join(tmp_path, "f")
    os.mkfifo(path, 0o600)
    try:
        before = anyio.to_thread.current_default_thread_limiter().borrowed_tokens
        for _ in range(5):
            with anyio.move_on_after(0.02) as scope:
                await open_interruptible(
                    path,
                    os.O_WRONLY | os.O_CLOEXEC,
                    lambda: os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC),
                )
            assert scope.cancelled_caught
        after = anyio.to_thread.current_default_thread_limiter().borrowed_tokens
        assert after == before  # every worker thread came back
    finally:
        os.unlink(path)


async def test_interruptible_open_reports_errors(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(FileNotFoundError):
        await open_interruptible(
            os.path.join(tmp_path, "missing"), os.O_RDONLY, lambda: -1
        )


def _blocking_flock(fd: int) -> Callable[[], int]:
    """One LOCK_EX attempt, EINTR as InterruptedError (the bridge's calling
    convention; fcntl.flock would retry on EINTR)."""

    def call() -> int:
        _sys.flock(fd, fcntl.LOCK_EX)
        return fd

    return call


async def test_run_interruptible_cancel_interrupts_a_blocked_call(
    tmp_path: os.PathLike[str],
) -> None:
    path = os.path.join(tmp_path, "lock")
    holder = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    waiter = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        limiter = anyio.to_thread.current_default_thread_limiter()
        before = limiter.borrowed_tokens
        undone: list[int] = []
        for _ in range(3):
            with anyio.move_on_after(0.02) as scope:
                await run_interruptible(_blocking_flock(waiter), undone.append)
            assert scope.cancelled_caught
        assert limiter.borrowed_tokens == before  # no thread left blocked
        assert undone == []  # interrupted before it took the lock
        fcntl.flock(holder, fcntl.LOCK_UN)
        with anyio.fail_after(5):
            assert await run_interruptible(_blocking_flock(waiter)) == waiter
    finally:
        os.close(holder)
        os.close(waiter)


async def test_run_interruptible_undoes_a_call_that_won_the_race() -> None:
    entered, go = threading.Event(), threading.Event()
    undone: list[int] = []
    returned: list[int] = []

    def call() -> int:
        # threading waits retry on EINTR: the interrupt cannot stop this one,
        # so it completes after the task was cancelled
        entered.set()
        go.wait(10)
        return 7

    scope = anyio.CancelScope()

    async def bridged() -> None:
        with scope:
            returned.append(await run_interruptible(call, undone.append))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(bridged)
            await anyio.to_thread.run_sync(entered.wait, 10)  # the call runs
            scope.cancel()
            await anyio.sleep(0)  # the cancelled task starts interrupting
            go.set()
    assert (returned, undone) == ([], [7])


async def test_run_interruptible_retries_a_stray_interruption() -> None:
    attempts: list[int] = []

    def call() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise InterruptedError(errno.EINTR, "a signal that was not ours")
        return "done"

    with anyio.fail_after(5):
        assert await run_interruptible(call) == "done"
    assert len(attempts) == 2


async def test_run_interruptible_passes_errors_through() -> None:
    def call() -> None:
        raise PermissionError(errno.EACCES, "no")

    with pytest.raises(PermissionError, match="no"):
        await run_interruptible(call)


async def test_current_library_agrees_with_sniffio() -> None:
    import sniffio

    from aipc._core._fd import current_library

    assert current_library() == sniffio.current_async_library()


@pytest.mark.parametrize("runner", ["asyncio.run", "uvloop.run", "trio.run"])
def test_current_library_under_plain_runners(runner: str) -> None:
    # no anyio.run here: sniffio's context variable is unset, which is where
    # current_library() answers without sniffio's sniff (asyncio and uvloop)
    # or from trio's thread-local (trio); a pipe round trip must work as well
    import asyncio

    import sniffio
    import trio
    import uvloop

    from aipc._core._fd import current_library

    async def main() -> tuple[str, str]:
        seen = current_library(), sniffio.current_async_library()
        receive, send = aipc.create_pipe()
        async with receive, send:
            await send.send(b"x")
            assert await receive.receive() == b"x"
        return seen

    if runner == "trio.run":
        seen = trio.run(main)
    elif runner == "uvloop.run":
        seen = uvloop.run(main())
    else:
        seen = asyncio.run(main())
    expected = "trio" if runner == "trio.run" else "asyncio"
    assert seen == (expected, expected)


async def test_checkpoint_lets_ready_work_run_and_cancels(
    anyio_backend_name: str,
) -> None:
    # a checkpoint with nothing else to run may skip its pass of the loop;
    # anything that could run or cancel must still see one
    import socket

    from aipc._core._fd import SKIP_BUDGET, checkpoint

    # a task woken by I/O (invisible until the loop polls) runs within the
    # budget of skipped passes, plus the few passes its wake-up takes
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        woke = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                await anyio.wait_readable(a)
                woke.set()

            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            b.send(b"x")
            count = 0
            with anyio.fail_after(10):
                while not woke.is_set():
                    await checkpoint()
                    count += 1
            # on trio a task woken in the same batch as this one is invisible
            # until the batch is done: at worst one more budget
            batches = 2 if anyio_backend_name == "trio" else 1
            assert count <= batches * SKIP_BUDGET + 4
    # a due deadline cancels at the next checkpoint
    count = 0
    with anyio.move_on_after(0) as scope:
        while True:
            await checkpoint()
            count += 1
    assert scope.cancelled_caught
    assert count == 0
    # so does a scope that cancelled itself, and one cancelled by another task
    with anyio.CancelScope() as scope:
        scope.cancel()
        await checkpoint()
    assert scope.cancelled_caught
    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            tg.start_soon(_cancel_scope, scope)
            for _ in range(SKIP_BUDGET + 2):
                await checkpoint()
        assert scope.cancelled_caught


async def test_checkpoint_skips_passes_with_nothing_else_to_run(
    anyio_backend_name: str,
) -> None:
    # the skip is found on every backend (uvloop's queues through the garbage
    # collector's view of its loop, trio's through its run state), and a
    # skipped checkpoint still counts as one for trio's own checker
    from aipc._core import _fd

    await _fd.checkpoint()  # may yield once (uvloop: the probe's handle)
    for _ in range(4):
        await _fd.checkpoint()
    assert _fd._skipped >= 3
    if anyio_backend_name == "trio":
        import trio.testing

        with trio.testing.assert_checkpoints():
            await _fd.checkpoint()
    # a deadline that falls due while skipping cancels at the next checkpoint
    with anyio.move_on_after(0.001) as scope:
        while True:
            await _fd.checkpoint()
    assert scope.cancelled_caught


@pytest.fixture(params=["compiled", "python"])
def watcher_steps(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The watcher's callback and arm: the compiled steps
    (aipc/_core/_corec.c), or the Python steps on the same fields."""
    from aipc._core import _fd

    if request.param == "compiled":
        if _fd._corec is None:
            pytest.skip("the compiled helper aipc/_core/_corec.c is not built")
    else:
        fire, arm = _fd._WATCHER_PYTHON_STEPS
        monkeypatch.setattr(_fd._Watcher, "_fire", fire)
        monkeypatch.setattr(_fd._Watcher, "arm", arm)
    return str(request.param)


async def test_watcher_steps(anyio_backend_name: str, watcher_steps: str) -> None:
    if anyio_backend_name == "trio":
        pytest.skip("trio has no watcher: its own wait registers each wait")
    import asyncio

    from aipc._core import _fd

    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    watcher = _fd._Watcher(asyncio.get_running_loop(), r, True)
    try:
        with anyio.fail_after(5):
            # stale readiness (the attempt finds nothing) keeps the wait
            # going; the attempt's result completes it
            calls: list[int] = []

            def attempt() -> bytes:
                calls.append(1)
                if len(calls) == 1:
                    raise BlockingIOError
                return os.read(r, 10)

            waiter = watcher.arm(attempt)
            with pytest.raises(anyio.BusyResourceError, match="reading from"):
                watcher.arm(None)
            os.write(w, b"abc")
            assert await waiter == b"abc"
            assert len(calls) == 2

            # the attempt's error fails the wait with it
            def failing() -> bytes:
                raise OSError(errno.EIO, "the attempt failed")

            waiter = watcher.arm(failing)
            os.write(w, b"x")
            with pytest.raises(OSError, match="the attempt failed"):
                await waiter
            # readiness only (b"x" is still there): True
            assert await watcher.arm(None) is True
            os.read(r, 10)
            # a cancelled waiter's future is done: the next arm takes its place
            watcher.arm(None).cancel()
            waiter = watcher.arm(None)
            # ready with nobody waiting: unregistered at the second report
            # in a row, so the loop does not call it on every pass
            waiter.cancel()
            os.write(w, b"y")
            while watcher.registered:
                await anyio.lowlevel.checkpoint()
            os.read(r, 10)
            # a close wakes the waiter with ClosedResourceError
            waiter = watcher.arm(None)
            assert watcher.registered
            watcher.close()
            with pytest.raises(anyio.ClosedResourceError):
                await waiter
            assert not watcher.registered
    finally:
        watcher.close()
        os.close(r)
        os.close(w)


async def test_wait_set_wakes_on_either_member(
    anyio_backend_name: str, watcher_steps: str
) -> None:
    import socket

    from aipc._core._waitset import WaitSet

    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    mine, peer = socket.socketpair()
    mine.setblocking(False)
    wait_set = WaitSet("test wait set")
    try:
        wait_set.add(efd)
        wait_set.add(mine.fileno())

        def attempt() -> int:
            # a ring's: the doorbell's count, or 0 once the peer hung up
            try:
                return os.eventfd_read(efd)
            except BlockingIOError:
                if mine.recv(1, socket.MSG_PEEK) == b"":
                    return 0
                raise

        results: list[int] = []

        async def wait() -> None:
            try:
                results.append(await wait_set.wait(attempt))
            except anyio.ClosedResourceError:
                results.append(-1)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                os.eventfd_write(efd, 3)
            # asyncio and uvloop wait on the members themselves, not on the
            # epoll descriptor (no nested wake-up); trio on the set
            direct = anyio_backend_name != "trio"
            assert (wait_set._direct is not None) == direct
            assert wait_set._handle._rwatch is None or not direct
            # a close wakes the waiter (the peer still lives: nothing else
            # could end this wait)
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                wait_set.close()
            # a new set: the peer's death, end of file on its socket
            wait_set = WaitSet("test wait set")
            wait_set.add(efd)
            wait_set.add(mine.fileno())
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                peer.close()
            wait_set.close()
        assert results == [3, -1, 0]
        if direct:
            import asyncio

            # closing dropped the members' registrations with the loop
            loop = asyncio.get_running_loop()
            assert not loop.remove_reader(efd)
            assert not loop.remove_reader(mine.fileno())
    finally:
        wait_set.close()
        os.close(efd)
        mine.close()
        peer.close()


def _python_decision() -> Callable[[], bool]:
    from aipc._core import _fd

    return _fd._skip_checkpoint_py


def _compiled_decision() -> Callable[[], bool]:
    from aipc._core import _fd

    if _fd._corec is None:
        pytest.skip("the compiled helper aipc/_core/_corec.c is not built")
    return _fd.skip_checkpoint


@pytest.mark.parametrize("decision", [_compiled_decision, _python_decision])
async def test_skip_checkpoint_is_checkpoints_decision(
    anyio_backend_name: str, decision: Callable[[], Callable[[], bool]]
) -> None:
    # the hot paths' "if not skip_checkpoint(): await checkpoint()" skips
    # exactly when checkpoint() would, and counts the skip the same way; the
    # compiled steps (aipc/_core/_corec.c) and the Python steps alike
    from aipc._core import _fd

    skip = decision()
    await _fd.checkpoint()  # may yield once (uvloop: the probe's handle)
    await _fd.checkpoint()
    _fd._skipped = 0
    assert skip()
    assert _fd._skipped == 1
    # something ready to run: no skip, and the budget is not used
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0)  # a task ready to run
        assert not skip()
        assert _fd._skipped == 1
    # the budget: SKIP_BUDGET skips in a row, then a pass
    _fd._skipped = _fd.SKIP_BUDGET
    assert not skip()
    # a deadline due now: no skip (checkpoint() then cancels)
    with anyio.move_on_after(0) as scope:
        _fd._skipped = 0
        assert not skip()
        await _fd.checkpoint()
    assert scope.cancelled_caught
    # a cancelled scope: no skip (checkpoint() then raises)
    with anyio.CancelScope() as scope:
        _fd._skipped = 0
        scope.cancel()
        assert not skip()
        await _fd.checkpoint()
    assert scope.cancelled_caught
    # outside the loop (another thread): nothing to skip, no error
    _fd._skipped = 0
    assert not await anyio.to_thread.run_sync(skip)
    assert _fd._skipped == 0


_FORKED_DECISION = """
import asyncio, os, sys
from aipc._core import _fd

async def main():
    _fd._skipped = 0
    first = _fd.skip_checkpoint()  # the helper remembers this running loop
    pid = os.fork()
    if pid == 0:
        # the child runs no loop (asyncio's getpid() check says so): a
        # remembered loop of the parent must not be taken for a running one
        _fd._skipped = 0
        os._exit(10 + int(_fd.skip_checkpoint()))
    _, status = os.waitpid(pid, 0)
    print(first, os.waitstatus_to_exitcode(status), flush=True)

asyncio.run(main())
"""


def test_compiled_decision_forgets_the_loop_in_a_forked_child() -> None:
    # asyncio only: the getpid() check it replaces is asyncio's (trio's
    # decision asks trio's run state, which has no such check)
    import subprocess
    import sys

    from aipc._core import _fd

    if _fd._corec is None:
        pytest.skip("the compiled helper aipc/_core/_corec.c is not built")
    result = subprocess.run(
        [sys.executable, "-c", _FORKED_DECISION],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["True", "10"]


async def test_large_sends_yield_on_trio_and_uvloop(anyio_backend_name: str) -> None:
    # a send of more than LARGE_OPERATION bytes that fills over a quarter of
    # the pipe passes through the loop on trio and uvloop even with nothing
    # else to run (checkpoint_large); small ones, and large ones into a pipe
    # over four times their size, skip the pass
    import asyncio

    from aipc import create_pipe
    from aipc._core import _fd

    pure_asyncio = anyio_backend_name == "asyncio" and type(
        asyncio.get_running_loop()
    ).__module__.startswith("asyncio")

    async def skipped(data: bytes) -> bool:
        # whether this send's checkpoint skipped its pass of the loop (the
        # count of skips in a row restarts here, so no budget runs out)
        _fd._skipped = 0
        await tx.send(data)
        return _fd._skipped == 1

    rx, tx = create_pipe(capacity=1 << 20)
    async with rx, tx:
        capacity = tx.capacity
        # the first checkpoints on a new uvloop loop find its queues (the
        # probe's cancelled handle makes the next pass run): then they skip
        for _ in range(3):
            await tx.send(b"x")
        assert await skipped(b"x")
        assert await skipped(bytes(capacity // 4))  # a quarter
        await rx.receive(capacity)
        # over a quarter: a pass, but on asyncio's own loop
        assert await skipped(bytes(capacity // 4 + 1)) == pure_asyncio
        await rx.receive(capacity)
        # in the default 64 KiB pipe every send over LARGE_OPERATION yields
        # (the sending end's own set_capacity updates the size it keeps)
        assert tx.set_capacity(65536) == 65536
        assert await skipped(b"x")
        assert await skipped(bytes(_fd.LARGE_OPERATION + 1)) == pure_asyncio


async def _cancel_scope(scope: anyio.CancelScope) -> None:
    scope.cancel()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_checkpoint_sees_plain_asyncio_cancellation() -> None:
    # asyncio only: Task.cancel() and asyncio.timeout() have no trio form
    import asyncio

    from aipc._core._fd import checkpoint

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            while True:
                await checkpoint()
    task = asyncio.current_task()
    assert task is not None
    task.cancel()  # pending: delivered at this task's next yield
    with pytest.raises(asyncio.CancelledError):
        await checkpoint()
    task.uncancel()


async def test_readiness_only_wait_wakes_while_the_fd_stays_ready() -> None:
    # on asyncio the report that follows a readiness-only wake-up is taken
    # before the task acts; a task that did not consume must still be woken
    # again (the kernel is asked, not the old report), and one that consumed
    # must not be woken for nothing
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    handle = FdHandle(r, "pipe")
    try:
        os.write(w, b"x")
        with anyio.fail_after(5):
            for _ in range(50):
                await handle.wait_readable()  # not consumed: ready again
        os.read(r, 1)
        async with anyio.create_task_group() as tg:
            woken = []

            async def waiter() -> None:
                await handle.wait_readable()
                woken.append(os.read(r, 1))

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert woken == []  # nothing to read: asleep
            os.write(w, b"y")
        assert woken == [b"y"]
    finally:
        handle.close()
        os.close(w)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_wake_steps_the_task_in_the_same_pass() -> None:
    # asyncio's own loop only: there a future's callbacks run one pass after
    # the reader callback that completed it, and aipc's waiter steps the task
    # from that callback instead (uvloop already runs it in the same pass;
    # trio has no futures)
    import asyncio

    from aipc._core import _fd

    if not _fd._SYNC_RESUME or _fd._GENERIC_WAIT:
        pytest.skip("AIPC_NO_SYNC_RESUME or AIPC_GENERIC_WAIT turns this off")
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    passes = 0
    select = selector.select

    def counting_select(timeout: float | None = None) -> object:
        nonlocal passes
        passes += 1
        return select(timeout)

    selector.select = counting_select
    rx, tx = aipc.create_pipe()
    try:
        async with rx, tx, anyio.create_task_group() as tg:
            resumed: list[tuple[bytes, int]] = []
            done = anyio.Event()

            async def reader() -> None:
                data = await rx.receive()
                resumed.append((data, passes))
                done.set()

            tg.start_soon(reader)
            with anyio.fail_after(5):
                await anyio.wait_all_tasks_blocked()
                await tx.send(b"x")
                sent = passes
                await done.wait()  # not anyio.sleep(0): nothing else is ready
            # the one pass that polled the pipe readable also ran the reader
            assert resumed == [(b"x", sent + 1)]
    finally:
        del selector.select


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
    ],
)
async def test_asyncio_woken_task_does_not_overtake_a_due_timer() -> None:
    # asyncio and uvloop (call_later is theirs): a timer that falls due in the
    # pass that reports the pipe readable runs before the woken reader, as it
    # did when every wake-up went through call_soon
    import asyncio

    loop = asyncio.get_running_loop()
    order: list[str] = []
    done = anyio.Event()
    rx, tx = aipc.create_pipe()
    async with rx, tx, anyio.create_task_group() as tg:

        async def reader() -> None:
            await rx.receive()
            order.append("reader")
            done.set()

        tg.start_soon(reader)
        with anyio.fail_after(5):
            await anyio.wait_all_tasks_blocked()
            await tx.send(b"x")
            loop.call_later(0, order.append, "timer")
            await done.wait()
    assert order == ["timer", "reader"]
