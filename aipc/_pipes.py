"""Anonymous pipes as anyio byte streams (Linux only)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Self

from ._core._errors import LimitExceededError
from ._core._fd import FdHandle, reopen_private_nonblocking
from ._core._stream import FdReceiveStream, FdSendStream

__all__ = [
    "PIPE_BUF",
    "PipeReceiveStream",
    "PipeSendStream",
    "create_pipe",
    "pipe_max_size",
]

#: Writes of at most this many bytes to a pipe or FIFO are atomic: they are
#: never interleaved with other writers' data and never split.
PIPE_BUF: int = 4096

_PIPE_MAX_SIZE_PATH = "/proc/sys/fs/pipe-max-size"


def pipe_max_size() -> int:
    """The largest pipe capacity this system allows (``fs.pipe-max-size``)."""
    with open(_PIPE_MAX_SIZE_PATH) as f:
        return int(f.read())


def _check_capacity(capacity: int) -> None:
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1 byte, got {capacity}")
    limit = pipe_max_size()
    if capacity > limit:
        raise LimitExceededError(
            "capacity",
            capacity,
            limit,
            _PIPE_MAX_SIZE_PATH,
            f"raise it with 'sysctl fs.pipe-max-size={capacity}' (as root)",
        )


def _apply_capacity(fd: int, capacity: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, capacity)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise LimitExceededError(
                "capacity",
                capacity,
                _user_pages_soft() * os.sysconf("SC_PAGE_SIZE"),
                "/proc/sys/fs/pipe-user-pages-soft (this user's pipes in total)",
                "close other large pipes or raise fs.pipe-user-pages-soft",
            ) from exc
        if exc.errno == errno.EBUSY:
            raise ValueError(
                f"capacity={capacity} is smaller than the data now in the pipe"
            ) from exc
        raise


def _user_pages_soft() -> int:
    try:
        with open("/proc/sys/fs/pipe-user-pages-soft") as f:
            return int(f.read())
    except OSError:
        return 0


def _adopt(fd: int, readable: bool, what: str) -> int:
    """Check that ``fd`` is a pipe end of the right direction; return a private
    non-blocking fd for it (``fd`` itself, or a reopened one, ``fd`` closed)."""
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"fd must be an int, not {type(fd).__name__}")
    try:
        st = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise ValueError(f"fd {fd} is not an open file descriptor") from exc
        raise
    if not stat.S_ISFIFO(st.st_mode):
        raise ValueError(f"fd {fd} is not a pipe or FIFO")
    access = flags & os.O_ACCMODE
    if readable and access == os.O_WRONLY:
        raise ValueError(f"fd {fd} is the write end; a receive stream needs a read end")
    if not readable and access == os.O_RDONLY:
        raise ValueError(f"fd {fd} is the read end; a send stream needs a write end")
    new = reopen_private_nonblocking(fd, what)
    if new != fd:
        os.close(fd)
    return new


class _PipeEnd:
    """What both pipe ends add to the fd stream: hand-off and the capacity."""

    _what = "pipe"
    _readable: bool
    _handle: FdHandle

    @classmethod
    def from_fd(cls, fd: int) -> Self:
        """Take ownership of ``fd``, a pipe end of this stream's direction.

        If the fd's open file description is in blocking mode (it may be shared:
        stdin, a pipe inherited from a shell), it is never switched to
        non-blocking; the pipe is reopened through ``/proc/self/fd`` into a
        private description and ``fd`` is closed. To read stdin without giving
        it up, pass ``os.dup(0)``. On error ``fd`` stays the caller's.
        """
        return cls(FdHandle(_adopt(fd, cls._readable, cls._what), cls._what))  # type: ignore[call-arg]

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, object]]:
        # for aipc.open_process(handoff=...); rebuilt by from_fd (_handoff.py)
        kind = "pipe-receive" if self._readable else "pipe-send"
        return kind, (self._handle.fileno(),), {}

    @property
    def capacity(self) -> int:
        """The kernel buffer size of the pipe, in bytes."""
        return fcntl.fcntl(self._handle.fileno(), fcntl.F_GETPIPE_SZ)

    def set_capacity(self, capacity: int) -> int:
        """Resize the kernel buffer (F_SETPIPE_SZ); returns the size granted.

        Raises ``LimitExceededError`` beyond ``fs.pipe-max-size`` or the user's
        pipe budget, ``ValueError`` for sizes below 1 or below the queued data.
        """
        _check_capacity(capacity)
        granted = _apply_capacity(self._handle.fileno(), capacity)
        if not self._readable:
            # the size the send end paces its large sends by (FdSendStream)
            self._buffer_size = granted
        return granted


class PipeReceiveStream(_PipeEnd, FdReceiveStream):
    """The read end of a pipe, as an anyio :class:`~anyio.abc.ByteReceiveStream`.

    The stream owns its fd and closes it on ``aclose()``. ``receive()`` raises
    ``EndOfStream`` once every write end is closed and the data is drained.
    Hand it to a child with ``pass_fds=[stream.fileno()]`` and rebuild it there
    with :meth:`from_fd`.
    """

    _readable = True


class PipeSendStream(_PipeEnd, FdSendStream):
    """The write end of a pipe, as an anyio :class:`~anyio.abc.ByteSendStream`.

    The stream owns its fd and closes it on ``aclose()``. Sends of at most
    :data:`PIPE_BUF` bytes are atomic. A send after every reader left raises
    ``BrokenResourceError`` (the process is never killed by SIGPIPE). Hand it to a
    child with ``pass_fds=[stream.fileno()]`` and rebuild it with :meth:`from_fd`.
    """

    _readable = False

    def _kernel_buffer(self) -> int:
        # a large send passes through the loop (checkpoint_large) only when
        # it fills over a quarter of the pipe. The size is asked once and
        # kept (set_capacity on this end updates it): F_GETPIPE_SZ takes the
        # pipe's mutex, which a reader on another core holds while it copies,
        # so asking on every send made the sender sleep on it (64 KiB sends
        # across cores: 2.3 -> 1.55 GB/s). A resize through the other end is
        # not seen; it only changes when large sends yield
        capacity = self._buffer_size
        if not capacity:
            try:
                capacity = fcntl.fcntl(self._handle._fd, fcntl.F_GETPIPE_SZ)
            except OSError:  # closed: the send raises ClosedResourceError
                return 0
            self._buffer_size = capacity
        return capacity


def create_pipe(
    capacity: int | None = None,
) -> tuple[PipeReceiveStream, PipeSendStream]:
    """Create a pipe and return its ``(receive_stream, send_stream)`` ends.

    Both fds are close-on-exec and non-blocking; each stream owns its fd.
    ``capacity`` resizes the kernel buffer (default 64 KiB; at most
    :func:`pipe_max_size`, 1 MiB by default); a larger buffer lets a fast
    writer run further ahead and raises throughput for large messages.

    Raises ``LimitExceededError`` (a ``ValueError``) for a capacity beyond the
    system maximum and ``ValueError`` for one below 1; nothing is left open.
    """
    if capacity is not None:
        _check_capacity(capacity)  # before anything is created
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if capacity is not None:
            _apply_capacity(w, capacity)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    return PipeReceiveStream(FdHandle(r, "pipe")), PipeSendStream(FdHandle(w, "pipe"))
