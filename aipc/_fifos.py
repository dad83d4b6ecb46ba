"""FIFOs (named pipes) as anyio byte streams (Linux only).

A FIFO has two lifetimes: the *node* on the filesystem (created by
:func:`create_fifo`, removed only by :meth:`Fifo.unlink`) and the *streams*
opened on it (closed by ``aclose()``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat

from anyio.abc import AsyncResource

from ._core import _registry
from ._core._args import check_mode, fspath
from ._core._bridge import open_interruptible
from ._core._errors import AipcError
from ._core._fd import FdHandle, checkpoint
from ._pipes import PipeReceiveStream, PipeSendStream, _adopt

__all__ = [
    "Fifo",
    "FifoReceiveStream",
    "FifoSendStream",
    "NotAFifoError",
    "create_fifo",
    "open_fifo_receiver",
    "open_fifo_sender",
]

_KINDS = {
    stat.S_IFREG: "a regular file",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}


class NotAFifoError(AipcError, ValueError):
    """The path exists but is not a FIFO. Attributes: ``path``, ``kind``."""

    def __init__(self, path: str, mode: int) -> None:
        self.path = path
        self.kind = _KINDS.get(stat.S_IFMT(mode), "not a FIFO")
        super().__init__(f"{path!r} exists and is {self.kind}, not a FIFO")


def _check_fifo(path: str) -> None:
    st = os.stat(path)  # FileNotFoundError names the path
    if not stat.S_ISFIFO(st.st_mode):
        raise NotAFifoError(path, st.st_mode)


def _verify_opened(fd: int, path: str) -> None:
    # the path may have been replaced between the stat and the open
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode):
        os.close(fd)
        raise NotAFifoError(path, st.st_mode)


def _set_nonblocking(fd: int) -> None:
    # only for descriptions aipc opened itself
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


class Fifo(AsyncResource):
    """A FIFO node on the filesystem, as returned by :func:`create_fifo`.

    ``owned`` is True when this process created it; only then does
    :meth:`unlink` remove it. While an owned ``Fifo`` is open it holds an
    ``O_PATH`` reference to the node, so the node's inode number cannot be
    reused and :meth:`unlink` can tell our node from a newer file under the same
    name. ``close()`` / ``aclose()`` drop that reference and, with
    ``unlink_on_close=True``, remove the node first. Streams need no ``Fifo``:
    any process can call :func:`open_fifo_receiver` / :func:`open_fifo_sender`.
    """

    def __init__(
        self, path: str, node: FdHandle | None, *, unlink_on_close: bool = False
    ) -> None:
        self.path = path
        self.unlink_on_close = unlink_on_close
        self._node = node

    @property
    def owned(self) -> bool:
        """Whether this process created the node and has not removed it."""
        return self._node is not None and not self._node.closed

    async def open_receiver(
        self, *, wait_for_writer: bool = False, keep_open: bool = False
    ) -> FifoReceiveStream:
        """Same as :func:`open_fifo_receiver` on this path."""
        return await open_fifo_receiver(
            self.path, wait_for_writer=wait_for_writer, keep_open=keep_open
        )

    async def open_sender(self) -> FifoSendStream:
        """Same as :func:`open_fifo_sender` on this path."""
        return await open_fifo_sender(self.path)

    def unlink(self) -> bool:
        """Remove the node if this process created it and it is still that node.

        Returns True if it was removed. A FIFO created by another process, or a
        new file that has since taken the path, is never removed. Streams
        already open keep working. Also closes this object.
        """
        node = self._node
        if node is None or node.closed:
            return False
        removed = False
        try:
            ours = os.fstat(node.fileno())
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
                os.unlink(self.path)
                removed = True
        _registry.unregister("fifo", self.path)
        node.close()
        return removed

    def close(self) -> None:
        """Drop the reference to the node (idempotent); unlink first if
        ``unlink_on_close``. The node itself stays unless unlinked."""
        if self.unlink_on_close:
            self.unlink()
        if self._node is not None:
            self._node.close()

    async def aclose(self) -> None:
        """Same as :meth:`close`."""
        self.close()
        await checkpoint()

    def __repr__(self) -> str:
        if self.owned:
            state = "owned"
        elif self._node is not None:
            state = "closed"
        else:
            state = "attached"
        return f"<Fifo {self.path!r} {state}>"


def create_fifo(
    path: str | os.PathLike[str],
    *,
    mode: int = 0o600,
    exist_ok: bool = False,
    unlink_on_close: bool = False,
) -> Fifo:
    """Create a FIFO at ``path`` (mode 0600 by default, exactly, whatever the umask).

    Returns an owned :class:`Fifo`; close it (or use ``async with``) when done.
    The node is removed only by :meth:`Fifo.unlink` or, with
    ``unlink_on_close=True``, when the ``Fifo`` is closed. The creation is
    recorded in aipc's registry so that ``aipc clean`` can remove the node if
    this process dies without unlinking it.

    With ``exist_ok=True`` an existing FIFO is attached to instead: the returned
    ``Fifo`` is not owned and never unlinks anything.

    Raises:
        FileExistsError: ``path`` exists and ``exist_ok`` is False.
        NotAFifoError: ``path`` exists and is not a FIFO.
        ValueError: ``mode`` has bits outside 0o777.
    """
    p = os.path.abspath(fspath(path))
    check_mode(mode)
    try:
        os.mkfifo(p, 0o600 & mode)
    except FileExistsError:
        st = os.lstat(p)
        if not stat.S_ISFIFO(st.st_mode):
            raise NotAFifoError(p, st.st_mode) from None
        if not exist_ok:
            raise
        return Fifo(p, None)
    node = None
    try:
        node = FdHandle(
            os.open(p, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC), "fifo node"
        )
        # mkfifo applies the umask; set the exact mode asked for
        os.chmod(f"/proc/self/fd/{node.fd}", mode)
        st = os.fstat(node.fd)
        _registry.register("fifo", p, st.st_dev, st.st_ino)
    except BaseException:
        os.unlink(p)
        if node is not None:
            node.close()
        raise
    return Fifo(p, node, unlink_on_close=unlink_on_close)


class FifoReceiveStream(PipeReceiveStream):
    """The read end of a FIFO, as an anyio :class:`~anyio.abc.ByteReceiveStream`.

    ``receive()`` waits for a first writer if none has connected yet, and raises
    ``EndOfStream`` once the writers that connected have all closed, unless the
    stream was opened with ``keep_open=True``: then it keeps reading across
    successive writers and never reaches end of stream.
    """

    _what = "fifo"

    def __init__(
        self, handle: FdHandle, path: str = "", keeper: FdHandle | None = None
    ):
        super().__init__(handle)
        self.path = path
        self._keeper = keeper

    @property
    def keep_open(self) -> bool:
        """Whether this reader keeps reading across successive writers."""
        return self._keeper is not None

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, object]]:
        # the keeper is not passed: the other side opens its own (_from_handoff)
        meta = {"path": self.path, "keep_open": self.keep_open}
        return "fifo-receive", (self._handle.fileno(),), meta

    @classmethod
    def _from_handoff(cls, fd: int, path: str, keep_open: bool) -> FifoReceiveStream:
        handle = FdHandle(_adopt(fd, True, "fifo"), "fifo")
        keeper = None
        if keep_open:
            # a write end of the same FIFO, opened through the read end (the
            # path may be gone); never ENXIO, since this reader exists
            try:
                keeper_fd = os.open(
                    f"/proc/self/fd/{handle.fd}",
                    os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC,
                )
            except BaseException:
                handle.detach()
                raise
            keeper = FdHandle(keeper_fd, "fifo keeper")
        return cls(handle, path, keeper)

    def _at_eof(self) -> bool:
        # read() returns 0 both before the first writer and after the last one
        # left; poll tells them apart: Linux reports POLLHUP to a reader only once
        # a writer has connected (and gone) since this reader opened.
        fd = self._handle.fd
        if fd < 0:
            return True
        p = select.poll()
        p.register(fd, select.POLLIN)
        events = p.poll(0)
        return bool(events and events[0][1] & select.POLLHUP)

    async def aclose(self) -> None:
        """Close this end (idempotent), even when cancelled. The node stays."""
        if self._keeper is not None:
            self._keeper.close()
        await super().aclose()

    def close(self) -> None:
        """Close this end synchronously (idempotent). The node stays."""
        if self._keeper is not None:
            self._keeper.close()
        super().close()


class FifoSendStream(PipeSendStream):
    """The write end of a FIFO, as an anyio :class:`~anyio.abc.ByteSendStream`.

    Sends of at most PIPE_BUF (4096) bytes are atomic, also between several
    writers. ``BrokenResourceError`` once every reader has gone.
    """

    _what = "fifo"

    def __init__(self, handle: FdHandle, path: str = "") -> None:
        super().__init__(handle)
        self.path = path

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, object]]:
        return "fifo-send", (self._handle.fileno(),), {"path": self.path}

    @classmethod
    def _from_handoff(cls, fd: int, path: str) -> FifoSendStream:
        return cls(FdHandle(_adopt(fd, False, "fifo"), "fifo"), path)


async def open_fifo_receiver(
    path: str | os.PathLike[str],
    *,
    wait_for_writer: bool = False,
    keep_open: bool = False,
) -> FifoReceiveStream:
    """Open the FIFO at ``path`` for reading.

    By default this returns at once and the first ``receive()`` waits for a
    writer. ``wait_for_writer=True`` waits here until a writer has opened the
    FIFO. ``keep_open=True`` keeps reading across successive writers (the
    stream holds a write end of its own, so it never sees end of stream).

    Raises ``FileNotFoundError`` and :class:`NotAFifoError`.

    **Cancellation:** nothing stays open. A cancelled ``wait_for_writer`` is
    interrupted by opening the FIFO read-write for an instant: another reader
    of the same FIFO that is not ``keep_open`` may see a writer come and go
    (and so an end of stream), and another writer blocked in its own open may
    see a reader come and go.
    """
    p = fspath(path)
    _check_fifo(p)
    if wait_for_writer:
        fd = await open_interruptible(
            p,
            os.O_RDONLY | os.O_CLOEXEC,
            # O_RDWR never fails with ENXIO, even before the worker thread has
            # entered its open(); it stays open until that open has returned
            lambda: os.open(p, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC),
        )
        _verify_opened(fd, p)
        _set_nonblocking(fd)
    else:
        await checkpoint()
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        _verify_opened(fd, p)
    keeper = None
    if keep_open:
        try:
            # we are a reader, so a non-blocking write open cannot fail with ENXIO
            keeper = FdHandle(
                os.open(p, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC), "fifo"
            )
        except BaseException:
            os.close(fd)
            raise
    return FifoReceiveStream(FdHandle(fd, "fifo"), p, keeper)


async def open_fifo_sender(path: str | os.PathLike[str]) -> FifoSendStream:
    """Open the FIFO at ``path`` for writing, waiting until a reader has it open.

    (A plain non-blocking open fails with ENXIO when there is no reader; this
    waits instead, without polling.)

    Raises ``FileNotFoundError`` and :class:`NotAFifoError`.

    **Cancellation:** nothing stays open. A cancelled wait is interrupted by
    opening the FIFO for reading for an instant: another writer blocked in its
    own open may see a reader come and go (and then ``BrokenResourceError``).
    """
    p = fspath(path)
    _check_fifo(p)
    await checkpoint()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        fd = await open_interruptible(
            p,
            os.O_WRONLY | os.O_CLOEXEC,
            lambda: os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC),
        )
        _verify_opened(fd, p)
        _set_nonblocking(fd)
    else:
        _verify_opened(fd, p)
    return FifoSendStream(FdHandle(fd, "fifo"), p)
