"""Codecs: round trips, typed decoding, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aipc


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Pair:
    left: str
    right: list[int]


def test_raw_codec_round_trip() -> None:
    codec = aipc.RawCodec()
    for value in (b"", b"abc", bytearray(b"abc"), memoryview(b"abc")):
        data = codec.encode(value)
        assert type(data) is bytes
        assert codec.decode(data) == bytes(value)
    assert codec.decode(memoryview(b"xabcx")[1:4]) == b"abc"
    assert type(codec.decode(memoryview(b"abc"))) is bytes
    assert repr(codec) == "RawCodec()"


def test_raw_codec_rejects_other_types() -> None:
    with pytest.raises(
        TypeError, match=r"^RawCodec sends bytes, bytearray or memoryview, not str$"
    ):
        aipc.RawCodec().encode("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [aipc.MsgpackCodec, aipc.JsonCodec])
def test_untyped_round_trip(cls: Any) -> None:
    codec = cls()
    value = {"a": [1, 2.5, "three", None, True], "b": {"nested": -7}}
    data = codec.encode(value)
    assert type(data) is bytes
    assert codec.decode(data) == value
    assert codec.decode(memoryview(b"!" + data)[1:]) == value
    assert repr(codec) == f"{cls.__name__}()"
    assert codec.type is Any


@pytest.mark.parametrize("cls", [aipc.MsgpackCodec, aipc.JsonCodec])
def test_typed_decoding(cls: Any) -> None:
    codec = cls(Point)
    assert codec.decode(codec.encode(Point(1, 2))) == Point(1, 2)
    assert repr(codec) == f"{cls.__name__}(type=Point)"
    pairs = cls(list[Pair])
    value = [Pair("a", [1, 2]), Pair("b", [])]
    assert pairs.decode(pairs.encode(value)) == value


@pytest.mark.parametrize("cls", [aipc.MsgpackCodec, aipc.JsonCodec])
def test_wrong_type_is_a_clear_decode_error(cls: Any) -> None:
    untyped = cls()
    data = untyped.encode({"x": 1, "y": "two"})
    with pytest.raises(aipc.MessageDecodeError) as info:
        cls(Point).decode(data)
    assert str(info.value) == (
        f"could not decode a {len(data)}-byte message with "
        f"{cls.__name__}(type=Point): Expected `int`, got `str` - at `$.y`"
    )
    assert info.value.size == len(data)
    assert repr(info.value.codec) == f"{cls.__name__}(type=Point)"
    assert isinstance(info.value.__cause__, msgspec.ValidationError)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, aipc.AipcError)


@pytest.mark.parametrize("cls", [aipc.MsgpackCodec, aipc.JsonCodec])
def test_garbage_is_a_decode_error(cls: Any) -> None:
    with pytest.raises(aipc.MessageDecodeError, match=r"could not decode a 4-byte"):
        cls().decode(b"\xc1\xff\x00{")


def test_encode_error_for_unsupported_type() -> None:
    with pytest.raises(TypeError, match="Encoding objects of type object"):
        aipc.MsgpackCodec().encode(object())


def test_hooks_are_passed_to_msgspec() -> None:
    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

    codec = aipc.MsgpackCodec(
        Money,
        enc_hook=lambda obj: obj.cents,
        dec_hook=lambda tp, obj: tp(obj),
    )
    assert codec.decode(codec.encode(Money(250))).cents == 250


def test_json_codec_sends_bytes_as_base64() -> None:
    codec = aipc.JsonCodec()
    assert codec.encode(b"\x00\x01") == b'"AAE="'
    assert aipc.JsonCodec(bytes).decode(b'"AAE="') == b"\x00\x01"


def test_pickle_codec_round_trip() -> None:
    codec = aipc.PickleCodec()
    value = {"set": {1, 2}, "tuple": (1, "a"), "point": Pair("p", [3])}
    assert codec.decode(codec.encode(value)) == value
    assert codec.decode(memoryview(codec.encode(value))) == value
    assert repr(codec) == f"PickleCodec(protocol={pickle.HIGHEST_PROTOCOL})"
    assert aipc.PickleCodec(2).decode(aipc.PickleCodec(2).encode([1])) == [1]


def test_pickle_codec_warns_in_its_docstring() -> None:
    doc = aipc.PickleCodec.__doc__ or ""
    assert "Only for a trusted peer" in doc
    assert "runs code chosen by" in doc


def test_pickle_codec_garbage_is_a_decode_error() -> None:
    with pytest.raises(aipc.MessageDecodeError, match=r"could not decode a 3-byte"):
        aipc.PickleCodec().decode(b"abc")


@pytest.mark.parametrize(
    ("protocol", "error", "message"),
    [
        (-1, ValueError, r"^protocol must be between 0 and \d+, got -1$"),
        (99, ValueError, r"^protocol must be between 0 and \d+, got 99$"),
        ("5", TypeError, r"^protocol must be an int, not str$"),
        (True, TypeError, r"^protocol must be an int, not bool$"),
    ],
)
def test_pickle_protocol_is_checked(
    protocol: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        aipc.PickleCodec(protocol)  # type: ignore[arg-type]


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=50, deadline=None)
@given(_values)
def test_msgpack_round_trips_any_plain_value(value: object) -> None:
    codec = aipc.MsgpackCodec()
    assert codec.decode(codec.encode(value)) == value
