"""Process: pidfd handles on children and non-children, wait, signals, getfd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest

import aipc
from aipc._core import _sys

from ._helpers import aipc_child, child_process, read_line

pytestmark = pytest.mark.anyio

SLEEPER = """
import time
print("ready", flush=True)
time.sleep(60)
"""


@contextmanager
def popen(code: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child started by subprocess.Popen, which reaps it: killed and reaped
    on exit unless the test reaped it."""
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def _pid_max() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())


# -- construction and bad input ----------------------------------------------


async def test_from_pid_bad_input() -> None:
    with pytest.raises(TypeError, match="pid must be an int, not str"):
        aipc.Process.from_pid("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pid must be an int, not bool"):
        aipc.Process.from_pid(True)
    with pytest.raises(ValueError, match="pid must be > 0, got 0"):
        aipc.Process.from_pid(0)
    with pytest.raises(ValueError, match="pid must be > 0, got -5"):
        aipc.Process.from_pid(-5)
    missing = _pid_max()  # pids are below pid_max
    with pytest.raises(ProcessLookupError, match=f"no process with pid {missing}"):
        aipc.Process.from_pid(missing)


async def test_from_fd_bad_input() -> None:
    with pytest.raises(TypeError, match="fd must be an int, not float"):
        aipc.Process.from_fd(3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fd must be >= 0, got -1"):
        aipc.Process.from_fd(-1)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match=rf"fd {r} is not a pidfd \(it is pipe:"):
            aipc.Process.from_fd(r)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(ValueError, match=f"fd {r} is not an open file descriptor"):
        aipc.Process.from_fd(r)


async def test_handle_on_a_non_child_and_closing() -> None:
    parent = aipc.Process.from_pid(os.getppid())
    assert parent.pid == os.getppid()
    fd = parent.fileno()
    assert not os.get_inheritable(fd)
    assert repr(parent) == f"<Process pid={os.getppid()} fd={fd} running>"
    assert parent.returncode is None
    assert parent.stdin is parent.stdout is parent.stderr is None
    await parent.aclose()
    assert parent.closed
    assert repr(parent) == f"<Process pid={os.getppid()} closed>"
    await parent.aclose()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        parent.fileno()
    with pytest.raises(anyio.ClosedResourceError):
        parent.send_signal(signal.SIGUSR1)
    with pytest.raises(anyio.ClosedResourceError):
        parent.getfd(0)
    with pytest.raises(anyio.ClosedResourceError):
        await parent.wait()


async def test_from_fd_takes_ownership_and_reads_the_pid() -> None:
    fd = os.pidfd_open(os.getppid())
    os.set_inheritable(fd, True)
    async with aipc.Process.from_fd(fd) as parent:
        assert parent.fileno() == fd
        assert parent.pid == os.getppid()
        assert not os.get_inheritable(fd)


async def test_from_fd_of_a_reaped_process() -> None:
    with popen("pass") as child:
        fd = os.pidfd_open(child.pid)
        child.wait()  # Popen reaps it: the fdinfo no longer names a pid
    async with aipc.Process.from_fd(fd) as gone:
        assert gone.pid == -1
        with anyio.fail_after(5):
            assert await gone.wait() is None
        assert repr(gone) == f"<Process pid=-1 fd={fd} exited>"


async def test_unclosed_handle_warns() -> None:
    handle = aipc.Process.from_pid(os.getppid())
    with pytest.warns(ResourceWarning, match="unclosed pidfd"):
        del handle  # the last reference: the finalizer runs here


# -- wait ---------------------------------------------------------------------


async def test_non_child_exit_is_seen_and_returns_none() -> None:
    # our child starts a grandchild (not our child) and reports its pid; the
    # grandchild waits on its stdin, a pipe from our child, so it cannot
    # outlive it
    code = """
        import subprocess, sys
        grandchild = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
        )
        print(grandchild.pid, flush=True)
        print(grandchild.wait(), flush=True)
    """
    async with child_process(code) as (proc, stdout):
        grandchild_pid = int(await read_line(stdout))
        async with aipc.Process.from_pid(grandchild_pid) as grandchild:
            assert "running" in repr(grandchild)
            grandchild.kill()
            with anyio.fail_after(5):
                assert await grandchild.wait() is None
                assert await grandchild.wait() is None  # the same again
            assert grandchild.returncode is None
            assert "exited" in repr(grandchild)
            with pytest.raises(ProcessLookupError, match="has exited"):
                grandchild.send_signal(signal.SIGUSR1)
            # its parent, not us, got the status: we never took it
            assert await read_line(stdout) == b"-9"
        with anyio.fail_after(5):
            assert await proc.wait() == 0


async def test_popen_child_status_is_read_without_reaping() -> None:
    with popen("import time; time.sleep(60)") as child:
        async with aipc.Process.from_pid(child.pid) as handle:
            handle.kill()
            with anyio.fail_after(1):
                assert await handle.wait() == -9
            assert handle.returncode == -9
            assert (
                repr(handle)
                == f"<Process pid={child.pid} fd={handle.fileno()} returncode=-9>"
            )
        # Popen still reaps it and gets the real status (it would say 0 if the
        # status had been taken from it)
        assert child.wait() == -9
    with popen("raise SystemExit(3)") as child:
        async with aipc.Process.from_pid(child.pid) as handle:
            with anyio.fail_after(5):
                assert await handle.wait() == 3
        assert child.wait() == 3


async def test_popen_child_reaped_by_popen_returns_none() -> None:
    with popen("pass") as child:
        async with aipc.Process.from_pid(child.pid) as handle:
            child.wait()
            with anyio.fail_after(5):
                assert await handle.wait() is None


async def test_killed_child_is_seen_within_a_second() -> None:
    async with aipc_child(SLEEPER) as (proc, stdout):
        assert await read_line(stdout) == b"ready"
        assert "running" in repr(proc)
        proc.kill()
        with anyio.fail_after(1):
            assert await proc.wait() == -9
        assert proc.returncode == -9
        with pytest.raises(ProcessLookupError, match="has exited"):
            proc.kill()


async def test_exit_status() -> None:
    code = "raise SystemExit(3)"
    async with await aipc.open_process(
        [sys.executable, "-c", code], stdin=None, stdout=None, stderr=None
    ) as proc:
        with anyio.fail_after(5):
            assert await proc.wait() == 3
            assert await proc.wait() == 3
        assert proc.returncode == 3
    assert proc.closed
    assert proc.returncode == 3
    assert await proc.wait() == 3  # known: still answered after aclose()


async def test_stdio_streams() -> None:
    code = "import sys; sys.stdout.write(sys.stdin.read().upper())"
    async with await aipc.open_process(
        [sys.executable, "-c", code], stderr=None
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        with anyio.fail_after(5):
            await proc.stdin.send(b"hello")
            await proc.stdin.aclose()
            assert b"".join([chunk async for chunk in proc.stdout]) == b"HELLO"
            assert await proc.wait() == 0


async def test_child_reaped_before_the_pidfd_falls_back_to_the_backend() -> None:
    # what open_process does when the backend's watcher reaps a fast child
    # before pidfd_open: no pidfd, and the status comes from the backend
    backend = await anyio.open_process(
        [sys.executable, "-c", "raise SystemExit(4)"],
        stdin=None,
        stdout=None,
        stderr=None,
    )
    with anyio.fail_after(5):
        await backend.wait()
    proc = aipc.Process(None, backend.pid, backend)
    async with proc:
        assert await proc.wait() == 4
        with pytest.raises(ProcessLookupError, match="before aipc could open a pidfd"):
            proc.fileno()
        with pytest.raises(ProcessLookupError):
            proc.send_signal(signal.SIGUSR1)
        assert repr(proc) == f"<Process pid={backend.pid} returncode=4>"


async def test_close_wakes_a_waiter() -> None:
    async with child_process(SLEEPER) as (proc, stdout):
        assert await read_line(stdout) == b"ready"
        handle = aipc.Process.from_pid(proc.pid)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await handle.wait()

                tg.start_soon(waiter)
                tg.start_soon(waiter)  # several tasks may wait
                await anyio.wait_all_tasks_blocked()
                await handle.aclose()


async def test_closing_a_spawned_child_gives_waiters_its_status() -> None:
    # aclose() closes the child's stdin, it exits, and a waiting task gets
    # the status rather than ClosedResourceError
    code = "import sys; sys.stdin.read(); raise SystemExit(5)"
    proc = await aipc.open_process(
        [sys.executable, "-c", code], stdout=None, stderr=None
    )
    got: list[int | None] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                got.append(await proc.wait())

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await proc.aclose()
    assert got == [5]
    assert proc.closed


async def test_cancelled_wait_leaves_the_handle_usable() -> None:
    async with aipc_child(SLEEPER) as (proc, stdout):
        assert await read_line(stdout) == b"ready"
        got: list[int | None] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    got.append(await proc.wait())

                cancelled = anyio.CancelScope()

                async def cancelled_waiter() -> None:
                    with cancelled:
                        await proc.wait()

                tg.start_soon(cancelled_waiter)
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                cancelled.cancel()  # the first waiter, on the pidfd, goes
                await anyio.wait_all_tasks_blocked()
                assert proc.returncode is None
                assert "running" in repr(proc)
                proc.kill()
        assert got == [-9]
        assert cancelled.cancelled_caught
        with anyio.CancelScope() as scope:
            scope.cancel()
            await proc.wait()  # a checkpoint first, even when the status is known
        assert scope.cancelled_caught


# -- signals ------------------------------------------------------------------

SIGNAL_CHILD = """
import os, signal, sys
from aipc._core import _sys
from aipc._core._fd import FdHandle
from tests._helpers import run_backend

SIGNALS = {signal.SIGUSR1, signal.SIGUSR2}
# blocked before any thread starts, so every one reaches the signalfd
signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

async def main():
    handle = FdHandle(_sys.signalfd(-1, SIGNALS), "signalfd")
    try:
        print("ready", flush=True)
        for _ in range(2):
            while True:
                try:
                    data = os.read(handle.fileno(), _sys.SIGNALFD_SIGINFO_SIZE)
                    break
                except BlockingIOError:
                    await handle.wait_readable()
            signo, code, pid, uid, status, value, err = (
                _sys.unpack_signalfd_siginfo(data, 0)
            )
            print(signo, code, pid, value, flush=True)
    finally:
        handle.close()

run_backend(main, sys.argv[1])
"""


async def test_send_signal_with_and_without_value(backend_id: str) -> None:
    async with aipc_child(SIGNAL_CHILD, args=[backend_id]) as (proc, stdout):
        assert await read_line(stdout) == b"ready"
        me = os.getpid()
        proc.send_signal(signal.SIGUSR1)
        line = await read_line(stdout)
        assert line == f"{signal.SIGUSR1} {_sys.SI_USER} {me} 0".encode()
        proc.send_signal(signal.SIGUSR2, -7)
        line = await read_line(stdout)
        assert line == f"{signal.SIGUSR2} {_sys.SI_QUEUE} {me} -7".encode()
        with anyio.fail_after(5):
            assert await proc.wait() == 0
        with pytest.raises(ProcessLookupError, match=f"process {proc.pid} has exited"):
            proc.send_signal(signal.SIGUSR1, 1)


async def test_send_signal_bad_input() -> None:
    async with aipc.Process.from_pid(os.getppid()) as parent:
        with pytest.raises(ValueError, match="signum=0 is out of range"):
            parent.send_signal(0)
        with pytest.raises(TypeError, match="signum must be an int, not str"):
            parent.send_signal("SIGUSR1")  # type: ignore[arg-type]
        with pytest.raises(aipc.LimitExceededError, match="value=2147483648"):
            parent.send_signal(signal.SIGUSR1, 2**31)
        with pytest.raises(TypeError, match="value must be an int or None, not float"):
            parent.send_signal(signal.SIGUSR1, 1.5)  # type: ignore[arg-type]


async def test_terminate() -> None:
    async with aipc_child(SLEEPER) as (proc, stdout):
        assert await read_line(stdout) == b"ready"
        proc.terminate()
        with anyio.fail_after(5):
            assert await proc.wait() == -signal.SIGTERM


# -- getfd --------------------------------------------------------------------

GETFD_CHILD = """
import os, sys
import aipc
from anyio.streams.buffered import BufferedByteReceiveStream
from tests._helpers import run_backend

r, w = os.pipe()

async def main():
    async with aipc.PipeReceiveStream.from_fd(r) as receive:
        print(w, flush=True)  # the parent takes this end with getfd
        line = await BufferedByteReceiveStream(receive).receive_until(b"\\n", 100)
        print(line.decode(), flush=True)

run_backend(main, sys.argv[1])
"""


async def test_getfd_borrows_a_child_pipe_end(backend_id: str) -> None:
    async with aipc_child(GETFD_CHILD, args=[backend_id]) as (proc, stdout):
        number = int(await read_line(stdout))
        fd = proc.getfd(number)
        assert not os.get_inheritable(fd)
        async with aipc.PipeSendStream.from_fd(fd) as send:
            await send.send(b"through getfd\n")
        assert await read_line(stdout) == b"through getfd"
        with anyio.fail_after(5):
            assert await proc.wait() == 0
        with pytest.raises(ProcessLookupError, match="has exited"):
            proc.getfd(0)


async def test_getfd_bad_input() -> None:
    async with aipc_child(SLEEPER) as (proc, stdout):
        assert await read_line(stdout) == b"ready"
        with pytest.raises(
            ValueError, match=f"fd 999 is not an open descriptor in process {proc.pid}"
        ):
            proc.getfd(999)
        with pytest.raises(TypeError, match="fd must be an int, not str"):
            proc.getfd("0")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="fd must be >= 0, got -1"):
            proc.getfd(-1)


PERMISSION_CHILD = """
import os, sys
import aipc
from tests._helpers import run_backend

async def main():
    # without ptrace access to the parent: another user (and not dumpable);
    # only now, with the backend loaded (nobody cannot read root's Python)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    async with aipc.Process.from_pid(os.getppid()) as parent:
        try:
            parent.getfd(0)
        except PermissionError as exc:
            print(exc, flush=True)

run_backend(main, sys.argv[1])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a process of another user")
async def test_getfd_without_ptrace_access(backend_id: str) -> None:
    async with aipc_child(PERMISSION_CHILD, args=[backend_id]) as (proc, stdout):
        line = (await read_line(stdout)).decode()
        assert line.startswith("[Errno 1] cannot take fd 0 of process")
        assert "needs ptrace access" in line
        assert "CAP_SYS_PTRACE" in line
        with anyio.fail_after(5):
            assert await proc.wait() == 0
