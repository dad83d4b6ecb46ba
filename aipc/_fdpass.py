"""Descriptor passing over UNIX sockets: SCM_RIGHTS and SCM_CREDENTIALS (Linux only).

The socket classes in :mod:`aipc._sockets` call the functions here for their
``send_fds`` / ``receive_fds`` / ``send_objects`` / ``receive_objects``
methods. What it guarantees, where plain ``socket.recvmsg`` code usually
slips:

- received descriptors are close-on-exec from the start (``MSG_CMSG_CLOEXEC``:
  no window in which a concurrent fork+exec inherits them);
- each received descriptor is an owned :class:`ReceivedFd`, closed when the
  message is closed or garbage-collected (with a ``ResourceWarning``) unless
  taken with :meth:`ReceivedFd.take`;
- truncated control data (``MSG_CTRUNC``: more descriptors than the receive
  asked for) raises :class:`FdTruncatedError` after closing the ones that did
  arrive, and carries the data bytes so the byte stream loses nothing;
- credentials (``SCM_CREDENTIALS``, when the socket has ``SO_PASSCRED`` on or
  the sender attached them) are parsed into :class:`PeerCredentials`, never
  mistaken for descriptors or rejected;
- the control buffer always has room for credentials and a pidfd
  (``SCM_PIDFD``), so their arrival never truncates the descriptors.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ._core._errors import AipcError, LimitExceededError
from ._core._fd import FdHandle

__all__ = [
    "SCM_MAX_FD",
    "FdTruncatedError",
    "ReceivedFd",
    "ReceivedMessage",
]

#: The most descriptors one message can carry (the kernel's SCM_MAX_FD).
SCM_MAX_FD = 253
_SCM_PIDFD = 4  # Linux 6.5+; not in Python's socket module
_UCRED = struct.Struct("iII")
_CRED_SPACE = socket.CMSG_SPACE(_UCRED.size)
_PIDFD_SPACE = socket.CMSG_SPACE(4)
RECV_FLAGS = socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
#: the header of an objects message on a stream socket: the JSON's length
_OBJECTS_HEADER = struct.Struct("!I")
_OBJECTS_MAX_JSON = 1 << 20


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


FdLike = int | _HasFileno


class FdTruncatedError(AipcError):
    """More descriptors arrived than the receive had room for (``MSG_CTRUNC``).

    The kernel dropped the rest, and aipc closed those that did arrive (a
    partial set is rarely usable). Attributes: ``data`` (the bytes that came
    with them: nothing of the stream is lost), ``received`` (how many
    descriptors arrived and were closed) and ``max_fds`` (what the receive
    allowed).
    """

    def __init__(self, data: bytes, received: int, max_fds: int) -> None:
        self.data = data
        self.received = received
        self.max_fds = max_fds
        super().__init__(
            f"a message carried more descriptors than max_fds={max_fds}: the "
            f"kernel dropped the rest and the {received} that arrived were "
            "closed; receive with a larger max_fds"
        )


class ReceivedFd:
    """One descriptor received from a peer: owned, and closed unless taken.

    ``fileno()`` lends it; :meth:`take` hands it over (you close it then);
    :meth:`close` closes it. An untaken descriptor that is garbage-collected
    is closed with a ``ResourceWarning``. It is close-on-exec.
    """

    __slots__ = ("_handle",)

    def __init__(self, fd: int) -> None:
        self._handle = FdHandle(fd, "received fd")

    def fileno(self) -> int:
        """The descriptor, still owned by this object."""
        return self._handle.fileno()

    @property
    def closed(self) -> bool:
        """Whether it was closed or taken."""
        return self._handle.closed

    def take(self) -> int:
        """Hand the descriptor over: the caller owns and closes it.

        Raises ``ClosedResourceError`` if it was closed or taken already.
        """
        return self._handle.detach()

    def close(self) -> None:
        """Close the descriptor (idempotent; nothing if taken)."""
        self._handle.close()

    def __enter__(self) -> ReceivedFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        fd = self._handle.fd
        if fd < 0:
            return "<ReceivedFd closed>"
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = "?"
        return f"<ReceivedFd fd={fd} {target}>"


class ReceivedMessage:
    """Bytes received together with descriptors and credentials.

    Attributes:
        data: the bytes.
        fds: the descriptors, as owned :class:`ReceivedFd` objects.
        credentials: the sender's :class:`~aipc.PeerCredentials` if they came
            with the message (``SO_PASSCRED``), else ``None``.
        pidfd: a pidfd of the sender if one came (``SO_PASSPIDFD``), else
            ``None``.
        address: the sender's address, for unconnected datagram sockets.

    Use it as a context manager (or call :meth:`close`) to close whatever
    descriptors were not taken.
    """

    __slots__ = ("address", "credentials", "data", "fds", "pidfd")

    def __init__(
        self,
        data: bytes,
        fds: Sequence[ReceivedFd] = (),
        credentials: Any = None,
        pidfd: ReceivedFd | None = None,
        address: Any = None,
    ) -> None:
        self.data = data
        self.fds = tuple(fds)
        self.credentials = credentials
        self.pidfd = pidfd
        self.address = address

    def close(self) -> None:
        """Close every descriptor that was not taken (idempotent)."""
        for fd in self.fds:
            fd.close()
        if self.pidfd is not None:
            self.pidfd.close()

    def __enter__(self) -> ReceivedMessage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<ReceivedMessage {len(self.data)}B fds={len(self.fds)} "
            f"credentials={self.credentials!r}>"
        )


# ---------------------------------------------------------------------------
# sending


def fd_numbers(fds: Iterable[FdLike]) -> list[int]:
    """The descriptor numbers of ``fds`` (ints or objects with ``fileno()``),
    checked against SCM_MAX_FD."""
    if isinstance(fds, (str, bytes)) or not isinstance(fds, Iterable):
        raise TypeError(
            "fds must be a sequence of descriptors (ints or objects with "
            f"fileno()), not {type(fds).__name__}"
        )
    numbers = []
    for item in fds:
        if isinstance(item, int) and not isinstance(item, bool):
            fd = item
        elif hasattr(item, "fileno"):
            fd = item.fileno()
        else:
            raise TypeError(
                "fds items must be ints or objects with fileno(), not "
                f"{type(item).__name__}"
            )
        if fd < 0:
            raise ValueError(f"fds items must be open descriptors, got {fd}")
        numbers.append(fd)
    if len(numbers) > SCM_MAX_FD:
        raise LimitExceededError(
            "len(fds)",
            len(numbers),
            SCM_MAX_FD,
            "SCM_MAX_FD, the most descriptors one message carries",
            "send them in several messages",
        )
    return numbers


def ancillary(fds: Sequence[int], credentials: bool) -> list[tuple[int, int, bytes]]:
    """Control messages carrying ``fds`` and, if asked, our credentials."""
    out = []
    if fds:
        out.append(
            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())
        )
    if credentials:
        creds = _UCRED.pack(os.getpid(), os.getuid(), os.getgid())
        out.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds))
    return out


# ---------------------------------------------------------------------------
# receiving


def control_space(max_fds: int) -> int:
    """A control buffer with room for ``max_fds`` descriptors, credentials
    and a pidfd, so that neither of the last two can truncate the first."""
    return socket.CMSG_SPACE(4 * max_fds) + _CRED_SPACE + _PIDFD_SPACE


def check_max_fds(max_fds: object) -> int:
    if not isinstance(max_fds, int) or isinstance(max_fds, bool):
        raise TypeError(f"max_fds must be an int, not {type(max_fds).__name__}")
    if not 1 <= max_fds <= SCM_MAX_FD:
        raise ValueError(
            f"max_fds must be between 1 and {SCM_MAX_FD} (SCM_MAX_FD), got {max_fds}"
        )
    return max_fds


def parse(
    data: bytes,
    ancdata: list[tuple[int, int, bytes]],
    flags: int,
    max_fds: int,
    address: Any = None,
) -> ReceivedMessage:
    """Turn a ``recvmsg`` result into a :class:`ReceivedMessage`; on
    ``MSG_CTRUNC`` close what arrived and raise :class:`FdTruncatedError`."""
    from ._sockets import PeerCredentials

    fds: list[ReceivedFd] = []
    credentials = None
    pidfd = None
    try:
        for level, kind, payload in ancdata:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_RIGHTS:
                numbers = array.array("i")
                numbers.frombytes(payload[: len(payload) - len(payload) % 4])
                fds.extend(ReceivedFd(fd) for fd in numbers)
            elif kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                credentials = PeerCredentials(*_UCRED.unpack_from(payload))
            elif kind == _SCM_PIDFD and len(payload) >= 4:
                pidfd = ReceivedFd(struct.unpack_from("i", payload)[0])
    except BaseException:
        for fd in fds:
            fd.close()
        if pidfd is not None:
            pidfd.close()
        raise
    message = ReceivedMessage(data, fds, credentials, pidfd, address)
    # the control buffer is rounded up, so a few more than max_fds may fit:
    # max_fds is the limit the caller chose, so more is a truncation too
    if flags & socket.MSG_CTRUNC or len(fds) > max_fds:
        count = len(fds)
        message.close()
        raise FdTruncatedError(data, count, max_fds)
    return message


# ---------------------------------------------------------------------------
# aipc objects


def encode_objects(objects: Sequence[object]) -> tuple[bytes, list[int]]:
    """The JSON description of ``objects`` and their descriptors, in order."""
    from ._handoff import describe

    entries = []
    fds: list[int] = []
    for i, obj in enumerate(objects):
        kind, numbers, meta = describe(obj, f"objects[{i}]", "over a socket")
        entries.append({"kind": kind, "nfds": len(numbers), "meta": meta})
        fds.extend(numbers)
    if len(fds) > SCM_MAX_FD:
        raise LimitExceededError(
            "descriptors of objects",
            len(fds),
            SCM_MAX_FD,
            "SCM_MAX_FD, the most descriptors one message carries",
            "send the objects in several messages",
        )
    payload = json.dumps(
        {"aipc-objects": 1, "objects": entries}, separators=(",", ":")
    ).encode()
    return payload, fds


def objects_frame(payload: bytes) -> bytes:
    """An objects message for a stream socket: length, then the JSON."""
    return _OBJECTS_HEADER.pack(len(payload)) + payload


OBJECTS_HEADER_SIZE = _OBJECTS_HEADER.size


def objects_length(header: bytes) -> int:
    (length,) = _OBJECTS_HEADER.unpack(header)
    if not 0 < length <= _OBJECTS_MAX_JSON:
        raise ValueError(
            f"not an aipc objects message (a description of {length} bytes); "
            "receive_objects() must be called where the peer called send_objects()"
        )
    return int(length)


def decode_objects(message: ReceivedMessage, payload: bytes) -> list[Any]:
    """Rebuild the objects described by ``payload`` on ``message.fds``.

    On any error every descriptor is closed and ``ValueError`` raised.
    """
    from ._handoff import rebuild

    built: list[Any] = []
    try:
        try:
            data = json.loads(payload)
            if data.get("aipc-objects") != 1 or not isinstance(
                data.get("objects"), list
            ):
                raise ValueError("missing the aipc-objects marker")
            entries = data["objects"]
            total = sum(int(entry["nfds"]) for entry in entries)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(
                f"not an aipc objects message ({exc}); receive_objects() must be "
                "called where the peer called send_objects()"
            ) from None
        if total != len(message.fds):
            raise ValueError(
                f"the objects message describes {total} descriptors but "
                f"{len(message.fds)} arrived"
            )
        at = 0
        for i, entry in enumerate(entries):
            n = int(entry["nfds"])
            mine = message.fds[at : at + n]
            at += n
            obj = rebuild(
                f"objects[{i}]",
                str(entry["kind"]),
                tuple(fd.fileno() for fd in mine),
                entry.get("meta") or {},
            )
            for fd in mine:
                fd.take()  # the object owns it now
            built.append(obj)
    except BaseException:
        message.close()
        for obj in built:
            obj.close()
        raise
    return built
