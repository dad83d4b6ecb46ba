"""Shared memory segments: anonymous (memfd, sealed) and named (/dev/shm) (Linux only).

Ownership is explicit, which is what ``multiprocessing.shared_memory`` gets
wrong on Python 3.11 (its resource tracker unlinks a segment when *any*
process that attached to it exits, CPython gh-82300):

- the process that *creates* a named segment owns its name; with
  ``unlink_on_close=True`` (the default for the creator) closing it removes the
  name, and its creation is recorded in aipc's registry, so that ``aipc clean``
  can remove it if the creator dies without closing;
- a process that *attaches* (by name, by descriptor, by hand-off) never owns
  it: closing only unmaps. :meth:`SharedMemory.unlink` is there for an
  explicit policy, and removes the name only if it still names the very
  segment this handle maps;
- no resource tracker, no atexit hook.

Anonymous segments (``memfd_create``) have no name at all: they live while a
descriptor or a mapping does, so a crash cannot leak them. Before one is
shared it is *sealed* against shrinking and growing (``F_SEAL_SHRINK``,
``F_SEAL_GROW``, then ``F_SEAL_SEAL``), and :meth:`SharedMemory.from_fd`
verifies the seals on receipt: a peer that could shrink the file under our
mapping would make every access beyond the new end kill this process with
SIGBUS. A named segment cannot be sealed: any process with write access may
truncate it, which is why anonymous segments are the default.

Memory is reserved when a segment is created (``posix_fallocate``), so a full
``/dev/shm`` is a clear error at creation, not a SIGBUS at the first write.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
from dataclasses import dataclass
from typing import Any, Self

from anyio.abc import AsyncResource

from ._core import _registry
from ._core._args import check_int, check_mode
from ._core._errors import LimitExceededError
from ._core._fd import FdHandle, checkpoint

__all__ = [
    "SharedMemory",
    "SharedMemoryStatistics",
    "attach_shared_memory",
    "create_shared_memory",
]

_SHM_DIR = "/dev/shm"
_NAME_MAX = 255
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


@dataclass(frozen=True)
class SharedMemoryStatistics:
    """What a segment handle is (cheap: no syscall).

    Attributes: ``size`` in bytes, ``owner`` (this handle created it, and owns
    its name if it has one), ``sealed`` (an anonymous segment sealed against resizing).
    """

    size: int
    owner: bool
    sealed: bool


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name.startswith("/") or "/" in name[1:] or len(name) < 2:
        raise ValueError(
            f"name must be a slash and then a name without slashes, like "
            f"'/frames', got {name!r}"
        )
    if len(os.fsencode(name)) - 1 > _NAME_MAX:
        raise LimitExceededError(
            "len(name)", len(os.fsencode(name)) - 1, _NAME_MAX, "NAME_MAX"
        )
    return name


def _path(name: str) -> str:
    return os.path.join(_SHM_DIR, name[1:])


def _check_size(size: object) -> int:
    size = check_int("size", size)
    if size < 1:
        raise ValueError(f"size must be at least 1 byte, got {size}")
    return size


def _check_space(size: int, named: bool) -> None:
    """Refuse a size the system cannot hold, before anything is created."""
    if named:
        st = os.statvfs(_SHM_DIR)
        free = st.f_bavail * st.f_frsize
        if size > free:
            raise LimitExceededError(
                "size",
                size,
                free,
                f"the free space of {_SHM_DIR}",
                "free some segments (aipc objects / aipc clean list and remove "
                "those of dead processes) or enlarge the tmpfs",
            )
    else:
        available = _memory_available()
        if available is not None and size > available:
            raise LimitExceededError(
                "size",
                size,
                available,
                "the memory available for an anonymous segment (MemAvailable "
                "and SwapFree in /proc/meminfo)",
            )


def _memory_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
    except OSError:
        return None
    total = 0
    for key in ("MemAvailable", "SwapFree"):
        value = fields.get(key, "").split()
        if value:
            total += int(value[0]) * 1024
    return total


def _reserve(fd: int, size: int, where: str) -> None:
    os.ftruncate(fd, size)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise LimitExceededError(
                "size", size, 0, f"the space left in {where} (ENOSPC)"
            ) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


class SharedMemory(AsyncResource):
    """A shared memory segment mapped into this process.

    :attr:`buffer` is a writable ``memoryview`` of the whole segment. Made by
    :func:`create_shared_memory` (the owner), :func:`attach_shared_memory`,
    :meth:`from_fd` or a hand-off (attachers). Closing unmaps the segment and
    closes the descriptor; an owner with ``unlink_on_close`` also removes the
    name. Views sliced from :attr:`buffer` that are still alive at close keep
    the memory mapped until they are released (nothing is ever unmapped
    under a live view).
    """

    def __init__(
        self,
        handle: FdHandle,
        size: int,
        *,
        name: str | None = None,
        owner: bool = False,
        unlink_on_close: bool = False,
        sealed: bool = False,
        identity: tuple[int, int] | None = None,
    ) -> None:
        self._handle = handle
        self._map = mmap.mmap(handle.fileno(), size)
        self._view: memoryview | None = memoryview(self._map)
        self._size = size
        self._name = name
        self._owner = owner
        self._unlink_on_close = unlink_on_close
        self._sealed = sealed
        self._identity = identity

    # -- construction

    @classmethod
    def from_fd(cls, fd: int) -> Self:
        """Take ownership of ``fd``, a memfd or a ``/dev/shm`` file, and map it.

        A memfd must be sealed against shrinking and growing (as
        :func:`create_shared_memory` seals it): otherwise the peer could
        shrink it under this mapping, and ``ValueError`` says so. The handle
        is an attacher: it never removes a name. The fd is made close-on-exec.
        On error it stays the caller's.
        """
        fd = check_int("fd", fd)
        try:
            st = os.fstat(fd)
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise ValueError(f"fd {fd} is not an open file descriptor") from None
            raise
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"fd {fd} is not a shared memory file ({target})")
        name = None
        sealed = False
        if target.startswith("/memfd:"):
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if seals & _SEALS != _SEALS:
                raise ValueError(
                    f"fd {fd} is a memfd that is not sealed against shrinking and "
                    "growing (F_SEAL_SHRINK | F_SEAL_GROW): its sender could "
                    "truncate it under this mapping and crash this process with "
                    "SIGBUS"
                )
            sealed = True
        elif target.startswith(_SHM_DIR + "/"):
            name = "/" + target[len(_SHM_DIR) + 1 :]
        else:
            raise ValueError(
                f"fd {fd} is not a memfd or a {_SHM_DIR} file (it is {target})"
            )
        if st.st_size < 1:
            raise ValueError(f"fd {fd} is an empty segment")
        os.set_inheritable(fd, False)
        return cls(
            FdHandle(fd, "shared memory"),
            st.st_size,
            name=name,
            sealed=sealed,
            identity=(st.st_dev, st.st_ino),
        )

    # -- the memory

    @property
    def buffer(self) -> memoryview:
        """The whole segment as a writable memoryview (``ClosedResourceError``
        once closed)."""
        view = self._view
        if view is None:
            from anyio import ClosedResourceError

            raise ClosedResourceError
        return view

    @property
    def size(self) -> int:
        """The size of the segment in bytes."""
        return self._size

    @property
    def name(self) -> str | None:
        """The segment's name (``"/frames"``), or ``None`` if anonymous."""
        return self._name

    @property
    def owner(self) -> bool:
        """Whether this handle created the segment (and owns its name)."""
        return self._owner

    @property
    def closed(self) -> bool:
        """Whether this handle has been closed."""
        return self._view is None

    def fileno(self) -> int:
        """The segment's descriptor (owned by this object; do not close it)."""
        return self._handle.fileno()

    def statistics(self) -> SharedMemoryStatistics:
        """Size, ownership and sealing of this handle."""
        return SharedMemoryStatistics(self._size, self._owner, self._sealed)

    # -- names and closing

    def unlink(self) -> bool:
        """Remove the segment's name, if it still names this very segment.

        The memory stays mapped in every process that has it, and is freed
        when the last one closes. Returns whether a name was removed (``False``
        for an anonymous segment, or a name that is gone or now names another
        segment). An attacher may call it: that is an explicit decision, which
        attaching alone never makes.
        """
        if self._name is None or self._identity is None:
            return False
        path = _path(self._name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            removed = False
        else:
            removed = (st.st_dev, st.st_ino) == self._identity
            if removed:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    removed = False
        if self._owner:
            _registry.unregister("shm", self._name, self._identity)
        return removed

    def close(self) -> None:
        """Unmap and close (idempotent); an owner created with
        ``unlink_on_close`` also removes the name."""
        view, self._view = self._view, None
        if view is None:
            return
        view.release()
        try:
            self._map.close()
        except BufferError:
            # views sliced from buffer are still alive: the mapping stays
            # until the last is released (the mmap object is freed with them)
            pass
        self._handle.close()
        if self._owner and self._unlink_on_close:
            self.unlink()

    async def aclose(self) -> None:
        """Close (idempotent, also when cancelled); see :meth:`close`."""
        self.close()
        await checkpoint()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, Any]]:
        return "shm", (self._handle.fileno(),), {}

    def __repr__(self) -> str:
        what = self._name or "anonymous"
        state = "closed" if self._view is None else f"fd={self._handle.fd}"
        role = "owner" if self._owner else "attached"
        return f"<SharedMemory {what} {self._size}B {role} {state}>"


def create_shared_memory(
    size: int,
    *,
    name: str | None = None,
    mode: int = 0o600,
    unlink_on_close: bool = True,
) -> SharedMemory:
    """Create a segment of ``size`` bytes, zero-filled, and map it.

    Without ``name`` it is anonymous (``memfd_create``), sealed against
    shrinking and growing: pass it to other processes by hand-off
    (``aipc.open_process(..., handoff=...)``) or over a UNIX socket
    (``send_objects``). With ``name`` (``"/frames"``) it is created in
    ``/dev/shm`` with ``mode`` (0600) and fails with ``FileExistsError`` if the
    name exists: aipc never takes over another process's segment. This handle
    owns the name; ``unlink_on_close`` removes it on close.

    The memory is reserved now: ``LimitExceededError`` if it does not fit
    (the free space of ``/dev/shm``, or the memory available), before anything
    is created.
    """
    size = _check_size(size)
    mode = check_mode(mode)
    if name is not None:
        name = _check_name(name)
    _check_space(size, named=name is not None)
    if name is None:
        fd = os.memfd_create("aipc", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            _reserve(fd, size, "memory")
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)
            return SharedMemory(
                FdHandle(fd, "shared memory"), size, owner=True, sealed=True
            )
        except BaseException:
            os.close(fd)
            raise
    path = _path(name)
    # created 0 and then given its mode: the umask never widens or narrows it
    fd = os.open(
        path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0
    )
    try:
        st = os.fstat(fd)
        identity = (st.st_dev, st.st_ino)
        os.fchmod(fd, mode)  # this descriptor is read-write whatever the mode
        _reserve(fd, size, _SHM_DIR)
        _registry.register("shm", name, *identity)
        try:
            return SharedMemory(
                FdHandle(fd, "shared memory"),
                size,
                name=name,
                owner=True,
                unlink_on_close=unlink_on_close,
                identity=identity,
            )
        except BaseException:
            _registry.unregister("shm", name, identity)
            raise
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        raise


def attach_shared_memory(name: str) -> SharedMemory:
    """Map the existing named segment ``name`` (``"/frames"``) read-write.

    The handle is an attacher: closing it only unmaps, it never removes the
    name. Raises ``FileNotFoundError`` if there is no such segment and
    ``PermissionError`` if its mode does not allow this user.
    """
    name = _check_name(name)
    fd = os.open(_path(name), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < 1:
            raise ValueError(f"{name!r} is not a shared memory segment")
        return SharedMemory(
            FdHandle(fd, "shared memory"),
            st.st_size,
            name=name,
            identity=(st.st_dev, st.st_ino),
        )
    except BaseException:
        os.close(fd)
        raise
