"""Codecs: how an object channel turns objects into message bytes and back.

A codec is any object with ``encode(obj) -> bytes`` and
``decode(data) -> obj`` (the :class:`Codec` protocol). aipc ships four:

- :class:`RawCodec`: the message is the bytes themselves;
- :class:`MsgpackCodec` (the channels' default) and :class:`JsonCodec`: msgspec
  MessagePack and JSON, with typed decoding into ``msgspec.Struct`` classes,
  dataclasses, ``list[int]`` and whatever else msgspec validates;
- :class:`PickleCodec`: any picklable object, for peers that trust each other
  completely (unpickling runs code chosen by the sender). Never a default.

Each codec reuses one encoder and one decoder. A message that cannot be
decoded raises :class:`MessageDecodeError`; the channel stays usable, since
the frame boundary is intact.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, overload

import msgspec

from ._core._errors import AipcError

__all__ = [
    "Codec",
    "JsonCodec",
    "MessageDecodeError",
    "MsgpackCodec",
    "PickleCodec",
    "RawCodec",
]

T = TypeVar("T")


class MessageDecodeError(AipcError, ValueError):
    """A received message could not be decoded (or failed type validation).

    The message is consumed and the channel stays usable: the next
    ``receive`` returns the next message. Attributes: ``size`` (the encoded
    message's length in bytes) and ``codec`` (the codec that failed). The
    codec's own exception, if any, is the ``__cause__``.
    """

    def __init__(self, message: str, *, size: int, codec: object) -> None:
        self.size = size
        self.codec = codec
        super().__init__(message)


def _decode_error(
    codec: object, data: bytes | memoryview, exc: BaseException
) -> MessageDecodeError:
    size = len(data) if type(data) is bytes else memoryview(data).nbytes
    return MessageDecodeError(
        f"could not decode a {size}-byte message with {codec!r}: {exc}",
        size=size,
        codec=codec,
    )


class Codec(Protocol[T]):
    """What a channel needs from a codec: objects to bytes and back.

    ``decode`` receives the message as ``bytes`` or as a ``memoryview`` of a
    larger buffer; it must not keep a reference to a memoryview after it
    returns (copy what it keeps). It should raise :class:`MessageDecodeError`
    for bad input; the channel wraps any other ``Exception`` into one. ``encode``
    may raise ``TypeError`` or ``ValueError`` for objects it cannot encode; the
    channel sends nothing then.
    """

    def encode(self, obj: T, /) -> bytes:
        """The message bytes for ``obj``."""
        ...

    def decode(self, data: bytes | memoryview, /) -> T:
        """The object encoded in ``data``."""
        ...


class RawCodec:
    """The identity codec: messages are ``bytes`` and arrive as ``bytes``.

    ``encode`` accepts ``bytes``, ``bytearray`` and ``memoryview`` (copied to
    ``bytes`` unless it already is) and raises ``TypeError`` for anything else.
    """

    def encode(self, obj: bytes | bytearray | memoryview, /) -> bytes:
        """``obj`` as ``bytes``."""
        if type(obj) is bytes:
            return obj
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes(obj)
        raise TypeError(
            f"RawCodec sends bytes, bytearray or memoryview, not {type(obj).__name__}"
        )

    def decode(self, data: bytes | memoryview, /) -> bytes:
        """``data`` as ``bytes``."""
        return data if type(data) is bytes else bytes(data)

    def __repr__(self) -> str:
        return "RawCodec()"


def _type_name(tp: object) -> str:
    if tp is Any:
        return "Any"
    return getattr(tp, "__qualname__", None) or repr(tp)


class _MsgspecCodec(Generic[T]):
    _name: str
    _encoder: msgspec.msgpack.Encoder | msgspec.json.Encoder
    _decoder: msgspec.msgpack.Decoder[T] | msgspec.json.Decoder[T]
    _type: object

    def encode(self, obj: T, /) -> bytes:
        """The encoded message for ``obj``.

        Raises ``TypeError`` for an object of a type msgspec cannot encode
        (pass ``enc_hook`` to the codec to support it).
        """
        return self._encoder.encode(obj)

    def decode(self, data: bytes | memoryview, /) -> T:
        """Decode and validate one message.

        Raises :class:`MessageDecodeError` for malformed input or a value that
        does not match the codec's ``type``.
        """
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise _decode_error(self, data, exc) from exc

    @property
    def type(self) -> object:
        """The type messages are decoded into (``Any`` when untyped)."""
        return self._type

    def __repr__(self) -> str:
        if self._type is Any:
            return f"{self._name}()"
        return f"{self._name}(type={_type_name(self._type)})"


class MsgpackCodec(_MsgspecCodec[T]):
    """MessagePack through msgspec: the default codec of object channels.

    ``MsgpackCodec()`` sends and returns plain values (dicts, lists, str,
    bytes, int, float, bool, None). ``MsgpackCodec(Point)`` decodes every
    message into ``Point`` (a ``msgspec.Struct``, dataclass, ``TypedDict``,
    ``list[Point]``, a union msgspec supports...) and rejects messages that do
    not match with :class:`MessageDecodeError`. ``enc_hook`` and ``dec_hook``
    are msgspec's hooks for extra types. One encoder and one decoder are made
    here and reused for every message.
    """

    _name = "MsgpackCodec"

    @overload
    def __init__(
        self: MsgpackCodec[Any],
        type: None = None,
        *,
        enc_hook: Callable[[Any], Any] | None = None,
        dec_hook: Callable[[type, Any], Any] | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        type: type[T],
        *,
        enc_hook: Callable[[Any], Any] | None = None,
        dec_hook: Callable[[type, Any], Any] | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: MsgpackCodec[Any],
        type: Any,
        *,
        enc_hook: Callable[[Any], Any] | None = None,
        dec_hook: Callable[[type, Any], Any] | None = None,
    ) -> None: ...
    def __init__(
        self,
        type: Any = None,
        *,
        enc_hook: Callable[[Any], Any] | None = None,
        dec_hook: Callable[[type, Any], Any] | None = None,
    ) -> None:
        self._type = Any if type is None else type
        self._encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
        self._decoder = msgspec.msgpack.Decoder(self._type, dec_hook=dec_hook)


class JsonCodec(_MsgspecCodec[T]):
    """JSON (UTF-8) through msgspec, for peers that speak JSON.

    The same typed decoding and hooks as :class:`MsgpackCodec`; messages are
    larger and slower to encode than MessagePack, and ``bytes`` values travel
    as base64 strings.
    """

    _name = "JsonCodec"

    @overload
    def __init__(
        self: JsonCodec[Any],
        type: None = None,
        *,
        enc_hook: Callable[[Any], Any] | None = None,
        dec_hook: Callable[[type, Any], Any] | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        type: type[T],
        *,
        enc_hook: Callable[[Any], Any] | None = None,
        dec_hook: Callable[[type, Any], Any] | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: JsonCodec[Any],
        type: Any,
        *,
        enc_hook: Callable[[Any], Any] | None = None,
        dec_hook: Callable[[type, Any], Any] | None = None,
    ) -> None: ...
    def __init__(
        self,
        type: Any = None,
        *,
        enc_hook: Callable[[Any], Any] | None = None,
        dec_hook: Callable[[type, Any], Any] | None = None,
    ) -> None:
        self._type = Any if type is None else type
        self._encoder = msgspec.json.Encoder(enc_hook=enc_hook)
        self._decoder = msgspec.json.Decoder(self._type, dec_hook=dec_hook)


class PickleCodec:
    """Any picklable object, with :mod:`pickle`. **Only for a trusted peer.**

    .. warning::
       Unpickling runs code chosen by whoever produced the bytes: a peer that
       sends a crafted message executes arbitrary code in this process, with
       its privileges. Use this codec only when every process that can write to
       the channel is as trusted as this one (your own child processes over a
       private pipe, say), never over a network or a path others can open.
       aipc never picks it by default; prefer :class:`MsgpackCodec` with typed
       decoding.

    ``protocol`` is the pickle protocol used to encode (default: the highest).
    Any exception from unpickling becomes :class:`MessageDecodeError`.
    """

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        if not isinstance(protocol, int) or isinstance(protocol, bool):
            raise TypeError(f"protocol must be an int, not {type(protocol).__name__}")
        if not 0 <= protocol <= pickle.HIGHEST_PROTOCOL:
            raise ValueError(
                f"protocol must be between 0 and {pickle.HIGHEST_PROTOCOL}, "
                f"got {protocol}"
            )
        self.protocol = protocol

    def encode(self, obj: Any, /) -> bytes:
        """``pickle.dumps(obj)``; ``pickle.PicklingError`` (or ``TypeError``)
        for objects that cannot be pickled."""
        return pickle.dumps(obj, self.protocol)

    def decode(self, data: bytes | memoryview, /) -> Any:
        """``pickle.loads(data)``. This runs code chosen by the sender."""
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise _decode_error(self, data, exc) from exc

    def __repr__(self) -> str:
        return f"PickleCodec(protocol={self.protocol})"
