"""Process handles through pidfds, and spawning with hand-off (Linux only).

A pidfd (``pidfd_open(2)``, Linux 5.3+) names one process for as long as the
descriptor is open: it polls readable once that process has exited, for any
process, not only our children, and without SIGCHLD (so it works the same
whatever owns SIGCHLD: asyncio's child watcher thread, libuv under uvloop,
trio). Signals sent through it can never hit another process that was given
the same pid after this one was reaped.

aipc never *reaps* a process. Reaping (``waitpid`` without ``WNOWAIT``) belongs
to whoever started the child: the asyncio child watcher, libuv, trio,
``subprocess.Popen``; taking the status from under them makes them report a
wrong exit code or fail. The exit status is read with ``WNOWAIT``, which leaves
the zombie for its owner.
"""

from __future__ import annotations

import errno
import os
import select
import signal
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from typing import IO, Any, Self

import anyio
from anyio.abc import AsyncResource, ByteReceiveStream, ByteSendStream
from anyio.abc import Process as _BackendProcess

from . import _handoff
from ._core import _sys
from ._core._fd import FdHandle, checkpoint
from ._signals import _check_signal, _check_value

__all__ = ["Process", "open_process"]

StrOrBytesPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]
_PIPE = -1  # subprocess.PIPE


def _check_fd_number(fd: object, argument: str) -> int:
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"{argument} must be an int, not {type(fd).__name__}")
    if fd < 0:
        raise ValueError(f"{argument} must be >= 0, got {fd}")
    return fd


def _exit_status(pidfd: int) -> int | None:
    """The exit status of our exited child behind ``pidfd``, without reaping it.

    ``None`` if the process is not our child, or its owner reaped it already.
    """
    try:
        # WNOWAIT: peek, leave the zombie to whoever reaps it (see the module)
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None:
        # still running: not reached after the pidfd polled readable, since
        # the kernel marks the zombie before it wakes pidfd pollers
        return None
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status  # CLD_KILLED, CLD_DUMPED: the signal number


def _has_exited(pidfd: int) -> bool:
    """Whether the process behind ``pidfd`` has exited (one poll syscall)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _fdinfo_pid(fd: int) -> int:
    """The pid a pidfd names, from its fdinfo; -1 once the process is reaped
    (and 0 when it lives in a pid namespace we cannot see)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _open_child_pidfd(pid: int) -> FdHandle | None:
    """A pidfd on our new child ``pid``, or None if the backend reaped it first."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        # a fast child, already reaped by the backend's watcher (asyncio's
        # thread or libuv reap as soon as it exits): its status is the backend's
        return None
    # Reaped just before pidfd_open, the pid could even name a new, unrelated
    # process already. waitid on the pidfd answers only for our own children,
    # so a pidfd that passes names the child we started.
    handle = FdHandle(fd, "pidfd")
    try:
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        handle.close()
        return None
    return handle


def _ptrace_hint() -> str:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = f"; Yama ptrace_scope is {f.read().strip()} here"
    except OSError:
        scope = ""
    return (
        "pidfd_getfd needs ptrace access to the process: the same user and a "
        "Yama ptrace_scope that allows it (0, or 1 for descendants; see "
        f"/proc/sys/kernel/yama/ptrace_scope{scope}), or CAP_SYS_PTRACE"
    )


class Process(AsyncResource):
    """A handle on a process through a pidfd: wait for its exit, signal it.

    Get one with :meth:`from_pid` (any process), :meth:`from_fd` (a pidfd, for
    example handed over by a parent) or :func:`open_process` (a new child).
    The handle owns its pidfd (close-on-exec) and closes it on ``aclose()``;
    a handle garbage-collected while open closes it with a ``ResourceWarning``.
    A pidfd names one process, never a later one given the same pid, so
    :meth:`send_signal` cannot hit the wrong process.

    aipc never reaps a process: :meth:`wait` reads a child's status without
    taking it from the backend (or ``subprocess.Popen``) that owns it. For a
    process that is not our child it only learns *that* it exited, and returns
    ``None``.
    """

    def __init__(
        self,
        _handle: FdHandle | None,
        _pid: int,
        _process: _BackendProcess | None = None,
    ) -> None:
        # private: use from_pid, from_fd or open_process
        self._handle = _handle
        self._pid = _pid
        self._process = _process
        self._returncode: int | None = None
        self._exited = False  # seen exiting, status unknown (not our child)
        self._closed = False
        self._waiting: anyio.Event | None = None

    # -- construction -------------------------------------------------------

    @classmethod
    def from_pid(cls, pid: int) -> Self:
        """A handle on the running process ``pid`` (``pidfd_open``).

        Any process works, not only children; from then on the handle names
        that process even if the pid is reused after it exits.

        Raises ``TypeError`` if ``pid`` is not an int, ``ValueError`` if it is
        not positive, and ``ProcessLookupError`` if no such process exists.
        """
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise TypeError(f"pid must be an int, not {type(pid).__name__}")
        if pid <= 0:
            raise ValueError(
                f"pid must be > 0, got {pid} (a pidfd names one process, not a "
                "process group)"
            )
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise ProcessLookupError(
                errno.ESRCH, f"no process with pid {pid}"
            ) from None
        # pidfd_open always sets close-on-exec
        return cls(FdHandle(fd, "pidfd"), pid)

    @classmethod
    def from_fd(cls, fd: int) -> Self:
        """Take ownership of ``fd``, a pidfd, and wrap it.

        The pid is read from ``/proc/self/fdinfo``; it is -1 if the process had
        already been reaped (then :meth:`wait` returns at once). The fd is made
        close-on-exec. On error ``fd`` stays the caller's.

        Raises ``TypeError`` if ``fd`` is not an int and ``ValueError`` if it is
        not an open pidfd.
        """
        return cls._from_fd(fd, None)

    @classmethod
    def _from_fd(cls, fd: int, pid_hint: object) -> Self:
        _check_fd_number(fd, "fd")
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            raise ValueError(f"fd {fd} is not an open file descriptor") from None
        if target != "anon_inode:[pidfd]":
            raise ValueError(f"fd {fd} is not a pidfd (it is {target})")
        pid = _fdinfo_pid(fd)
        if pid <= 0 and isinstance(pid_hint, int) and pid_hint > 0:
            pid = pid_hint
        os.set_inheritable(fd, False)
        return cls(FdHandle(fd, "pidfd"), pid)

    # -- state --------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The process id (-1 if the process was reaped before ``from_fd``)."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """The exit status once known, else ``None``.

        The exit code, or ``-N`` if signal ``N`` killed the process, as in
        ``subprocess``. Known after :meth:`wait` returned it; for a process
        from :func:`open_process` also as soon as the backend has seen the
        exit. Always ``None`` for a process that is not our child.
        """
        if self._returncode is None and self._process is not None:
            self._returncode = self._process.returncode
        return self._returncode

    @property
    def closed(self) -> bool:
        """Whether this handle has been closed."""
        return self._closed

    @property
    def stdin(self) -> ByteSendStream | None:
        """The child's stdin (``stdin=PIPE`` in :func:`open_process`), else None."""
        return None if self._process is None else self._process.stdin

    @property
    def stdout(self) -> ByteReceiveStream | None:
        """The child's stdout (``stdout=PIPE`` in :func:`open_process`), else None."""
        return None if self._process is None else self._process.stdout

    @property
    def stderr(self) -> ByteReceiveStream | None:
        """The child's stderr (``stderr=PIPE`` in :func:`open_process`), else None."""
        return None if self._process is None else self._process.stderr

    def _pidfd(self) -> int:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._handle is None:
            raise ProcessLookupError(
                errno.ESRCH,
                f"process {self._pid} exited and was reaped before aipc could "
                "open a pidfd for it",
            )
        return self._handle.fileno()

    def fileno(self) -> int:
        """The pidfd (owned by this handle; do not close it).

        Raises ``ClosedResourceError`` once closed, and ``ProcessLookupError``
        for a child from :func:`open_process` that exited and was reaped before
        its pidfd could be opened.
        """
        return self._pidfd()

    # -- waiting ------------------------------------------------------------

    async def wait(self) -> int | None:
        """Wait until the process exits; return its status if it is our child.

        Returns the exit code, or ``-N`` if signal ``N`` killed it, for our own
        child (read without reaping it: the backend or ``subprocess.Popen``
        that started it still reaps it). For a process that is not our child,
        or a child its owner reaped before this looked, returns ``None``: the
        kernel tells only its parent the status. A process from
        :func:`open_process` always gets its status (from the backend, if it
        reaped first). Waiting again returns the same at once. Several tasks
        may wait at the same time.

        Raises ``ClosedResourceError`` if the handle is closed before the
        status is known, also when that happens while this waits (for a child
        from :func:`open_process`, whose ``aclose()`` waits for its exit, the
        waiter gets the status instead).

        **Cancellation:** nothing happens to the process or the handle; wait
        again later.
        """
        await checkpoint()
        while True:
            if self._returncode is not None:
                return self._returncode
            if self._exited:
                return None
            event = self._waiting
            if event is None:
                break
            await event.wait()  # another task is waiting on the pidfd: share it
        self._waiting = event = anyio.Event()
        try:
            return await self._wait_for_exit()
        finally:
            self._waiting = None
            event.set()

    async def _wait_for_exit(self) -> int | None:
        if self._closed:
            raise anyio.ClosedResourceError
        handle = self._handle
        if handle is None:
            return await self._backend_wait()
        try:
            await handle.wait_readable()
        except anyio.ClosedResourceError:
            if self._returncode is not None:
                return self._returncode  # aclose() of a spawned child set it
            raise
        fd = handle.fd
        if fd < 0:  # closed after the readiness was delivered
            if self._returncode is not None:
                return self._returncode
            raise anyio.ClosedResourceError
        status = _exit_status(fd)
        if status is not None:
            self._returncode = status
            return status
        if self._process is not None:
            # our child, reaped by the backend first: it has the status
            return await self._backend_wait()
        self._exited = True
        return None

    async def _backend_wait(self) -> int:
        assert self._process is not None
        returncode = await self._process.wait()
        self._returncode = returncode
        return returncode

    # -- signals ------------------------------------------------------------

    def send_signal(self, signum: int, value: int | None = None) -> None:
        """Send ``signum`` through the pidfd; with ``value``, as ``sigqueue``.

        A pidfd names this process only, so a pid reused after it was reaped is
        never hit. With ``value`` (a signed 32-bit int) the signal is queued
        with ``si_code`` ``SI_QUEUE`` and the value, which a receiver reads from
        its ``siginfo`` (``aipc``'s signal receivers, ``signalfd``).

        Raises ``ProcessLookupError`` once the process has exited (even while
        it is a zombie nobody has reaped yet), ``ClosedResourceError`` if the
        handle is closed, ``PermissionError`` if this process may not signal
        it, ``TypeError`` / ``ValueError`` for a bad signal number or value
        (:class:`LimitExceededError` outside 32 bits), and ``BlockingIOError``
        when its queue of pending signals is full (``RLIMIT_SIGPENDING``).
        """
        sig = _check_signal(signum)
        payload = _check_value(value)
        fd = self._pidfd()
        # the kernel accepts (and drops) a signal to a zombie: say it is gone
        if self._returncode is not None or self._exited or _has_exited(fd):
            raise ProcessLookupError(errno.ESRCH, f"process {self._pid} has exited")
        _sys.pidfd_send_signal(fd, sig, payload)

    def terminate(self) -> None:
        """Send SIGTERM (see :meth:`send_signal` for what it raises)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL (see :meth:`send_signal` for what it raises)."""
        self.send_signal(signal.SIGKILL)

    # -- descriptors --------------------------------------------------------

    def getfd(self, fd: int) -> int:
        """Duplicate the process's descriptor ``fd`` into this process.

        Returns a new descriptor, close-on-exec and owned by the caller, on the
        same open file description as the process's ``fd`` (wrap it with an
        aipc ``from_fd``, or ``os.close`` it). ``pidfd_getfd(2)``, Linux 5.6+.

        Raises ``PermissionError`` without ptrace access to the process (the
        same user and a Yama ``ptrace_scope`` that allows it, or
        ``CAP_SYS_PTRACE``), ``ValueError`` if ``fd`` is not open in the
        process, ``ProcessLookupError`` once it has exited, and
        ``ClosedResourceError`` if the handle is closed.
        """
        _check_fd_number(fd, "fd")
        pidfd = self._pidfd()
        try:
            return _sys.pidfd_getfd(pidfd, fd)
        except PermissionError as exc:
            raise PermissionError(
                errno.EPERM,
                f"cannot take fd {fd} of process {self._pid}: {_ptrace_hint()}",
            ) from exc
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.ESRCH):
                raise
            # an exited process has no descriptors left: EBADF for any number
            if exc.errno == errno.ESRCH or _has_exited(pidfd):
                raise ProcessLookupError(
                    errno.ESRCH, f"process {self._pid} has exited"
                ) from exc
            raise ValueError(
                f"fd {fd} is not an open descriptor in process {self._pid}"
            ) from exc

    # -- hand-off and closing -----------------------------------------------

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, object]]:
        return "process", (self._pidfd(),), {"pid": self._pid}

    async def aclose(self) -> None:
        """Close the handle (idempotent); for a child, first wait for its exit.

        A handle from :meth:`from_pid` or :meth:`from_fd` just closes its pidfd:
        the process is untouched. A child from :func:`open_process` is closed
        as anyio closes a process: its pipes to the child are closed, then this
        waits for the child to exit, and then the pidfd is closed.

        **Cancellation:** the pidfd is always closed. If the wait for a child's
        exit is cancelled, the child is killed and reaped first (as anyio does).
        """
        if self._closed:
            await checkpoint()
            return
        if self._process is None:
            self._close_pidfd()
            await checkpoint()
            return
        try:
            await self._process.aclose()
        finally:
            if self._returncode is None:  # for wait() after the close
                self._returncode = self._process.returncode
            self._close_pidfd()

    def _close_pidfd(self) -> None:
        self._closed = True
        if self._handle is not None:
            self._handle.close()

    def __repr__(self) -> str:
        parts = [f"pid={self._pid}"]
        handle = self._handle
        if self._closed:
            parts.append("closed")
        elif handle is not None:
            parts.append(f"fd={handle.fd}")
        returncode = self._returncode
        if returncode is not None:
            parts.append(f"returncode={returncode}")
        elif self._exited:
            parts.append("exited")
        elif not self._closed and handle is not None:
            parts.append("exited" if _has_exited(handle.fd) else "running")
        return f"<{type(self).__name__} {' '.join(parts)}>"


async def open_process(
    command: StrOrBytesPath | Sequence[StrOrBytesPath],
    *,
    handoff: Mapping[str, object] | None = None,
    stdin: int | IO[Any] | None = _PIPE,
    stdout: int | IO[Any] | None = _PIPE,
    stderr: int | IO[Any] | None = _PIPE,
    cwd: StrOrBytesPath | None = None,
    env: Mapping[str, str] | None = None,
    start_new_session: bool = False,
    pass_fds: Sequence[int] = (),
    user: str | int | None = None,
    group: str | int | None = None,
    extra_groups: Iterable[str | int] | None = None,
    umask: int = -1,
) -> Process:
    """Start a child process (``anyio.open_process``) with a pidfd handle on it.

    The keyword arguments after ``handoff`` are ``anyio.open_process``'s (a str
    ``command`` runs through the shell); ``stdin``, ``stdout`` and ``stderr``
    default to pipes, exposed as the anyio streams :attr:`Process.stdin` and so
    on. ``async with await aipc.open_process(...) as process:`` closes it as
    anyio does: closes the pipes, waits for the exit (killing the child if that
    wait is cancelled), then closes the pidfd.

    ``handoff`` maps names to aipc objects to give the child: pipe ends,
    ``EventFd`` and ``Process`` handles. Their descriptors are added to
    ``pass_fds`` (they keep their numbers in the child) and the environment
    variable ``AIPC_HANDOFF`` describes them (added to a copy of ``env``, or of
    ``os.environ`` if ``env`` is None); the child rebuilds each with
    :func:`aipc.inherit`. The parent keeps its objects open: close the parent's
    copy of an end the child uses (say the write end of the child's output
    pipe) right after this returns, or the other side never sees end of stream.

    Raises ``TypeError`` for a handoff object that cannot be handed off or a
    name that is not a str, ``ValueError`` for an empty name or one descriptor
    offered twice, ``ClosedResourceError`` for a closed object (nothing is
    started in these cases), and what ``anyio.open_process`` raises
    (``FileNotFoundError`` for a missing program).

    **Cancellation:** as ``anyio.open_process``: the child is started or not.
    """
    if handoff is not None:
        fds, payload = _handoff.encode(handoff)
        env = dict(os.environ if env is None else env)
        env[_handoff.ENV_VAR] = payload
        pass_fds = [*pass_fds, *(fd for fd in fds if fd not in pass_fds)]
    process = await anyio.open_process(
        command,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=env,
        start_new_session=start_new_session,
        pass_fds=pass_fds,
        user=user,
        group=group,
        extra_groups=extra_groups,
        umask=umask,
    )
    try:
        handle = _open_child_pidfd(process.pid)
    except BaseException:
        # (EMFILE, say): do not leave a child nobody has a handle on
        with anyio.CancelScope(shield=True):
            with suppress(ProcessLookupError):
                process.kill()
            await process.aclose()
        raise
    return Process(handle, process.pid, process)
