"""Object channels: typed messages over any aipc or anyio transport.

Over a byte stream (pipe, FIFO, UNIX stream socket, TCP, TLS, any anyio
``ByteStream``) each message travels as a *frame*: a 4-byte unsigned
big-endian length, then that many bytes of encoded message. Over a message
transport (an anyio ``ObjectStream[bytes]``: UNIX seqpacket and datagram
sockets, POSIX message queues) the transport's own boundaries delimit the
messages and nothing is added.

The hot path is lean: a small message goes out as one buffer with one write,
and the receiver reads up to 64 KiB at a time and decodes every complete frame
in its buffer without another syscall.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, Generic, TypeVar, overload

import anyio
from anyio.abc import (
    ByteReceiveStream,
    ByteSendStream,
    ByteStream,
    Listener,
    ObjectReceiveStream,
    ObjectSendStream,
    ObjectStream,
    SocketAttribute,
    SocketStream,
    TaskGroup,
    UnreliableObjectReceiveStream,
    UnreliableObjectSendStream,
)
from anyio.streams.stapled import StapledByteStream
from anyio.streams.tls import TLSListener

from ._codecs import Codec, MessageDecodeError, MsgpackCodec
from ._core._args import check_int
from ._core._errors import AipcError, LimitExceededError
from ._core._fd import checkpoint

__all__ = [
    "DEFAULT_CHANNEL_MAX_SIZE",
    "Channel",
    "ChannelListener",
    "ChannelReceiver",
    "ChannelSender",
    "ChannelStatistics",
    "FrameError",
    "FrameTooLargeError",
    "TruncatedFrameError",
    "connect_tcp_channel",
    "create_channel",
    "create_channel_listener",
    "open_tcp_channel_listener",
]

T = TypeVar("T")

#: The default ``max_size`` of a channel: the largest encoded message, in bytes.
DEFAULT_CHANNEL_MAX_SIZE: int = 16 * 1024 * 1024

#: The largest ``max_size`` the 4-byte length prefix can express.
_MAX_FRAME_PAYLOAD = 2**32 - 1

_HEADER = struct.Struct(">I")
_pack = _HEADER.pack
_unpack_from = _HEADER.unpack_from

#: bytes asked of the transport per receive while frames are small; a frame
#: known to be larger is read in steps of up to _RECEIVE_MAX (os.read allocates
#: what it is asked for, so the size is never taken from an unchecked header)
_RECEIVE_SIZE = 65536
_RECEIVE_MAX = 1 << 20

#: payloads up to this size are copied behind their header into one buffer
#: (one write); larger ones go out as header and payload, without the copy
_JOIN_MAX = 65536

#: a decoded message up to this size is sliced out of the receive buffer as
#: bytes (cheaper than a memoryview for small messages); larger ones are viewed
_COPY_MAX = 4096

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)

# how a channel sends (see _send_mode)
_SOME = 0  # write in steps through _send_some; a cancelled frame is finished later
_WHOLE = 1  # the transport takes the whole frame after its only cancel point
_SHIELD = 2  # anything else: the frame is sent in a shielded scope
_MESSAGE = 3  # a message transport: one message per send, no framing


# --- errors and statistics -----------------------------------------------------


class FrameError(AipcError, anyio.BrokenResourceError):
    """The framing of a byte stream was lost: the channel cannot go on.

    Raised by ``receive`` when the incoming bytes are not a valid frame (a
    length beyond ``max_size``, the stream ending inside a frame). The channel
    is broken afterwards: every later ``receive`` raises
    ``anyio.BrokenResourceError``. Close it. A subclass of
    ``anyio.BrokenResourceError``, so code that handles a dead peer handles this
    too.
    """


class FrameTooLargeError(FrameError, LimitExceededError):
    """A frame header announced a message larger than the channel's ``max_size``.

    Nothing was allocated for it. Either the peer sends with a larger
    ``max_size`` or it does not speak aipc framing (garbage, another protocol).
    Attributes as :class:`LimitExceededError`: ``value`` (the announced size),
    ``limit`` (``max_size``), ``argument`` and ``limit_name``.
    """

    def __init__(self, size: int, max_size: int) -> None:
        self.argument = "frame length"
        self.value = size
        self.limit = max_size
        self.limit_name = "max_size"
        self.hint = ""
        Exception.__init__(
            self,
            f"a frame header announces {size} bytes, more than this channel's "
            f"max_size ({max_size}): the peer sends with a larger max_size or "
            "does not speak aipc framing; the channel is broken",
        )


class TruncatedFrameError(FrameError):
    """The byte stream ended (the peer closed it) inside a frame.

    Attributes: ``expected`` (bytes the frame needs, header included, or 4
    while the header itself is incomplete) and ``received`` (bytes of it that
    arrived).
    """

    def __init__(self, expected: int, received: int) -> None:
        self.expected = expected
        self.received = received
        super().__init__(
            f"truncated frame: the stream ended after {received} of the "
            f"{expected} bytes of a frame (the peer stopped in the middle of "
            "a message)"
        )


@dataclass(frozen=True)
class ChannelStatistics:
    """Counters of one channel (cheap to take: no syscall).

    Attributes:
        messages_sent: messages completely handed to the transport.
        bytes_sent: their encoded size (without the 4-byte frame headers).
        messages_received: messages taken out of the transport (including
            ones that failed to decode).
        bytes_received: their encoded size (without frame headers).
        unsent_bytes: bytes of a frame whose send was cancelled after it had
            started, waiting to be written by the next ``send`` or ``aclose``.
        buffered_bytes: bytes received from the transport and not yet returned
            as messages (complete frames and the start of the next one).
    """

    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    unsent_bytes: int
    buffered_bytes: int


# --- argument checks -----------------------------------------------------------


def _check_max_size(max_size: object) -> int:
    max_size = check_int("max_size", max_size)
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1 byte, got {max_size}")
    if max_size > _MAX_FRAME_PAYLOAD:
        raise ValueError(
            f"max_size must be at most {_MAX_FRAME_PAYLOAD} bytes (what the "
            f"4-byte length prefix can express), got {max_size}"
        )
    return max_size


def _check_codec(codec: object) -> Codec[Any]:
    if codec is None:
        return MsgpackCodec()
    if not (
        callable(getattr(codec, "encode", None))
        and callable(getattr(codec, "decode", None))
    ):
        raise TypeError(
            "codec must have encode() and decode() methods (see aipc.Codec), "
            f"not {type(codec).__name__}"
        )
    return codec  # type: ignore[return-value]


def _too_large(size: int, max_size: int) -> LimitExceededError:
    return LimitExceededError(
        "message size",
        size,
        max_size,
        "the channel's max_size",
        "pass a larger max_size to both ends of the channel",
    )


# --- how to send on a transport --------------------------------------------------


class _SocketWriter:
    """``_send_some`` for a non-blocking stream socket that anyio reads.

    Used for anyio's own socket streams that expose a real ``socket.socket``
    (trio's TCP and UNIX streams, asyncio's UNIX streams): the channel writes
    to the socket itself, so that it knows how much of a frame went out.
    """

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def _send_some(self, data: bytes | memoryview) -> int:
        sock = self.sock
        while True:
            if sock.fileno() < 0:
                raise anyio.ClosedResourceError
            try:
                # MSG_NOSIGNAL: a dead peer is EPIPE here, never SIGPIPE
                return sock.send(data, _MSG_NOSIGNAL)
            except BlockingIOError:
                await anyio.wait_writable(sock)
            except OSError as exc:
                if sock.fileno() < 0:
                    raise anyio.ClosedResourceError from exc
                # what anyio's socket streams raise for any failed send
                raise anyio.BrokenResourceError(
                    f"the connection is gone ({exc.strerror})"
                ) from exc


def _loop_takes_whole_items(stream: object) -> bool:
    # anyio's asyncio TCP stream (also on uvloop) has one cancel point before
    # it hands the whole item to transport.write(), which sends what it can and
    # queues the rest; after that it only waits for the queue to drain. So a
    # cancelled send either wrote nothing or will deliver everything. Its
    # socket belongs to the transport (no raw send, no add_writer), so this is
    # the way to get whole frames without a shield. tests/test_channels.py
    # checks the property on every backend.
    cls = type(stream)
    return (
        cls.__module__ == "anyio._backends._asyncio" and cls.__name__ == "SocketStream"
    )


async def _no_send(data: bytes | memoryview) -> int:
    raise AssertionError("this channel does not write in steps")  # pragma: no cover


def _send_mode(
    transport: object,
) -> tuple[
    int,
    Callable[[bytes | memoryview], Awaitable[int]],
    Callable[[bytes | memoryview], int] | None,
    Any,
]:
    """(mode, send_some, try_send or None, raw socket to notify on close) for a
    byte transport."""
    target = transport
    if isinstance(target, StapledByteStream):
        target = target.send_stream
    send_some = getattr(target, "_send_some", None)
    if callable(send_some):  # aipc's pipes, FIFOs, UNIX stream sockets, rings
        # aipc's fd streams also write without a coroutine when there is room
        try_send = getattr(target, "_try_send", None)
        return _SOME, send_some, try_send, None
    if isinstance(target, SocketStream):  # not TLS: TLSStream is no SocketStream
        sock = target.extra(SocketAttribute.raw_socket, None)
        if (
            isinstance(sock, socket.socket)
            and sock.type == socket.SOCK_STREAM
            and sock.gettimeout() == 0.0
        ):
            return _SOME, _SocketWriter(sock)._send_some, None, sock
        if _loop_takes_whole_items(target):
            return _WHOLE, _no_send, None, None
    return _SHIELD, _no_send, None, None


# --- the channels ----------------------------------------------------------------


class _ChannelBase(Generic[T]):
    """State and plumbing shared by both directions."""

    def __init__(self, transport: Any, codec: Codec[T], max_size: int) -> None:
        self._transport = transport
        self._codec = codec
        self._max_size = max_size
        self._closed = False
        # sending
        self._sending = False
        self._encode = codec.encode
        self._mode = _MESSAGE
        self._send_some: Callable[[bytes | memoryview], Awaitable[int]] = _no_send
        self._try_send: Callable[[bytes | memoryview], int] | None = None
        self._sock: Any = None
        self._unsent: list[bytes | memoryview] = []
        self._unsent_size = 0  # payload size of the frame in _unsent, for counting
        self._send_broken: BaseException | None = None
        self._messages_sent = self._bytes_sent = 0
        # receiving
        self._receiving = False
        self._decode = codec.decode
        self._framed = isinstance(transport, ByteReceiveStream)
        self._rbuf = b""  # received bytes; the unread part starts at _rpos
        self._rpos = 0
        self._rextra: list[bytes] = []  # chunks after _rbuf, for a frame in parts
        self._rextra_len = 0
        self._rneed = 4  # bytes from _rpos the next step needs (with _rextra)
        self._receive_broken: BaseException | None = None
        self._eof = False
        self._messages_received = self._bytes_received = 0

    # -- common surface --

    @property
    def transport(self) -> Any:
        """The transport this channel owns (do not use it directly)."""
        return self._transport

    @property
    def codec(self) -> Codec[T]:
        """The codec that encodes and decodes the messages."""
        return self._codec

    @property
    def max_size(self) -> int:
        """The largest encoded message this channel sends or accepts, in bytes."""
        return self._max_size

    @property
    def closed(self) -> bool:
        """Whether this channel has been closed."""
        return self._closed

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The transport's typed attributes (``channel.extra(...)``: addresses,
        the raw socket, TLS details)."""
        return self._transport.extra_attributes  # type: ignore[no-any-return]

    def statistics(self) -> ChannelStatistics:
        """Message and byte counters of this channel."""
        unsent = sum(len(part) for part in self._unsent)
        buffered = len(self._rbuf) - self._rpos + self._rextra_len
        return ChannelStatistics(
            self._messages_sent,
            self._bytes_sent,
            self._messages_received,
            self._bytes_received,
            unsent,
            buffered,
        )

    async def aclose(self) -> None:
        """Close the channel and its transport (idempotent, never waits).

        If a ``send`` was cancelled in the middle of a frame and the rest of
        that frame is still unsent, ``aclose`` writes as much of it as the
        kernel takes at once; if that is not all, the peer sees a truncated
        frame. (To deliver it for sure, send another message, or call
        ``send_eof()`` on a :class:`Channel`, before closing.) Closes the
        transport even when cancelled. A task of this process waiting in
        ``send`` or ``receive`` wakes with ``anyio.ClosedResourceError``.
        """
        if self._closed:
            await checkpoint()
            return
        self._closed = True
        try:
            if self._unsent and not self._sending and self._send_broken is None:
                # In a cancelled scope, _send_some writes what fits at once and
                # raises the cancellation instead of waiting for room.
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    try:
                        await self._flush()
                    except Exception:
                        pass  # best effort: the transport is closed below anyway
        finally:
            self._unsent = []
            sock = self._sock
            if sock is not None and sock.fileno() >= 0:
                # wake a send waiting in anyio.wait_writable(sock) before the
                # stream closes the socket under it
                try:
                    anyio.notify_closing(sock)
                except RuntimeError:
                    pass
            await self._transport.aclose()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"<{type(self).__name__} {self._codec!r} over {self._transport!r}{state}"
            f" sent={self._messages_sent} received={self._messages_received}>"
        )

    # -- sending --

    def _setup_sender(self) -> None:
        transport = self._transport
        if isinstance(transport, ByteSendStream):
            self._mode, self._send_some, self._try_send, self._sock = _send_mode(
                transport
            )
        else:
            self._mode = _MESSAGE

    async def _finish_frame(
        self, parts: list[bytes | memoryview], n: int, size: int
    ) -> None:
        """Write the rest of a frame of which the first ``n`` bytes went out."""
        send_some = self._send_some
        part = parts[0]
        i = 0
        try:
            while True:
                # part: what was left of parts[i] before the write of n bytes
                if n < len(part):
                    part = memoryview(part)[n:]
                else:
                    i += 1
                    if i == len(parts):
                        return
                    part = parts[i]
                n = await send_some(part)
        except BaseException as exc:
            if isinstance(exc, Exception):
                self._send_broken = exc
            else:
                # cancelled (or interrupted) with part of the frame written:
                # the next send, or aclose, writes the rest first
                self._unsent = [part, *parts[i + 1 :]]
                self._unsent_size = size
            raise

    async def _flush(self) -> None:
        """Write the rest of a frame whose send was cancelled. Cancellable; an
        error breaks the sending side."""
        send_some = self._send_some
        unsent = self._unsent
        try:
            while unsent:
                part = unsent[0]
                n = await send_some(part)
                if n < len(part):
                    unsent[0] = memoryview(part)[n:]
                else:
                    del unsent[0]
        except Exception as exc:
            self._send_broken = exc
            self._unsent = []
            raise
        self._messages_sent += 1
        self._bytes_sent += self._unsent_size

    # -- receiving --

    def _decoded(self, buf: bytes, start: int, end: int, size: int) -> T:
        self._messages_received += 1
        self._bytes_received += size
        if size <= _COPY_MAX:
            data: bytes | memoryview = buf[start:end]
        else:
            data = memoryview(buf)[start:end]
        try:
            return self._decode(data)
        except MessageDecodeError:
            raise
        except Exception as exc:
            raise MessageDecodeError(
                f"could not decode a {size}-byte message with {self._codec!r}: {exc!r}",
                size=size,
                codec=self._codec,
            ) from exc

    async def _receive_framed(self) -> T:
        yielded = False
        while True:
            if self._closed or self._receive_broken is not None or self._eof:
                if not yielded:
                    await checkpoint()
                if self._closed:
                    raise anyio.ClosedResourceError
                if self._eof:
                    raise anyio.EndOfStream
                raise anyio.BrokenResourceError(
                    f"the channel's framing was lost earlier: {self._receive_broken}"
                )
            buf, pos = self._rbuf, self._rpos
            if self._rextra:
                have = len(buf) - pos + self._rextra_len
                if have >= self._rneed:
                    # the next step is complete: join its parts (each byte of
                    # a frame is copied at most twice, however many parts)
                    buf = self._rbuf = b"".join((memoryview(buf)[pos:], *self._rextra))
                    pos = self._rpos = 0
                    self._rextra = []
                    self._rextra_len = 0
            if not self._rextra:
                have = len(buf) - pos
                if have >= 4:
                    size = _unpack_from(buf, pos)[0]
                    if size > self._max_size:
                        # checked before anything is read or allocated for it
                        raise self._break(FrameTooLargeError(size, self._max_size))
                    end = pos + 4 + size
                    if end <= len(buf):
                        if not yielded:
                            await checkpoint()
                        self._rpos = end
                        return self._decoded(buf, pos + 4, end, size)
                    self._rneed = 4 + size
                else:
                    self._rneed = 4
            want = min(max(self._rneed - have, _RECEIVE_SIZE), _RECEIVE_MAX)
            try:
                # the transport's receive is cancel-safe, and the chunk is
                # stored before the next await: a cancelled receive loses nothing
                chunk = await self._transport.receive(want)
                if not chunk:  # a stream of your own that ends with b""
                    raise anyio.EndOfStream
            except anyio.EndOfStream:
                if have:
                    raise self._break(TruncatedFrameError(self._rneed, have)) from None
                self._eof = True
                raise
            yielded = True
            if pos == len(buf) and not self._rextra:
                self._rbuf = chunk
                self._rpos = 0
            else:
                self._rextra.append(chunk)
                self._rextra_len += len(chunk)

    def _break(self, exc: FrameError) -> FrameError:
        self._receive_broken = exc
        self._rbuf = b""
        self._rpos = 0
        self._rextra = []
        self._rextra_len = 0
        return exc


class ChannelReceiver(_ChannelBase[T], ObjectReceiveStream[T]):
    """The receiving end of an object channel: an anyio ``ObjectReceiveStream``.

    Made by :func:`create_channel` over a byte receive stream (frames) or a
    message receive stream (one message per transport message). It owns the
    transport and closes it on ``aclose()``. ``async for message in receiver``
    ends at the end of the stream.
    """

    def __init__(self, transport: Any, codec: Codec[T], max_size: int) -> None:
        super().__init__(transport, codec, max_size)

    async def receive(self) -> T:
        """Receive and decode the next message.

        Raises:
            EndOfStream: the peer closed (or sent EOF) between two messages.
            MessageDecodeError: the message could not be decoded or failed type
                validation. It is consumed; the channel stays usable.
            FrameTooLargeError: a frame header announced more than
                ``max_size`` bytes (nothing is allocated for it). The channel
                is broken.
            TruncatedFrameError: the stream ended inside a frame. The channel
                is broken.
            LimitExceededError: (message transports) a message larger than
                ``max_size`` arrived; it is dropped, the channel stays usable.
            BrokenResourceError: the transport failed, or the channel broke
                earlier.
            ClosedResourceError: the channel was closed (also wakes a waiting
                task).
            BusyResourceError: another task is already receiving.

        **Cancellation:** nothing is lost. The channel keeps what it read of an
        incomplete frame, and the transport's own receive is cancel-safe; the
        next ``receive`` returns the message the cancelled one would have.
        Always a checkpoint, also when a message was already buffered.
        """
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        try:
            if self._framed:
                # the fast path: a whole frame is already in the buffer
                buf = self._rbuf
                pos = self._rpos
                if len(buf) - pos >= 4 and not self._rextra and not self._closed:
                    size = _unpack_from(buf, pos)[0]
                    end = pos + 4 + size
                    if end <= len(buf) and size <= self._max_size:
                        await checkpoint()
                        self._rpos = end
                        return self._decoded(buf, pos + 4, end, size)
                return await self._receive_framed()
            if self._closed:
                await checkpoint()
                raise anyio.ClosedResourceError
            data = await self._transport.receive()
            size = len(data)
            if size > self._max_size:
                self._messages_received += 1
                self._bytes_received += size
                raise LimitExceededError(
                    "received message size",
                    size,
                    self._max_size,
                    "the channel's max_size",
                    "the message was dropped; pass a larger max_size to both "
                    "ends of the channel",
                )
            return self._decoded(data, 0, size, size)
        finally:
            self._receiving = False


class ChannelSender(_ChannelBase[T], ObjectSendStream[T]):
    """The sending end of an object channel: an anyio ``ObjectSendStream``.

    Made by :func:`create_channel` over a byte send stream (frames) or a
    message send stream. It owns the transport and closes it on ``aclose()``.
    """

    def __init__(self, transport: Any, codec: Codec[T], max_size: int) -> None:
        super().__init__(transport, codec, max_size)
        self._setup_sender()

    async def send(self, item: T) -> None:
        """Encode ``item`` and send it as one message.

        Raises:
            LimitExceededError: the encoded message is larger than
                ``max_size``; nothing was sent.
            TypeError, ValueError: the codec cannot encode ``item``; nothing
                was sent.
            BrokenResourceError: the peer is gone, or an earlier send failed in
                the middle of a frame.
            ClosedResourceError: the channel was closed (also wakes a waiting
                task).
            BusyResourceError: another task is already sending.

        **Cancellation:** a message is never half-sent. Exactly what happens
        depends on the transport (docs/channels.md, "Cancellation"):

        - aipc pipes, FIFOs and UNIX stream sockets; anyio's socket streams on
          trio and its UNIX streams on asyncio: a send cancelled before the
          first byte of its frame went out did not happen. One cancelled after
          that keeps the rest of its frame (``statistics().unsent_bytes``) and
          the next ``send`` (or ``send_eof``) writes it before its own
          message, so the message arrives whole. ``aclose()`` never waits: it
          writes only what fits at once, so closing right after such a
          cancellation may leave the peer a truncated frame.
        - anyio's TCP streams on asyncio and uvloop: the loop takes the whole
          frame after one cancel point; a cancelled send either did not
          happen or delivers the whole message, and which cannot be told.
        - any other byte stream (TLS, streams of your own): once started, the
          frame is handed to the transport inside a shielded scope, ``send``
          returns normally and the cancellation takes effect at the caller's
          next checkpoint. An error from the transport breaks the sending
          side.
        - message transports: the transport's own ``send`` semantics (aipc's
          send whole messages or nothing).
        """
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        self._sending = True
        try:
            payload = self._encode(item)
            size = len(payload)
            if size > self._max_size:
                raise _too_large(size, self._max_size)
            await checkpoint()
            if self._closed:
                raise anyio.ClosedResourceError
            if self._send_broken is not None:
                raise anyio.BrokenResourceError(
                    "an earlier send failed after it had started writing a "
                    f"frame, so the framing is lost: {self._send_broken!r}"
                )
            mode = self._mode
            if mode == _SOME:
                if self._unsent:
                    await self._flush()
                if size <= _JOIN_MAX:
                    frame = _pack(size) + payload
                    # a write with room needs no coroutine (0: the buffer is
                    # full); a cancelled wait in _send_some wrote nothing
                    try_send = self._try_send
                    n = try_send(frame) if try_send is not None else 0
                    if not n:
                        n = await self._send_some(frame)
                    if n < len(frame):
                        await self._finish_frame([frame], n, size)
                else:
                    header = _pack(size)
                    n = await self._send_some(header)
                    await self._finish_frame([header, payload], n, size)
            elif mode == _MESSAGE:
                await self._transport.send(payload)
            elif mode == _WHOLE:
                try:
                    await self._transport.send(_pack(size) + payload)
                except Exception as exc:
                    self._send_broken = exc
                    raise
            else:
                frame = _pack(size) + payload
                # The transport may have consumed part of the frame when a
                # cancellation lands (TLS encrypts before it writes): once
                # started, the frame goes out whole, then the cancellation
                # takes effect at the next checkpoint.
                with anyio.CancelScope(shield=True):
                    try:
                        await self._transport.send(frame)
                    except Exception as exc:
                        self._send_broken = exc
                        raise
            self._messages_sent += 1
            self._bytes_sent += size
        finally:
            self._sending = False


class Channel(ChannelReceiver[T], ChannelSender[T], ObjectStream[T]):
    """A bidirectional object channel: an anyio ``ObjectStream``.

    Made by :func:`create_channel` over a ``ByteStream`` (TCP, TLS, a UNIX
    stream socket, a ``StapledByteStream`` of two pipes) or an object stream
    of bytes, and by :func:`connect_tcp_channel` and channel listeners. Sending
    and receiving may run in two tasks at once. It owns the transport and
    closes it on ``aclose()``.
    """

    def __init__(self, transport: Any, codec: Codec[T], max_size: int) -> None:
        super().__init__(transport, codec, max_size)

    async def send_eof(self) -> None:
        """Finish sending: the peer's ``receive`` raises ``EndOfStream`` after
        the last message; this side can still receive.

        Writes the rest of a cancelled frame first. Raises
        ``NotImplementedError`` if the transport has no ``send_eof``.

        **Cancellation:** if cancelled while writing the rest of a frame, the
        EOF was not sent (the rest is kept, as after a cancelled ``send``).
        """
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        self._sending = True
        try:
            await checkpoint()
            if self._closed:
                raise anyio.ClosedResourceError
            if self._unsent:
                await self._flush()
            send_eof = getattr(self._transport, "send_eof", None)
            if send_eof is None:
                raise NotImplementedError(
                    f"the transport {self._transport!r} has no send_eof()"
                )
            await send_eof()
        finally:
            self._sending = False


# --- factories -------------------------------------------------------------------


@overload
def create_channel(
    transport: ByteStream | ObjectStream[bytes],
    *,
    codec: Codec[T],
    max_size: int = ...,
) -> Channel[T]: ...
@overload
def create_channel(
    transport: ByteStream | ObjectStream[bytes],
    *,
    codec: None = None,
    max_size: int = ...,
) -> Channel[Any]: ...
@overload
def create_channel(
    transport: ByteReceiveStream | UnreliableObjectReceiveStream[bytes],
    *,
    codec: Codec[T],
    max_size: int = ...,
) -> ChannelReceiver[T]: ...
@overload
def create_channel(
    transport: ByteReceiveStream | UnreliableObjectReceiveStream[bytes],
    *,
    codec: None = None,
    max_size: int = ...,
) -> ChannelReceiver[Any]: ...
@overload
def create_channel(
    transport: ByteSendStream | UnreliableObjectSendStream[bytes],
    *,
    codec: Codec[T],
    max_size: int = ...,
) -> ChannelSender[T]: ...
@overload
def create_channel(
    transport: ByteSendStream | UnreliableObjectSendStream[bytes],
    *,
    codec: None = None,
    max_size: int = ...,
) -> ChannelSender[Any]: ...
def create_channel(
    transport: Any,
    *,
    codec: Codec[Any] | None = None,
    max_size: int = DEFAULT_CHANNEL_MAX_SIZE,
) -> ChannelReceiver[Any] | ChannelSender[Any]:
    """Wrap a transport into an object channel (never blocks).

    ``transport`` is an anyio byte stream (aipc pipes, FIFOs and UNIX stream
    sockets, anyio TCP, TLS and UNIX streams, anything implementing
    ``ByteReceiveStream`` / ``ByteSendStream``): messages then travel as
    length-prefixed frames. Or it is an anyio object stream of ``bytes`` (UNIX
    seqpacket and datagram sockets, POSIX message queues): each message is one
    transport message. What comes back follows what the transport can do:

    - both directions: a :class:`Channel` (an ``ObjectStream``);
    - receive only: a :class:`ChannelReceiver` (an ``ObjectReceiveStream``);
    - send only: a :class:`ChannelSender` (an ``ObjectSendStream``).

    The channel owns the transport: closing the channel closes it; do not use
    the transport directly afterwards. ``codec`` encodes and decodes messages
    (default: a new :class:`MsgpackCodec`, untyped); both ends must use the
    same. ``max_size`` is the largest encoded message in bytes, checked before
    a send writes anything and, on receive, as soon as a frame header arrives,
    before anything is allocated for the frame.

    Raises ``TypeError`` for a transport or codec of the wrong kind, and
    ``TypeError`` / ``ValueError`` for a ``max_size`` that is not an int
    between 1 and 2**32 - 1.
    """
    max_size = _check_max_size(max_size)
    codec = _check_codec(codec)
    receives = isinstance(transport, (ByteReceiveStream, UnreliableObjectReceiveStream))
    sends = isinstance(transport, (ByteSendStream, UnreliableObjectSendStream))
    if receives and sends:
        return Channel(transport, codec, max_size)
    if receives:
        return ChannelReceiver(transport, codec, max_size)
    if sends:
        return ChannelSender(transport, codec, max_size)
    raise TypeError(
        "transport must be an anyio byte stream or an object stream of bytes "
        f"(ByteReceiveStream, ByteSendStream, ObjectReceiveStream, ...), not "
        f"{type(transport).__name__}"
    )


class ChannelListener(Listener[Channel[T]], Generic[T]):
    """An anyio ``Listener`` of :class:`Channel` objects.

    Wraps a listener of byte streams (TCP, TLS, UNIX): every accepted
    connection becomes a channel with this listener's codec and ``max_size``.
    Made by :func:`open_tcp_channel_listener` and
    :func:`create_channel_listener`. ``extra(...)`` reaches the wrapped
    listener's attributes (``SocketAttribute.local_port``, ...).
    """

    def __init__(self, listener: Listener[Any], codec: Codec[T], max_size: int) -> None:
        self._listener = listener
        self._codec = codec
        self._max_size = max_size

    @property
    def listener(self) -> Listener[Any]:
        """The wrapped listener of byte streams."""
        return self._listener

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The wrapped listener's typed attributes (through a ``TLSListener``,
        also those of the listener it wraps: the port, the address)."""
        listener = self._listener
        inner = getattr(listener, "listener", None)  # TLSListener's own listener
        if not isinstance(inner, Listener):
            return listener.extra_attributes
        return {**inner.extra_attributes, **listener.extra_attributes}

    async def serve(
        self,
        handler: Callable[[Channel[T]], Any],
        task_group: TaskGroup | None = None,
    ) -> None:
        """Accept connections forever, calling ``await handler(channel)`` for
        each in its own task (in ``task_group``, or in one of its own).

        The channel is closed when the handler returns or raises. An exception
        from a handler propagates out of ``serve`` through the task group, as
        with anyio's listeners.

        **Cancellation:** cancelling ``serve`` stops accepting and, if it owns
        the task group, cancels the handlers.
        """

        async def handle(stream: Any) -> None:
            channel: Channel[T] = Channel(stream, self._codec, self._max_size)
            async with channel:
                await handler(channel)

        await self._listener.serve(handle, task_group)

    async def aclose(self) -> None:
        """Close the wrapped listener (idempotent); open channels stay open."""
        await self._listener.aclose()

    def __repr__(self) -> str:
        return f"<ChannelListener {self._codec!r} over {self._listener!r}>"


@overload
def create_channel_listener(
    listener: Listener[Any], *, codec: Codec[T], max_size: int = ...
) -> ChannelListener[T]: ...
@overload
def create_channel_listener(
    listener: Listener[Any], *, codec: None = None, max_size: int = ...
) -> ChannelListener[Any]: ...
def create_channel_listener(
    listener: Listener[Any],
    *,
    codec: Codec[Any] | None = None,
    max_size: int = DEFAULT_CHANNEL_MAX_SIZE,
) -> ChannelListener[Any]:
    """Turn an anyio listener of byte streams into a listener of channels.

    ``listener`` is, for example, ``await anyio.create_unix_listener(path)``
    or an ``anyio.streams.tls.TLSListener``; its streams must be
    bidirectional ``ByteStream`` objects. ``codec`` and ``max_size`` are as in
    :func:`create_channel`. The channel listener owns ``listener``.
    """
    max_size = _check_max_size(max_size)
    codec = _check_codec(codec)
    if not isinstance(listener, Listener):
        raise TypeError(
            f"listener must be an anyio Listener, not {type(listener).__name__}"
        )
    return ChannelListener(listener, codec, max_size)


@overload
async def connect_tcp_channel(
    host: str,
    port: int,
    *,
    codec: Codec[T],
    max_size: int = ...,
    ssl_context: SSLContext | None = ...,
    tls_hostname: str | None = ...,
    tls_standard_compatible: bool = ...,
    local_host: str | None = ...,
) -> Channel[T]: ...
@overload
async def connect_tcp_channel(
    host: str,
    port: int,
    *,
    codec: None = None,
    max_size: int = ...,
    ssl_context: SSLContext | None = ...,
    tls_hostname: str | None = ...,
    tls_standard_compatible: bool = ...,
    local_host: str | None = ...,
) -> Channel[Any]: ...
async def connect_tcp_channel(
    host: str,
    port: int,
    *,
    codec: Codec[Any] | None = None,
    max_size: int = DEFAULT_CHANNEL_MAX_SIZE,
    ssl_context: SSLContext | None = None,
    tls_hostname: str | None = None,
    tls_standard_compatible: bool = True,
    local_host: str | None = None,
) -> Channel[Any]:
    """Connect to a channel listener over TCP (TLS if ``ssl_context`` is given).

    ``codec`` and ``max_size`` are as in :func:`create_channel` and must match
    the server's. With ``ssl_context`` (for example
    ``ssl.create_default_context(cafile=...)``) the connection is TLS, the
    server's certificate is checked against ``tls_hostname`` (default:
    ``host``), and ``tls_standard_compatible`` is passed to anyio (whether
    closing sends and expects a TLS close_notify). ``local_host`` binds the
    local end. Raises ``OSError`` if the connection fails (anyio's
    ``connect_tcp``).

    **Cancellation:** nothing is left open.
    """
    max_size = _check_max_size(max_size)
    codec = _check_codec(codec)
    if ssl_context is not None:
        stream: ByteStream = await anyio.connect_tcp(
            host,
            port,
            local_host=local_host,
            ssl_context=ssl_context,
            tls_hostname=tls_hostname,
            tls_standard_compatible=tls_standard_compatible,
        )
    else:
        stream = await anyio.connect_tcp(host, port, local_host=local_host)
    return Channel(stream, codec, max_size)


@overload
async def open_tcp_channel_listener(
    *,
    local_host: str | None = ...,
    local_port: int = ...,
    codec: Codec[T],
    max_size: int = ...,
    ssl_context: SSLContext | None = ...,
    tls_standard_compatible: bool = ...,
) -> ChannelListener[T]: ...
@overload
async def open_tcp_channel_listener(
    *,
    local_host: str | None = ...,
    local_port: int = ...,
    codec: None = None,
    max_size: int = ...,
    ssl_context: SSLContext | None = ...,
    tls_standard_compatible: bool = ...,
) -> ChannelListener[Any]: ...
async def open_tcp_channel_listener(
    *,
    local_host: str | None = None,
    local_port: int = 0,
    codec: Codec[Any] | None = None,
    max_size: int = DEFAULT_CHANNEL_MAX_SIZE,
    ssl_context: SSLContext | None = None,
    tls_standard_compatible: bool = True,
) -> ChannelListener[Any]:
    """Listen for channel connections over TCP (TLS if ``ssl_context`` is given).

    ``local_host`` and ``local_port`` are as in ``anyio.create_tcp_listener``
    (default: every interface, a free port; read it back with
    ``listener.extra(anyio.abc.SocketAttribute.local_port)``). With
    ``ssl_context`` (a server context holding the certificate chain) each
    connection is wrapped in TLS by ``anyio.streams.tls.TLSListener``; a
    failed handshake drops that connection only. ``codec`` and ``max_size``
    are as in :func:`create_channel` and must match the clients'. Serve with
    ``await listener.serve(handler)``.

    May wait for name resolution of ``local_host``, hence ``open_``.
    """
    max_size = _check_max_size(max_size)
    codec = _check_codec(codec)
    listener: Listener[Any] = await anyio.create_tcp_listener(
        local_host=local_host, local_port=local_port
    )
    if ssl_context is not None:
        listener = TLSListener(
            listener, ssl_context, standard_compatible=tls_standard_compatible
        )
    return ChannelListener(listener, codec, max_size)
