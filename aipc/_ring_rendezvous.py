"""Named rendezvous for shared-memory rings: unrelated processes meet by name.

The consumer listens on a UNIX stream socket with an *abstract* address,
``"\\0aipc-ring-<uid>-<name>"``: no file anywhere, so a crash leaves nothing
to clean, and the name is released the moment its listener closes or dies.
Abstract names have no permissions, so both sides check credentials: the
listener admits only processes of its own user (``SO_PEERCRED``, before
``accept`` returns), and the connecting side accepts a ring only from a
listener of its own user (a squatter of another user cannot hand it memory
to write into). Abstract names are per network namespace: processes in
different ones (containers) cannot meet this way; hand the ring over a
socket they share instead.

Each connection gets a ring of its own: :meth:`RingListener.accept` creates
it, sends the producer's end over the connection (the memfd, both eventfds
and a liveness socket, as ``send_objects`` does) and returns the consumer's
end. The connection is closed afterwards; the ring's own socket pair tells
each side when the other dies. One ring per producer is also aipc's answer
to several producers (see :mod:`aipc._ring`).
"""

from __future__ import annotations

import os
from typing import Any, Generic, Literal, TypeVar, overload

import anyio
from anyio.abc import AsyncResource

from ._core._fd import checkpoint
from ._ring import (
    DEFAULT_RING_CAPACITY,
    RingByteReceiveStream,
    RingByteSendStream,
    RingReceiver,
    RingSender,
    RingStream,
    _check_capacity,
    _check_platform,
    _check_spin,
    create_byte_ring,
    create_ring,
    create_ring_stream_pair,
)
from ._sockets import (
    UnixListener,
    UnixStream,
    connect_unix_stream,
    create_unix_listener,
)

__all__ = ["RingListener", "connect_ring", "create_ring_listener"]

T = TypeVar("T")
RingKind = Literal["messages", "bytes", "stream"]
_KINDS: dict[str, tuple[type[Any], type[Any]]] = {
    # kind -> (what the listener keeps, what the connecting process gets)
    "messages": (RingReceiver, RingSender),
    "bytes": (RingByteReceiveStream, RingByteSendStream),
    "stream": (RingStream, RingStream),
}
_NAME_MAX = 64


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\0" in name
        or len(name.encode()) > _NAME_MAX
    ):
        raise ValueError(
            f"name must be 1 to {_NAME_MAX} bytes without '/' or NUL (and not "
            f"'.' or '..'), got {name!r}"
        )
    return name


def _check_kind(kind: object) -> str:
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'messages', 'bytes' or 'stream', not {kind!r}")
    return str(kind)


def _address(name: str) -> str:
    return f"\0aipc-ring-{os.getuid()}-{name}"


class RingListener(AsyncResource, Generic[T]):
    """Makes a ring for each process that connects to its name.

    Made by :func:`create_ring_listener`. :meth:`accept` returns this side's
    end (a :class:`RingReceiver`, a :class:`RingByteReceiveStream` or a
    :class:`RingStream`, after ``kind``); the process that called
    :func:`connect_ring` gets the other end. Closing the listener removes the
    name; rings already made live on.
    """

    def __init__(
        self,
        listener: UnixListener[UnixStream],
        name: str,
        kind: str,
        capacity: int,
        spin_us: float,
    ) -> None:
        self._listener = listener
        self._address = _address(name)
        self._name = name
        self._kind = kind
        self._capacity = capacity
        self._spin_us = spin_us
        self._accepted = 0

    @property
    def name(self) -> str:
        """The name producers connect to."""
        return self._name

    @property
    def address(self) -> str:
        """The abstract socket address (``"\\0aipc-ring-<uid>-<name>"``)."""
        return self._address

    def _make(self) -> tuple[Any, Any]:
        if self._kind == "messages":
            return create_ring(self._capacity, spin_us=self._spin_us)
        if self._kind == "bytes":
            return create_byte_ring(self._capacity, spin_us=self._spin_us)
        return create_ring_stream_pair(self._capacity, spin_us=self._spin_us)

    async def accept(self) -> T:
        """Wait for a process to connect; give it a new ring's other end.

        Raises ``ClosedResourceError`` if the listener is or gets closed, and
        ``BrokenResourceError`` if the connecting process went away before
        its end was sent (the ring is then closed).

        **Cancellation:** no ring is left behind; a process whose connection
        was accepted when the cancellation came sees its connection closed.
        """
        conn = await self._listener.accept()
        try:
            mine, theirs = self._make()
            try:
                await conn.send_objects(theirs)
            except BaseException:
                mine.close()
                raise
            finally:
                theirs.close()  # handed off: the peer's copy carries on
        finally:
            conn.close()
        self._accepted += 1
        return mine  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop listening and remove the name (idempotent)."""
        self._listener.close()

    async def aclose(self) -> None:
        """Stop listening and remove the name (idempotent, also when cancelled)."""
        self.close()
        await checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._listener.closed else f"accepted={self._accepted}"
        return f"<RingListener {self._name!r} {self._kind} {state}>"


@overload
def create_ring_listener(
    name: str,
    *,
    kind: Literal["messages"] = ...,
    capacity: int = ...,
    spin_us: float = ...,
) -> RingListener[RingReceiver]: ...
@overload
def create_ring_listener(
    name: str,
    *,
    kind: Literal["bytes"],
    capacity: int = ...,
    spin_us: float = ...,
) -> RingListener[RingByteReceiveStream]: ...
@overload
def create_ring_listener(
    name: str,
    *,
    kind: Literal["stream"],
    capacity: int = ...,
    spin_us: float = ...,
) -> RingListener[RingStream]: ...
def create_ring_listener(
    name: str,
    *,
    kind: RingKind = "messages",
    capacity: int = DEFAULT_RING_CAPACITY,
    spin_us: float = 0,
) -> RingListener[Any]:
    """Listen for ring producers under ``name`` (never blocks).

    ``kind`` chooses the rings: ``"messages"`` (this side receives with a
    :class:`RingReceiver`, the producer sends with a :class:`RingSender`),
    ``"bytes"`` (byte rings) or ``"stream"`` (two-way :class:`RingStream`
    on both sides). ``capacity`` and ``spin_us`` are those of
    :func:`create_ring`. The name is an abstract socket address of this
    user's (see the module documentation): nothing is created on disk, only
    this user's processes are admitted, and a live listener of the same name
    is never taken over (``AddressInUseError``).

    Raises ``TypeError`` / ``ValueError`` for a bad name (1 to 64 bytes, no
    ``/``), kind, capacity or spin, and ``NotImplementedError`` where rings
    are not supported (see :func:`create_ring`).
    """
    _check_platform()
    name = _check_name(name)
    kind = _check_kind(kind)  # type: ignore[assignment]
    capacity = _check_capacity(capacity)
    spin_us = _check_spin(spin_us)
    listener = create_unix_listener(_address(name), allow_uids=[os.getuid()])
    return RingListener(listener, name, kind, capacity, spin_us)


@overload
async def connect_ring(name: str, *, kind: Literal["messages"] = ...) -> RingSender: ...
@overload
async def connect_ring(name: str, *, kind: Literal["bytes"]) -> RingByteSendStream: ...
@overload
async def connect_ring(name: str, *, kind: Literal["stream"]) -> RingStream: ...
async def connect_ring(name: str, *, kind: RingKind = "messages") -> Any:
    """Connect to the ring listener ``name`` and get a new ring's end.

    For ``kind="messages"`` (the default) a :class:`RingSender`, for
    ``"bytes"`` a :class:`RingByteSendStream`, for ``"stream"`` a
    :class:`RingStream`; ``kind`` must match the listener's.

    Raises ``ConnectionRefusedError`` if nobody listens under ``name``,
    ``PermissionError`` if the listener is another user's, ``TypeError`` if the
    listener makes rings of another kind (the ring is closed), and
    ``BrokenResourceError`` if the listener closed the connection before
    sending a ring.

    **Cancellation:** nothing is left open.
    """
    name = _check_name(name)
    kind = _check_kind(kind)  # type: ignore[assignment]
    expected = _KINDS[kind][1]
    conn = await connect_unix_stream(_address(name))
    try:
        uid = conn.peer_credentials().uid
        if uid != os.getuid():
            raise PermissionError(
                f"the ring listener {name!r} runs as uid {uid}, not as this "
                f"user ({os.getuid()}): it may be squatting the name"
            )
        try:
            objects = await conn.receive_objects()
        except anyio.EndOfStream:
            raise anyio.BrokenResourceError(
                f"the ring listener {name!r} closed the connection without "
                "sending a ring"
            ) from None
    finally:
        await conn.aclose()
    if len(objects) != 1 or type(objects[0]) is not expected:
        for obj in objects:
            obj.close()
        got = ", ".join(type(obj).__name__ for obj in objects) or "nothing"
        raise TypeError(
            f"the listener {name!r} sent {got}, not a {expected.__name__}: it "
            f"makes rings of another kind than {kind!r}"
        )
    return objects[0]
