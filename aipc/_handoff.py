"""Hand-off: aipc objects passed to a child process by name (Linux only).

The parent side (:func:`aipc.open_process` with ``handoff=``) asks each object
for ``obj._aipc_handoff_()``: its *kind*, the descriptors it owns and a small
JSON-able *meta* dict. The descriptors go to the child through ``pass_fds``,
where they keep their numbers, and one environment variable,
``AIPC_HANDOFF``, describes them::

    {"version": 1,
     "objects": {"name": {"kind": "pipe-send", "fds": [7], "meta": {}}}}

The child side, :func:`inherit`, rebuilds the object named ``name`` with the
rebuild function registered for its kind below. Every mechanism that can be
handed off adds its kind to :data:`_KINDS`; the classes are imported only when
an object of that kind is rebuilt, so that this module imports none of them.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

__all__ = ["ENV_VAR", "VERSION", "describe", "encode", "inherit", "rebuild"]

#: The environment variable that describes the objects handed to a child.
ENV_VAR = "AIPC_HANDOFF"
#: The version of its JSON format.
VERSION = 1

T = TypeVar("T")


@dataclass(frozen=True)
class _Kind:
    """How to rebuild one kind of object in the child."""

    module: str  # relative to the aipc package
    name: str  # the class the child gets
    nfds: int  # how many descriptors the object owns
    # (the class, the fds, the meta) -> the object, which owns the fds
    rebuild: Callable[[Any, tuple[int, ...], Mapping[str, Any]], Any]

    def load(self) -> type[Any]:
        cls: type[Any] = getattr(
            importlib.import_module(self.module, "aipc"), self.name
        )
        return cls


def _rebuild_fd(cls: Any, fds: tuple[int, ...], meta: Mapping[str, Any]) -> Any:
    return cls.from_fd(fds[0])


def _rebuild_eventfd(cls: Any, fds: tuple[int, ...], meta: Mapping[str, Any]) -> Any:
    return cls.from_fd(fds[0], semaphore=bool(meta["semaphore"]))


def _rebuild_message_socket(
    cls: Any, fds: tuple[int, ...], meta: Mapping[str, Any]
) -> Any:
    return cls.from_fd(fds[0], max_size=int(meta["max_size"]))


def _rebuild_fifo_receive(
    cls: Any, fds: tuple[int, ...], meta: Mapping[str, Any]
) -> Any:
    return cls._from_handoff(fds[0], str(meta["path"]), bool(meta["keep_open"]))


def _rebuild_fifo_send(cls: Any, fds: tuple[int, ...], meta: Mapping[str, Any]) -> Any:
    return cls._from_handoff(fds[0], str(meta["path"]))


def _rebuild_process(cls: Any, fds: tuple[int, ...], meta: Mapping[str, Any]) -> Any:
    # the pid from the parent names the process even when it has been reaped
    # by now, and the pidfd's fdinfo says -1
    return cls._from_fd(fds[0], meta.get("pid"))


def _rebuild_ring(cls: Any, fds: tuple[int, ...], meta: Mapping[str, Any]) -> Any:
    # the segment, the end's own doorbell, the peer's doorbell and the
    # liveness socket (twice, send ring first, for a RingStream)
    return cls._from_handoff(fds, meta)


#: kind -> how to rebuild it. New mechanisms add theirs here.
_KINDS: dict[str, _Kind] = {
    "pipe-receive": _Kind("._pipes", "PipeReceiveStream", 1, _rebuild_fd),
    "pipe-send": _Kind("._pipes", "PipeSendStream", 1, _rebuild_fd),
    "fifo-receive": _Kind("._fifos", "FifoReceiveStream", 1, _rebuild_fifo_receive),
    "fifo-send": _Kind("._fifos", "FifoSendStream", 1, _rebuild_fifo_send),
    "eventfd": _Kind("._eventfd", "EventFd", 1, _rebuild_eventfd),
    "process": _Kind("._process", "Process", 1, _rebuild_process),
    "shm": _Kind("._shm", "SharedMemory", 1, _rebuild_fd),
    "unix-stream": _Kind("._sockets", "UnixStream", 1, _rebuild_fd),
    "unix-seqpacket": _Kind(
        "._sockets", "UnixSeqpacketStream", 1, _rebuild_message_socket
    ),
    "unix-datagram": _Kind(
        "._sockets", "UnixDatagramSocket", 1, _rebuild_message_socket
    ),
    "unix-datagram-connected": _Kind(
        "._sockets", "ConnectedUnixDatagramSocket", 1, _rebuild_message_socket
    ),
    # the child gets the listening socket, never the path: it does not unlink
    "unix-listener": _Kind("._sockets", "UnixListener", 1, _rebuild_fd),
    "ring-receiver": _Kind("._ring", "RingReceiver", 4, _rebuild_ring),
    "ring-sender": _Kind("._ring", "RingSender", 4, _rebuild_ring),
    "ring-byte-receive": _Kind("._ring", "RingByteReceiveStream", 4, _rebuild_ring),
    "ring-byte-send": _Kind("._ring", "RingByteSendStream", 4, _rebuild_ring),
    "ring-stream": _Kind("._ring", "RingStream", 8, _rebuild_ring),
}


def _handable_names() -> str:
    return ", ".join(sorted({kind.name for kind in _KINDS.values()}))


# ---------------------------------------------------------------------------
# the parent


def describe(
    obj: object, label: str, where: str
) -> tuple[str, tuple[int, ...], dict[str, Any]]:
    """``obj``'s kind, descriptors and meta, checked to be rebuildable.

    ``label`` names the object and ``where`` the destination in the
    ``TypeError`` raised for an object that cannot be handed over.
    """
    method = getattr(type(obj), "_aipc_handoff_", None)
    if method is None:
        raise TypeError(
            f"{label}: {type(obj).__name__} objects cannot be handed {where}; "
            f"these can: {_handable_names()}"
        )
    kind, fds, meta = method(obj)
    cls = _KINDS[kind].load()
    if type(obj) is not cls:
        # a subclass would come back as the base class, without what it adds
        raise TypeError(
            f"{label}: {type(obj).__name__} objects cannot be handed {where} "
            f"(it would be rebuilt there as a {cls.__name__}); these can: "
            f"{_handable_names()}"
        )
    return kind, tuple(fds), meta


def rebuild(
    label: str,
    kind: str,
    fds: tuple[int, ...],
    meta: Mapping[str, Any],
    expected: type[Any] | None = None,
) -> Any:
    """The object of ``kind`` on ``fds`` (which it then owns).

    Raises ``ValueError`` for an unknown kind or a wrong number of descriptors,
    and ``TypeError`` if the class is not ``expected``; the descriptors then
    stay the caller's.
    """
    spec = _KINDS.get(kind)
    if spec is None:
        raise ValueError(
            f"{label} is a {kind!r}, which this version of aipc cannot "
            f"rebuild (it knows {', '.join(sorted(_KINDS))})"
        )
    if len(fds) != spec.nfds:
        raise ValueError(
            f"{label} ({kind}) comes with {len(fds)} descriptors, expected {spec.nfds}"
        )
    cls = spec.load()
    if expected is not None and not issubclass(cls, expected):
        raise TypeError(
            f"{label} was handed over as {cls.__name__}, not {expected.__name__}"
        )
    return spec.rebuild(cls, fds, meta)


def encode(handoff: Mapping[str, object]) -> tuple[list[int], str]:
    """The descriptors to pass and the ``AIPC_HANDOFF`` value for ``handoff``.

    Checks everything before the caller spawns anything: ``TypeError`` for a
    name that is not a str or an object that cannot be handed off, and
    ``ValueError`` for an empty name or one descriptor offered twice.
    """
    if not isinstance(handoff, Mapping):
        raise TypeError(
            "handoff must be a mapping of names to aipc objects, not "
            f"{type(handoff).__name__}"
        )
    objects: dict[str, dict[str, object]] = {}
    owners: dict[int, str] = {}
    for name, obj in handoff.items():
        if not isinstance(name, str):
            raise TypeError(
                f"handoff names must be str, not {type(name).__name__} ({name!r})"
            )
        if not name:
            raise ValueError("handoff names must not be empty")
        kind, fds, meta = describe(obj, f"handoff[{name!r}]", "to a child process")
        for fd in fds:
            if fd in owners:
                raise ValueError(
                    f"handoff[{name!r}] and handoff[{owners[fd]!r}] are the same "
                    f"descriptor (fd {fd}): the child would get two objects that "
                    "both own it; hand each object once"
                )
            owners[fd] = name
        objects[name] = {"kind": kind, "fds": list(fds), "meta": meta}
    payload = json.dumps(
        {"version": VERSION, "objects": objects}, separators=(",", ":")
    )
    return list(owners), payload


# ---------------------------------------------------------------------------
# the child


@dataclass(frozen=True)
class _Offer:
    kind: str
    fds: tuple[int, ...]
    meta: Mapping[str, Any]


_lock = threading.Lock()
_offers: dict[str, _Offer] | None = None
_taken: set[str] = set()


def _parse(raw: str) -> dict[str, _Offer]:
    def bad(why: str) -> ValueError:
        return ValueError(f"the {ENV_VAR} environment variable is malformed: {why}")

    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("objects"), dict):
        raise bad('expected {"version": 1, "objects": {...}}')
    if data.get("version") != VERSION:
        raise bad(
            f"version {data.get('version')!r}, but this aipc reads version "
            f"{VERSION}: the parent runs another aipc version"
        )
    offers = {}
    for name, entry in data["objects"].items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("kind"), str)
            or not isinstance(entry.get("fds"), list)
            or not all(
                isinstance(fd, int) and not isinstance(fd, bool) and fd >= 0
                for fd in entry["fds"]
            )
            or not isinstance(entry.get("meta", {}), dict)
        ):
            raise bad(f"the entry for {name!r} is not a kind, fds and meta")
        offers[name] = _Offer(entry["kind"], tuple(entry["fds"]), entry.get("meta", {}))
    return offers


def _load() -> dict[str, _Offer]:
    global _offers
    if _offers is None:
        raw = os.environ.get(ENV_VAR)
        if raw is None:
            raise LookupError(
                f"nothing was handed to this process: the {ENV_VAR} environment "
                "variable is not set, so it was not started by "
                "aipc.open_process(..., handoff={...}) (or an earlier inherit() "
                "call in another copy of aipc consumed it)"
            )
        _offers = _parse(raw)
        # read once: the child's own children must not see it (their fds are
        # not the ones it describes)
        del os.environ[ENV_VAR]
    return _offers


@overload
def inherit(name: str) -> Any: ...
@overload
def inherit(name: str, kind: type[T]) -> T: ...
def inherit(name: str, kind: type[Any] | None = None) -> Any:
    """The object the parent handed to this process as ``name``, rebuilt.

    The parent started this process with
    ``aipc.open_process(..., handoff={name: obj})``; this returns an object of
    the same class as ``obj`` on the same kernel object (the same pipe, eventfd
    or process). The returned object owns the inherited descriptors (they are
    made close-on-exec), so each name can be inherited once. With ``kind`` (a
    class), the object is checked to be an instance of it before anything is
    rebuilt, and the return type is precise::

        receive = aipc.inherit("requests", aipc.PipeReceiveStream)

    The first call reads the ``AIPC_HANDOFF`` environment variable and removes
    it from ``os.environ``, so that processes this one starts do not see it:
    call ``inherit`` before starting any.

    Raises:
        LookupError: this process was not started with a hand-off; or nothing
            named ``name`` was handed to it (the message lists what was); or
            ``name`` was inherited already.
        TypeError: ``name`` is not a str, ``kind`` is not a class, or the object
            is not a ``kind``; the name can then still be inherited.
        ValueError: the variable is malformed, or names a kind this version of
            aipc cannot rebuild; or ``from_fd`` rejected the descriptor.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if kind is not None and not isinstance(kind, type):
        raise TypeError(f"kind must be a class, not {type(kind).__name__}")
    with _lock:
        offers = _load()
        if name in _taken:
            raise LookupError(
                f"{name!r} was inherited already: its descriptors belong to the "
                "object the first inherit() returned"
            )
        offer = offers.get(name)
        if offer is None:
            left = sorted(set(offers) - _taken)
            raise LookupError(
                f"nothing named {name!r} was handed to this process; on offer: "
                + (", ".join(map(repr, left)) if left else "nothing (any more)")
            )
        obj = rebuild(repr(name), offer.kind, offer.fds, offer.meta, kind)
        _taken.add(name)
        return obj
