"""Semaphores shared between processes: POSIX named (``sem_open``) and System V
(``semget``), awaited through the blocking bridge (Linux only).

Neither kind has a descriptor to poll, so a blocked ``acquire()`` runs
``sem_wait`` / ``semop`` in a worker thread under the bridge's contract
(:func:`aipc._core._bridge.run_interruptible`): a cancelled acquire is
interrupted with ``SIGURG`` before it takes the token, or, if it took it
anyway, the token is released again. A token is never lost or leaked. The
pollable kind, an eventfd in semaphore mode, is :class:`aipc.EventFd`.

An acquire first tries without blocking in the task itself (``sem_trywait``,
``IPC_NOWAIT``), so an uncontended acquire costs no thread.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any, Self

import anyio
import anyio.lowlevel
import posix_ipc
import sysv_ipc
from anyio.abc import AsyncResource

from ._core import _registry
from ._core._bridge import run_interruptible
from ._core._fd import checkpoint
from ._sysv import check_int, check_key, check_mode, interrupted, translate_error

__all__ = [
    "PosixSemaphore",
    "SemaphoreStatistics",
    "SysVSemaphore",
    "attach_posix_semaphore",
    "attach_sysv_semaphore",
    "create_posix_semaphore",
    "create_sysv_semaphore",
]

#: a POSIX semaphore's file in /dev/shm is "sem.<name without the slash>"
#: (see _registry.posix_semaphore_path), and must fit NAME_MAX
_NAME_MAX = 255 - len("sem.") + 1  # the leading slash is not stored


@dataclass(frozen=True)
class SemaphoreStatistics:
    """Counters of one semaphore handle (this process's view, no syscall).

    Attributes:
        acquires: ``acquire()`` / ``acquire_nowait()`` calls that took a token.
        releases: ``release()`` calls.
        waits: acquires that found no token and waited in a worker thread.
        cancelled: waits that were cancelled (or ended by ``aclose()``); each
            left the token where it was.
    """

    acquires: int
    releases: int
    waits: int
    cancelled: int


def _check_initial(value: object, limit: int, limit_name: str) -> int:
    value = check_int("initial_value", value)
    if not 0 <= value <= limit:
        raise ValueError(
            f"initial_value must be between 0 and {limit} ({limit_name}), got {value}"
        )
    return value


class _BridgedSemaphore(AsyncResource):
    """What both kinds share: the try-then-bridge acquire, close that waits for
    the worker threads, statistics. Subclasses give the three kernel calls."""

    def __init__(self) -> None:
        self._closed = False
        self._closing = False
        self._inflight = 0
        self._idle: anyio.Event | None = None
        self._scopes: set[anyio.CancelScope] = set()
        self._acquires = 0
        self._releases = 0
        self._waits = 0
        self._cancelled = 0

    # --- the kernel calls, one per kind -----------------------------------

    def _try_acquire(self) -> bool:  # pragma: no cover - abstract
        """Take a token without blocking; False if there is none."""
        raise NotImplementedError

    def _blocking_acquire(self) -> None:  # pragma: no cover - abstract
        """One blocking attempt; ``InterruptedError`` on EINTR (the bridge's
        calling convention)."""
        raise NotImplementedError

    def _release(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close_handle(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- public ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether this handle is closed."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise anyio.ClosedResourceError

    async def acquire(self) -> None:
        """Take one token, waiting until one is free.

        An uncontended acquire takes the token in the task; a contended one
        waits in a worker thread (anyio's default thread limiter counts it).

        Raises ``anyio.ClosedResourceError`` if this handle is closed, also
        while waiting.

        **Cancellation:** the token is not taken. A wait in the worker thread
        is interrupted before it takes the token; if the kernel handed the
        token over at the same instant, it is released again before the
        cancellation propagates, so it goes to the next waiter. No thread
        stays blocked.
        """
        self._check_open()
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._try_acquire():
            self._acquires += 1
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return
        self._waits += 1
        self._inflight += 1
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await run_interruptible(self._blocking_acquire, self._undo)
        except anyio.get_cancelled_exc_class():
            self._cancelled += 1
            raise
        finally:
            self._scopes.discard(scope)
            self._inflight -= 1
            if self._inflight == 0 and self._idle is not None:
                self._idle.set()
        if scope.cancelled_caught:
            # aclose() cancelled the wait; the bridge gave back a token it won
            self._cancelled += 1
            raise anyio.ClosedResourceError
        if self._closing:
            # aclose() started after the token was ours: give it back, the
            # handle is still open until every wait has returned
            self._release()
            self._cancelled += 1
            raise anyio.ClosedResourceError
        self._acquires += 1

    def _undo(self, _: None) -> None:
        self._release()

    def acquire_nowait(self) -> None:
        """Take one token if one is free, else raise ``anyio.WouldBlock``."""
        self._check_open()
        if not self._try_acquire():
            raise anyio.WouldBlock
        self._acquires += 1

    def release(self) -> None:
        """Give one token back (never blocks, not a checkpoint).

        Any process may release, whether or not it acquired: a kernel semaphore
        has no owner. Raises ``anyio.ClosedResourceError`` if this handle is
        closed.
        """
        self._check_open()
        self._release()
        self._releases += 1

    async def __aenter__(self) -> Self:
        """``async with sem:`` acquires a token (see :meth:`acquire`); leaving
        releases it. It does not close the handle: use ``aclose()``."""
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Release the token taken by ``__aenter__``."""
        self.release()

    def statistics(self) -> SemaphoreStatistics:
        """Counters of this handle (no syscall)."""
        return SemaphoreStatistics(
            self._acquires, self._releases, self._waits, self._cancelled
        )

    def _before_close(self) -> None:
        """Remove the kernel object if the creator asked for it."""

    async def aclose(self) -> None:
        """Close this handle (idempotent), even when cancelled.

        Tasks of this process waiting in :meth:`acquire` on this handle get
        ``anyio.ClosedResourceError`` first (their worker threads are
        interrupted and have returned when this returns). Tokens held stay
        taken: closing is not releasing.
        """
        if not self._closed:
            self._closing = True
            with anyio.CancelScope(shield=True):
                while self._inflight:
                    self._idle = anyio.Event()
                    for scope in self._scopes:
                        scope.cancel()
                    await self._idle.wait()
            if not self._closed:
                self._closed = True
                try:
                    self._before_close()
                finally:
                    self._close_handle()
        await checkpoint()

    def close(self) -> None:
        """Close this handle synchronously (idempotent).

        Raises ``anyio.BusyResourceError`` while a task waits in
        :meth:`acquire`: use ``aclose()``, which ends those waits first.
        """
        if self._closed:
            return
        if self._inflight:
            raise anyio.BusyResourceError("waiting in acquire() on this semaphore")
        self._closed = True
        try:
            self._before_close()
        finally:
            self._close_handle()


# --- POSIX named semaphores -------------------------------------------------


def _check_posix_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if (
        len(name) < 2
        or not name.startswith("/")
        or "/" in name[1:]
        or "\0" in name
        or name in ("/.", "/..")
    ):
        raise ValueError(
            f"name must be '/' followed by 1 to {_NAME_MAX - 1} characters with "
            f"no '/' or NUL, got {name!r}"
        )
    if len(os.fsencode(name)) > _NAME_MAX:
        raise ValueError(
            f"name must be at most {_NAME_MAX} bytes (NAME_MAX less the 'sem.' "
            f"prefix), got {len(os.fsencode(name))}"
        )
    return name


_posix_path = _registry.posix_semaphore_path


def _posix_error(exc: Exception, name: str, *, creating: bool) -> Exception:
    # ExistentialError is EEXIST when creating (O_EXCL), ENOENT when attaching
    if isinstance(exc, posix_ipc.ExistentialError):
        if creating:
            return FileExistsError(
                errno.EEXIST, "a POSIX semaphore with this name exists", name
            )
        return FileNotFoundError(errno.ENOENT, "no POSIX semaphore named", name)
    if isinstance(exc, posix_ipc.PermissionsError):
        return PermissionError(errno.EACCES, "permission denied", name)
    return exc


class PosixSemaphore(_BridgedSemaphore):
    """A POSIX named semaphore (``sem_open``), as returned by
    :func:`create_posix_semaphore` and :func:`attach_posix_semaphore`.

    The name and the handle have two lifetimes: ``aclose()`` closes this
    process's handle; the name stays (in ``/dev/shm``) until :meth:`unlink`,
    or ``unlink_on_close=True`` chosen by the creator. ``owned`` is True for
    the handle that created the name. Any process can attach by name.

    **Crash safety:** the kernel does *not* give back the tokens of a process
    that dies holding them (there is no undo for POSIX semaphores); use
    :class:`SysVSemaphore` (SEM_UNDO) when holders may crash.
    """

    def __init__(
        self,
        sem: Any,
        name: str,
        identity: tuple[int, int] | None,
        *,
        unlink_on_close: bool = False,
    ) -> None:
        super().__init__()
        self._sem = sem
        self._name = name
        self._identity = identity
        self.unlink_on_close = unlink_on_close

    @property
    def name(self) -> str:
        """The semaphore's name ("/something")."""
        return self._name

    @property
    def owned(self) -> bool:
        """Whether this handle created the name and has not unlinked it."""
        return self._identity is not None

    @property
    def value(self) -> int:
        """The number of free tokens now (``sem_getvalue``; 0 while waiters
        queue). Already stale when it returns: for display and tests."""
        self._check_open()
        return int(self._sem.value)

    def _try_acquire(self) -> bool:
        try:
            self._sem.acquire(0)
        except posix_ipc.BusyError:
            return False
        return True

    def _blocking_acquire(self) -> None:
        try:
            self._sem.acquire()
        except posix_ipc.SignalError:
            # sem_wait failed with EINTR: the bridge's interrupt, or a stray
            raise InterruptedError from None

    def _release(self) -> None:
        self._sem.release()

    def _close_handle(self) -> None:
        self._sem.close()

    def unlink(self) -> bool:
        """Remove the name if this handle created it and the name still refers
        to that semaphore. Returns True if it was removed.

        Processes that have it open keep using it; a later
        ``create_posix_semaphore`` of the same name makes a new one. Also
        forgets the registry record. Raises
        ``anyio.ClosedResourceError`` once this handle is closed (while it is
        open, the semaphore it created cannot have been replaced by another
        with the same inode).
        """
        if self._closed:
            raise anyio.ClosedResourceError
        return self._unlink()

    def _unlink(self) -> bool:
        identity = self._identity
        if identity is None:
            return False
        self._identity = None
        try:
            return self._unlink_if(identity)
        finally:
            # a record of a newer semaphore under the name is not ours to drop
            _registry.unregister("posix-semaphore", self._name, identity)

    def _unlink_if(self, identity: tuple[int, int]) -> bool:
        try:
            st = os.lstat(_posix_path(self._name))
        except FileNotFoundError:
            return False
        if (st.st_dev, st.st_ino) != identity:
            return False
        try:
            posix_ipc.unlink_semaphore(self._name)
        except posix_ipc.ExistentialError:
            return False
        return True

    def _before_close(self) -> None:
        if self.unlink_on_close:
            self._unlink()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"value={self._sem.value}"
        owner = " owned" if self.owned else ""
        return f"<PosixSemaphore {self._name!r}{owner} {state}>"


def create_posix_semaphore(
    name: str,
    *,
    initial_value: int = 1,
    mode: int = 0o600,
    exist_ok: bool = False,
    unlink_on_close: bool = False,
) -> PosixSemaphore:
    """Create the POSIX named semaphore ``name`` with ``initial_value`` tokens
    (mode 0600 by default, exactly, whatever the umask). Never blocks.

    ``name`` is "/" followed by up to 251 characters without "/". Returns an
    owned :class:`PosixSemaphore`; the name is removed only by
    :meth:`PosixSemaphore.unlink` or, with ``unlink_on_close=True``, when it
    is closed. The creation is recorded in aipc's registry, so that
    ``aipc clean`` can remove the name if this process dies without unlinking
    it. With ``exist_ok=True`` an existing semaphore of that name is
    attached to instead (not owned, ``initial_value`` and ``mode`` unused).

    Raises:
        FileExistsError: the name exists and ``exist_ok`` is False.
        PermissionError: it exists and this user may not open it.
        ValueError / TypeError: a bad name, mode or initial value (at most
            ``SEM_VALUE_MAX``).
    """
    name = _check_posix_name(name)
    initial_value = _check_initial(
        initial_value, posix_ipc.SEMAPHORE_VALUE_MAX, "SEM_VALUE_MAX"
    )
    mode = check_mode(mode)
    try:
        # sem_open applies the umask; the mode is set exactly below, and is
        # never wider than asked in between
        sem = posix_ipc.Semaphore(
            name, posix_ipc.O_CREX, mode=mode & 0o600, initial_value=initial_value
        )
    except posix_ipc.ExistentialError as exc:
        if not exist_ok:
            raise _posix_error(exc, name, creating=True) from None
        return attach_posix_semaphore(name)
    except posix_ipc.Error as exc:
        raise _posix_error(exc, name, creating=True) from None
    try:
        node = os.open(_posix_path(name), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.chmod(f"/proc/self/fd/{node}", mode)
            st = os.fstat(node)
        finally:
            os.close(node)
        if not stat.S_ISREG(st.st_mode):  # pragma: no cover - /dev/shm tampered
            raise RuntimeError(f"{_posix_path(name)} is not a semaphore file")
        _registry.register("posix-semaphore", name, st.st_dev, st.st_ino)
    except BaseException:
        posix_ipc.unlink_semaphore(name)
        sem.close()
        raise
    return PosixSemaphore(
        sem, name, (st.st_dev, st.st_ino), unlink_on_close=unlink_on_close
    )


def attach_posix_semaphore(name: str) -> PosixSemaphore:
    """Open the existing POSIX named semaphore ``name`` (never blocks).

    The handle is not owned: it never unlinks the name. Raises
    ``FileNotFoundError`` if there is no such semaphore and
    ``PermissionError`` if this user may not open it.
    """
    name = _check_posix_name(name)
    try:
        sem = posix_ipc.Semaphore(name)
    except posix_ipc.Error as exc:
        raise _posix_error(exc, name, creating=False) from None
    return PosixSemaphore(sem, name, None)


# --- System V semaphores ----------------------------------------------------


class SysVSemaphore(_BridgedSemaphore):
    """A System V semaphore (``semget``, one semaphore per set), as returned by
    :func:`create_sysv_semaphore` and :func:`attach_sysv_semaphore`.

    With ``undo=True`` (the default) every acquire and release of this handle
    uses ``SEM_UNDO``: when the process ends, however it ends (``kill -9``
    included), the kernel gives back the tokens it still holds. That suits a
    semaphore used as a lock (acquire, then release in the same process). A
    process that only releases (a producer handing tokens to consumers) must
    use ``undo=False``, or its releases are taken back when it exits.

    The kernel object lives until :meth:`remove` (by the creator) or
    ``remove_on_close=True``; ``aclose()`` only ends this handle. Other
    processes attach by :attr:`key`.
    """

    def __init__(
        self,
        waiter: Any,
        trier: Any,
        *,
        owned: bool,
        remove_on_close: bool = False,
    ) -> None:
        super().__init__()
        # two kernel handles on the same semaphore: sysv_ipc keeps IPC_NOWAIT
        # as a per-object flag, and the worker thread blocks on one while the
        # task tries the other
        self._waiter = waiter
        self._trier = trier
        self._owned = owned
        self.remove_on_close = remove_on_close

    @property
    def key(self) -> int:
        """The key other processes attach with."""
        return int(self._trier.key)

    @property
    def id(self) -> int:
        """The kernel's semaphore set id (as in ``/proc/sysvipc/sem``)."""
        return int(self._trier.id)

    @property
    def undo(self) -> bool:
        """Whether this handle's operations use ``SEM_UNDO``."""
        return bool(self._trier.undo)

    @property
    def owned(self) -> bool:
        """Whether this handle created the semaphore and has not removed it."""
        return self._owned

    @property
    def value(self) -> int:
        """The number of free tokens now (``GETVAL``). Already stale when it
        returns: for display and tests."""
        self._check_open()
        try:
            return int(self._trier.value)
        except sysv_ipc.ExistentialError:
            raise anyio.BrokenResourceError("the SysV semaphore was removed") from None

    def _try_acquire(self) -> bool:
        try:
            self._trier.acquire()
        except sysv_ipc.BusyError:
            return False
        except sysv_ipc.ExistentialError:
            raise anyio.BrokenResourceError("the SysV semaphore was removed") from None
        return True

    def _blocking_acquire(self) -> None:
        try:
            self._waiter.acquire()
        except sysv_ipc.ExistentialError:
            # EIDRM: removed while this thread waited
            raise anyio.BrokenResourceError("the SysV semaphore was removed") from None
        except sysv_ipc.Error as exc:
            if interrupted(exc):
                raise InterruptedError from None
            raise

    def _release(self) -> None:
        try:
            self._trier.release()
        except sysv_ipc.ExistentialError:
            raise anyio.BrokenResourceError("the SysV semaphore was removed") from None

    def _close_handle(self) -> None:
        pass  # a SysV id is not a per-process resource: nothing to close

    def remove(self) -> bool:
        """Remove the semaphore from the kernel if this handle created it.
        Returns True if it was removed.

        Processes waiting on it wake with ``anyio.BrokenResourceError``; so do
        later calls on any handle. Works on a closed handle too. Also forgets
        the registry record.
        """
        if not self._owned:
            return False
        self._owned = False
        identity = (self.key & 0xFFFFFFFF, self.id)
        try:
            self._trier.remove()
        except sysv_ipc.ExistentialError:
            return False
        finally:
            _registry.unregister(
                "sysv-semaphore", _registry.sysv_name(self.key), identity
            )
        return True

    def _before_close(self) -> None:
        if self.remove_on_close:
            self.remove()

    def __repr__(self) -> str:
        owner = " owned" if self._owned else ""
        if self._closed:
            state = "closed"
        else:
            try:
                state = f"value={self._trier.value}"
            except sysv_ipc.Error:
                state = "removed"
        return (
            f"<SysVSemaphore key={self._trier.key:#x} id={self._trier.id}"
            f"{owner} undo={self.undo} {state}>"
        )


def _second_handle(first: Any, undo: bool) -> tuple[Any, Any]:
    second = sysv_ipc.Semaphore(first.key)
    if second.id != first.id:  # pragma: no cover - removed and recreated between
        raise FileNotFoundError(
            f"the SysV semaphore with key {first.key} was replaced while opening"
        )
    first.block = True
    second.block = False
    first.undo = second.undo = undo
    return first, second


def create_sysv_semaphore(
    key: int | None = None,
    *,
    initial_value: int = 1,
    mode: int = 0o600,
    exist_ok: bool = False,
    undo: bool = True,
    remove_on_close: bool = False,
) -> SysVSemaphore:
    """Create a System V semaphore with ``initial_value`` tokens, mode 0600 by
    default (SysV objects ignore the umask). Never blocks.

    ``key=None`` picks a fresh random key that no other semaphore has; hand
    :attr:`SysVSemaphore.key` to the processes that should attach. With an
    explicit ``key`` and ``exist_ok=True`` an existing semaphore is attached to
    instead (not owned; ``initial_value`` and ``mode`` unused). ``undo``: see
    :class:`SysVSemaphore`. The semaphore is removed only by
    :meth:`SysVSemaphore.remove` or ``remove_on_close=True``; the creation is
    recorded in aipc's registry, so that ``aipc clean`` can remove it if this
    process dies without removing it.

    Raises:
        FileExistsError: a semaphore with ``key`` exists and ``exist_ok`` is
            False.
        PermissionError: it exists and this user may not open it.
        ValueError / TypeError: a bad key, mode or initial value (at most
            ``SEMVMX``, 32767).
    """
    if key is not None:
        key = check_key(key)
    initial_value = _check_initial(
        initial_value, sysv_ipc.SEMAPHORE_VALUE_MAX, "SEMVMX"
    )
    mode = check_mode(mode)
    if initial_value and not mode & 0o200:
        # semctl(SETVAL) needs the owner's write permission
        raise ValueError(
            f"mode must let the owner write (0o200) to set initial_value, got {mode:#o}"
        )
    try:
        sem = sysv_ipc.Semaphore(
            key, sysv_ipc.IPC_CREX, mode=mode, initial_value=initial_value
        )
    except sysv_ipc.ExistentialError as exc:
        assert key is not None  # a fresh key is retried by sysv_ipc
        if not exist_ok:
            raise translate_error(exc, key, "semaphore", creating=True) from None
        return attach_sysv_semaphore(key, undo=undo)
    except sysv_ipc.Error as exc:
        raise translate_error(exc, key or 0, "semaphore", creating=True) from None
    try:
        waiter, trier = _second_handle(sem, undo)
        _registry.register(
            "sysv-semaphore",
            _registry.sysv_name(sem.key),
            sem.key & 0xFFFFFFFF,
            sem.id,
        )
    except BaseException:
        sem.remove()
        raise
    return SysVSemaphore(waiter, trier, owned=True, remove_on_close=remove_on_close)


def attach_sysv_semaphore(key: int, *, undo: bool = True) -> SysVSemaphore:
    """Open the existing System V semaphore with ``key`` (never blocks).

    The handle is not owned: it never removes the semaphore. ``undo``: see
    :class:`SysVSemaphore`. Raises ``FileNotFoundError`` if there is no such
    semaphore and ``PermissionError`` if this user may not open it.
    """
    key = check_key(key)
    try:
        sem = sysv_ipc.Semaphore(key)
        waiter, trier = _second_handle(sem, undo)
    except sysv_ipc.Error as exc:
        raise translate_error(exc, key, "semaphore", creating=False) from None
    return SysVSemaphore(waiter, trier, owned=False)
