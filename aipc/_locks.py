"""File locks: whole-file ``flock(2)`` and byte-range OFD locks, awaited without
polling (Linux only).

Both kinds belong to an *open file description*, not to a process or a thread:
each lock object opens its path itself, so two objects exclude each other even
in one process, closing any other descriptor of the file drops nothing (the
trap of classic ``F_SETLK`` locks, which any close of the file in the process
releases), and the kernel releases the lock when the last descriptor of the
description goes away, including when the holder dies.

A blocked acquire waits in the kernel (``flock`` / ``F_OFD_SETLKW``) in a worker
thread through the blocking bridge, which interrupts it with a signal when the
task is cancelled and undoes an acquire that won the race. Nothing polls.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import ClassVar, Self

import anyio
from anyio.abc import AsyncResource

from ._core import _sys
from ._core._args import check_int, check_mode, fspath
from ._core._bridge import run_interruptible
from ._core._fd import FdHandle, checkpoint

__all__ = ["FileLock", "LockStatistics", "RangeLock"]

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


@dataclass(frozen=True)
class LockStatistics:
    """Counters of one lock object (this process's view; no syscall).

    Attributes:
        acquisitions: successful ``acquire()`` / ``acquire_nowait()`` calls.
        waits: ``acquire()`` calls that found the lock held elsewhere and
            waited in the kernel (cancelled ones included).
        cancelled_waits: of those, the ones cancelled (or ended by closing the
            object) before they returned.
    """

    acquisitions: int
    waits: int
    cancelled_waits: int


def _open(path: str, create: bool, mode: int) -> int:
    """Open ``path`` read-write, close-on-exec, creating it with exactly
    ``mode`` if ``create`` and it is missing; it must be a regular file."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY
    try:
        for attempt in range(3 if create else 1):
            if create:
                try:
                    # never more open than 0600 before it has its mode
                    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600 & mode)
                except FileExistsError:
                    pass
                else:
                    try:
                        os.fchmod(fd, mode)  # exactly, whatever the umask
                    except BaseException:
                        os.close(fd)
                        raise
                    break
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                # removed between our two opens: create it after all (a
                # dangling symbolic link gives up after a few rounds)
                if attempt == 2 or not create:
                    raise
                continue
            break
    except OSError as exc:
        why = exc.strerror
        if isinstance(exc, FileNotFoundError) and not create:
            why = f"{why}; create=False"
        elif isinstance(exc, IsADirectoryError):
            why = "it is a directory; a lock needs a regular file"
        elif isinstance(exc, PermissionError):
            why = f"{why}; a lock opens its file for reading and writing"
        raise type(exc)(
            exc.errno, f"cannot open path to lock it ({why})", path
        ) from None
    kind = _KINDS.get(stat.S_IFMT(os.fstat(fd).st_mode))
    if kind is not None:
        os.close(fd)
        raise ValueError(f"path {path!r} is {kind}; a lock needs a regular file")
    return fd


class _FileLockBase(AsyncResource):
    """What both kinds share: the state, the bridge, closing."""

    _what: ClassVar[str]

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, mode: int = 0o600
    ) -> None:
        p = fspath(path)
        check_mode(mode)
        self._path = p
        self._held: str | None = None  # "shared" / "exclusive" while we hold it
        self._busy = False  # a task is in acquire()
        self._wait_scope: anyio.CancelScope | None = None
        self._idle: anyio.Event | None = None
        self._closing = False
        self._acquisitions = self._waits = self._cancelled_waits = 0
        self._handle = FdHandle(_open(p, bool(create), mode), f"{self._what} on {p!r}")

    # the kernel calls, per kind: one attempt each

    def _lock(self, fd: int, shared: bool, wait: bool) -> None:
        raise NotImplementedError

    def _unlock(self, fd: int) -> None:
        raise NotImplementedError

    @property
    def path(self) -> str:
        """The path as given; open it yourself for I/O under the lock
        (``anyio.open_file(lock.path, ...)``: see docs/locks.md)."""
        return self._path

    @property
    def locked(self) -> bool:
        """Whether *this object* holds the lock (shared or exclusive)."""
        return self._held is not None

    @property
    def closed(self) -> bool:
        """Whether this object has been closed."""
        return self._closing or self._handle.closed

    def _check_acquire(self) -> int:
        if self.closed:
            raise anyio.ClosedResourceError
        if self._busy:
            raise anyio.BusyResourceError("acquiring")
        if self._held is not None:
            raise RuntimeError(
                f"this {type(self).__name__} already holds the lock ({self._held}); "
                "release() it first (to switch between shared and exclusive, "
                "release and acquire again: the change is not atomic)"
            )
        return self._handle.fd

    def acquire_nowait(self, *, shared: bool = False) -> None:
        """Take the lock if nobody else holds it in a conflicting way; never waits.

        ``shared=True`` takes a shared (read) lock, which others may hold at the
        same time; the default is exclusive.

        Raises:
            anyio.WouldBlock: another open file description (another process,
                or another lock object in this one) holds a conflicting lock.
            RuntimeError: this object already holds the lock.
            anyio.BusyResourceError: another task is in :meth:`acquire` on this
                object.
            anyio.ClosedResourceError: this object is closed.
        """
        fd = self._check_acquire()
        try:
            self._lock(fd, shared, False)
        except BlockingIOError:
            raise anyio.WouldBlock from None
        self._took(shared)

    async def acquire(self, *, shared: bool = False) -> None:
        """Wait until the lock is free of conflicting holders, then take it.

        ``shared=True`` takes a shared (read) lock, the default an exclusive one.
        An uncontended acquire is one non-blocking system call; a contended one
        waits in the kernel in a worker thread (no polling), which holds one
        token of anyio's default thread limiter while it waits. For a deadline,
        use a cancel scope: ``with anyio.fail_after(2): await lock.acquire()``.

        Raises:
            RuntimeError: this object already holds the lock.
            anyio.BusyResourceError: another task is in :meth:`acquire` on this
                object (give each task its own lock object).
            anyio.ClosedResourceError: this object is or gets closed (closing
                it ends a waiting acquire at once).

        **Cancellation:** the lock is not taken. A wait in the kernel is
        interrupted (the bridge signals the worker thread, see
        docs/locks.md); if the lock was granted at that very moment it is
        released again before the cancellation propagates. No thread is left
        waiting.
        """
        fd = self._check_acquire()
        self._busy = True
        try:
            await checkpoint()  # cancelled here: nothing taken
            if self.closed:
                raise anyio.ClosedResourceError
            try:
                self._lock(fd, shared, False)
            except BlockingIOError:
                await self._wait(fd, shared)
            self._took(shared)
        finally:
            self._busy = False

    async def _wait(self, fd: int, shared: bool) -> None:
        self._waits += 1
        self._idle = idle = anyio.Event()
        granted = False
        try:
            # close() cancels this scope instead of closing the fd under the
            # worker thread: the number could be reused by another file before
            # the thread makes its call, or before undo releases what it took
            with anyio.CancelScope() as scope:
                self._wait_scope = scope
                await run_interruptible(
                    partial(self._lock, fd, shared, True),
                    lambda _: self._unlock(fd),
                )
                granted = True
        except anyio.get_cancelled_exc_class():
            self._cancelled_waits += 1
            raise
        finally:
            self._wait_scope = None
            if self._closing:  # close() was called meanwhile: finish it
                if granted:  # just before the close; see close() for why
                    self._unlock(fd)
                self._handle.close()
            self._idle = None
            idle.set()
        if self._closing:
            self._cancelled_waits += 1
            raise anyio.ClosedResourceError

    def _took(self, shared: bool) -> None:
        self._held = "shared" if shared else "exclusive"
        self._acquisitions += 1

    def release(self) -> None:
        """Release the lock this object holds. Never blocks.

        Raises:
            RuntimeError: this object does not hold the lock.
            anyio.ClosedResourceError: this object is closed (which released
                the lock).
        """
        if self.closed:
            raise anyio.ClosedResourceError
        if self._held is None:
            raise RuntimeError(
                f"release() of a {type(self).__name__} that does not hold the lock"
            )
        self._held = None
        self._unlock(self._handle.fd)

    async def __aenter__(self) -> Self:
        """``async with lock:`` takes the lock exclusively (see :meth:`acquire`)
        and releases it on exit; it does not close the object."""
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if self._held is not None and not self.closed:
            self.release()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """``async with lock.shared():`` holds the lock shared for the block.

        **Cancellation:** as :meth:`acquire`: a cancelled entry takes nothing;
        the lock is released when the block is left, however it is left.
        """
        await self.acquire(shared=True)
        try:
            yield
        finally:
            if self._held is not None and not self.closed:
                self.release()

    def statistics(self) -> LockStatistics:
        """Counters of this object (no syscall)."""
        return LockStatistics(self._acquisitions, self._waits, self._cancelled_waits)

    def close(self) -> None:
        """Release the lock if held and close the file (idempotent).

        A task waiting in :meth:`acquire` on this object wakes with
        ``anyio.ClosedResourceError``; the descriptor is then closed as soon as
        its worker thread has returned (within about a millisecond), which
        :meth:`aclose` waits for.
        """
        if self.closed:
            return
        self._closing = True
        if self._held is not None:
            # Closing the last descriptor of the description would release it
            # too; unlocking first also covers a copy of the description that a
            # fork() without exec left in a child.
            self._held = None
            self._unlock(self._handle.fd)
        if self._wait_scope is not None:
            self._wait_scope.cancel()  # the waiting task closes the handle
        else:
            self._handle.close()

    async def aclose(self) -> None:
        """Release the lock if held and close the file (idempotent).

        **Cancellation:** the lock is released and the file closed even when
        the task is cancelled; if another task was waiting in :meth:`acquire`
        on this object, this waits (shielded) until its worker thread has
        returned and the file is closed.
        """
        self.close()
        idle = self._idle
        with anyio.CancelScope(shield=True):
            if idle is not None:
                await idle.wait()
            await checkpoint()

    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        if self.closed:
            state = "closed"
        else:
            state = f"{self._held or 'unlocked'} fd={self._handle.fd}"
        return (
            f"<{type(self).__name__} {self._path!r}{self._describe()} {state} "
            f"acquisitions={self._acquisitions}>"
        )


class FileLock(_FileLockBase):
    """A whole-file lock (``flock(2)``), shared or exclusive, awaitable.

    ``FileLock(path)`` opens ``path`` read-write and close-on-exec, creating it
    with exactly ``mode`` (0600 by default) if it is missing and ``create`` is
    true. The object owns that descriptor, its own open file description: two
    ``FileLock`` objects exclude each other like two processes do, even in one
    process. The file is never removed (removing a lock file that others may
    have open breaks the exclusion: they would lock another inode).

    ``await acquire(shared=False)`` waits for the lock without polling,
    ``acquire_nowait()`` tries once, ``release()`` releases.
    ``async with lock:`` holds it exclusively for the block and
    ``async with lock.shared():`` shared; unlike a stream's, this ``async with``
    does not close the object: close it with :meth:`aclose` (or
    ``contextlib.aclosing``), which releases the lock. The kernel releases it
    too when the holder dies, however it dies.

    Raises (constructor): ``FileNotFoundError``, ``PermissionError``,
    ``IsADirectoryError`` (``OSError`` subclasses naming the path) when the path
    cannot be opened; ``ValueError`` when it is not a regular file or
    ``mode`` is outside 0o777; ``TypeError`` for a path that is not a str.

    A ``FileLock`` and a :class:`RangeLock` on the same file do not see each
    other on local filesystems: use one kind per file.
    """

    _what = "file lock"

    def _lock(self, fd: int, shared: bool, wait: bool) -> None:
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if not wait:
            op |= fcntl.LOCK_NB
        _sys.flock(fd, op)

    def _unlock(self, fd: int) -> None:
        _sys.flock(fd, fcntl.LOCK_UN)


class RangeLock(_FileLockBase):
    """A byte-range lock on a file (open-file-description ``fcntl`` lock).

    Locks ``length`` bytes from ``start``; ``length=0`` (the default, with
    ``start=0``: the whole file) means from ``start`` to the end of the file
    and beyond, however far it grows. Ranges that do not overlap do not
    exclude each other. Otherwise the same object as :class:`FileLock`:
    ``acquire`` / ``acquire_nowait`` / ``release``, ``async with lock:``
    (exclusive) and ``async with lock.shared():``, released on close and when
    the holder dies.

    These are ``F_OFD_SETLK`` / ``F_OFD_SETLKW`` locks, never classic
    ``F_SETLK`` ones (which any close of the file anywhere in the process
    releases): opening and closing the same file elsewhere in the program, for
    example to read it, leaves this lock alone.

    Raises (constructor): as :class:`FileLock`, and ``ValueError`` for a
    negative ``start`` or ``length`` or a range past the largest file offset
    (2**63 - 1); ``TypeError`` if they are not ints.
    """

    _what = "range lock"

    def __init__(
        self,
        path: str | os.PathLike[str],
        start: int = 0,
        length: int = 0,
        *,
        create: bool = True,
        mode: int = 0o600,
    ) -> None:
        check_int("start", start)
        check_int("length", length)
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if length < 0:
            raise ValueError(
                f"length must be >= 0 (0: to the end of the file), got {length}"
            )
        if start + max(length, 1) - 1 > _sys.OFF_MAX:
            raise ValueError(
                f"start + length must be at most 2**63 (the largest file offset is "
                f"2**63 - 1), got start={start}, length={length}"
            )
        self._start = start
        self._length = length
        super().__init__(path, create=create, mode=mode)

    @property
    def start(self) -> int:
        """The first byte of the range."""
        return self._start

    @property
    def length(self) -> int:
        """The number of bytes in the range; 0 means to the end and beyond."""
        return self._length

    def _lock(self, fd: int, shared: bool, wait: bool) -> None:
        _sys.ofd_lock(
            fd,
            fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK,
            fcntl.F_RDLCK if shared else fcntl.F_WRLCK,
            self._start,
            self._length,
        )

    def _unlock(self, fd: int) -> None:
        _sys.ofd_lock(fd, fcntl.F_OFD_SETLK, fcntl.F_UNLCK, self._start, self._length)

    def _describe(self) -> str:
        return f" start={self._start} length={self._length}"
