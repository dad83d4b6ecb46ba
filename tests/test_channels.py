"""Object channels: framing over every byte transport, native boundaries over
message transports, malformed input, cancellation that never splits a frame,
TCP and TLS, and a peer in another process or network namespace."""

from __future__ import annotations

import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tracemalloc
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from anyio.abc import (
    ByteReceiveStream,
    ByteSendStream,
    ObjectReceiveStream,
    ObjectSendStream,
    SocketAttribute,
)
from anyio.streams.stapled import StapledByteStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aipc

from ._conformance import _checkpointed, _expect_cancelled
from ._helpers import PROJECT_ROOT, child_process, read_line

pytestmark = pytest.mark.anyio

TIMEOUT = 20


class Point(msgspec.Struct):
    x: int
    y: int


def _payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def _pump(
    tx: ObjectSendStream[Any],
    rx: ObjectReceiveStream[Any],
    messages: Sequence[Any],
    *,
    close: bool = True,
) -> list[Any]:
    """Send ``messages`` on tx in a task while receiving as many on rx; with
    ``close``, close tx and expect EndOfStream on rx."""
    got: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                for message in messages:
                    await tx.send(message)
                if close:
                    await tx.aclose()

            tg.start_soon(produce)
            for _ in messages:
                got.append(await rx.receive())
            if close:
                with pytest.raises(anyio.EndOfStream):
                    await rx.receive()
    return got


MIXED = [
    {"n": 0},
    b"",
    [1, 2, 3],
    "text",
    {"big": b"x" * 300_000},
    None,
    {"n": 2, "s": "y" * 70_000},
]


# --- byte transports ---------------------------------------------------------------


async def test_round_trip_over_pipe() -> None:
    r, w = aipc.create_pipe()
    rx, tx = aipc.create_channel(r), aipc.create_channel(w)
    assert isinstance(rx, aipc.ChannelReceiver)
    assert isinstance(tx, aipc.ChannelSender)
    assert not isinstance(rx, aipc.ChannelSender)
    assert not isinstance(tx, aipc.ChannelReceiver)
    async with rx, tx:
        assert await _pump(tx, rx, MIXED) == MIXED
    # closing the channel closes the transport
    assert r.closed
    assert w.closed


async def test_round_trip_over_fifo(fifo_dir: Path) -> None:
    fifo = aipc.create_fifo(fifo_dir / "channel")
    try:
        r = await aipc.open_fifo_receiver(fifo.path)
        w = await aipc.open_fifo_sender(fifo.path)
    finally:
        assert fifo.unlink()
    async with aipc.create_channel(r) as rx, aipc.create_channel(w) as tx:
        assert await _pump(tx, rx, MIXED) == MIXED


async def test_round_trip_over_stapled_pipes() -> None:
    r1, w1 = aipc.create_pipe()
    r2, w2 = aipc.create_pipe()
    a = aipc.create_channel(StapledByteStream(w1, r2))
    b = aipc.create_channel(StapledByteStream(w2, r1))
    assert isinstance(a, aipc.Channel)
    async with a, b:
        assert await _pump(a, b, MIXED, close=False) == MIXED
        assert await _pump(b, a, MIXED, close=False) == MIXED


async def test_round_trip_over_aipc_unix_stream_pair() -> None:
    left, right = aipc.create_unix_socket_pair("stream")
    async with aipc.create_channel(left) as a, aipc.create_channel(right) as b:
        assert isinstance(a, aipc.Channel)
        assert await _pump(a, b, MIXED, close=False) == MIXED
        await a.send_eof()
        with anyio.fail_after(TIMEOUT), pytest.raises(anyio.EndOfStream):
            await b.receive()
        await b.send("still open the other way")
        with anyio.fail_after(TIMEOUT):
            assert await a.receive() == "still open the other way"


@asynccontextmanager
async def _anyio_unix_pair(
    directory: Path,
) -> AsyncIterator[tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]]:
    path = directory / "s"
    async with await anyio.create_unix_listener(path) as listener:
        with anyio.fail_after(TIMEOUT):
            client = await anyio.connect_unix(path)
            server = await listener.accept()  # type: ignore[attr-defined]
    path.unlink()
    async with client, server:
        yield client, server


async def test_round_trip_over_anyio_unix_stream(tmp_path: Path) -> None:
    async with _anyio_unix_pair(tmp_path) as (client, server):
        a, b = aipc.create_channel(client), aipc.create_channel(server)
        async with a, b:
            assert await _pump(a, b, MIXED, close=False) == MIXED
            assert await _pump(b, a, MIXED, close=False) == MIXED
            await a.send_eof()
            with anyio.fail_after(TIMEOUT), pytest.raises(anyio.EndOfStream):
                await b.receive()


@asynccontextmanager
async def _tcp_pair(
    **listener_options: Any,
) -> AsyncIterator[tuple[aipc.Channel[Any], aipc.Channel[Any]]]:
    """(client, server) channels connected over loopback TCP."""
    client_options = listener_options.pop("client_options", {})
    listener = await aipc.open_tcp_channel_listener(
        local_host="127.0.0.1", **listener_options
    )
    port = listener.extra(SocketAttribute.local_port)
    accepted: list[aipc.Channel[Any]] = []
    done = anyio.Event()
    async with listener, anyio.create_task_group() as tg:

        async def handler(channel: aipc.Channel[Any]) -> None:
            accepted.append(channel)
            await done.wait()

        tg.start_soon(listener.serve, handler)
        with anyio.fail_after(TIMEOUT):
            client = await aipc.connect_tcp_channel("127.0.0.1", port, **client_options)
        try:
            with anyio.fail_after(TIMEOUT):
                while not accepted:
                    await anyio.wait_all_tasks_blocked()
            yield client, accepted[0]
        finally:
            # the server's channel is closed as its handler returns: both ends
            # close at once (a standard-compatible TLS close waits for the peer)
            done.set()
            with anyio.fail_after(TIMEOUT, shield=True):
                await client.aclose()
            tg.cancel_scope.cancel()


async def test_round_trip_over_tcp() -> None:
    codec = aipc.MsgpackCodec(Point)
    async with _tcp_pair(codec=codec, client_options={"codec": codec}) as (
        client,
        server,
    ):
        assert isinstance(client, aipc.Channel)
        assert repr(server.codec) == "MsgpackCodec(type=Point)"
        points = [Point(i, -i) for i in range(100)]
        assert await _pump(client, server, points, close=False) == points
        assert await _pump(server, client, points, close=False) == points
        local = client.extra(SocketAttribute.local_port)
        assert server.extra(SocketAttribute.remote_port) == local
        await client.send_eof()
        with anyio.fail_after(TIMEOUT), pytest.raises(anyio.EndOfStream):
            await server.receive()


# --- TLS: a throwaway CA and certificate from the openssl command ----------------


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(certificate, key) for "localhost" and 127.0.0.1, self-signed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a test certificate (and no trustme)")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    result = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"openssl could not make a test certificate: {result.stderr}")
    return cert, key


@pytest.fixture
def tls_contexts(tls_files: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts trusting the test certificate."""
    cert, key = tls_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def test_round_trip_over_tls(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls_contexts
    options = {
        "ssl_context": server_ctx,
        "client_options": {"ssl_context": client_ctx, "tls_hostname": "localhost"},
    }
    async with _tcp_pair(**options) as (client, server):
        assert client.extra(anyio.streams.tls.TLSAttribute.server_side) is False
        assert await _pump(client, server, MIXED, close=False) == MIXED
        assert await _pump(server, client, MIXED, close=False) == MIXED


async def test_tls_rejects_an_untrusted_server(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, _ = tls_contexts
    listener = await aipc.open_tcp_channel_listener(
        local_host="127.0.0.1", ssl_context=server_ctx
    )
    port = listener.extra(SocketAttribute.local_port)

    async def handler(channel: aipc.Channel[Any]) -> None:
        pass  # pragma: no cover - the handshake fails first

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        with anyio.fail_after(TIMEOUT), pytest.raises(ssl.SSLCertVerificationError):
            await aipc.connect_tcp_channel(
                "127.0.0.1", port, ssl_context=ssl.create_default_context()
            )
        tg.cancel_scope.cancel()


# --- message transports --------------------------------------------------------------


async def test_round_trip_over_memory_object_streams() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](10)
    tx, rx = aipc.create_channel(send), aipc.create_channel(receive)
    assert isinstance(tx, aipc.ChannelSender)
    assert isinstance(rx, aipc.ChannelReceiver)
    async with tx, rx:
        assert await _pump(tx, rx, MIXED) == MIXED


async def test_message_transport_sends_no_frame_header() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](10)
    async with aipc.create_channel(send, codec=aipc.RawCodec()) as tx, receive:
        await tx.send(b"abc")
        assert receive.receive_nowait() == b"abc"


async def test_round_trip_over_seqpacket_pair() -> None:
    left, right = aipc.create_unix_socket_pair("seqpacket")
    async with aipc.create_channel(left) as a, aipc.create_channel(right) as b:
        assert isinstance(a, aipc.Channel)
        small = [m for m in MIXED if len(msgspec.msgpack.encode(m)) < 50_000]
        assert await _pump(a, b, small, close=False) == small


async def test_round_trip_over_posix_message_queue(
    mq_name: Callable[[], str],
) -> None:
    queue = aipc.create_message_queue(
        mq_name(), max_messages=4, max_message_size=1024, unlink_on_close=True
    )
    async with aipc.create_channel(queue, max_size=1024) as channel:
        assert isinstance(channel, aipc.Channel)
        messages = [{"job": i} for i in range(20)]
        assert await _pump(channel, channel, messages, close=False) == messages
        with pytest.raises(NotImplementedError, match="has no send_eof"):
            await channel.send_eof()


async def test_oversized_message_on_message_transport_is_dropped() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](10)
    rx = aipc.create_channel(receive, codec=aipc.RawCodec(), max_size=10)
    async with send, rx:
        await send.send(b"x" * 11)
        await send.send(b"ok")
        with pytest.raises(aipc.LimitExceededError) as info:
            await rx.receive()
        assert info.value.value == 11
        assert info.value.limit == 10
        assert "the message was dropped" in str(info.value)
        assert not isinstance(info.value, anyio.BrokenResourceError)
        assert await rx.receive() == b"ok"


# --- typed decoding and codecs -----------------------------------------------------


async def test_typed_channel_and_wrong_type() -> None:
    r, w = aipc.create_pipe()
    rx = aipc.create_channel(r, codec=aipc.MsgpackCodec(Point))
    async with rx, aipc.create_channel(w) as tx:
        await tx.send({"x": 1, "y": 2})
        await tx.send({"x": 1})
        await tx.send(Point(3, 4))
        with anyio.fail_after(TIMEOUT):
            point = await rx.receive()
            assert point == Point(1, 2)
            with pytest.raises(aipc.MessageDecodeError) as info:
                await rx.receive()
            assert "Object missing required field `y`" in str(info.value)
            assert info.value.size == len(msgspec.msgpack.encode({"x": 1}))
            # the frame boundary was intact: the channel goes on
            assert await rx.receive() == Point(3, 4)


async def test_json_and_pickle_codecs_over_a_pipe() -> None:
    for codec in (aipc.JsonCodec(), aipc.PickleCodec()):
        r, w = aipc.create_pipe()
        rx = aipc.create_channel(r, codec=codec)
        async with rx, aipc.create_channel(w, codec=codec) as tx:
            messages = [{"a": [1, 2]}, "s", 3]
            assert await _pump(tx, rx, messages) == messages


class _ShoutingCodec:
    """A codec of our own: str, upper-cased on decode; rejects 'boom'."""

    def encode(self, obj: str) -> bytes:
        return obj.encode()

    def decode(self, data: bytes | memoryview) -> str:
        text = bytes(data).decode()
        if text == "boom":
            raise RuntimeError("no booms")
        return text.upper()


async def test_custom_codec_and_its_errors_are_wrapped() -> None:
    r, w = aipc.create_pipe()
    codec = _ShoutingCodec()
    async with aipc.create_channel(r, codec=codec) as rx:
        async with aipc.create_channel(w, codec=codec) as tx:
            await tx.send("boom")
            await tx.send("fine")
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(aipc.MessageDecodeError, match="RuntimeError") as info:
                await rx.receive()
            assert isinstance(info.value.__cause__, RuntimeError)
            assert await rx.receive() == "FINE"


async def test_raw_codec_over_tcp() -> None:
    raw = aipc.RawCodec()
    async with _tcp_pair(codec=raw, client_options={"codec": raw}) as (client, server):
        blobs = [_payload(i, size) for i, size in enumerate([0, 1, 5000, 1 << 20])]
        assert await _pump(client, server, blobs, close=False) == blobs


# --- hypothesis: random sizes and chunkings ------------------------------------------


class _WireSink(ByteSendStream):
    """Collects what a channel sends (a byte stream of our own: the generic,
    shielded send path)."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        self.data += item

    async def aclose(self) -> None:
        pass


class _ChunkedSource(ByteReceiveStream):
    """Replays bytes in chunks of the given sizes, used in turn (split further
    if receive asks for less), then raises EndOfStream. No chunk is smaller
    than 1/3000 of the data, to keep examples quick."""

    def __init__(self, data: bytes, chunk_sizes: Sequence[int]) -> None:
        self.chunks: deque[bytes] = deque()
        floor = len(data) // 3000
        pos = i = 0
        while pos < len(data):
            size = max(chunk_sizes[i % len(chunk_sizes)], floor)
            self.chunks.append(data[pos : pos + size])
            pos += size
            i += 1
        self.received = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        if not self.chunks:
            raise anyio.EndOfStream
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.received += len(chunk)
        return chunk

    async def aclose(self) -> None:
        pass


_sizes = st.lists(
    st.one_of(st.integers(0, 300), st.integers(0, 100_000)), min_size=0, max_size=10
)
_chunkings = st.lists(
    st.one_of(st.integers(1, 10), st.integers(1, 100_000)), min_size=1, max_size=8
)
_quick = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@_quick
@given(sizes=_sizes, chunking=_chunkings, seed=st.integers(0, 2**32))
async def test_random_sizes_and_chunkings_round_trip(
    sizes: list[int], chunking: list[int], seed: int
) -> None:
    messages = [_payload(seed + i, size) for i, size in enumerate(sizes)]
    sink = _WireSink()
    async with aipc.create_channel(sink, codec=aipc.RawCodec()) as tx:
        for message in messages:
            await tx.send(message)
    assert len(sink.data) == sum(sizes) + 4 * len(sizes)
    source = _ChunkedSource(bytes(sink.data), chunking)
    async with aipc.create_channel(source, codec=aipc.RawCodec()) as rx:
        got = [message async for message in rx]
        assert rx.statistics().buffered_bytes == 0
    assert got == messages


@_quick
@given(garbage=st.binary(max_size=2000), chunking=_chunkings)
async def test_garbage_never_crashes(garbage: bytes, chunking: list[int]) -> None:
    source = _ChunkedSource(garbage, chunking)
    async with aipc.create_channel(source, max_size=1024) as rx:
        for _ in range(len(garbage) + 1):
            try:
                await rx.receive()
            except aipc.MessageDecodeError:
                continue  # a frame of garbage: the next one may follow
            except (aipc.FrameError, anyio.EndOfStream):
                break
        else:
            raise AssertionError("more messages than bytes")
        assert source.received <= len(garbage)


# --- malformed input -----------------------------------------------------------------


async def test_oversized_length_prefix_allocates_nothing() -> None:
    r, w = aipc.create_pipe()
    async with aipc.create_channel(r) as rx, w:
        await w.send(b"\xff\xff\xff\xff" + b"garbage" * 100)
        tracemalloc.start()
        try:
            with (
                anyio.fail_after(TIMEOUT),
                pytest.raises(aipc.FrameTooLargeError) as info,
            ):
                await rx.receive()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20  # the 4 GiB the header announced were never asked for
        error = info.value
        assert error.value == 2**32 - 1
        assert error.limit == aipc.DEFAULT_CHANNEL_MAX_SIZE
        assert str(error).startswith(
            "a frame header announces 4294967295 bytes, more than this channel's "
            "max_size (16777216)"
        )
        assert isinstance(error, anyio.BrokenResourceError)
        assert isinstance(error, aipc.LimitExceededError)
        # the boundary is lost: the channel is broken from now on
        with pytest.raises(anyio.BrokenResourceError, match="framing was lost"):
            await rx.receive()


async def test_frame_over_receiver_max_size() -> None:
    r, w = aipc.create_pipe()
    rx = aipc.create_channel(r, codec=aipc.RawCodec(), max_size=100)
    async with rx, aipc.create_channel(w, codec=aipc.RawCodec()) as tx:
        await tx.send(b"x" * 100)
        await tx.send(b"x" * 101)
        with anyio.fail_after(TIMEOUT):
            assert await rx.receive() == b"x" * 100
            with pytest.raises(aipc.FrameTooLargeError, match=r"announces 101 bytes"):
                await rx.receive()


@pytest.mark.parametrize(
    ("wire", "expected", "received"),
    [
        (b"\x00\x00", 4, 2),  # inside the header
        (b"\x00\x00\x00\x10abc", 20, 7),  # inside the payload
    ],
)
async def test_truncated_frame(wire: bytes, expected: int, received: int) -> None:
    r, w = aipc.create_pipe()
    async with aipc.create_channel(r) as rx:
        async with w:
            await w.send(wire)
        with anyio.fail_after(TIMEOUT), pytest.raises(aipc.TruncatedFrameError) as info:
            await rx.receive()
        assert info.value.expected == expected
        assert info.value.received == received
        assert str(info.value) == (
            f"truncated frame: the stream ended after {received} of the {expected} "
            "bytes of a frame (the peer stopped in the middle of a message)"
        )
        with pytest.raises(anyio.BrokenResourceError, match="framing was lost"):
            await rx.receive()


async def test_garbage_payload_keeps_the_channel_usable() -> None:
    r, w = aipc.create_pipe()
    good = msgspec.msgpack.encode({"ok": True})
    async with aipc.create_channel(r) as rx, w:
        await w.send(b"\x00\x00\x00\x03\xc1\xc1\xc1" + len(good).to_bytes(4) + good)
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(aipc.MessageDecodeError, match="3-byte message"):
                await rx.receive()
            assert await rx.receive() == {"ok": True}


async def test_end_of_stream_between_frames_repeats() -> None:
    r, w = aipc.create_pipe()
    async with aipc.create_channel(r) as rx:
        async with aipc.create_channel(w) as tx:
            await tx.send(1)
        with anyio.fail_after(TIMEOUT):
            assert await rx.receive() == 1
            for _ in range(2):
                with pytest.raises(anyio.EndOfStream):
                    await _checkpointed(rx.receive)


async def test_send_over_max_size_writes_nothing() -> None:
    r, w = aipc.create_pipe()
    tx = aipc.create_channel(w, codec=aipc.RawCodec(), max_size=10)
    async with r, tx:
        with pytest.raises(aipc.LimitExceededError) as info:
            await tx.send(b"x" * 11)
        assert str(info.value) == (
            "message size=11 exceeds the channel's max_size (10); pass a larger "
            "max_size to both ends of the channel"
        )
        assert info.value.argument == "message size"
        assert w.statistics().bytes == 0
        await tx.send(b"x" * 10)
        assert w.statistics().bytes == 14


# --- arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_size", "error", "message"),
    [
        (0, ValueError, r"^max_size must be at least 1 byte, got 0$"),
        (
            2**32,
            ValueError,
            r"^max_size must be at most 4294967295 bytes \(what the 4-byte length "
            r"prefix can express\), got 4294967296$",
        ),
        (1.5, TypeError, r"^max_size must be an int, not float$"),
    ],
)
async def test_max_size_is_checked(
    max_size: object, error: type[Exception], message: str
) -> None:
    r, w = aipc.create_pipe()
    async with r, w:
        with pytest.raises(error, match=message):
            aipc.create_channel(r, max_size=max_size)  # type: ignore[arg-type]
        with pytest.raises(error, match=message):
            await aipc.connect_tcp_channel("127.0.0.1", 1, max_size=max_size)  # type: ignore[arg-type]
        with pytest.raises(error, match=message):
            await aipc.open_tcp_channel_listener(max_size=max_size)  # type: ignore[arg-type]


async def test_codec_and_transport_are_checked() -> None:
    r, w = aipc.create_pipe()
    async with r, w:
        with pytest.raises(
            TypeError,
            match=r"^codec must have encode\(\) and decode\(\) methods \(see "
            r"aipc.Codec\), not str$",
        ):
            aipc.create_channel(r, codec="msgpack")  # type: ignore[call-overload]
    with pytest.raises(
        TypeError, match=r"^transport must be an anyio byte stream or an object"
    ):
        aipc.create_channel(b"bytes")  # type: ignore[call-overload]
    with pytest.raises(
        TypeError, match=r"^listener must be an anyio Listener, not int"
    ):
        aipc.create_channel_listener(3)  # type: ignore[call-overload]


def test_default_codec_is_msgpack_never_pickle() -> None:
    r, w = aipc.create_pipe()
    try:
        channel = aipc.create_channel(r)
        assert isinstance(channel.codec, aipc.MsgpackCodec)
        assert channel.max_size == aipc.DEFAULT_CHANNEL_MAX_SIZE == 16 * 1024 * 1024
    finally:
        r.close()
        w.close()


async def test_fd_send_some_writes_once_and_is_cancellable_only_before() -> None:
    # the primitive the channels build on (aipc/_core/_stream.py)
    r, w = aipc.create_pipe(capacity=4096)
    async with r, w:
        assert await w._send_some(b"x" * 10_000) == 4096  # one write: what fit
        stats = w.statistics()
        assert (stats.bytes, stats.operations, stats.syscalls) == (4096, 0, 1)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await w._send_some(b"y")  # the pipe is full: cancelled in the wait
        assert scope.cancelled_caught
        assert w.statistics().bytes == 4096
        assert w.statistics().waits == 1
        assert await r.receive(4096) == b"x" * 4096  # a pipe needs a free page
        with anyio.fail_after(TIMEOUT):
            assert await w._send_some(memoryview(b"yz")[1:]) == 1
        await r.aclose()
        with pytest.raises(anyio.BrokenResourceError):
            await w._send_some(b"z")


# --- checkpoints, busy, closing, statistics ------------------------------------------


async def test_receive_is_a_checkpoint_even_when_buffered() -> None:
    r, w = aipc.create_pipe()
    async with aipc.create_channel(r) as rx, aipc.create_channel(w) as tx:
        for i in range(3):
            await _checkpointed(tx.send, i)
        assert await _checkpointed(rx.receive) == 0
        assert rx.statistics().buffered_bytes > 0  # both others came in one read
        assert await _checkpointed(rx.receive) == 1
        await _expect_cancelled(rx.receive)
        assert await _checkpointed(rx.receive) == 2  # the cancelled one lost nothing
        await _expect_cancelled(tx.send, 3)
        await tx.send(4)
        assert await rx.receive() == 4  # the cancelled send did not happen


async def test_one_receiver_and_one_sender_at_a_time() -> None:
    # two pipes: the receiver waits on an empty one, the sender on a full one
    r, idle_w = aipc.create_pipe()
    idle_r, w = aipc.create_pipe(capacity=4096)
    rx, tx = aipc.create_channel(r), aipc.create_channel(w)
    async with idle_w, idle_r, rx, tx:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(rx.receive)
                tg.start_soon(tx.send, b"x" * 100_000)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(anyio.BusyResourceError, match="receiving"):
                    await rx.receive()
                with pytest.raises(anyio.BusyResourceError, match="sending to"):
                    await tx.send(1)
                tg.cancel_scope.cancel()


async def test_aclose_wakes_waiters_and_is_idempotent() -> None:
    # two pipes: the receiver waits on an empty one, the sender on a full one
    r, idle_w = aipc.create_pipe()
    idle_r, w = aipc.create_pipe(capacity=4096)
    rx, tx = aipc.create_channel(r), aipc.create_channel(w)
    async with idle_w, idle_r:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:

                async def receiver() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await rx.receive()

                async def sender() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await tx.send(b"x" * 100_000)

                tg.start_soon(receiver)
                tg.start_soon(sender)
                await anyio.wait_all_tasks_blocked()
                await rx.aclose()
                await tx.aclose()
    assert rx.closed
    assert tx.closed
    assert r.closed
    assert w.closed
    await rx.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await _checkpointed(rx.receive)
    with pytest.raises(anyio.ClosedResourceError):
        await _checkpointed(tx.send, 1)


async def test_statistics_and_repr() -> None:
    r, w = aipc.create_pipe()
    rx, tx = aipc.create_channel(r), aipc.create_channel(w)
    async with rx, tx:
        assert tx.statistics() == aipc.ChannelStatistics(0, 0, 0, 0, 0, 0)
        await tx.send(b"abc")  # msgpack bin 8: 2 bytes of header + 3
        await tx.send(b"de")
        assert await rx.receive() == b"abc"
        assert tx.statistics() == aipc.ChannelStatistics(2, 9, 0, 0, 0, 0)
        assert rx.statistics() == aipc.ChannelStatistics(0, 0, 1, 5, 0, 8)
        assert repr(tx) == (
            f"<ChannelSender MsgpackCodec() over {w!r} sent=2 received=0>"
        )
    assert repr(rx).startswith("<ChannelReceiver MsgpackCodec() over <PipeReceive")
    assert repr(rx).endswith(" closed sent=0 received=1>")


# --- cancellation ---------------------------------------------------------------------


async def test_send_cancelled_before_its_first_byte_did_not_happen() -> None:
    r, w = aipc.create_pipe(capacity=4096)
    rx = aipc.create_channel(r, codec=aipc.RawCodec())
    async with rx, aipc.create_channel(w, codec=aipc.RawCodec()) as tx:
        await tx.send(b"f" * 4092)  # its frame fills the pipe exactly
        with anyio.move_on_after(0.05) as scope:
            await tx.send(b"never")  # waits for room, and is cancelled there
        assert scope.cancelled_caught
        assert tx.statistics().unsent_bytes == 0
        await tx.aclose()
        with anyio.fail_after(TIMEOUT):
            assert [m async for m in rx] == [b"f" * 4092]


async def test_send_cancelled_mid_frame_is_finished_by_the_next_send() -> None:
    r, w = aipc.create_pipe(capacity=4096)
    big = _payload(1, 100_000)
    rx = aipc.create_channel(r, codec=aipc.RawCodec())
    async with rx, aipc.create_channel(w, codec=aipc.RawCodec()) as tx:
        with anyio.fail_after(TIMEOUT):
            scope = anyio.CancelScope()

            async def send_big() -> None:
                with scope:
                    await tx.send(big)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_big)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
            assert scope.cancelled_caught
            unsent = tx.statistics().unsent_bytes
            assert 0 < unsent < 100_000
            assert tx.statistics().messages_sent == 0
            # the next send writes the rest first, then its own message

            async def send_small() -> None:
                await tx.send(b"after")
                await tx.aclose()

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_small)
                assert [m async for m in rx] == [big, b"after"]
            assert tx.statistics().messages_sent == 2


async def test_aclose_writes_what_fits_of_a_cancelled_frame() -> None:
    r, w = aipc.create_pipe(capacity=4096)
    tx = aipc.create_channel(w, codec=aipc.RawCodec())
    message = _payload(2, 6000)
    async with r:
        with anyio.move_on_after(0.05):
            await tx.send(message)  # 4096 bytes go out, then it waits
        assert tx.statistics().unsent_bytes == 6004 - 4096
        wire = await r.receive(4096)
        await tx.aclose()  # the rest fits now: written without waiting
        with anyio.fail_after(TIMEOUT):
            async for chunk in r:
                wire += chunk
        assert wire == (6000).to_bytes(4) + message


async def test_aclose_never_waits_and_the_peer_sees_truncation() -> None:
    r, w = aipc.create_pipe(capacity=4096)
    async with aipc.create_channel(r) as rx:
        tx = aipc.create_channel(w)
        with anyio.move_on_after(0.05):
            await tx.send(b"x" * 50_000)
        with anyio.fail_after(TIMEOUT):
            await tx.aclose()  # nobody reads: the rest does not fit
        assert w.closed
        with anyio.fail_after(TIMEOUT), pytest.raises(aipc.TruncatedFrameError):
            await rx.receive()


async def test_cancelled_receive_keeps_a_partial_frame() -> None:
    r, w = aipc.create_pipe()
    frame = len(b"\xa5hello").to_bytes(4) + b"\xa5hello"  # msgpack "hello"
    async with aipc.create_channel(r) as rx, w:
        await w.send(frame[:6])
        with anyio.move_on_after(0.05) as scope:
            await rx.receive()
        assert scope.cancelled_caught
        assert rx.statistics().buffered_bytes == 6
        await w.send(frame[6:])
        with anyio.fail_after(TIMEOUT):
            assert await rx.receive() == "hello"


async def _cancel_storm(
    tx: ObjectSendStream[Any],
    rx: ObjectReceiveStream[Any],
    seed: int,
    *,
    exact: bool = True,
) -> None:
    """Send messages (some larger than any kernel buffer) under random
    cancellation while the reader reads slowly. Every message that arrives is
    intact and they arrive in order; every send that returned arrived. With
    ``exact``, a cancelled send arrived exactly when it had started (its rest
    was left for the next send); without, a cancelled send may have arrived
    whole or not at all (anyio's asyncio TCP stream hands the whole frame to
    the loop, which cannot say whether a cancelled send got that far)."""
    rng = random.Random(seed)
    attempted: list[bytes] = []
    expected: list[bool] = []  # per attempted message: must it arrive?

    async def produce() -> None:
        for i in range(60):
            message = _payload(seed * 1000 + i, rng.choice([10, 3000, 70_000, 400_000]))
            before = tx.statistics()  # type: ignore[attr-defined]
            with anyio.move_on_after(rng.choice([0, 0, 1e-4, 1e-3, 5e-3, 1])) as scope:
                await tx.send(message)
            after = tx.statistics()  # type: ignore[attr-defined]
            attempted.append(message)
            started = after.unsent_bytes and (
                # the rest of an earlier frame went out, then this one started
                not before.unsent_bytes or after.messages_sent > before.messages_sent
            )
            expected.append(not scope.cancelled_caught or bool(started))
        # not cancelled: finishes a started frame. (The reader stops there: over
        # TCP on asyncio, closing right away could drop what the loop holds.)
        await tx.send(b"end")
        attempted.append(b"end")
        expected.append(True)

    got: list[bytes] = []
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            while not got or got[-1] != b"end":
                got.append(await rx.receive())
                for _ in range(rng.randrange(3)):
                    await anyio.lowlevel.checkpoint()
    must = [m for m, needed in zip(attempted, expected, strict=True) if needed]
    if exact:
        assert got == must
    else:
        # got is attempted with some cancelled ones left out, in order
        it = iter(zip(attempted, expected, strict=True))
        for message in got:
            for candidate, needed in it:
                if candidate == message:
                    break
                assert not needed, "a completed send did not arrive"
            else:
                raise AssertionError("a message arrived out of order or altered")
        assert all(not needed for _, needed in it)
    assert 1 < len(must) < 61


async def test_random_cancellation_never_corrupts_a_pipe() -> None:
    for seed in range(3):
        r, w = aipc.create_pipe(capacity=4096)
        rx = aipc.create_channel(r, codec=aipc.RawCodec())
        async with rx, aipc.create_channel(w, codec=aipc.RawCodec()) as tx:
            await _cancel_storm(tx, rx, seed)


async def test_random_cancellation_never_corrupts_an_aipc_unix_stream() -> None:
    left, right = aipc.create_unix_socket_pair("stream")
    a = aipc.create_channel(left, codec=aipc.RawCodec())
    b = aipc.create_channel(right, codec=aipc.RawCodec())
    async with a, b:
        await _cancel_storm(a, b, 7)


async def test_random_cancellation_never_corrupts_an_anyio_unix_stream(
    tmp_path: Path,
) -> None:
    async with _anyio_unix_pair(tmp_path) as (client, server):
        client.extra(SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        a = aipc.create_channel(client, codec=aipc.RawCodec())
        b = aipc.create_channel(server, codec=aipc.RawCodec())
        async with a, b:
            await _cancel_storm(a, b, 11)


async def test_random_cancellation_never_corrupts_tcp(
    anyio_backend: tuple[str, dict[str, Any]],
) -> None:
    # trio: the channel writes to the socket itself; asyncio and uvloop: anyio
    # hands the whole frame to the transport after its one cancel point (the
    # property _loop_takes_whole_items relies on)
    raw = aipc.RawCodec()
    async with _tcp_pair(codec=raw, client_options={"codec": raw}) as (client, server):
        client.extra(SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        await _cancel_storm(client, server, 13, exact=anyio_backend[0] == "trio")


async def test_random_cancellation_never_corrupts_tls(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls_contexts
    options = {
        "codec": aipc.RawCodec(),
        "ssl_context": server_ctx,
        "tls_standard_compatible": False,
        "client_options": {
            "codec": aipc.RawCodec(),
            "ssl_context": client_ctx,
            "tls_hostname": "localhost",
            "tls_standard_compatible": False,
        },
    }
    async with _tcp_pair(**options) as (client, server):
        await _cancel_storm(client, server, 17)


async def test_shielded_send_finishes_its_frame_and_the_cancellation_comes_after(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls_contexts
    options = {
        "codec": aipc.RawCodec(),
        "ssl_context": server_ctx,
        "client_options": {
            "codec": aipc.RawCodec(),
            "ssl_context": client_ctx,
            "tls_hostname": "localhost",
        },
    }
    big = _payload(3, 8 << 20)  # more than the socket buffers hold
    async with _tcp_pair(**options) as (client, server):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                cancelled = anyio.Event()
                scopes: list[anyio.CancelScope] = []

                async def send() -> None:
                    with anyio.CancelScope() as scope:
                        scopes.append(scope)
                        await client.send(big)  # returns: the frame went out
                        assert scope.cancel_called
                        await anyio.lowlevel.checkpoint()  # the cancellation lands
                    assert scope.cancelled_caught
                    cancelled.set()

                tg.start_soon(send)
                # the send is blocked on full socket buffers, mid-frame: cancel
                # it there, before anything drains them (a canceller task of
                # its own could run only after the transfer had finished)
                await anyio.wait_all_tasks_blocked()
                scopes[0].cancel()
                assert await server.receive() == big
                await cancelled.wait()
            await client.send(b"next")
            assert await server.receive() == b"next"


# --- another process, another network namespace --------------------------------------


CHILD_ECHO = """
import sys, anyio, msgspec, aipc
from tests._helpers import run_backend

class Point(msgspec.Struct):
    x: int
    y: int

async def main():
    rx = aipc.create_channel(aipc.PipeReceiveStream.from_fd(int(sys.argv[1])),
                             codec=aipc.MsgpackCodec(Point))
    tx = aipc.create_channel(aipc.PipeSendStream.from_fd(int(sys.argv[2])))
    async with rx, tx:
        print("ready", flush=True)
        async for point in rx:
            await tx.send({"sum": point.x + point.y})
run_backend(main, sys.argv[3])
"""


async def test_channel_to_a_child_process(backend_id: str) -> None:
    to_child_r, to_child_w = aipc.create_pipe()
    from_child_r, from_child_w = aipc.create_pipe()
    fds = [to_child_r.fileno(), from_child_w.fileno()]
    tx = aipc.create_channel(to_child_w)
    rx = aipc.create_channel(from_child_r)
    async with (
        tx,
        rx,
        child_process(CHILD_ECHO, pass_fds=fds, args=[*map(str, fds), backend_id]) as (
            proc,
            stdout,
        ),
    ):
        await to_child_r.aclose()
        await from_child_w.aclose()
        assert await read_line(stdout) == b"ready"
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:

                async def produce() -> None:
                    for i in range(200):
                        await tx.send(Point(i, 2 * i))
                    await tx.aclose()

                tg.start_soon(produce)
                sums = [message["sum"] async for message in rx]
            assert sums == [3 * i for i in range(200)]
            assert await proc.wait() == 0


@pytest.fixture
def network_namespaces() -> Iterator[tuple[str, str, str]]:
    """Two network namespaces joined by a veth pair: (server ns, client ns,
    server address). Skipped where namespaces cannot be made."""
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("no ip command (iproute2) to make network namespaces")
    tag = f"{os.getpid()}"
    server_ns, client_ns = f"aipc-{tag}-srv", f"aipc-{tag}-cli"
    veth_server, veth_client = f"av{tag}s"[:15], f"av{tag}c"[:15]
    made: list[str] = []

    def run(*args: str) -> None:
        result = subprocess.run(
            [ip, *args], capture_output=True, text=True, check=False, timeout=30
        )
        if result.returncode != 0:
            raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    try:
        for ns in (server_ns, client_ns):
            run("netns", "add", ns)
            made.append(ns)
        run("link", "add", veth_server, "type", "veth", "peer", "name", veth_client)
        run("link", "set", veth_server, "netns", server_ns)
        run("link", "set", veth_client, "netns", client_ns)
        for ns, dev, address in (
            (server_ns, veth_server, "10.231.0.1/24"),
            (client_ns, veth_client, "10.231.0.2/24"),
        ):
            run("-n", ns, "addr", "add", address, "dev", dev)
            run("-n", ns, "link", "set", dev, "up")
            run("-n", ns, "link", "set", "lo", "up")
    except OSError as exc:
        for ns in made:
            subprocess.run([ip, "netns", "del", ns], capture_output=True, check=False)
        pytest.skip(f"cannot make network namespaces here: {exc}")
    try:
        yield server_ns, client_ns, "10.231.0.1"
    finally:
        # deleting a namespace destroys the veth end inside it, and so the pair
        for ns in made:
            subprocess.run([ip, "netns", "del", ns], capture_output=True, check=False)


NETNS_SERVER = """
import sys, anyio, msgspec, aipc
from anyio.abc import SocketAttribute
from tests._helpers import run_backend

class Point(msgspec.Struct):
    x: int
    y: int

async def main():
    listener = await aipc.open_tcp_channel_listener(
        local_host=sys.argv[1], codec=aipc.MsgpackCodec(Point))
    async with listener, anyio.create_task_group() as tg:
        async def handler(channel):
            async for point in channel:
                await channel.send(Point(point.y, point.x))
            tg.cancel_scope.cancel()
        print("ready", listener.extra(SocketAttribute.local_port), flush=True)
        await listener.serve(handler, tg)
run_backend(main, sys.argv[2])
"""

NETNS_CLIENT = """
import sys, anyio, msgspec, aipc
from tests._helpers import run_backend

class Point(msgspec.Struct):
    x: int
    y: int

async def main():
    channel = await aipc.connect_tcp_channel(
        sys.argv[1], int(sys.argv[2]), codec=aipc.MsgpackCodec(Point))
    async with channel:
        address = channel.extra(anyio.abc.SocketAttribute.remote_address)
        for i in range(100):
            await channel.send(Point(i, -i))
            assert await channel.receive() == Point(-i, i)
        await channel.send_eof()
        try:
            await channel.receive()
        except anyio.EndOfStream:
            pass  # the server is done too
    print("client done", address[0], flush=True)
run_backend(main, sys.argv[3])
"""


async def test_tcp_between_two_network_namespaces(
    network_namespaces: tuple[str, str, str], backend_id: str
) -> None:
    server_ns, client_ns, address = network_namespaces
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)

    def command(ns: str, code: str, *args: str) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-W",
            "error",
            "-c",
            code,
            *args,
        ]

    server = await anyio.open_process(
        command(server_ns, NETNS_SERVER, address, backend_id), env=env, stderr=None
    )
    try:
        assert server.stdout is not None
        from anyio.streams.buffered import BufferedByteReceiveStream

        server_out = BufferedByteReceiveStream(server.stdout)
        ready, port = (await read_line(server_out, 30)).split()
        assert ready == b"ready"
        with anyio.fail_after(60):
            client = await anyio.run_process(
                command(client_ns, NETNS_CLIENT, address, port.decode(), backend_id),
                env=env,
                stderr=None,
            )
            assert client.stdout.decode() == f"client done {address}\n"
            assert await server.wait() == 0
    finally:
        with anyio.CancelScope(shield=True):
            if server.returncode is None:
                server.kill()
            await server.wait()
            await server.aclose()


async def test_channel_listener_over_anyio_unix_listener(tmp_path: Path) -> None:
    path = tmp_path / "l"
    listener = aipc.create_channel_listener(
        await anyio.create_unix_listener(path), codec=aipc.JsonCodec()
    )
    assert repr(listener).startswith("<ChannelListener JsonCodec() over ")
    async with listener, anyio.create_task_group() as tg:
        handled = anyio.Event()

        async def echo(channel: aipc.Channel[Any]) -> None:
            async for message in channel:
                await channel.send({"echo": message})
            handled.set()

        tg.start_soon(listener.serve, echo)
        with anyio.fail_after(TIMEOUT):
            stream = await anyio.connect_unix(path)
            async with aipc.create_channel(stream, codec=aipc.JsonCodec()) as client:
                await client.send([1, "two"])
                assert await client.receive() == {"echo": [1, "two"]}
            # (anyio's asyncio UNIX stream can fail in a loop callback when a
            # wait is cancelled just as the socket becomes readable: let the
            # handler see the end of the stream before cancelling)
            await handled.wait()
        tg.cancel_scope.cancel()
    path.unlink()
