"""UNIX domain sockets (stream, seqpacket, datagram) as anyio streams (Linux only).

What aipc does differently from a plain ``socket.bind``:

- **Binding never takes over a live server.** ``bind`` itself refuses a path
  that exists (``EADDRINUSE``). aipc then probes the socket file with a
  connect: a refused connect means nobody listens (a stale file left by a
  crash), and only then is the file removed, and only if it is still the same
  file (device and inode) that was probed. A live server, a file that is not a
  socket, or a socket aipc may not connect to is never removed: a clear error
  says why.
- **Safe modes.** The socket file is created with the requested mode (0600 by
  default) from the first instant: the socket inode gets the mode before
  ``bind`` (Linux creates the file with the socket's mode minus the umask), and
  the exact mode is set afterwards.
- **Unlink on close only if still ours.** Closing a bound socket removes its
  path only if the path still names the file this socket created (compared by
  device and inode), so a server that replaced it keeps its socket.
- **No flipped flags.** Every send and receive passes ``MSG_DONTWAIT``, so a
  socket works the same whether or not its open file description is
  non-blocking, and aipc never changes ``O_NONBLOCK`` on a description another
  process may share (an inherited or passed socket). The one exception is a
  listening socket adopted from systemd, see :func:`listeners_from_systemd`.
- **Peer identity.** Connected sockets expose the peer's pid, uid and gid
  (``SO_PEERCRED``) and a pidfd of the peer (``SO_PEERPIDFD``) as anyio typed
  attributes (:class:`UnixSocketAttribute`), and a listener can refuse a peer
  before the application sees the connection.

Addresses are filesystem paths (``str``, ``bytes`` or ``os.PathLike``) or
Linux abstract names, written with a leading NUL (``"\\0name"``): those have no
file, vanish with the socket and need no cleanup.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar, overload

import anyio
from anyio import TypedAttributeSet, typed_attribute
from anyio.abc import (
    ByteStream,
    Listener,
    ObjectStream,
    SocketAttribute,
    TaskGroup,
    UnreliableObjectStream,
)

from ._core import _registry
from ._core._args import check_int, check_mode
from ._core._errors import AipcError, LimitExceededError, translate_os_error
from ._core._fd import FdHandle, _trio, checkpoint, current_library
from ._core._stream import FdReceiveStream, FdSendStream, _check_max_bytes
from ._fdpass import (
    OBJECTS_HEADER_SIZE,
    RECV_FLAGS,
    SCM_MAX_FD,
    FdLike,
    ReceivedFd,
    ReceivedMessage,
    ancillary,
    check_max_fds,
    control_space,
    decode_objects,
    encode_objects,
    fd_numbers,
    objects_frame,
    objects_length,
    parse,
)

if TYPE_CHECKING:
    from ._process import Process

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "SO_PEERPIDFD",
    "UNIX_PATH_MAX",
    "AddressInUseError",
    "ConnectedUnixDatagramSocket",
    "PeerCredentials",
    "UnixDatagramSocket",
    "UnixListener",
    "UnixListenerStatistics",
    "UnixSeqpacketStream",
    "UnixSocketAttribute",
    "UnixSocketStatistics",
    "UnixStream",
    "connect_unix_seqpacket",
    "connect_unix_stream",
    "create_connected_unix_datagram_socket",
    "create_unix_datagram_socket",
    "create_unix_listener",
    "create_unix_socket_pair",
    "listeners_from_systemd",
]

#: ``getsockopt`` option for a pidfd of the peer (Linux 6.5+). Python 3.11's
#: ``socket`` module has no constant for it.
SO_PEERPIDFD = 77
#: ``getsockopt`` option for the peer's supplementary groups (Linux 4.13+).
_SO_PEERGROUPS = 59
#: The size of ``sun_path``: a path must fit with its terminating NUL, an
#: abstract name (which starts with a NUL) in the whole of it.
UNIX_PATH_MAX = 108
#: The largest message a seqpacket or datagram socket receives by default
#: (``max_size=``); the kernel's own limit is the sender's ``SO_SNDBUF``.
DEFAULT_MAX_MESSAGE_SIZE = 65536

_DONTWAIT = socket.MSG_DONTWAIT
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_RECV_FLAGS = socket.MSG_DONTWAIT | socket.MSG_TRUNC
#: a plain int: ``flags & socket.MSG_TRUNC`` runs enum.Flag's Python __and__
_MSG_TRUNC = int(socket.MSG_TRUNC)
_UCRED = struct.Struct("iII")  # pid_t, uid_t, gid_t
#: SO_PEERCRED's uid and gid when the kernel recorded no peer: (uid_t)-1
_NO_ID = 0xFFFFFFFF
_KINDS = {
    "stream": socket.SOCK_STREAM,
    "seqpacket": socket.SOCK_SEQPACKET,
    "datagram": socket.SOCK_DGRAM,
}

Address = str | bytes


class AddressInUseError(AipcError, OSError):
    """A live socket holds the address, and aipc never takes one over.

    Attributes: ``address`` (the path or abstract name) and ``errno``
    (``EADDRINUSE``).
    """

    def __init__(self, address: Address, why: str) -> None:
        self.address = address
        super().__init__(errno.EADDRINUSE, f"cannot bind {address!r}: {why}")


@dataclass(frozen=True)
class PeerCredentials:
    """Who is at the other end: the peer's pid, uid and gid (``SO_PEERCRED``).

    The kernel records them when the connection is made (or the socket pair
    created), so they name the process that connected, even if it has since
    passed its socket on. ``pid`` is 0 when the peer is in another pid
    namespace the kernel cannot translate.
    """

    pid: int
    uid: int
    gid: int


class UnixSocketAttribute(TypedAttributeSet):
    """anyio typed attributes of connected aipc UNIX sockets.

    Read them with ``stream.extra(aipc.UnixSocketAttribute.peer_uid)``.

    Attributes:
        peer_credentials: a :class:`PeerCredentials`.
        peer_pid: the peer's pid.
        peer_uid: the peer's effective uid.
        peer_gid: the peer's effective gid.
        peer_pidfd: a pidfd of the peer process (``SO_PEERPIDFD``, Linux 6.5+),
            owned by the socket and closed with it; use
            :meth:`UnixStream.peer_process` for a handle of your own.
    """

    peer_credentials: PeerCredentials = typed_attribute()
    peer_pid: int = typed_attribute()
    peer_uid: int = typed_attribute()
    peer_gid: int = typed_attribute()
    peer_pidfd: int = typed_attribute()


@dataclass(frozen=True)
class UnixSocketStatistics:
    """Counters of one socket (cheap: no syscall).

    Attributes:
        bytes_received: payload bytes received.
        bytes_sent: payload bytes sent.
        messages_received: successful receive calls (messages, for seqpacket
            and datagram sockets).
        messages_sent: successful send calls.
        fds_received: descriptors received with messages.
        fds_sent: descriptors sent with messages.
        waits: times a call waited for readiness.
    """

    bytes_received: int
    bytes_sent: int
    messages_received: int
    messages_sent: int
    fds_received: int
    fds_sent: int
    waits: int


@dataclass(frozen=True)
class UnixListenerStatistics:
    """Counters of a listener: connections ``accepted`` and ``refused`` by its
    peer policy."""

    accepted: int
    refused: int


# ---------------------------------------------------------------------------
# addresses and binding


def _address(value: object, name: str = "path") -> Address:
    """Check a socket address: a path or an abstract name within the limits."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        raw = os.fsencode(value)
    elif isinstance(value, bytes):
        raw = value
    else:
        raise TypeError(
            f"{name} must be a str, bytes or os.PathLike, not {type(value).__name__}"
        )
    if not raw:
        raise ValueError(f"{name} must not be empty")
    if raw[0] == 0:
        if len(raw) > UNIX_PATH_MAX:
            raise LimitExceededError(
                f"len({name})",
                len(raw),
                UNIX_PATH_MAX,
                "the longest abstract UNIX socket name in bytes, the leading NUL "
                "included (sun_path)",
                "use a shorter name",
            )
    else:
        if 0 in raw:
            raise ValueError(
                f"{name} must not contain a NUL byte, except as the first one of "
                "an abstract name"
            )
        if len(raw) >= UNIX_PATH_MAX:
            raise LimitExceededError(
                f"len({name})",
                len(raw),
                UNIX_PATH_MAX - 1,
                "the longest UNIX socket path in bytes (sun_path holds 108 with "
                "the terminating NUL)",
                "use a shorter path (a relative one from a nearby working "
                "directory, or a shorter directory such as $XDG_RUNTIME_DIR) or "
                "an abstract name ('\\0name')",
            )
    return value


def _is_abstract(address: Address) -> bool:
    return address[:1] in ("\0", b"\0")


@dataclass
class _BoundPath:
    """A socket file this process created: removed on close only if it is
    still the same file."""

    path: str  # absolute, so a later chdir does not matter
    identity: tuple[int, int]
    unlink: bool

    def release(self) -> None:
        if self.unlink:
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                pass
            else:
                if (st.st_dev, st.st_ino) == self.identity:
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
            _registry.unregister("unix-socket", self.path, self.identity)


def _reclaim_stale(path: str) -> None:
    """Remove the socket file at ``path`` if no live socket is bound to it;
    raise if it is live or not a socket. Returns when the path is free."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # removed meanwhile: try the bind again
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(
            errno.EEXIST,
            f"cannot bind {path!r}: it exists and is not a socket; aipc removes "
            "only stale socket files",
        )
    live = _registry.unix_socket_is_live(path)
    if live is None:
        raise AddressInUseError(
            path,
            "a socket file is there and aipc may not connect to it to tell "
            "whether a server is alive, so it is left alone",
        )
    if live:
        raise AddressInUseError(
            path,
            "a live server is bound to it, and aipc never takes over another "
            "socket (stop that server, or choose another path)",
        )
    # Stale. Remove it only if it is still the file that was probed: a server
    # that reclaimed the path meanwhile keeps its new socket.
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _bind(
    sock: socket.socket, address: Address, mode: int, unlink: bool
) -> _BoundPath | None:
    """Bind ``sock`` (see the module docstring); return what close must undo."""
    if _is_abstract(address):
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(
                    address, "a live socket holds this abstract name"
                ) from None
            raise
        return None
    path = os.fsdecode(address)
    # Linux creates the file with the socket inode's mode minus the umask: set
    # it first, so the file is never more open than asked, not even briefly.
    os.fchmod(sock.fileno(), mode)
    for _ in range(3):
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            _reclaim_stale(path)
            continue
        break
    else:
        raise AddressInUseError(
            path, "another process re-created it each time a stale one was removed"
        )
    try:
        os.chmod(path, mode)  # the umask may have cleared bits that were asked for
        st = os.lstat(path)
        bound = _BoundPath(os.path.abspath(path), (st.st_dev, st.st_ino), unlink=unlink)
        _registry.register("unix-socket", bound.path, st.st_dev, st.st_ino)
    except BaseException:
        # the file was created by this bind a moment ago: remove it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return bound


def _new_socket(kind: int) -> socket.socket:
    return socket.socket(
        socket.AF_UNIX, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )


def _adopt_socket(fd: int, kinds: Collection[int], what: str) -> socket.socket:
    """Wrap ``fd`` as a socket object if it is an AF_UNIX socket of one of
    ``kinds``; on error ``fd`` stays the caller's and stays open."""
    fd = check_int("fd", fd)
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise ValueError(f"fd {fd} is not an open file descriptor") from None
        if exc.errno == errno.ENOTSOCK:
            raise ValueError(f"fd {fd} is not a socket") from None
        raise
    if sock.family != socket.AF_UNIX or sock.type not in kinds:
        family, kind = sock.family, sock.type
        sock.detach()
        raise ValueError(
            f"fd {fd} is a {getattr(family, 'name', family)} "
            f"{getattr(kind, 'name', kind)} socket, not {what}"
        )
    os.set_inheritable(fd, False)
    return sock


# ---------------------------------------------------------------------------
# what every socket shares


class _Socket:
    """The owned socket, peer identity, typed attributes and closing."""

    _what = "UNIX socket"
    _sock: socket.socket
    _handle: FdHandle
    _bound: _BoundPath | None
    _pidfd: FdHandle | None

    def _setup(self, sock: socket.socket, bound: _BoundPath | None) -> FdHandle:
        self._sock = sock
        # the socket object's own close closes the fd; the handle calls it in
        # its close order (forget, wake waiters, close)
        self._handle = FdHandle(sock.fileno(), self._what, closer=sock.close)
        self._bound = bound
        self._pidfd = None
        self._fds_received = self._fds_sent = 0
        return self._handle

    def fileno(self) -> int:
        """The socket's descriptor (owned by this object; do not close it)."""
        return self._handle.fileno()

    @property
    def closed(self) -> bool:
        """Whether this socket has been closed."""
        return self._handle.closed

    def close(self) -> None:
        """Close the socket (idempotent); a path it bound is removed if it is
        still this socket's file."""
        if self._handle.closed:
            return
        # The path goes first, while the open socket still holds its inode:
        # once the socket is closed, the number of an inode unlinked behind
        # our back is free, and a new file at the path may get it at once,
        # which the (device, inode) comparison would take for ours.
        bound, self._bound = self._bound, None
        try:
            if bound is not None:
                bound.release()
        finally:
            self._handle.close()
            self._close_pending()
            if self._pidfd is not None:
                self._pidfd.close()

    async def aclose(self) -> None:
        """Close the socket (idempotent, also when cancelled); see :meth:`close`."""
        self.close()
        await checkpoint()

    def _close_pending(self) -> None:
        """Close descriptors kept for the next receive (closing drops them)."""

    def pass_credentials(self, enabled: bool = True) -> None:
        """Have the kernel attach the sender's credentials to every message
        received from now on (``SO_PASSCRED``); ``receive_fds`` returns them
        in :attr:`ReceivedMessage.credentials`.

        The kernel fills them in (pid, uid, gid of the sending process, for
        each message), so a datagram socket learns who sent each datagram.
        """
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, int(enabled))

    # -- identity

    def peer_credentials(self) -> PeerCredentials:
        """The peer's pid, uid and gid (``SO_PEERCRED``).

        Raises ``OSError`` (``ENOTCONN``) when the kernel recorded no peer: a
        socket that is not connected, or a datagram socket connected with
        ``connect()`` (only :func:`create_unix_socket_pair` gives datagram
        sockets peer credentials).
        """
        creds = _peer_ucred(self._sock)
        if creds is None:
            raise OSError(
                errno.ENOTCONN,
                f"the kernel recorded no peer credentials for this {self._what} "
                "(not connected, or a datagram socket connected with connect())",
            )
        return creds

    def _peer_pidfd(self) -> int:
        if self._pidfd is None or self._pidfd.closed:
            self._pidfd = FdHandle(_get_peer_pidfd(self._sock), "peer pidfd")
        return self._pidfd.fileno()

    def peer_process(self) -> Process:
        """A :class:`aipc.Process` handle on the peer (``SO_PEERPIDFD``).

        The handle names the very process that connected, even after it exits
        and its pid is reused (unlike a ``pidfd_open`` of ``peer_pid``, which
        could reach a newer process). The caller owns it and closes it.

        Raises ``OSError`` (``ENOPROTOOPT``) on kernels before 6.5.
        """
        from ._process import Process

        fd = _get_peer_pidfd(self._sock)
        try:
            return Process.from_fd(fd)
        except BaseException:
            os.close(fd)
            raise

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._sock
        attributes: dict[Any, Callable[[], Any]] = {
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: sock.getsockname,
            SocketAttribute.raw_socket: lambda: sock,
        }
        try:
            peer = sock.getpeername()
        except OSError:
            return attributes
        attributes[SocketAttribute.remote_address] = lambda: peer
        # a datagram socket has a peer's credentials only from socketpair()
        # (whose peer has no name); connect() records none
        if sock.type != socket.SOCK_DGRAM or _peer_ucred(sock) is not None:
            attributes.update(
                {
                    UnixSocketAttribute.peer_credentials: self.peer_credentials,
                    UnixSocketAttribute.peer_pid: lambda: self.peer_credentials().pid,
                    UnixSocketAttribute.peer_uid: lambda: self.peer_credentials().uid,
                    UnixSocketAttribute.peer_gid: lambda: self.peer_credentials().gid,
                    UnixSocketAttribute.peer_pidfd: self._peer_pidfd,
                }
            )
        return attributes

    def _describe(self) -> str:
        fd = self._handle.fd
        if fd < 0:
            return "closed"
        try:
            name = self._sock.getsockname()
        except OSError:
            name = ""
        where = f" {name!r}" if name else ""
        return f"fd={fd}{where}"

    def _handoff_fds(self) -> tuple[int]:
        return (self._handle.fileno(),)


def _peer_ucred(sock: socket.socket) -> PeerCredentials | None:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    creds = PeerCredentials(*_UCRED.unpack(data))
    # with no peer recorded the kernel says pid 0, uid and gid (uid_t)-1; a
    # real peer the caller's user namespace cannot map shows the overflow
    # uid (65534) instead, so -1 means "none"
    return None if creds.uid == _NO_ID and creds.gid == _NO_ID else creds


def _get_peer_pidfd(sock: socket.socket) -> int:
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
        fd: int = struct.unpack("i", data)[0]
        return fd
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:
            raise OSError(
                exc.errno,
                "this kernel has no SO_PEERPIDFD (Linux 6.5+); use "
                "peer_credentials().pid, which may name a newer process once the "
                "peer exits",
            ) from None
        raise


# ---------------------------------------------------------------------------
# stream sockets


class UnixStream(_Socket, FdReceiveStream, ByteStream):
    """A connected UNIX stream socket: an anyio ``ByteStream``.

    Made by :func:`connect_unix_stream`, a :class:`UnixListener`,
    :func:`create_unix_socket_pair` or :meth:`from_fd`; it owns its descriptor.
    ``send_eof`` shuts down the sending direction (half-close). Peer identity:
    :meth:`peer_credentials`, :meth:`peer_process` and
    :class:`UnixSocketAttribute`.
    """

    _what = "UNIX stream socket"

    def __init__(self, sock: socket.socket, bound: _BoundPath | None = None) -> None:
        handle = self._setup(sock, bound)
        recv, send = sock.recv, sock.send
        # on trio, trio's own sockets' order of reads and writes (_core/_stream)
        FdReceiveStream.__init__(
            self, handle, read=lambda fd, n: recv(n, _DONTWAIT), trio_reads_first=True
        )
        self._sender = FdSendStream(
            handle, write=lambda fd, data: send(data, _SEND_FLAGS), trio_order=True
        )
        self._pending_fds: list[ReceivedFd] = []
        self._eof_sent = False
        self._writable_waiters = 0

    @classmethod
    def from_fd(cls, fd: int) -> Self:
        """Take ownership of ``fd``, a connected AF_UNIX stream socket.

        Its open file description is left as it is (blocking or not: aipc
        passes ``MSG_DONTWAIT``). The fd is made close-on-exec. On error it
        stays the caller's. Raises ``ValueError`` if it is not such a socket.
        """
        return cls(_adopt_socket(fd, (socket.SOCK_STREAM,), "a UNIX stream socket"))

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send all of ``item``, waiting while the socket buffer is full.

        Raises:
            BrokenResourceError: the peer closed or shut down its receiving side.
            ClosedResourceError: this socket was closed, or :meth:`send_eof`
                was called.
            BusyResourceError: another task is already sending.

        **Cancellation:** a send cancelled before it returns wrote nothing if
        ``item`` fit into the socket buffer at once; a larger one may have
        written a prefix (``statistics().bytes_sent`` counts exactly what).
        """
        if self._eof_sent:
            # the kernel would say EPIPE, as for a peer that is gone; anyio and
            # trio streams say "closed" for a direction this side ended
            await checkpoint()
            raise anyio.ClosedResourceError("cannot send after send_eof()")
        await self._sender.send(item)

    def _send_some(self, data: bytes | bytearray | memoryview) -> Awaitable[int]:
        # for channels: one write, cancellable only before it (FdSendStream)
        return self._sender._send_some(data)

    def _try_send(self, data: bytes | bytearray | memoryview) -> int:
        # for channels: one write that never waits (FdSendStream)
        return self._sender._try_send(data)

    async def send_eof(self) -> None:
        """Shut down the sending direction: the peer reads to the end, then
        gets ``EndOfStream``; this side can still receive, and a later
        :meth:`send` raises ``ClosedResourceError``. Calling it again does
        nothing. Raises ``BusyResourceError`` while another task sends or
        waits in :meth:`wait_writable`."""
        if self._sender._sending or self._writable_waiters:
            raise anyio.BusyResourceError("sending to")
        await checkpoint()
        if self._handle.closed:
            raise anyio.ClosedResourceError
        self._eof_sent = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:  # the peer is gone: nothing to end
                raise

    async def wait_writable(self) -> None:
        """Wait until a send can make progress without waiting.

        **Cancellation:** nothing to undo.
        """
        self._writable_waiters += 1
        try:
            await self._sender.wait_writable()
        finally:
            self._writable_waiters -= 1

    # -- descriptor passing

    async def send_fds(
        self,
        data: bytes | bytearray | memoryview,
        fds: Sequence[FdLike],
        *,
        credentials: bool = False,
    ) -> None:
        """Send ``data`` with descriptors attached (``SCM_RIGHTS``).

        ``fds`` holds ints or objects with ``fileno()`` (any aipc object, a
        file, a socket); the peer gets duplicates, and the originals stay
        yours. On a stream socket descriptors travel with bytes, so ``data``
        must not be empty: the peer's :meth:`receive_fds` returns them with
        the first of these bytes. ``credentials=True`` attaches this process's
        pid, uid and gid (``SCM_CREDENTIALS``; the kernel checks them).

        Raises ``LimitExceededError`` for more than 253 descriptors
        (SCM_MAX_FD), and what :meth:`send` raises.

        **Cancellation:** cancelled before the first bytes went out, nothing
        was sent. The descriptors go with the first write; if ``data`` did not
        fit at once, the rest follows as :meth:`send` does (and may be cut
        short by a cancellation the same way).
        """
        numbers = fd_numbers(fds)
        size = _check_message(data)
        if not size:
            raise ValueError(
                "data must not be empty: on a stream socket descriptors travel "
                "with bytes"
            )
        control = ancillary(numbers, credentials)
        sender = self._sender
        if sender._sending:
            raise anyio.BusyResourceError("sending to")
        sender._sending = True
        try:
            await checkpoint()
            handle = self._handle
            while True:
                if handle.fd < 0:
                    raise anyio.ClosedResourceError
                try:
                    sent = self._sock.sendmsg([data], control, _SEND_FLAGS)
                except BlockingIOError:
                    sender._waits += 1
                    await handle.wait_writable()
                    continue
                except OSError as exc:
                    raise translate_os_error(
                        exc, closed=handle.closed, what=handle.what
                    ) from exc
                break
            sender._bytes += sent
            sender._syscalls += 1
            self._fds_sent += len(numbers)
        finally:
            sender._sending = False
        if sent < size:
            await sender.send(memoryview(data).cast("B")[sent:])
        else:
            sender._ops += 1

    def _recvmsg(self, max_bytes: int, max_fds: int) -> ReceivedMessage:
        data, control, flags, _ = self._sock.recvmsg(
            max_bytes, control_space(max_fds), RECV_FLAGS
        )
        return parse(data, control, flags, max_fds)

    def _keep_message(self, message: ReceivedMessage) -> None:
        # taken from the kernel for a receive that was cancelled: the next
        # receive_fds returns it (a plain receive returns its bytes)
        self._pending = message.data + self._pending
        self._pending_fds[:0] = message.fds

    def _close_pending(self) -> None:
        while self._pending_fds:
            self._pending_fds.pop().close()

    async def receive_fds(
        self, max_bytes: int = 65536, *, max_fds: int = 16
    ) -> ReceivedMessage:
        """Receive up to ``max_bytes`` bytes and the descriptors sent with them.

        Returns a :class:`ReceivedMessage` whose ``fds`` are owned
        :class:`ReceivedFd` objects (close-on-exec): use it as a context
        manager, and :meth:`ReceivedFd.take` those you keep. The kernel never
        merges bytes sent with descriptors into a read with other bytes that
        carry descriptors, so one call returns one sender's set.

        Raises:
            FdTruncatedError: more than ``max_fds`` descriptors came (the ones
                that arrived are closed; the bytes are in the exception).
            EndOfStream: the peer closed its side and everything was read.

        **Cancellation:** nothing is lost: bytes and descriptors taken from the
        kernel by a cancelled call are returned by the next ``receive_fds``.
        Closing the socket closes descriptors kept that way.
        """
        if type(max_bytes) is not int or max_bytes < 1:
            _check_max_bytes(max_bytes)
        check_max_fds(max_fds)
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        try:
            if self._pending or self._pending_fds:
                await checkpoint()
                data = self._pending[:max_bytes]
                self._pending = self._pending[max_bytes:]
                fds, self._pending_fds = self._pending_fds, []
                message = ReceivedMessage(data, fds)
            else:
                handle = self._handle
                if handle.fd < 0:
                    await checkpoint()
                    raise anyio.ClosedResourceError
                attempt = partial(self._recvmsg, max_bytes, max_fds)
                try:
                    try:
                        message = attempt()
                    except BlockingIOError:
                        self._waits += 1
                        message = await handle.read_when_ready(
                            attempt, self._keep_message
                        )
                    else:
                        try:
                            await checkpoint()
                        except BaseException:
                            self._keep_message(message)
                            raise
                except OSError as exc:
                    raise translate_os_error(
                        exc, closed=handle.closed, what=handle.what
                    ) from exc
                self._syscalls += 1
            if not message.data and not message.fds:
                raise anyio.EndOfStream
            self._bytes += len(message.data)
            self._ops += 1
            self._fds_received += len(message.fds)
            return message
        finally:
            self._receiving = False

    async def send_objects(self, *objects: object) -> None:
        """Send aipc objects (pipe and FIFO ends, eventfds, sockets,
        listeners, processes) so that :meth:`receive_objects` rebuilds each
        as the same kind of object on the same kernel object.

        The objects stay open here: the peer gets duplicates of their
        descriptors. Raises ``TypeError`` for an object that cannot be sent
        (the message lists those that can).

        **Cancellation:** as :meth:`send_fds`; the message is small, so a
        cancelled call sent nothing or all of it.
        """
        payload, fds = encode_objects(objects)
        await self.send_fds(objects_frame(payload), fds)

    async def receive_objects(self) -> list[Any]:
        """Receive what the peer sent with :meth:`send_objects`: the objects,
        rebuilt, in order. They own their descriptors: close them.

        Must be called where the peer's ``send_objects`` message starts in the
        stream. Raises ``ValueError`` if the bytes there are not one (the
        descriptors that came are closed).

        **Cancellation:** cancelled while waiting, nothing is lost; once the
        message has begun to arrive, it is read to its end (a well-behaved
        peer sent it in one piece) and then the cancellation takes effect, its
        descriptors closed.
        """
        message = await self.receive_fds(OBJECTS_HEADER_SIZE, max_fds=SCM_MAX_FD)
        with message:
            with anyio.CancelScope(shield=True):
                header = message.data
                length, payload = 1, b""
                with anyio.move_on_after(5):
                    while len(header) < OBJECTS_HEADER_SIZE:
                        header += await self.receive(OBJECTS_HEADER_SIZE - len(header))
                    length = objects_length(header)
                    while len(payload) < length:
                        payload += await self.receive(length - len(payload))
                if len(header) < OBJECTS_HEADER_SIZE or len(payload) < length:
                    raise anyio.BrokenResourceError(
                        "the peer's objects message stopped half way"
                    )
            return decode_objects(message, payload)

    def statistics(self) -> UnixSocketStatistics:  # type: ignore[override]
        """Byte, message, fd and wait counters of this socket."""
        s = self._sender
        return UnixSocketStatistics(
            self._bytes,
            s._bytes,
            self._ops,
            s._ops,
            self._fds_received,
            self._fds_sent,
            self._waits + s._waits,
        )

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, Any]]:
        return "unix-stream", self._handoff_fds(), {}

    def __repr__(self) -> str:
        s = self._sender
        return (
            f"<UnixStream {self._describe()} received={self._bytes}B sent={s._bytes}B>"
        )


# ---------------------------------------------------------------------------
# message sockets: seqpacket and datagram

_M = TypeVar("_M")


class _MessageSocket(_Socket, Generic[_M]):
    """Receive and send of whole messages with the pipe streams' contract: try
    first, wait on EAGAIN, checkpoint, and keep a message whose receive was
    cancelled after it was taken."""

    def _setup_messages(
        self, sock: socket.socket, bound: _BoundPath | None, max_size: int
    ) -> None:
        max_size = _check_max_size(max_size)
        self._setup(sock, bound)
        self._max_size = max_size
        self._buffer = bytearray(max_size)
        self._view = memoryview(self._buffer)
        # items kept for the next receive: _M, or a ReceivedMessage kept by a
        # cancelled receive_fds
        self._pending: collections.deque[Any] = collections.deque()
        self._receiving = self._sending = False
        self._bytes_in = self._bytes_out = self._msgs_in = self._msgs_out = 0
        self._waits = 0

    @property
    def max_size(self) -> int:
        """The largest message this socket receives (``max_size=``)."""
        return self._max_size

    def _recv_message(self) -> tuple[bytes, Any]:
        """One non-blocking receive: (payload, sender address).

        Descriptors sent with the message are closed by the kernel (there is
        no room for them): use ``receive_fds`` for those.
        """
        n, _, flags, address = self._sock.recvmsg_into((self._buffer,), 0, _RECV_FLAGS)
        if n > self._max_size or flags & _MSG_TRUNC:
            raise self._too_large(n)
        return bytes(self._view[:n]), address

    def _too_large(self, n: int) -> LimitExceededError:
        self._msgs_in += 1  # the kernel discarded the rest: it is gone
        return LimitExceededError(
            "message size",
            n,
            self._max_size,
            f"this {self._what}'s max_size",
            "the message was discarded; open the socket with a larger "
            "max_size, or send smaller messages",
        )

    def _recv_fds_attempt(self, max_fds: int) -> ReceivedMessage:
        n, control, flags, address = self._sock.recvmsg_into(
            (self._buffer,), control_space(max_fds), _RECV_FLAGS | RECV_FLAGS
        )
        size = min(n, self._max_size)
        message = parse(bytes(self._view[:size]), control, flags, max_fds, address)
        if n > self._max_size or flags & socket.MSG_TRUNC:
            message.close()
            raise self._too_large(n)
        self._bytes_in += size
        self._msgs_in += 1
        return message

    def _close_pending(self) -> None:
        for item in self._pending:
            if isinstance(item, ReceivedMessage):
                item.close()
        self._pending.clear()

    async def _receive_fds(self, max_fds: int) -> ReceivedMessage:
        check_max_fds(max_fds)
        item: Any = await self._receive_one(partial(self._recv_fds_attempt, max_fds))
        message: ReceivedMessage
        if isinstance(item, ReceivedMessage):
            message = item
        elif isinstance(item, tuple):  # kept by a cancelled plain receive
            message = ReceivedMessage(item[0], address=item[1])
        else:
            message = ReceivedMessage(item)
        self._fds_received += len(message.fds)
        return message

    async def _send_fds(
        self,
        data: bytes | bytearray | memoryview,
        fds: Sequence[FdLike],
        credentials: bool,
        address: Any = None,
    ) -> None:
        numbers = fd_numbers(fds)
        size = _check_message(data)
        control = ancillary(numbers, credentials)
        sendmsg = self._sock.sendmsg
        if address is None:
            await self._send_one(lambda: sendmsg([data], control, _SEND_FLAGS), size)
        else:
            address = _address(address, "address")
            await self._send_one(
                lambda: sendmsg([data], control, _SEND_FLAGS, address), size, poll=True
            )
        self._fds_sent += len(numbers)

    def _keep(self, item: Any) -> None:
        self._pending.appendleft(item)

    async def _receive_one(self, attempt: Callable[[], Any]) -> Any:
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        try:
            if self._pending:
                await checkpoint()
                return self._pending.popleft()
            handle = self._handle
            if handle.fd < 0:
                await checkpoint()
                raise anyio.ClosedResourceError
            try:
                try:
                    item = attempt()
                except BlockingIOError:
                    self._waits += 1
                    return await handle.read_when_ready(attempt, self._keep)
                try:
                    await checkpoint()
                except BaseException:
                    self._pending.appendleft(item)
                    raise
                return item
            except OSError as exc:
                raise translate_os_error(
                    exc, closed=handle.closed, what=handle.what
                ) from exc
        finally:
            self._receiving = False

    async def _send_one(
        self, attempt: Callable[[], int], size: int, *, poll: bool = False
    ) -> None:
        """Send one message with ``attempt`` (a non-blocking send).

        ``poll``: the kernel gives no readiness event for this send (an
        unconnected datagram socket whose receiver's queue is full: Linux
        reports the socket writable all the same), so wait with a growing
        timer instead of for readiness.
        """
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        # on trio, trio's own order (see FdSendStream._send_trio_order)
        lowlevel = _trio().lowlevel if current_library() == "trio" else None
        if lowlevel is not None:
            await lowlevel.checkpoint_if_cancelled()
        self._sending = True
        waits = self._waits
        try:
            if lowlevel is None:
                await checkpoint()
            handle = self._handle
            delay = 0.0005
            while True:
                if handle.fd < 0:
                    raise anyio.ClosedResourceError
                try:
                    attempt()
                except BlockingIOError:
                    self._waits += 1
                    if poll:
                        await anyio.sleep(delay)
                        delay = min(delay * 2, 0.05)
                    else:
                        await handle.wait_writable()
                    continue
                except OSError as exc:
                    raise self._send_error(exc, size) from exc
                break
            self._bytes_out += size
            self._msgs_out += 1
        finally:
            self._sending = False
            if lowlevel is not None and self._waits == waits:
                await lowlevel.cancel_shielded_checkpoint()

    def _send_error(self, exc: OSError, size: int) -> BaseException:
        if exc.errno == errno.EMSGSIZE:
            sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            # the kernel refuses a message longer than SO_SNDBUF - 32
            # (unix_dgram_sendmsg, also for seqpacket)
            return LimitExceededError(
                "len(item)",
                size,
                sndbuf - 32,
                "the largest message the socket's send buffer takes (SO_SNDBUF "
                "less 32 bytes; SO_SNDBUF comes from net.core.wmem_default)",
                "send smaller messages, or raise SO_SNDBUF (up to net.core.wmem_max)",
            )
        # A connected datagram socket whose peer is gone: the first send gets
        # ECONNREFUSED and the kernel drops the association, so later ones get
        # ENOTCONN; both mean the same. (An unconnected socket's sendto gets
        # ECONNREFUSED for that one address only: it stays usable.)
        if exc.errno in (errno.ECONNREFUSED, errno.ENOTCONN) and isinstance(
            self, ConnectedUnixDatagramSocket
        ):
            return anyio.BrokenResourceError(f"the peer of the {self._what} is gone")
        return translate_os_error(exc, closed=self._handle.closed, what=self._what)

    def statistics(self) -> UnixSocketStatistics:
        """Byte, message, fd and wait counters of this socket."""
        return UnixSocketStatistics(
            self._bytes_in,
            self._bytes_out,
            self._msgs_in,
            self._msgs_out,
            self._fds_received,
            self._fds_sent,
            self._waits,
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._describe()} "
            f"received={self._msgs_in} sent={self._msgs_out}>"
        )


def _plain(message: ReceivedMessage) -> bytes:
    # a plain receive after a cancelled receive_fds: the bytes, and the
    # descriptors closed (as the kernel closes those a plain receive cannot take)
    message.close()
    return message.data


def _check_message(item: object) -> int:
    if not isinstance(item, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"item must be bytes, bytearray or memoryview, not {type(item).__name__}"
        )
    return item.nbytes if isinstance(item, memoryview) else len(item)


class UnixSeqpacketStream(_MessageSocket[bytes], ObjectStream[bytes]):
    """A connected UNIX seqpacket socket: an anyio ``ObjectStream[bytes]``.

    Each ``send`` arrives as one ``receive``, whole and in order (the kernel
    keeps the boundaries). A message larger than :attr:`max_size` is discarded
    by the kernel on receive and raises ``LimitExceededError``; empty messages
    cannot be sent, because the receiver could not tell one from the end of
    the stream. Made by :func:`connect_unix_seqpacket`, a seqpacket
    :class:`UnixListener`, :func:`create_unix_socket_pair` or :meth:`from_fd`.
    """

    _what = "UNIX seqpacket socket"

    def __init__(
        self,
        sock: socket.socket,
        bound: _BoundPath | None = None,
        *,
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._setup_messages(sock, bound, max_size)
        self._eof_sent = False

    @classmethod
    def from_fd(cls, fd: int, *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Self:
        """Take ownership of ``fd``, a connected AF_UNIX seqpacket socket (see
        :meth:`UnixStream.from_fd`)."""
        _check_max_size(max_size)  # before the fd is wrapped: it stays the caller's
        return cls(
            _adopt_socket(fd, (socket.SOCK_SEQPACKET,), "a UNIX seqpacket socket"),
            max_size=max_size,
        )

    def _receive_attempt(self) -> bytes:
        data, _ = self._recv_message()
        if not data:
            return data  # end of stream: counted by receive
        self._bytes_in += len(data)
        self._msgs_in += 1
        return data

    async def receive(self) -> bytes:
        """Receive the next message, waiting until one arrives.

        Raises:
            EndOfStream: the peer closed or shut down its sending side.
            LimitExceededError: the message was larger than ``max_size``; the
                kernel discarded it.
            ClosedResourceError: this socket was closed.
            BusyResourceError: another task is already receiving.

        **Cancellation:** nothing is lost: a message taken from the kernel by a
        cancelled receive is returned by the next one.
        """
        # (no bound method kept on self: that cycle would leave an unclosed
        # socket to the garbage collector, which may run socket.socket's own
        # finalizer first, and that warns once more)
        item: Any = await self._receive_one(self._receive_attempt)
        data: bytes = item if type(item) is bytes else _plain(item)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send ``item`` as one message, waiting while the socket buffer is full.

        Raises:
            ValueError: ``item`` is empty.
            LimitExceededError: ``item`` is larger than the send buffer.
            BrokenResourceError: the peer is gone.
            ClosedResourceError: this socket was closed, or :meth:`send_eof`
                was called.

        **Cancellation:** a cancelled send sent nothing (a message goes whole
        or not at all).
        """
        size = _check_message(item)
        if not size:
            raise ValueError(
                "a seqpacket message must not be empty: the receiver could not "
                "tell it from the end of the stream"
            )
        if self._eof_sent:
            await checkpoint()
            raise anyio.ClosedResourceError("cannot send after send_eof()")
        send = self._sock.send
        await self._send_one(lambda: send(item, _SEND_FLAGS), size)

    async def send_eof(self) -> None:
        """Shut down the sending direction: the peer gets ``EndOfStream`` after
        the messages already sent, and a later :meth:`send` raises
        ``ClosedResourceError``. ``BusyResourceError`` while another task
        sends."""
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        await checkpoint()
        if self._handle.closed:
            raise anyio.ClosedResourceError
        self._eof_sent = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise

    async def send_fds(
        self,
        data: bytes | bytearray | memoryview,
        fds: Sequence[FdLike],
        *,
        credentials: bool = False,
    ) -> None:
        """Send ``data`` as one message with descriptors attached
        (``SCM_RIGHTS``); see :meth:`UnixStream.send_fds`.

        **Cancellation:** a cancelled call sent nothing.
        """
        if not _check_message(data):
            raise ValueError(
                "a seqpacket message must not be empty: the receiver could not "
                "tell it from the end of the stream"
            )
        await self._send_fds(data, fds, credentials)

    async def receive_fds(self, *, max_fds: int = 16) -> ReceivedMessage:
        """Receive the next message and the descriptors sent with it.

        See :meth:`UnixStream.receive_fds` for the returned message and
        ``FdTruncatedError``. Raises ``EndOfStream`` at the end of the stream
        and ``LimitExceededError`` for a message larger than ``max_size``
        (its descriptors are closed).

        **Cancellation:** nothing is lost: the next receive gets it.
        """
        message = await self._receive_fds(max_fds)
        if not message.data and not message.fds:
            raise anyio.EndOfStream
        return message

    async def send_objects(self, *objects: object) -> None:
        """Send aipc objects in one message; see :meth:`UnixStream.send_objects`.

        **Cancellation:** a cancelled call sent nothing.
        """
        payload, fds = encode_objects(objects)
        await self._send_fds(payload, fds, False)

    async def receive_objects(self) -> list[Any]:
        """Receive objects sent with :meth:`send_objects`, rebuilt; see
        :meth:`UnixStream.receive_objects`.

        **Cancellation:** nothing is lost.
        """
        message = await self.receive_fds(max_fds=SCM_MAX_FD)
        return decode_objects(message, message.data)

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, Any]]:
        return "unix-seqpacket", self._handoff_fds(), {"max_size": self._max_size}


class UnixDatagramSocket(
    _MessageSocket[tuple[bytes, Any]], UnreliableObjectStream[tuple[bytes, Any]]
):
    """An unconnected UNIX datagram socket: receives ``(data, sender address)``
    and sends ``(data, address)`` (anyio's ``UnreliableObjectStream``).

    UNIX datagrams are reliable and ordered between two sockets on Linux (a
    sender waits while the receiver's queue is full). A sender that did not
    bind an address has none to reply to (its address is ``None`` or empty).
    Made by :func:`create_unix_datagram_socket` or :meth:`from_fd`.
    """

    _what = "UNIX datagram socket"

    def __init__(
        self,
        sock: socket.socket,
        bound: _BoundPath | None = None,
        *,
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._setup_messages(sock, bound, max_size)

    @classmethod
    def from_fd(cls, fd: int, *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Self:
        """Take ownership of ``fd``, an AF_UNIX datagram socket (see
        :meth:`UnixStream.from_fd`)."""
        _check_max_size(max_size)  # before the fd is wrapped: it stays the caller's
        return cls(
            _adopt_socket(fd, (socket.SOCK_DGRAM,), "a UNIX datagram socket"),
            max_size=max_size,
        )

    def _receive_attempt(self) -> tuple[bytes, Any]:
        data, address = self._recv_message()
        self._bytes_in += len(data)
        self._msgs_in += 1
        return data, address

    async def receive(self) -> tuple[bytes, Any]:
        """Receive the next datagram and its sender's address.

        Raises ``LimitExceededError`` for a datagram larger than ``max_size``
        (discarded by the kernel), ``ClosedResourceError`` and
        ``BusyResourceError`` as streams do.

        **Cancellation:** nothing is lost (see :meth:`UnixSeqpacketStream.receive`).
        """
        item: Any = await self._receive_one(self._receive_attempt)
        if type(item) is not tuple:
            message: ReceivedMessage = item
            return _plain(message), message.address
        return item

    async def send(self, item: tuple[bytes, Any]) -> None:
        """Send ``item``, a ``(data, address)`` pair, as one datagram.

        Waits while the receiver's queue is full. Linux gives no readiness
        event for that on an unconnected socket, so that wait polls with a
        timer from 0.5 ms growing to 50 ms; a connected socket
        (:func:`create_connected_unix_datagram_socket`) waits without polling.

        Raises ``FileNotFoundError`` / ``ConnectionRefusedError`` when nothing
        is bound at ``address``, ``LimitExceededError`` for a datagram larger
        than the send buffer.

        **Cancellation:** a cancelled send sent nothing.
        """
        data, address = item
        return await self.sendto(data, address)

    async def sendto(self, data: bytes | bytearray | memoryview, address: Any) -> None:
        """Send ``data`` as one datagram to ``address`` (see :meth:`send`)."""
        size = _check_message(data)
        address = _address(address, "address")
        sendto = self._sock.sendto
        await self._send_one(
            lambda: sendto(data, _SEND_FLAGS, address), size, poll=True
        )

    async def send_fds(
        self,
        data: bytes | bytearray | memoryview,
        fds: Sequence[FdLike],
        address: Any,
        *,
        credentials: bool = False,
    ) -> None:
        """Send ``data`` to ``address`` as one datagram with descriptors
        attached; see :meth:`UnixStream.send_fds` and :meth:`send`.

        **Cancellation:** a cancelled call sent nothing.
        """
        await self._send_fds(data, fds, credentials, address)

    async def receive_fds(self, *, max_fds: int = 16) -> ReceivedMessage:
        """Receive the next datagram with its descriptors; the sender's address
        is in :attr:`ReceivedMessage.address` (see
        :meth:`UnixSeqpacketStream.receive_fds`).

        **Cancellation:** nothing is lost.
        """
        return await self._receive_fds(max_fds)

    async def send_objects(self, *objects: object, address: Any) -> None:
        """Send aipc objects to ``address`` in one datagram; see
        :meth:`UnixStream.send_objects`.

        **Cancellation:** a cancelled call sent nothing.
        """
        payload, fds = encode_objects(objects)
        await self._send_fds(payload, fds, False, address)

    async def receive_objects(self) -> tuple[list[Any], Any]:
        """Receive objects sent with :meth:`send_objects`: the rebuilt objects
        and the sender's address.

        **Cancellation:** nothing is lost.
        """
        message = await self._receive_fds(SCM_MAX_FD)
        return decode_objects(message, message.data), message.address

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, Any]]:
        return "unix-datagram", self._handoff_fds(), {"max_size": self._max_size}


class ConnectedUnixDatagramSocket(_MessageSocket[bytes], UnreliableObjectStream[bytes]):
    """A UNIX datagram socket connected to one peer address:
    ``UnreliableObjectStream[bytes]``.

    Sends go to the peer, and only the peer's datagrams are received. Made by
    :func:`create_connected_unix_datagram_socket`,
    :func:`create_unix_socket_pair` or :meth:`from_fd`.
    """

    _what = "UNIX datagram socket"

    def __init__(
        self,
        sock: socket.socket,
        bound: _BoundPath | None = None,
        *,
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._setup_messages(sock, bound, max_size)

    @classmethod
    def from_fd(cls, fd: int, *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Self:
        """Take ownership of ``fd``, a connected AF_UNIX datagram socket (see
        :meth:`UnixStream.from_fd`)."""
        _check_max_size(max_size)  # before the fd is wrapped: it stays the caller's
        return cls(
            _adopt_socket(fd, (socket.SOCK_DGRAM,), "a UNIX datagram socket"),
            max_size=max_size,
        )

    def _receive_attempt(self) -> bytes:
        data, _ = self._recv_message()
        self._bytes_in += len(data)
        self._msgs_in += 1
        return data

    async def receive(self) -> bytes:
        """Receive the next datagram from the peer (see
        :meth:`UnixDatagramSocket.receive`).

        **Cancellation:** nothing is lost.
        """
        item: Any = await self._receive_one(self._receive_attempt)
        data: bytes = item if type(item) is bytes else _plain(item)
        return data

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send ``item`` to the peer as one datagram, waiting while the peer's
        queue is full.

        Raises ``BrokenResourceError`` when the peer socket is gone and
        ``LimitExceededError`` for a datagram larger than the send buffer.

        **Cancellation:** a cancelled send sent nothing.
        """
        size = _check_message(item)
        send = self._sock.send
        await self._send_one(lambda: send(item, _SEND_FLAGS), size)

    async def send_fds(
        self,
        data: bytes | bytearray | memoryview,
        fds: Sequence[FdLike],
        *,
        credentials: bool = False,
    ) -> None:
        """Send ``data`` to the peer as one datagram with descriptors attached;
        see :meth:`UnixStream.send_fds`.

        **Cancellation:** a cancelled call sent nothing.
        """
        await self._send_fds(data, fds, credentials)

    async def receive_fds(self, *, max_fds: int = 16) -> ReceivedMessage:
        """Receive the next datagram with its descriptors (see
        :meth:`UnixSeqpacketStream.receive_fds`).

        **Cancellation:** nothing is lost.
        """
        return await self._receive_fds(max_fds)

    async def send_objects(self, *objects: object) -> None:
        """Send aipc objects in one datagram; see :meth:`UnixStream.send_objects`.

        **Cancellation:** a cancelled call sent nothing.
        """
        payload, fds = encode_objects(objects)
        await self._send_fds(payload, fds, False)

    async def receive_objects(self) -> list[Any]:
        """Receive objects sent with :meth:`send_objects`, rebuilt.

        **Cancellation:** nothing is lost.
        """
        message = await self._receive_fds(SCM_MAX_FD)
        return decode_objects(message, message.data)

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, Any]]:
        return (
            "unix-datagram-connected",
            self._handoff_fds(),
            {"max_size": self._max_size},
        )


# ---------------------------------------------------------------------------
# listeners

_S = TypeVar("_S", UnixStream, UnixSeqpacketStream)
PeerPolicy = Callable[[PeerCredentials], bool]


def _peer_groups(sock: socket.socket) -> set[int]:
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 1024)
    except OSError:
        return set()  # more than 256 groups, or an old kernel: primary gid only
    return set(struct.unpack(f"{len(data) // 4}I", data))


class UnixListener(_Socket, Listener[_S], Generic[_S]):
    """A listening UNIX stream or seqpacket socket: an anyio ``Listener``.

    :meth:`accept` returns a :class:`UnixStream` (or a
    :class:`UnixSeqpacketStream`); :meth:`serve` runs a handler per
    connection in a task group. A peer policy (``allow_uids``,
    ``allow_gids``, ``policy``) refuses a connection before the application
    sees it: the connection is closed and counted in
    ``statistics().refused``. Made by :func:`create_unix_listener`,
    :func:`listeners_from_systemd` or :meth:`from_fd`.
    """

    _what = "UNIX listening socket"

    def __init__(
        self,
        sock: socket.socket,
        bound: _BoundPath | None = None,
        *,
        allow_uids: Collection[int] | None = None,
        allow_gids: Collection[int] | None = None,
        policy: PeerPolicy | None = None,
        name: str = "",
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._max_size = _check_max_size(max_size)
        self._uids = None if allow_uids is None else _id_set("allow_uids", allow_uids)
        self._gids = None if allow_gids is None else _id_set("allow_gids", allow_gids)
        if policy is not None and not callable(policy):
            raise TypeError(f"policy must be callable, not {type(policy).__name__}")
        self._policy = policy
        self._setup(sock, bound)
        self._kind = sock.type
        self.name = name
        self._accepting = False
        self._pending: collections.deque[Any] = collections.deque()
        self._accepted = self._refused = 0

    @classmethod
    def from_fd(
        cls,
        fd: int,
        *,
        allow_uids: Collection[int] | None = None,
        allow_gids: Collection[int] | None = None,
        policy: PeerPolicy | None = None,
    ) -> UnixListener[Any]:
        """Take ownership of ``fd``, a listening AF_UNIX stream or seqpacket
        socket. The path it is bound to is never removed by this object (it
        did not create it). Raises ``ValueError`` if ``fd`` is not one."""
        sock = _adopt_socket(
            fd,
            (socket.SOCK_STREAM, socket.SOCK_SEQPACKET),
            "a UNIX stream or seqpacket socket",
        )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ValueError(f"fd {fd} is a UNIX socket that is not listening")
        try:
            listener = UnixListener[Any](
                sock, allow_uids=allow_uids, allow_gids=allow_gids, policy=policy
            )
        except BaseException:
            sock.detach()  # a bad policy argument: the fd stays the caller's
            raise
        _own_nonblocking(sock)
        return listener

    @property
    def path(self) -> Address:
        """The address this listener is bound to."""
        address: Address = self._sock.getsockname()
        return address

    def _admit(self, conn: socket.socket) -> bool:
        if self._uids is None and self._gids is None and self._policy is None:
            return True
        data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        creds = PeerCredentials(*_UCRED.unpack(data))
        if self._uids is not None and creds.uid not in self._uids:
            return False
        if (
            self._gids is not None
            and creds.gid not in self._gids
            and not (self._gids & _peer_groups(conn))
        ):
            return False
        return self._policy is None or bool(self._policy(creds))

    def _accept_attempt(self) -> Any:
        while True:
            conn, _ = self._sock.accept()
            try:
                admitted = self._admit(conn)
            except BaseException:
                conn.close()
                raise
            if admitted:
                self._accepted += 1
                if self._kind == socket.SOCK_SEQPACKET:
                    return UnixSeqpacketStream(conn, max_size=self._max_size)
                return UnixStream(conn)
            self._refused += 1
            conn.close()

    def _keep(self, stream: Any) -> None:
        self._pending.appendleft(stream)

    async def accept(self) -> _S:
        """Wait for a connection the peer policy admits, and return it.

        Raises ``ClosedResourceError`` if the listener is or gets closed, and
        whatever the ``policy`` callback raises (the connection is closed).

        **Cancellation:** nothing is lost: a connection accepted by a cancelled
        call is returned by the next one.
        """
        if self._accepting:
            raise anyio.BusyResourceError("accepting on")
        self._accepting = True
        try:
            if self._pending:
                await checkpoint()
                stream: _S = self._pending.popleft()
                return stream
            handle = self._handle
            if handle.fd < 0:
                await checkpoint()
                raise anyio.ClosedResourceError
            try:
                try:
                    stream = self._accept_attempt()
                except BlockingIOError:
                    accepted: _S = await handle.read_when_ready(
                        self._accept_attempt, self._keep
                    )
                    return accepted
                try:
                    await checkpoint()
                except BaseException:
                    self._pending.appendleft(stream)
                    raise
                return stream
            except OSError as exc:
                raise translate_os_error(
                    exc, closed=handle.closed, what=handle.what
                ) from exc
        finally:
            self._accepting = False

    async def serve(
        self,
        handler: Callable[[_S], Any],
        task_group: TaskGroup | None = None,
    ) -> None:
        """Accept connections forever and run ``await handler(stream)`` for
        each in ``task_group`` (a new one if omitted). The stream is closed
        when the handler returns or raises."""

        async def run(stream: _S) -> None:
            async with stream:
                await handler(stream)

        async with AsyncExitStack() as stack:
            if task_group is None:
                task_group = await stack.enter_async_context(anyio.create_task_group())
            while True:
                stream = await self.accept()
                task_group.start_soon(run, stream)

    def close(self) -> None:
        """Close the listener (idempotent) and the connections it accepted for
        a cancelled ``accept``; remove its path if it is still this socket's."""
        super().close()
        while self._pending:
            self._pending.popleft().close()

    def statistics(self) -> UnixListenerStatistics:
        """Connections accepted and refused so far."""
        return UnixListenerStatistics(self._accepted, self._refused)

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, Any]]:
        return "unix-listener", self._handoff_fds(), {}

    def __repr__(self) -> str:
        kind = "seqpacket" if self._kind == socket.SOCK_SEQPACKET else "stream"
        return (
            f"<UnixListener {kind} {self._describe()} accepted={self._accepted} "
            f"refused={self._refused}>"
        )


def _id_set(name: str, values: Collection[int]) -> frozenset[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Collection):
        raise TypeError(
            f"{name} must be a collection of ints, not {type(values).__name__}"
        )
    for value in values:
        check_int(f"{name} items", value)
    return frozenset(values)


def _own_nonblocking(sock: socket.socket) -> None:
    # accept() has no MSG_DONTWAIT: a listening socket must be non-blocking, or
    # a connection another acceptor takes first would block the event loop
    if os.get_blocking(sock.fileno()):
        os.set_blocking(sock.fileno(), False)


def _check_max_size(max_size: object) -> int:
    max_size = check_int("max_size", max_size)
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    return max_size


def _check_backlog(backlog: object) -> int:
    backlog = check_int("backlog", backlog)
    if backlog < 1:
        raise ValueError(f"backlog must be at least 1, got {backlog}")
    return backlog


def _check_kind(kind: object, allowed: Collection[str]) -> int:
    if kind not in allowed:
        raise ValueError(
            f"kind must be one of {', '.join(map(repr, allowed))}, got {kind!r}"
        )
    return _KINDS[kind]  # type: ignore[index]


# ---------------------------------------------------------------------------
# factories


@overload
def create_unix_listener(
    path: Address | os.PathLike[str],
    *,
    kind: Literal["stream"] = ...,
    mode: int = ...,
    backlog: int = ...,
    allow_uids: Collection[int] | None = ...,
    allow_gids: Collection[int] | None = ...,
    policy: PeerPolicy | None = ...,
    unlink_on_close: bool = ...,
    max_size: int = ...,
) -> UnixListener[UnixStream]: ...
@overload
def create_unix_listener(
    path: Address | os.PathLike[str],
    *,
    kind: Literal["seqpacket"],
    mode: int = ...,
    backlog: int = ...,
    allow_uids: Collection[int] | None = ...,
    allow_gids: Collection[int] | None = ...,
    policy: PeerPolicy | None = ...,
    unlink_on_close: bool = ...,
    max_size: int = ...,
) -> UnixListener[UnixSeqpacketStream]: ...
def create_unix_listener(
    path: Address | os.PathLike[str],
    *,
    kind: Literal["stream", "seqpacket"] = "stream",
    mode: int = 0o600,
    backlog: int = 128,
    allow_uids: Collection[int] | None = None,
    allow_gids: Collection[int] | None = None,
    policy: PeerPolicy | None = None,
    unlink_on_close: bool = True,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> UnixListener[Any]:
    """Bind a UNIX stream (or seqpacket) socket at ``path`` and listen.

    ``path`` is a filesystem path or an abstract name (``"\\0name"``). A path
    is created with ``mode`` (0600: this user only) and recorded in aipc's
    registry; if it exists, it is reclaimed only when it is a stale socket
    file (see the module docstring), otherwise :class:`AddressInUseError` or
    ``FileExistsError``. With ``unlink_on_close`` (the default) closing the
    listener removes the path, if it still names this socket.

    Peer policy, checked on each connection before :meth:`UnixListener.accept`
    returns it: ``allow_uids`` (the peer's uid must be one of them),
    ``allow_gids`` (its gid or one of its supplementary groups must be), and
    ``policy`` (a callable given the :class:`PeerCredentials`, returning
    whether to admit). All that are given must agree.

    ``max_size`` bounds the messages the accepted seqpacket connections
    receive (see :class:`UnixSeqpacketStream`).

    Raises ``LimitExceededError`` for a path longer than the kernel allows
    (107 bytes), ``TypeError`` / ``ValueError`` for bad arguments.
    """
    address = _address(path)
    socktype = _check_kind(kind, ("stream", "seqpacket"))
    mode = check_mode(mode)
    backlog = _check_backlog(backlog)
    sock = _new_socket(socktype)
    bound = None
    try:
        listener = UnixListener[Any](
            sock,
            None,
            allow_uids=allow_uids,
            allow_gids=allow_gids,
            policy=policy,
            max_size=max_size,
        )
    except BaseException:
        sock.close()
        raise
    try:
        bound = _bind(sock, address, mode, bool(unlink_on_close))
        sock.listen(backlog)
    except BaseException:
        if bound is not None:
            listener._bound = bound
        listener.close()
        raise
    listener._bound = bound
    return listener


async def _connect(address: Address, socktype: int) -> socket.socket:
    sock = _new_socket(socktype)
    waited = False
    try:
        delay = 0.0005
        while True:
            try:
                sock.connect(address)
            except BlockingIOError:
                # EAGAIN: the listener's backlog is full. The connect is not in
                # progress (UNIX sockets connect at once or not at all) and no
                # readiness event says when to retry, so retry on a timer.
                waited = True
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            except ConnectionRefusedError:
                raise ConnectionRefusedError(
                    errno.ECONNREFUSED,
                    f"nothing listens on {address!r} (a stale socket file, or a "
                    "socket of another kind)",
                ) from None
            except FileNotFoundError:
                raise FileNotFoundError(
                    errno.ENOENT, f"no socket at {address!r}"
                ) from None
            break
        if not waited:
            await checkpoint()
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_unix_stream(path: Address | os.PathLike[str]) -> UnixStream:
    """Connect to the UNIX stream socket at ``path`` (a path or an abstract
    name); return the connected :class:`UnixStream`.

    Raises ``FileNotFoundError`` (no socket there), ``ConnectionRefusedError``
    (nobody listens), ``PermissionError``, ``LimitExceededError`` (path too
    long).

    **Cancellation:** no connection is left behind.
    """
    return UnixStream(await _connect(_address(path), socket.SOCK_STREAM))


async def connect_unix_seqpacket(
    path: Address | os.PathLike[str], *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> UnixSeqpacketStream:
    """Connect to the UNIX seqpacket socket at ``path``; see
    :func:`connect_unix_stream`. ``max_size`` bounds received messages."""
    _check_max_size(max_size)  # before connecting: a refused value leaves nothing
    return UnixSeqpacketStream(
        await _connect(_address(path), socket.SOCK_SEQPACKET), max_size=max_size
    )


def _datagram_socket(
    local_path: object, mode: int, unlink_on_close: bool
) -> tuple[socket.socket, _BoundPath | None]:
    mode = check_mode(mode)
    address = None if local_path is None else _address(local_path, "local_path")
    sock = _new_socket(socket.SOCK_DGRAM)
    try:
        if address is None:
            # autobind: a unique abstract name, so peers can reply
            sock.bind("")
            return sock, None
        return sock, _bind(sock, address, mode, unlink_on_close)
    except BaseException:
        sock.close()
        raise


def create_unix_datagram_socket(
    *,
    local_path: Address | os.PathLike[str] | None = None,
    mode: int = 0o600,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    unlink_on_close: bool = True,
) -> UnixDatagramSocket:
    """An unconnected UNIX datagram socket bound to ``local_path``.

    Without ``local_path`` the kernel binds a unique abstract name
    (autobind), so that the peers it sends to can reply. A path is created
    and reclaimed as :func:`create_unix_listener` does. ``max_size`` bounds
    received datagrams.
    """
    _check_max_size(max_size)
    sock, bound = _datagram_socket(local_path, mode, unlink_on_close)
    try:
        return UnixDatagramSocket(sock, bound, max_size=max_size)
    except BaseException:
        sock.close()
        if bound is not None:
            bound.release()
        raise


def create_connected_unix_datagram_socket(
    remote_path: Address | os.PathLike[str],
    *,
    local_path: Address | os.PathLike[str] | None = None,
    mode: int = 0o600,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    unlink_on_close: bool = True,
) -> ConnectedUnixDatagramSocket:
    """A UNIX datagram socket connected to ``remote_path`` (see
    :func:`create_unix_datagram_socket` for ``local_path``).

    Raises ``FileNotFoundError`` or ``ConnectionRefusedError`` when nothing is
    bound at ``remote_path``.
    """
    remote = _address(remote_path, "remote_path")
    _check_max_size(max_size)
    sock, bound = _datagram_socket(local_path, mode, unlink_on_close)
    try:
        sock.connect(remote)
        return ConnectedUnixDatagramSocket(sock, bound, max_size=max_size)
    except BaseException:
        sock.close()
        if bound is not None:
            bound.release()
        raise


@overload
def create_unix_socket_pair(
    kind: Literal["stream"] = ...,
) -> tuple[UnixStream, UnixStream]: ...
@overload
def create_unix_socket_pair(
    kind: Literal["seqpacket"], *, max_size: int = ...
) -> tuple[UnixSeqpacketStream, UnixSeqpacketStream]: ...
@overload
def create_unix_socket_pair(
    kind: Literal["datagram"], *, max_size: int = ...
) -> tuple[ConnectedUnixDatagramSocket, ConnectedUnixDatagramSocket]: ...
def create_unix_socket_pair(
    kind: Literal["stream", "seqpacket", "datagram"] = "stream",
    *,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> tuple[Any, Any]:
    """Two connected UNIX sockets (``socketpair``), with no name anywhere.

    One end can be handed to a child process (``aipc.open_process(...,
    handoff=...)``) or sent over another socket. ``max_size`` bounds the
    messages a seqpacket or datagram pair receives.
    """
    socktype = _check_kind(kind, ("stream", "seqpacket", "datagram"))
    max_size = _check_max_size(max_size)
    a, b = socket.socketpair(
        socket.AF_UNIX, socktype | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    )
    if kind == "stream":
        return UnixStream(a), UnixStream(b)
    cls: Any = (
        UnixSeqpacketStream if kind == "seqpacket" else ConnectedUnixDatagramSocket
    )
    return cls(a, max_size=max_size), cls(b, max_size=max_size)


def listeners_from_systemd(
    *, unset_environment: bool = True
) -> list[UnixListener[Any]]:
    """The listening UNIX sockets systemd passed (socket activation).

    Reads ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` (sd_listen_fds):
    when they are meant for this process, each passed descriptor (from fd 3)
    that is a listening AF_UNIX stream or seqpacket socket becomes a
    :class:`UnixListener` (its ``name`` from ``LISTEN_FDNAMES``). Nothing is
    unlinked, ever: the socket file belongs to the socket unit. Other passed
    descriptors (TCP sockets, FIFOs) are left open and untouched, for
    ``anyio`` or your own code. Returns ``[]`` when nothing was passed.

    A passed listening socket whose description is blocking is switched to
    non-blocking: ``accept`` has no per-call flag, and systemd does not accept
    on a socket it passed to a running service (``Accept=no``).

    With ``unset_environment`` (the default) the variables are removed so that
    child processes do not take them for theirs.
    """
    env = os.environ
    try:
        if env.get("LISTEN_PID") != str(os.getpid()):
            return []
        try:
            count = int(env.get("LISTEN_FDS", "0"))
        except ValueError:
            raise ValueError(
                f"LISTEN_FDS is not a number: {env.get('LISTEN_FDS')!r}"
            ) from None
        names = env.get("LISTEN_FDNAMES", "").split(":") if count else []
    finally:
        if unset_environment:
            for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                env.pop(var, None)
    listeners: list[UnixListener[Any]] = []
    for i in range(count):
        fd = 3 + i
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue  # not open, or not a socket
        if (
            sock.family != socket.AF_UNIX
            or sock.type not in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        ):
            sock.detach()
            continue
        os.set_inheritable(fd, False)
        _own_nonblocking(sock)
        listeners.append(UnixListener(sock, name=names[i] if i < len(names) else ""))
    return listeners
