"""UNIX domain sockets: stream, seqpacket and datagram sockets, listeners, the
bind rules, peer identity and policies, hand-off, systemd activation.

Every socket is a real kernel socket; paths live in a short directory under
/tmp (``sock_dir``: sun_path holds 107 bytes, and pytest's tmp_path can be
longer), abstract names carry this run's pid.
"""

from __future__ import annotations

import errno
import gc
import itertools
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from anyio.abc import SocketAttribute

import aipc
from aipc._core import _registry

from . import _conformance, _trio_adapter
from ._helpers import PROJECT_ROOT, aipc_child, child_process, read_line

pytestmark = pytest.mark.anyio

UID, GID = os.getuid(), os.getgid()
ME = aipc.PeerCredentials(os.getpid(), UID, GID)

_names = itertools.count()


def _abstract() -> str:
    """A fresh abstract name of this run (the namespace is system-wide)."""
    return f"\0aipc-test-{os.getpid()}-{next(_names)}"


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short directory for socket files. The test fails if it leaves a socket
    file there; the directory goes either way."""
    path = tempfile.mkdtemp(prefix="aipc-s-", dir="/tmp")
    yield path
    left = sorted(
        name
        for name in os.listdir(path)
        if stat.S_ISSOCK(os.lstat(os.path.join(path, name)).st_mode)
    )
    shutil.rmtree(path, ignore_errors=True)
    assert not left, f"test left socket files behind: {left}"


Addresses = tuple[Callable[[], str], Callable[[], str]]


@pytest.fixture
def new_addresses(sock_dir: str) -> Addresses:
    """Two functions returning fresh addresses: paths in sock_dir, and
    abstract names (tests run once with each)."""
    counter = itertools.count()
    return (lambda: os.path.join(sock_dir, f"s{next(counter)}"), _abstract)


def _same(a: object, b: object) -> bool:
    """Two addresses are equal (the kernel returns abstract names as bytes)."""
    return os.fsencode(a) == os.fsencode(b)  # type: ignore[arg-type]


async def _receive_exactly(stream: aipc.UnixStream, n: int) -> bytes:
    got = b""
    while len(got) < n:
        got += await stream.receive(n - len(got))
    return got


async def _read_all(stream: aipc.UnixStream) -> bytes:
    return b"".join([chunk async for chunk in stream])


@asynccontextmanager
async def _connected(
    address: str, kind: str = "stream", **options: Any
) -> AsyncIterator[tuple[Any, Any, Any]]:
    """A listener at ``address`` and a connection to it: (listener, client,
    server), all closed on exit."""
    connect: Any = (
        aipc.connect_unix_stream if kind == "stream" else aipc.connect_unix_seqpacket
    )
    async with (
        aipc.create_unix_listener(address, kind=kind, **options) as listener,  # type: ignore[call-overload]
        await connect(address) as client,
    ):
        with anyio.fail_after(5):
            server = await listener.accept()
        async with server:
            yield listener, client, server


def _fill(*streams: Any, size: int = 65536) -> int:
    """Send from each socket until the kernel says EAGAIN (its send buffer, or
    the receiver's queue, is full); return how many sends went out."""
    chunk = b"x" * size
    count = 0
    for s in streams:
        raw = s.extra(SocketAttribute.raw_socket)
        try:
            while True:
                raw.send(chunk, socket.MSG_DONTWAIT)
                count += 1
        except BlockingIOError:
            pass
    return count


# ---------------------------------------------------------------------------
# conformance: our anyio suite and trio's half-closeable stream checker

Maker = Callable[[], Awaitable[tuple[aipc.UnixStream, aipc.UnixStream]]]


def _stream_makers(
    kind: str, sock_dir: str, *, clog_both: bool = False
) -> tuple[Maker, Maker]:
    """(maker, clogged maker) of connected UnixStream pairs: from socketpair
    ("pair"), or a client and the connection a listener accepted ("listener").
    The clogged pair is full from the first to the second, and with
    ``clog_both`` the other way too (trio's two-way checker flips the pair;
    the one-way suite must not have bytes waiting for the sender, whose close
    would then reset the connection instead of ending it)."""
    names = itertools.count()

    async def make() -> tuple[aipc.UnixStream, aipc.UnixStream]:
        if kind == "pair":
            return aipc.create_unix_socket_pair()
        path = os.path.join(sock_dir, f"c{next(names)}")
        async with aipc.create_unix_listener(path) as listener:
            client = await aipc.connect_unix_stream(path)
            try:
                with anyio.fail_after(5):
                    server = await listener.accept()
            except BaseException:
                client.close()
                raise
        return client, server

    async def make_clogged() -> tuple[aipc.UnixStream, aipc.UnixStream]:
        a, b = await make()
        _fill(a)
        if clog_both:
            _fill(b)
        return a, b

    return make, make_clogged


STREAM_MAKERS = ["pair", "listener"]


@pytest.mark.parametrize("kind", STREAM_MAKERS)
async def test_conformance(kind: str, sock_dir: str) -> None:
    """The repo's one-way stream suite, every check (each names itself when
    it fails), from the first socket of each pair to the second (trio's
    checker below runs both directions)."""
    await _conformance.check_one_way_stream(*_stream_makers(kind, sock_dir))


class _TrioStream(trio.abc.HalfCloseableStream):
    """A UnixStream as a trio HalfCloseableStream (see tests/_trio_adapter.py,
    whose callers forward to the loop on asyncio and uvloop)."""

    def __init__(self, stream: aipc.UnixStream, caller: Any) -> None:
        self.stream = stream
        self._caller = caller

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._caller.call(self.stream.send, data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._caller.call(self.stream.wait_writable)

    async def send_eof(self) -> None:
        await self._caller.call(self.stream.send_eof)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        n = _trio_adapter.DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        try:
            data: bytes = await self._caller.call(self.stream.receive, n)
        except anyio.EndOfStream:
            return b""
        return data

    async def aclose(self) -> None:
        await self._caller.call(self.stream.aclose)


@pytest.mark.parametrize("kind", STREAM_MAKERS)
async def test_trio_check_half_closeable_stream(kind: str, sock_dir: str) -> None:
    """trio.testing.check_half_closeable_stream (which runs
    check_two_way_stream and check_one_way_stream both ways)."""
    make, make_clogged = _stream_makers(kind, sock_dir, clog_both=True)
    made: list[aipc.UnixStream] = []

    async def record(maker: Maker) -> tuple[aipc.UnixStream, aipc.UnixStream]:
        a, b = await maker()
        made.extend((a, b))
        return a, b

    async def check(caller: Any) -> None:
        def wrap(maker: Maker) -> Callable[[], Awaitable[tuple[_TrioStream, ...]]]:
            async def make_trio() -> tuple[_TrioStream, _TrioStream]:
                a, b = await caller.call(record, maker)
                return _TrioStream(a, caller), _TrioStream(b, caller)

            return make_trio

        await trio.testing.check_half_closeable_stream(
            wrap(make),  # type: ignore[arg-type]
            wrap(make_clogged),  # type: ignore[arg-type]
        )

    try:
        await _trio_adapter.run_in_trio(check)
    finally:
        for stream in made:
            await anyio.aclose_forcefully(stream)


async def test_send_eof_rules() -> None:
    """After send_eof a send is ClosedResourceError (for seqpacket too), a
    second send_eof is fine, and send_eof while another task sends is busy."""
    for kind in ("stream", "seqpacket"):
        a, b = aipc.create_unix_socket_pair(kind)  # type: ignore[call-overload]
        async with a, b:
            await a.send(b"last")
            await a.send_eof()
            await a.send_eof()
            with pytest.raises(anyio.ClosedResourceError, match="after send_eof"):
                await a.send(b"more")
            with anyio.fail_after(5):
                assert await b.receive() == b"last"
                with pytest.raises(anyio.EndOfStream):
                    await b.receive()
                await b.send(b"the other way")
                assert await a.receive() == b"the other way"
    a, b = aipc.create_unix_socket_pair()
    async with a, b:
        _fill(a)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.send, b"blocked")
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(anyio.BusyResourceError):
                    await a.send_eof()
                tg.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# round trips


async def test_stream_round_trip(new_addresses: Addresses) -> None:
    for new_address in new_addresses:
        address = new_address()
        async with _connected(address) as (listener, client, server):
            assert _same(listener.path, address)
            assert _same(client.extra(SocketAttribute.remote_address), address)
            assert _same(server.extra(SocketAttribute.local_address), address)
            assert client.extra(SocketAttribute.family) == socket.AF_UNIX
            with anyio.fail_after(5):
                await client.send(b"ping")
                assert await _receive_exactly(server, 4) == b"ping"
                await server.send(b"pong")
                await server.send_eof()
                assert await _read_all(client) == b"pong"
                # half-closed: the other direction still works
                await client.send(b"still open")
                await client.send_eof()
                assert await _read_all(server) == b"still open"


async def test_seqpacket_round_trip(new_addresses: Addresses) -> None:
    for new_address in new_addresses:
        address = new_address()
        messages = [b"a", b"bb" * 1000, b"c", bytes(range(256)) * 100]
        async with _connected(address, "seqpacket") as (_, client, server):
            assert isinstance(client, aipc.UnixSeqpacketStream)
            assert isinstance(server, aipc.UnixSeqpacketStream)
            with anyio.fail_after(5):
                for message in messages:
                    await client.send(message)
                assert [await server.receive() for _ in messages] == messages
                for message in messages:
                    await server.send(memoryview(message))
                await server.send_eof()
                assert [item async for item in client] == messages
                with pytest.raises(anyio.EndOfStream):
                    await client.receive()


async def test_datagram_round_trip(new_addresses: Addresses) -> None:
    for new_address in new_addresses:
        server_address, client_address = new_address(), new_address()
        async with (
            aipc.create_unix_datagram_socket(local_path=server_address) as server,
            aipc.create_unix_datagram_socket(local_path=client_address) as client,
        ):
            with anyio.fail_after(5):
                await client.sendto(b"hello", server_address)
                data, sender = await server.receive()
                assert data == b"hello"
                assert _same(sender, client_address)
                await server.send((b"reply", sender))
                data, sender = await client.receive()
                assert data == b"reply"
                assert _same(sender, server_address)
                await client.sendto(b"", server_address)  # an empty datagram is one
                assert (await server.receive())[0] == b""


async def test_datagram_autobind_reply() -> None:
    """An unbound datagram socket gets a unique abstract name, so it can be
    replied to; a sender with no name at all cannot."""
    server_address = _abstract()
    async with (
        aipc.create_unix_datagram_socket(local_path=server_address) as server,
        aipc.create_unix_datagram_socket() as client,
    ):
        local = client.extra(SocketAttribute.local_address)
        assert local[:1] == b"\0"
        assert len(local) == 6  # the kernel's autobind: NUL and 5 hex digits
        with anyio.fail_after(5):
            await client.sendto(b"who am I", server_address)
            _, sender = await server.receive()
            assert sender == local
            await server.sendto(b"you are " + sender[1:], sender)
            data, sender = await client.receive()
            assert data == b"you are " + local[1:]
            assert sender == os.fsencode(server_address)  # abstract names: bytes
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unnamed:
                unnamed.sendto(b"anonymous", server_address)
            assert await server.receive() == (b"anonymous", None)
        with pytest.raises(
            TypeError,
            match=r"^address must be a str, bytes or os\.PathLike, not NoneType$",
        ):
            await server.send((b"nowhere", None))


async def test_connected_datagram(new_addresses: Addresses) -> None:
    for new_address in new_addresses:
        server_address = new_address()
        async with (
            aipc.create_unix_datagram_socket(local_path=server_address) as server,
            aipc.create_connected_unix_datagram_socket(server_address) as client,
            aipc.create_unix_datagram_socket() as stranger,
        ):
            assert _same(client.extra(SocketAttribute.remote_address), server_address)
            with anyio.fail_after(5):
                await client.send(b"one")
                await client.send(bytearray(b"two"))
                got = [await server.receive() for _ in range(2)]
                assert [data for data, _ in got] == [b"one", b"two"]
                client_address = got[0][1]
                assert client_address == client.extra(SocketAttribute.local_address)
                await server.sendto(b"reply", client_address)
                assert await client.receive() == b"reply"
                # only the peer may send to a connected socket
                with pytest.raises(PermissionError):
                    await stranger.sendto(b"intruder", client_address)


async def test_socket_pair() -> None:
    for kind in ["stream", "seqpacket", "datagram"]:
        a, b = aipc.create_unix_socket_pair(kind)  # type: ignore[call-overload]
        expected = {
            "stream": aipc.UnixStream,
            "seqpacket": aipc.UnixSeqpacketStream,
            "datagram": aipc.ConnectedUnixDatagramSocket,
        }[kind]
        async with a, b:
            assert type(a) is expected
            assert type(b) is expected
            with anyio.fail_after(5):
                await a.send(b"there")
                assert await b.receive() == b"there"
                await b.send(b"back")
                assert await a.receive() == b"back"


@pytest.mark.parametrize(
    ("kind", "own_group", "where"),
    [("stream", False, "path"), ("seqpacket", True, "abstract")],
    ids=["stream-tg-path", "seqpacket-own-group-abstract"],
)
async def test_serve_several_clients(
    kind: str, own_group: bool, where: str, sock_dir: str
) -> None:
    """serve() runs a handler per connection in the given task group (or its
    own), and closes each stream when its handler returns."""
    address = os.path.join(sock_dir, "s") if where == "path" else _abstract()
    connect: Any = (
        aipc.connect_unix_stream if kind == "stream" else aipc.connect_unix_seqpacket
    )
    handled: list[Any] = []

    async def echo(stream: Any) -> None:
        handled.append(stream)
        async for item in stream:
            await stream.send(item.upper())

    results: dict[int, bytes] = {}

    async def client(i: int) -> None:
        async with await connect(address) as stream:
            await stream.send(f"client {i}".encode())
            await stream.send_eof()
            results[i] = b"".join([item async for item in stream])

    async with aipc.create_unix_listener(address, kind=kind) as listener:  # type: ignore[call-overload]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                if own_group:
                    tg.start_soon(listener.serve, echo)
                else:
                    tg.start_soon(listener.serve, echo, tg)
                async with anyio.create_task_group() as clients:
                    for i in range(8):
                        clients.start_soon(client, i)
                tg.cancel_scope.cancel()
        assert results == {i: f"CLIENT {i}".encode() for i in range(8)}
        assert listener.statistics() == aipc.UnixListenerStatistics(8, 0)
        assert all(stream.closed for stream in handled)  # serve closed them


async def test_serve_handler_error_closes_its_stream(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")

    async def fail(stream: aipc.UnixStream) -> None:
        await stream.send(b"about to fail")
        raise RuntimeError("handler failed")

    async with (
        aipc.create_unix_listener(path) as listener,
        await aipc.connect_unix_stream(path) as client,
    ):
        with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
            await listener.serve(fail)
        assert info.group_contains(RuntimeError, match="handler failed")
        with anyio.fail_after(5):
            assert await _read_all(client) == b"about to fail"


# ---------------------------------------------------------------------------
# modes, the registry, relative paths


def test_default_mode_is_0600_whatever_the_umask(sock_dir: str) -> None:
    old = os.umask(0)
    try:
        listener = aipc.create_unix_listener(os.path.join(sock_dir, "l"))
        dgram = aipc.create_unix_datagram_socket(local_path=os.path.join(sock_dir, "d"))
    finally:
        os.umask(old)
    try:
        for path in ("l", "d"):
            st = os.lstat(os.path.join(sock_dir, path))
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600
    finally:
        listener.close()
        dgram.close()


def test_chosen_mode_is_exact(sock_dir: str) -> None:
    """The umask clears nothing that was asked for (it is set to 077 here)."""
    for mode in [0o660, 0o666, 0o640, 0o400]:
        old = os.umask(0o077)
        try:
            listener = aipc.create_unix_listener(os.path.join(sock_dir, "l"), mode=mode)
            try:
                dgram = aipc.create_unix_datagram_socket(
                    local_path=os.path.join(sock_dir, "d"), mode=mode
                )
            except BaseException:
                listener.close()
                raise
        finally:
            os.umask(old)
        try:
            for name in ("l", "d"):
                st = os.lstat(os.path.join(sock_dir, name))
                assert stat.S_IMODE(st.st_mode) == mode
        finally:
            listener.close()
            dgram.close()


def _records(path: str) -> list[aipc.NamedObject]:
    return [o for o in aipc.list_objects() if o.name == path]


def test_registry_record_while_bound(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "l")
    dpath = os.path.join(sock_dir, "d")
    listener = aipc.create_unix_listener(path)
    dgram = aipc.create_unix_datagram_socket(local_path=dpath)
    try:
        for name in (path, dpath):
            [record] = _records(name)
            st = os.lstat(name)
            assert record.kind == "unix-socket"
            assert (record.dev, record.inode) == (st.st_dev, st.st_ino)
            assert record.pid == os.getpid()
            assert record.owner_alive
            assert record.exists()
    finally:
        listener.close()
        dgram.close()
    for name in (path, dpath):
        assert not os.path.exists(name)
        assert not _records(name)


def test_abstract_names_leave_no_record() -> None:
    before = aipc.list_objects()
    name = _abstract()
    listener = aipc.create_unix_listener(name)
    try:
        assert aipc.list_objects() == before
        assert listener.path == os.fsencode(name)
    finally:
        listener.close()


def test_relative_path_is_recorded_and_removed_absolute(sock_dir: str) -> None:
    """A relative path (the way around the length limit) is bound where it
    was given; closing removes that file even after a chdir."""
    cwd = os.getcwd()
    os.chdir(sock_dir)
    try:
        listener = aipc.create_unix_listener("rel")
    finally:
        os.chdir(cwd)
    try:
        absolute = os.path.join(sock_dir, "rel")
        assert stat.S_ISSOCK(os.lstat(absolute).st_mode)
        assert len(_records(absolute)) == 1
        assert listener.path == "rel"
    finally:
        listener.close()
    assert not os.path.exists(absolute)
    assert not _records(absolute)


# ---------------------------------------------------------------------------
# bind rules: never take over a live server, reclaim a stale file, unlink
# only our own inode


async def test_second_listener_on_a_live_path_fails(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "live")
    async with aipc.create_unix_listener(path) as first:
        inode = os.lstat(path).st_ino
        with pytest.raises(
            aipc.AddressInUseError,
            match=r"^\[Errno 98\] cannot bind '.*/live': a live server is bound to "
            r"it, and aipc never takes over another socket \(stop that server, or "
            r"choose another path\)$",
        ) as info:
            aipc.create_unix_listener(path)
        assert info.value.errno == errno.EADDRINUSE
        assert info.value.address == path
        assert isinstance(info.value, OSError)
        with pytest.raises(aipc.AddressInUseError):
            aipc.create_unix_listener(path, kind="seqpacket")
        with pytest.raises(aipc.AddressInUseError):
            aipc.create_unix_datagram_socket(local_path=path)
        assert os.lstat(path).st_ino == inode
        # the first still serves. Each probe of a live stream server is a
        # connection that closes at once: it sees those first.
        async with await aipc.connect_unix_stream(path) as client:
            with anyio.fail_after(5):
                for _ in range(3):
                    async with await first.accept() as probe:
                        with pytest.raises(anyio.EndOfStream):
                            await probe.receive()
                async with await first.accept() as server:
                    await client.send(b"first still works")
                    assert await _receive_exactly(server, 17) == b"first still works"


async def test_live_seqpacket_and_datagram_sockets_are_not_taken_over(
    sock_dir: str,
) -> None:
    """A probe of another kind of socket (EPROTOTYPE) also means "live"."""
    spath, dpath = os.path.join(sock_dir, "seq"), os.path.join(sock_dir, "dgram")
    async with (
        aipc.create_unix_listener(spath, kind="seqpacket") as seq,
        aipc.create_unix_datagram_socket(local_path=dpath) as dgram,
    ):
        for path in (spath, dpath):
            for make in (
                lambda p: aipc.create_unix_listener(p),
                lambda p: aipc.create_unix_listener(p, kind="seqpacket"),
                lambda p: aipc.create_unix_datagram_socket(local_path=p),
            ):
                with pytest.raises(aipc.AddressInUseError, match="a live server"):
                    make(path)
        with anyio.fail_after(5):
            async with (
                await aipc.connect_unix_seqpacket(spath) as client,
                await seq.accept() as server,  # no probe connection came first
            ):
                await client.send(b"ok")
                assert await server.receive() == b"ok"
            async with aipc.create_unix_datagram_socket() as sender:
                await sender.sendto(b"ok", dpath)
                assert (await dgram.receive())[0] == b"ok"


def _stale_socket_file(path: str, kind: int = socket.SOCK_STREAM) -> None:
    """Bind a plain socket at ``path`` and close it without unlinking: what a
    crashed server leaves."""
    with socket.socket(socket.AF_UNIX, kind) as plain:
        plain.bind(path)


async def test_stale_socket_file_is_reclaimed(sock_dir: str) -> None:
    for kind in ["stream", "seqpacket", "datagram"]:
        path = os.path.join(sock_dir, "stale")
        for stale_kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            _stale_socket_file(path, stale_kind)
            if kind == "datagram":
                bound: Any = aipc.create_unix_datagram_socket(local_path=path)
            else:
                bound = aipc.create_unix_listener(path, kind=kind)  # type: ignore[call-overload]
            async with bound:
                st = os.lstat(path)
                assert stat.S_ISSOCK(st.st_mode)
                assert stat.S_IMODE(st.st_mode) == 0o600
                assert len(_records(path)) == 1
                with anyio.fail_after(5):
                    if kind == "datagram":
                        async with aipc.create_connected_unix_datagram_socket(
                            path
                        ) as c:
                            await c.send(b"reclaimed")
                            assert (await bound.receive())[0] == b"reclaimed"
                    elif kind == "stream":
                        async with (
                            await aipc.connect_unix_stream(path) as c,
                            await bound.accept() as server,
                        ):
                            await c.send(b"reclaimed")
                            assert await _receive_exactly(server, 9) == b"reclaimed"
                    else:
                        async with (
                            await aipc.connect_unix_seqpacket(path) as c,
                            await bound.accept() as server,
                        ):
                            await c.send(b"reclaimed")
                            assert await server.receive() == b"reclaimed"
            assert not os.path.exists(path)


def test_regular_file_is_never_removed(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "file")
    with open(path, "wb") as f:
        f.write(b"precious")
    message = (
        r"^\[Errno 17\] cannot bind '.*/file': it exists and is not a socket; "
        r"aipc removes only stale socket files$"
    )
    with pytest.raises(FileExistsError, match=message):
        aipc.create_unix_listener(path)
    with pytest.raises(FileExistsError, match=message):
        aipc.create_unix_datagram_socket(local_path=path)
    os.mkdir(os.path.join(sock_dir, "dir"))
    with pytest.raises(FileExistsError, match="it exists and is not a socket"):
        aipc.create_unix_listener(os.path.join(sock_dir, "dir"))
    with open(path, "rb") as f:
        assert f.read() == b"precious"
    assert not _records(path)


def test_live_abstract_name_fails() -> None:
    name = _abstract()
    listener = aipc.create_unix_listener(name)
    try:
        with pytest.raises(
            aipc.AddressInUseError,
            match=r"^\[Errno 98\] cannot bind '\\x00aipc-test-.*': a live socket "
            r"holds this abstract name$",
        ) as info:
            aipc.create_unix_listener(name)
        assert info.value.address == name
        # the kernel keeps one abstract namespace per socket type
        aipc.create_unix_datagram_socket(local_path=name).close()
    finally:
        listener.close()
    aipc.create_unix_listener(name).close()  # gone with the socket


async def test_close_unlinks_only_our_inode(sock_dir: str) -> None:
    """Someone replaced the file behind our back: closing leaves theirs."""
    for kind in ["listener", "datagram"]:
        path = os.path.join(sock_dir, "s")
        ours: Any = (
            aipc.create_unix_listener(path)
            if kind == "listener"
            else aipc.create_unix_datagram_socket(local_path=path)
        )
        try:
            os.unlink(path)
            replacement = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                replacement.bind(path)
                replacement.listen()
                inode = os.lstat(path).st_ino
                await ours.aclose()
                assert os.lstat(path).st_ino == inode
                assert not _records(path)
                with anyio.fail_after(5):
                    async with await aipc.connect_unix_stream(path):
                        pass  # the replacement still listens
            finally:
                replacement.close()
                os.unlink(path)
        finally:
            ours.close()


def test_close_compares_the_inode_while_the_socket_still_holds_it(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our file was unlinked behind our back: once our socket is closed its
    inode number is free, and a file created at the path right then may get
    it. The path must be compared (and left alone) before the socket closes.
    The replacement is made at the moment the descriptor closes."""
    from aipc._core._fd import FdHandle

    path = os.path.join(sock_dir, "s")
    listener = aipc.create_unix_listener(path)
    ours = listener.fileno()
    os.unlink(path)
    replacement = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    close = FdHandle.close

    def close_then_replace(handle: FdHandle) -> None:
        mine = handle.fd == ours
        close(handle)
        if mine:
            replacement.bind(path)  # may well reuse the freed inode number

    monkeypatch.setattr(FdHandle, "close", close_then_replace)
    try:
        listener.close()
        monkeypatch.undo()
        assert stat.S_ISSOCK(os.lstat(path).st_mode), "the replacement was removed"
    finally:
        monkeypatch.undo()
        replacement.close()
        with suppress(FileNotFoundError):
            os.unlink(path)


async def test_unlink_on_close_false_keeps_the_file(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "kept")
    listener = aipc.create_unix_listener(path, unlink_on_close=False)
    inode = os.lstat(path).st_ino
    await listener.aclose()
    assert os.lstat(path).st_ino == inode
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    # the file is now stale: the next bind reclaims it
    async with (
        aipc.create_unix_listener(path) as again,
        await aipc.connect_unix_stream(path),
    ):
        with anyio.fail_after(5):
            await (await again.accept()).aclose()
    assert not os.path.exists(path)


# ---------------------------------------------------------------------------
# limits and bad arguments


def _path_of_length(directory: str, length: int) -> str:
    path = os.path.join(directory, "x" * (length - len(directory) - 1))
    assert len(os.fsencode(path)) == length
    return path


async def test_path_length_limit(sock_dir: str) -> None:
    longest = _path_of_length(sock_dir, 107)
    async with (
        aipc.create_unix_listener(longest),
        await aipc.connect_unix_stream(longest),
    ):
        pass
    too_long = _path_of_length(sock_dir, 108)
    message = (
        r"^len\({arg}\)=108 exceeds the longest UNIX socket path in bytes "
        r"\(sun_path holds 108 with the terminating NUL\) \(107\); use a shorter "
        r"path \(a relative one from a nearby working directory, or a shorter "
        r"directory such as \$XDG_RUNTIME_DIR\) or an abstract name \('\\0name'\)$"
    )
    for value in (too_long, os.fsencode(too_long), _pathlib(too_long)):
        with pytest.raises(aipc.LimitExceededError, match=message.format(arg="path")):
            aipc.create_unix_listener(value)
    with pytest.raises(aipc.LimitExceededError) as info:
        await aipc.connect_unix_stream(too_long)
    assert (info.value.argument, info.value.value, info.value.limit) == (
        "len(path)",
        108,
        aipc.UNIX_PATH_MAX - 1,
    )
    with pytest.raises(aipc.LimitExceededError, match=r"^len\(path\)=108"):
        await aipc.connect_unix_seqpacket(too_long)
    with pytest.raises(aipc.LimitExceededError, match=r"^len\(local_path\)=108"):
        aipc.create_unix_datagram_socket(local_path=too_long)
    with pytest.raises(aipc.LimitExceededError, match=r"^len\(remote_path\)=108"):
        aipc.create_connected_unix_datagram_socket(too_long)
    async with aipc.create_unix_datagram_socket() as dgram:
        with pytest.raises(aipc.LimitExceededError, match=r"^len\(address\)=108"):
            await dgram.sendto(b"x", too_long)
    # the limit is in bytes: these 57 characters are 109 bytes
    with pytest.raises(aipc.LimitExceededError, match=r"^len\(path\)=109 "):
        aipc.create_unix_listener(os.path.join("/tmp", "é" * 52))
    assert not os.path.exists(too_long)


def _pathlib(path: str) -> Any:
    from pathlib import Path

    return Path(path)


def test_abstract_name_length_limit() -> None:
    prefix = _abstract()
    longest = prefix + "n" * (108 - len(prefix))
    aipc.create_unix_listener(longest).close()
    with pytest.raises(
        aipc.LimitExceededError,
        match=r"^len\(path\)=109 exceeds the longest abstract UNIX socket name in "
        r"bytes, the leading NUL included \(sun_path\) \(108\); use a shorter name$",
    ) as info:
        aipc.create_unix_listener(longest + "n")
    assert info.value.limit == aipc.UNIX_PATH_MAX


async def test_bad_arguments(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    cases: list[tuple[type[Exception], str, Callable[[], object]]] = [
        (
            TypeError,
            "path must be a str, bytes or os.PathLike, not int",
            lambda: aipc.create_unix_listener(3),  # type: ignore[call-overload]
        ),
        (ValueError, "path must not be empty", lambda: aipc.create_unix_listener("")),
        (
            ValueError,
            "path must not contain a NUL byte, except as the first one of an "
            "abstract name",
            lambda: aipc.create_unix_listener(path + "\0x"),
        ),
        (
            ValueError,
            "kind must be one of 'stream', 'seqpacket', got 'datagram'",
            lambda: aipc.create_unix_listener(path, kind="datagram"),  # type: ignore[call-overload]
        ),
        (
            ValueError,
            "mode must be a permission mask within 0o777, got 1023",
            lambda: aipc.create_unix_listener(path, mode=0o1777),
        ),
        (
            TypeError,
            "mode must be an int, not str",
            lambda: aipc.create_unix_listener(path, mode="600"),  # type: ignore[call-overload]
        ),
        (
            ValueError,
            "backlog must be at least 1, got 0",
            lambda: aipc.create_unix_listener(path, backlog=0),
        ),
        (
            TypeError,
            "backlog must be an int, not float",
            lambda: aipc.create_unix_listener(path, backlog=1.5),  # type: ignore[call-overload]
        ),
        (
            TypeError,
            "allow_uids must be a collection of ints, not int",
            lambda: aipc.create_unix_listener(path, allow_uids=0),  # type: ignore[call-overload]
        ),
        (
            TypeError,
            "allow_gids must be a collection of ints, not str",
            lambda: aipc.create_unix_listener(path, allow_gids="0"),
        ),
        (
            TypeError,
            "allow_uids items must be an int, not str",
            lambda: aipc.create_unix_listener(path, allow_uids=["0"]),  # type: ignore[list-item]
        ),
        (
            TypeError,
            "policy must be callable, not int",
            lambda: aipc.create_unix_listener(path, policy=1),  # type: ignore[call-overload]
        ),
        (
            ValueError,
            "max_size must be at least 1, got 0",
            lambda: aipc.create_unix_datagram_socket(local_path=path, max_size=0),
        ),
        (
            TypeError,
            "max_size must be an int, not NoneType",
            lambda: aipc.create_connected_unix_datagram_socket(path, max_size=None),  # type: ignore[arg-type]
        ),
        (
            ValueError,
            "kind must be one of 'stream', 'seqpacket', 'datagram', got 'raw'",
            lambda: aipc.create_unix_socket_pair("raw"),  # type: ignore[call-overload]
        ),
        (
            TypeError,
            "local_path must be a str, bytes or os.PathLike, not float",
            lambda: aipc.create_unix_datagram_socket(local_path=1.0),  # type: ignore[arg-type]
        ),
    ]
    for exc_type, message, call in cases:
        with pytest.raises(exc_type, match=f"^{_escape(message)}$"):
            call()
        assert not os.path.exists(path), message  # nothing was bound
    async with aipc.create_unix_listener(path) as listener:
        # refused before connecting: the listener sees no connection
        with pytest.raises(ValueError, match=r"^max_size must be at least 1, got 0$"):
            await aipc.connect_unix_seqpacket(path, max_size=0)
        with pytest.raises(TypeError, match=r"^path must be a str, bytes or"):
            await aipc.connect_unix_stream(None)  # type: ignore[arg-type]
        assert listener.statistics() == aipc.UnixListenerStatistics(0, 0)
    a, b = aipc.create_unix_socket_pair("seqpacket")
    async with a, b:
        with pytest.raises(
            TypeError, match=r"^item must be bytes, bytearray or memoryview, not str$"
        ):
            await a.send("text")  # type: ignore[arg-type]
    a, b = aipc.create_unix_socket_pair()
    async with a, b:
        with pytest.raises(TypeError, match=r"^max_bytes must be an int, not float$"):
            await a.receive(1.5)  # type: ignore[arg-type]


def _escape(message: str) -> str:
    import re

    return re.escape(message)


async def test_connect_errors(sock_dir: str) -> None:
    missing = os.path.join(sock_dir, "missing")
    with pytest.raises(FileNotFoundError, match=r"no socket at '.*/missing'$"):
        await aipc.connect_unix_stream(missing)
    stale = os.path.join(sock_dir, "stale")
    _stale_socket_file(stale)
    try:
        with pytest.raises(
            ConnectionRefusedError, match=r"nothing listens on '.*/stale'"
        ):
            await aipc.connect_unix_stream(stale)
        with pytest.raises(FileNotFoundError):
            aipc.create_connected_unix_datagram_socket(missing)
        with pytest.raises(ConnectionRefusedError):
            aipc.create_connected_unix_datagram_socket(stale)
        async with aipc.create_unix_datagram_socket() as dgram:
            with pytest.raises(FileNotFoundError):
                await dgram.sendto(b"x", missing)
            # a refused sendto is about that address: the socket stays usable
            with pytest.raises(ConnectionRefusedError):
                await dgram.sendto(b"x", stale)
            name = _abstract()
            async with aipc.create_unix_datagram_socket(local_path=name) as other:
                await dgram.sendto(b"still usable", name)
                with anyio.fail_after(5):
                    assert (await other.receive())[0] == b"still usable"
    finally:
        os.unlink(stale)


def test_from_fd_checks_the_socket_and_leaves_it_on_error() -> None:
    r, w = os.pipe()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    s1, s2 = socket.socketpair()
    try:
        with pytest.raises(ValueError, match=f"^fd {r} is not a socket$"):
            aipc.UnixStream.from_fd(r)
        with pytest.raises(
            ValueError,
            match=f"^fd {a.fileno()} is a AF_UNIX SOCK_DGRAM socket, not a UNIX "
            "stream socket$",
        ):
            aipc.UnixStream.from_fd(a.fileno())
        with pytest.raises(ValueError, match=r"not a UNIX seqpacket socket$"):
            aipc.UnixSeqpacketStream.from_fd(s1.fileno())
        with pytest.raises(ValueError, match=r"not a UNIX datagram socket$"):
            aipc.UnixDatagramSocket.from_fd(s1.fileno())
        with pytest.raises(
            ValueError, match=f"^fd {s1.fileno()} is a UNIX socket that is not "
        ):
            aipc.UnixListener.from_fd(s1.fileno())
        with pytest.raises(ValueError, match=r"^max_size must be at least 1, got 0$"):
            aipc.ConnectedUnixDatagramSocket.from_fd(a.fileno(), max_size=0)
        with pytest.raises(ValueError, match=r"^max_size must be at least 1, got 0$"):
            aipc.UnixDatagramSocket.from_fd(a.fileno(), max_size=0)
        closed = os.dup(r)
        os.close(closed)
        with pytest.raises(
            ValueError, match=f"^fd {closed} is not an open file descriptor$"
        ):
            aipc.UnixStream.from_fd(closed)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listening:
            listening.bind(_abstract())
            listening.listen()
            with pytest.raises(TypeError, match=r"^policy must be callable, not int$"):
                aipc.UnixListener.from_fd(listening.fileno(), policy=1)  # type: ignore[arg-type]
            gc.collect()
            os.fstat(listening.fileno())  # still open, still the caller's
        for sock in (a, s1):
            os.fstat(sock.fileno())
    finally:
        for fd in (r, w):
            os.close(fd)
        for sock in (a, b, s1, s2):
            sock.close()


async def test_blocking_description_is_used_without_flipping_it(
    backend_id: str, request: pytest.FixtureRequest
) -> None:
    """from_fd takes a blocking socket as it is (every call passes
    MSG_DONTWAIT), and waits without blocking the event loop."""
    if backend_id == "uvloop":
        # libuv's uv_poll_init (behind uvloop's add_reader) sets O_NONBLOCK on
        # the description it polls; _core would have to poll a private epoll
        # fd holding the socket instead
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="uvloop's add_reader sets O_NONBLOCK")
        )
    raw_a, raw_b = socket.socketpair()
    assert raw_a.getblocking()
    a = aipc.UnixStream.from_fd(raw_a.detach())
    b = aipc.UnixStream.from_fd(raw_b.detach())
    async with a, b:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_receive_exactly, b, 5)
                await anyio.wait_all_tasks_blocked()  # waiting, loop not blocked
                await a.send(b"hello")
        assert os.get_blocking(a.fileno())
        assert os.get_blocking(b.fileno())


# ---------------------------------------------------------------------------
# peer identity


async def test_peer_credentials_in_process(new_addresses: Addresses) -> None:
    for new_address in new_addresses:
        async with _connected(new_address()) as (listener, client, server):
            for stream in (client, server):
                assert stream.peer_credentials() == ME
                assert stream.extra(aipc.UnixSocketAttribute.peer_credentials) == ME
                assert stream.extra(aipc.UnixSocketAttribute.peer_pid) == os.getpid()
                assert stream.extra(aipc.UnixSocketAttribute.peer_uid) == UID
                assert stream.extra(aipc.UnixSocketAttribute.peer_gid) == GID
            with pytest.raises(anyio.TypedAttributeLookupError):
                listener.extra(aipc.UnixSocketAttribute.peer_pid)


async def test_peer_credentials_of_a_pair() -> None:
    for kind in ["stream", "seqpacket", "datagram"]:
        a, b = aipc.create_unix_socket_pair(kind)  # type: ignore[call-overload]
        async with a, b:
            assert a.peer_credentials() == ME
            assert b.extra(aipc.UnixSocketAttribute.peer_credentials) == ME


async def test_no_peer_credentials_without_a_recorded_peer() -> None:
    """connect() on a datagram socket records no peer credentials (nor does
    an unconnected socket have any): no typed attributes, and a clear error."""
    name = _abstract()
    async with (
        aipc.create_unix_datagram_socket(local_path=name) as server,
        aipc.create_connected_unix_datagram_socket(name) as client,
    ):
        for sock in (server, client):
            with pytest.raises(anyio.TypedAttributeLookupError):
                sock.extra(aipc.UnixSocketAttribute.peer_uid)
            with pytest.raises(anyio.TypedAttributeLookupError):
                sock.extra(aipc.UnixSocketAttribute.peer_pidfd)
            with pytest.raises(OSError, match="recorded no peer credentials") as info:
                sock.peer_credentials()
            assert info.value.errno == errno.ENOTCONN


async def test_peer_pidfd_and_peer_process() -> None:
    a, b = aipc.create_unix_socket_pair()
    async with a, b:
        pidfd = a.extra(aipc.UnixSocketAttribute.peer_pidfd)
        assert os.readlink(f"/proc/self/fd/{pidfd}") == "anon_inode:[pidfd]"
        assert a.extra(aipc.UnixSocketAttribute.peer_pidfd) == pidfd  # one, owned
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            assert f"Pid:\t{os.getpid()}\n" in f.read()
        async with a.peer_process() as process:
            assert isinstance(process, aipc.Process)
            assert process.pid == os.getpid()
            assert process.fileno() != pidfd  # the caller's own
    # the socket's pidfd closed with it (no_leaks checks every fd)
    assert a.closed


CLIENT_CHILD = """
import sys
import aipc
from tests._helpers import run_backend

async def main():
    async with await aipc.connect_unix_stream(sys.argv[2]) as stream:
        print("peer", stream.extra(aipc.UnixSocketAttribute.peer_pid), flush=True)
        async for chunk in stream:
            await stream.send(chunk.upper())

run_backend(main, sys.argv[1])
"""


async def test_child_process_client(backend_id: str, sock_dir: str) -> None:
    """A child connects by path: each side sees the other's pid; data flows."""
    path = os.path.join(sock_dir, "svc")
    async with (
        aipc.create_unix_listener(path) as listener,
        child_process(CLIENT_CHILD, args=[backend_id, path]) as (proc, stdout),
    ):
        with anyio.fail_after(10):
            server = await listener.accept()
        async with server:
            assert await read_line(stdout) == f"peer {os.getpid()}".encode()
            assert server.extra(aipc.UnixSocketAttribute.peer_pid) == proc.pid
            assert server.peer_credentials() == aipc.PeerCredentials(proc.pid, UID, GID)
            async with server.peer_process() as peer:
                assert peer.pid == proc.pid
            with anyio.fail_after(10):
                await server.send(b"hello, child")
                await server.send_eof()
                assert await _read_all(server) == b"HELLO, CHILD"
                assert await proc.wait() == 0


async def _wait_refused(client: Any) -> None:
    """The listener closed a refused connection: the client sees its end."""
    with (
        anyio.fail_after(5),
        pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)),
    ):
        await client.receive()


async def test_policy_refuses_by_uid(sock_dir: str) -> None:
    async def check(kind: str) -> None:
        address = os.path.join(sock_dir, "s") if kind == "stream" else _abstract()
        connect: Any = (
            aipc.connect_unix_stream
            if kind == "stream"
            else aipc.connect_unix_seqpacket
        )
        async with aipc.create_unix_listener(  # type: ignore[call-overload]
            address, kind=kind, allow_uids={UID + 1}
        ) as listener:
            accepted: list[Any] = []
            async with (
                await connect(address) as eager,
                anyio.create_task_group() as tg,
            ):
                # sent before the listener looked at it: unread data, so the
                # refusal resets the connection (stream) or ends it (seqpacket)
                await eager.send(b"let me in")

                async def accept() -> None:
                    accepted.append(await listener.accept())

                tg.start_soon(accept)
                await _wait_refused(eager)
                # connecting while accept waits: refused at once
                async with await connect(address) as client:
                    await _wait_refused(client)
                await anyio.wait_all_tasks_blocked()
                assert not accepted  # the application never saw them
                assert listener.statistics() == aipc.UnixListenerStatistics(0, 2)
                assert "refused=2" in repr(listener)
                tg.cancel_scope.cancel()
        async with (
            aipc.create_unix_listener(address, kind=kind, allow_uids=[UID]) as listener,  # type: ignore[call-overload]
            await connect(address),
        ):
            with anyio.fail_after(5):
                async with await listener.accept() as server:
                    assert server.peer_credentials().uid == UID

    for kind in ["stream", "seqpacket"]:
        await check(kind)


def _foreign_gid() -> int:
    return max([GID, *os.getgroups()]) + 1


async def test_policy_by_gid(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    async with aipc.create_unix_listener(path, allow_gids={_foreign_gid()}) as listener:
        async with await aipc.connect_unix_stream(path) as client:
            with anyio.fail_after(5), anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(listener.accept)
                    await _wait_refused(client)
                    scope.cancel()
        assert listener.statistics().refused == 1
    async with (
        aipc.create_unix_listener(path, allow_gids=(GID,)) as listener,
        await aipc.connect_unix_stream(path),
    ):
        with anyio.fail_after(5):
            async with await listener.accept() as server:
                assert server.extra(aipc.UnixSocketAttribute.peer_gid) == GID


GROUPS_CLIENT = """
import os, socket, sys
os.setgroups([int(sys.argv[2])])
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("connected", flush=True)
s.recv(1)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set groups")
async def test_policy_admits_by_supplementary_group(sock_dir: str) -> None:
    """allow_gids also matches the peer's supplementary groups (SO_PEERGROUPS)."""
    path = os.path.join(sock_dir, "s")
    group = _foreign_gid() + 1000
    async with (
        aipc.create_unix_listener(path, allow_gids={group}) as listener,
        child_process(GROUPS_CLIENT, args=[path, str(group)]) as (proc, stdout),
    ):
        assert await read_line(stdout) == b"connected"
        with anyio.fail_after(5):
            async with await listener.accept() as server:
                assert server.peer_credentials().gid == GID  # not the primary
                assert server.peer_credentials().pid == proc.pid
                await server.send(b"x")
            assert await proc.wait() == 0


async def test_policy_callback_and_the_listener_keeps_serving(
    new_addresses: Addresses,
) -> None:
    seen: list[aipc.PeerCredentials] = []
    decisions: list[bool] = []

    def policy(creds: aipc.PeerCredentials) -> bool:
        seen.append(creds)
        return decisions.pop(0)

    for new_address in new_addresses:
        address = new_address()
        seen.clear()
        decisions[:] = [False, True, False, True]
        async with aipc.create_unix_listener(address, policy=policy) as listener:
            with anyio.fail_after(5):
                for i in range(2):
                    async with (
                        await aipc.connect_unix_stream(address) as refused,
                        await aipc.connect_unix_stream(address) as admitted,
                    ):
                        async with await listener.accept() as server:
                            await admitted.send(b"admitted %d" % i)
                            assert (
                                await _receive_exactly(server, 10) == b"admitted %d" % i
                            )
                        await _wait_refused(refused)
        assert seen == [ME] * 4
        assert listener.statistics() == aipc.UnixListenerStatistics(2, 2)
        # all that are given must agree
        async with aipc.create_unix_listener(
            address, allow_uids={UID}, allow_gids={GID}, policy=lambda creds: False
        ) as listener:
            async with await aipc.connect_unix_stream(address) as client:
                with anyio.fail_after(5), anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(listener.accept)
                        await _wait_refused(client)
                        scope.cancel()
            assert listener.statistics().refused == 1


async def test_policy_that_raises(new_addresses: Addresses) -> None:
    """accept raises what the policy raised and closes that connection; the
    listener goes on."""
    for new_address in new_addresses:
        address = new_address()
        calls = 0

        def policy(creds: aipc.PeerCredentials) -> bool:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("policy failed")
            return True

        async with aipc.create_unix_listener(address, policy=policy) as listener:
            with anyio.fail_after(5):
                async with await aipc.connect_unix_stream(address) as client:
                    with pytest.raises(RuntimeError, match=r"^policy failed$"):
                        await listener.accept()
                    await _wait_refused(client)
                async with (
                    await aipc.connect_unix_stream(address) as client,
                    await listener.accept() as server,
                ):
                    await client.send(b"ok")
                    assert await _receive_exactly(server, 2) == b"ok"
            assert listener.statistics() == aipc.UnixListenerStatistics(1, 0)


# ---------------------------------------------------------------------------
# datagrams: truncation, size limits, waiting for a full receiver, peer gone


@asynccontextmanager
async def _message_pair(kind: str, **options: Any) -> AsyncIterator[tuple[Any, Any]]:
    """(send(data), receiver) for a message socket kind; receive() of the
    receiver returns the data (for an unconnected socket, data and address)."""
    if kind == "seqpacket":
        name = _abstract()
        async with aipc.create_unix_listener(name, kind="seqpacket") as listener:
            receiver = await aipc.connect_unix_seqpacket(name, **options)
            try:
                with anyio.fail_after(5):
                    sender = await listener.accept()
            except BaseException:
                receiver.close()
                raise
        async with sender, receiver:
            yield sender.send, receiver
    elif kind == "connected":
        name = _abstract()
        async with (
            aipc.create_unix_datagram_socket(local_path=name) as server,
            aipc.create_connected_unix_datagram_socket(name, **options) as receiver,
        ):
            address = receiver.extra(SocketAttribute.local_address)

            async def send(data: bytes) -> None:
                await server.sendto(data, address)

            yield send, receiver
    else:
        assert kind == "unconnected"
        name = _abstract()
        async with (
            aipc.create_unix_datagram_socket(local_path=name, **options) as receiver,
            aipc.create_unix_datagram_socket() as sender,
        ):

            async def send_to(data: bytes) -> None:
                await sender.sendto(data, name)

            yield send_to, receiver


def _data(item: Any) -> bytes:
    return item[0] if isinstance(item, tuple) else item  # type: ignore[no-any-return]


MESSAGE_KINDS = ["seqpacket", "connected", "unconnected"]


async def test_max_size_truncation() -> None:
    for kind in MESSAGE_KINDS:
        async with _message_pair(kind, max_size=10) as (send, receiver):
            assert receiver.max_size == 10
            await send(b"x" * 11)
            await send(b"y" * 10)
            with anyio.fail_after(5):
                with pytest.raises(
                    aipc.LimitExceededError,
                    match=r"^message size=11 exceeds this UNIX (seqpacket|datagram) "
                    r"socket's max_size \(10\); the message was discarded; open the "
                    r"socket with a larger max_size, or send smaller messages$",
                ) as info:
                    await receiver.receive()
                assert (info.value.value, info.value.limit) == (11, 10)
                # the next one comes whole
                assert _data(await receiver.receive()) == b"y" * 10


async def test_message_larger_than_the_send_buffer() -> None:
    async def check(kind: str) -> None:
        if kind == "unconnected":
            name = _abstract()
            receiver: Any = aipc.create_unix_datagram_socket(local_path=name)
            sender: Any = aipc.create_unix_datagram_socket()

            def send(data: bytes) -> Awaitable[None]:
                return sender.sendto(data, name)  # type: ignore[no-any-return]
        else:
            sender, receiver = aipc.create_unix_socket_pair(kind)  # type: ignore[call-overload]
            send = sender.send
        async with sender, receiver:
            raw = sender.extra(SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            sndbuf = raw.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            largest = sndbuf - 32
            with pytest.raises(
                aipc.LimitExceededError,
                match=rf"^len\(item\)={largest + 1} exceeds the largest message "
                r"the socket's send buffer takes \(SO_SNDBUF less 32 bytes; "
                rf"SO_SNDBUF comes from net\.core\.wmem_default\) \({largest}\); "
                r"send smaller messages, or raise SO_SNDBUF \(up to "
                r"net\.core\.wmem_max\)$",
            ):
                await send(b"x" * (largest + 1))
            await send(b"y" * largest)
            with anyio.fail_after(5):
                assert _data(await receiver.receive()) == b"y" * largest
            assert sender.statistics().messages_sent == 1

    for kind in ["seqpacket", "datagram", "unconnected"]:
        await check(kind)


async def test_send_to_a_full_receiver_waits() -> None:
    """A datagram send waits while the receiver's queue (or the sender's
    buffer) is full, and completes once the receiver reads: by readiness on
    a connected socket, by polling on an unconnected one."""

    async def check(kind: str) -> None:
        name = _abstract()
        if kind == "pair":
            sender, receiver = aipc.create_unix_socket_pair("datagram")
            send = sender.send
        else:
            receiver = aipc.create_unix_datagram_socket(local_path=name)
            if kind == "connected":
                sender = aipc.create_connected_unix_datagram_socket(name)
                send = sender.send
            else:
                sender = aipc.create_unix_datagram_socket()

                def send(data: bytes) -> Awaitable[None]:
                    return sender.sendto(data, name)  # type: ignore[no-any-return]

        async with sender, receiver:
            raw = sender.extra(SocketAttribute.raw_socket)
            filled = 0
            try:
                while True:
                    if kind == "unconnected":
                        raw.sendto(b"f" * 4096, socket.MSG_DONTWAIT, name)
                    else:
                        raw.send(b"f" * 4096, socket.MSG_DONTWAIT)
                    filled += 1
            except BlockingIOError:
                pass
            done = False
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:

                    async def send_marker() -> None:
                        nonlocal done
                        await send(b"marker")
                        done = True

                    tg.start_soon(send_marker)
                    await anyio.wait_all_tasks_blocked()
                    assert not done
                    assert sender.statistics().waits >= 1
                    got = [_data(await receiver.receive()) for _ in range(filled + 1)]
            assert done
            assert got == [b"f" * 4096] * filled + [b"marker"]

    for kind in ["pair", "connected", "unconnected"]:
        await check(kind)


async def test_connected_datagram_peer_gone() -> None:
    for kind in ["pair", "connected"]:
        if kind == "pair":
            sock, peer = aipc.create_unix_socket_pair("datagram")
        else:
            name = _abstract()
            peer = aipc.create_unix_datagram_socket(local_path=name)
            sock = aipc.create_connected_unix_datagram_socket(name)
        async with sock, peer:
            await sock.send(b"before")
            await peer.aclose()
            for _ in range(3):  # and it stays broken
                with pytest.raises(
                    anyio.BrokenResourceError,
                    match=r"^the peer of the UNIX datagram socket is gone$",
                ):
                    await sock.send(b"after")


# ---------------------------------------------------------------------------
# seqpacket


async def test_seqpacket_empty_message_is_refused() -> None:
    a, b = aipc.create_unix_socket_pair("seqpacket")
    async with a, b:
        for empty in (b"", bytearray(), memoryview(b"")):
            with pytest.raises(
                ValueError,
                match=r"^a seqpacket message must not be empty: the receiver could "
                r"not tell it from the end of the stream$",
            ):
                await a.send(empty)
        await a.send(b"x")
        await a.send_eof()
        with anyio.fail_after(5):
            assert await b.receive() == b"x"
            for _ in range(2):
                with pytest.raises(anyio.EndOfStream):
                    await b.receive()
        assert b.statistics().messages_received == 1


# ---------------------------------------------------------------------------
# cancellation and closing


@asynccontextmanager
async def _endpoints(kind: str) -> AsyncIterator[tuple[Any, Any]]:
    """(send(data), receive() -> data) for each kind of socket."""
    if kind in ("stream", "seqpacket", "datagram"):
        a, b = aipc.create_unix_socket_pair(kind)  # type: ignore[call-overload]
        async with a, b:
            yield a.send, b.receive
    else:
        async with _message_pair(kind) as (send, receiver):

            async def receive() -> bytes:
                return _data(await receiver.receive())

            yield send, receive


ALL_KINDS = ["stream", "seqpacket", "datagram", "connected", "unconnected"]


async def test_cancelled_receive_loses_nothing() -> None:
    for kind in ALL_KINDS:
        async with _endpoints(kind) as (send, receive):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
            await send(b"after")
            with anyio.fail_after(5):
                assert await receive() == b"after"
            # already cancelled, with a message there: it is kept (or returned:
            # see test_receive_in_a_cancelled_scope_raises)
            await send(b"kept")
            got = b""
            with anyio.CancelScope() as scope:
                scope.cancel()
                got = await receive()
            await send(b"next")
            with anyio.fail_after(5):
                while len(got) < 8:  # a stream may return both at once
                    got += await receive()
            assert got == b"keptnext"


@pytest.mark.parametrize(
    "kinds", [["stream"], ALL_KINDS[1:]], ids=["stream", "messages"]
)
async def test_receive_in_a_cancelled_scope_raises(kinds: list[str]) -> None:
    """A receive is a cancel point also when data is there, right after a
    receive that emptied the socket. (Until a receive after a short read
    asked FIONREAD first, it went straight to the readiness wait, and on
    uvloop the reader callback could complete it before anyio delivered the
    cancellation: the data came back in a cancelled scope.)"""
    for kind in kinds:
        async with _endpoints(kind) as (send, receive):
            await send(b"short")
            with anyio.fail_after(5):
                assert await receive() == b"short"
            await send(b"there")
            with anyio.CancelScope() as scope:
                scope.cancel()
                got = await receive()
                pytest.fail(f"{kind}: returned {got!r} in a cancelled scope")
            with anyio.fail_after(5):
                assert await receive() == b"there"


async def test_cancel_racing_a_message() -> None:
    """A receive cancelled 0-3 scheduling rounds after a message was sent:
    every message arrives exactly once and in order."""

    async def check(kind: str) -> None:
        async with _endpoints(kind) as (send, receive):
            got: list[bytes] = []

            async def receive_one(
                *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                task_status.started()
                got.append(await receive())

            sent = []
            for i in range(32):
                message = b"m%d" % i
                async with anyio.create_task_group() as tg:
                    await tg.start(receive_one)
                    await send(message)
                    sent.append(message)
                    for _ in range(i % 4):
                        await anyio.lowlevel.checkpoint()
                    tg.cancel_scope.cancel()
            await send(b"end")
            with anyio.fail_after(5):
                while not got or got[-1] != b"end":
                    got.append(await receive())
            assert got == [*sent, b"end"]

    for kind in ALL_KINDS[1:]:
        await check(kind)


async def test_plain_asyncio_cancel_racing_a_message() -> None:
    """asyncio only: Task.cancel() (as asyncio.timeout does) can land after
    the loop callback took the message: it is kept for the next receive."""
    import sniffio

    if sniffio.current_async_library() != "asyncio":
        pytest.skip("a plain Task.cancel() exists on asyncio only")
    import asyncio

    loop = asyncio.get_running_loop()
    for kind in ALL_KINDS[1:]:
        async with _endpoints(kind) as (send, receive):
            got: list[bytes] = []
            sent = []
            for i in range(32):
                task = loop.create_task(receive())
                await asyncio.sleep(0)
                message = b"m%d" % i
                await send(message)
                sent.append(message)
                for _ in range(i % 4):
                    await asyncio.sleep(0)
                loop.call_soon(task.cancel)
                await asyncio.wait({task})
                if not task.cancelled():
                    got.append(task.result())
            await send(b"end")
            with anyio.fail_after(5):
                while not got or got[-1] != b"end":
                    got.append(await receive())
            assert got == [*sent, b"end"]


async def test_cancelled_accept_loses_no_connection(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    async with aipc.create_unix_listener(path) as listener:
        accepted: list[aipc.UnixStream] = []

        async def accept(
            *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            task_status.started()
            accepted.append(await listener.accept())

        # an accept waiting when the connection comes, cancelled 0-3
        # scheduling rounds later: the connection is returned exactly once
        for rounds in range(4):
            accepted.clear()
            async with anyio.create_task_group() as tg:
                await tg.start(accept)
                await anyio.wait_all_tasks_blocked()
                client = await aipc.connect_unix_stream(path)
                for _ in range(rounds):
                    await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()
            async with client:
                with anyio.fail_after(5):
                    if not accepted:
                        accepted.append(await listener.accept())
                    async with accepted[0] as server:
                        await client.send(b"r%d" % rounds)
                        assert await _receive_exactly(server, 2) == b"r%d" % rounds
        assert listener.statistics().accepted == 4
        # cancelled after it took the connection: the next accept returns it
        async with await aipc.connect_unix_stream(path) as client:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await listener.accept()
            with anyio.fail_after(5):
                async with await listener.accept() as server:
                    await client.send(b"kept")
                    assert await _receive_exactly(server, 4) == b"kept"
        assert listener.statistics().accepted == 5
        # and one kept that way is closed with the listener
        async with await aipc.connect_unix_stream(path) as client:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await listener.accept()
            await listener.aclose()
            with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
                await client.receive()


async def test_connect_waits_while_the_backlog_is_full(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    async with aipc.create_unix_listener(path, backlog=1) as listener:
        queued = []
        try:
            while True:
                raw = socket.socket(
                    socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                )
                queued.append(raw)
                raw.connect(path)
        except BlockingIOError:
            queued.pop().close()
        try:
            # a cancelled connect leaves nothing behind (no_leaks checks fds)
            async with anyio.create_task_group() as tg:
                tg.start_soon(aipc.connect_unix_stream, path)
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
            connected: list[aipc.UnixStream] = []
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:

                    async def connect() -> None:
                        connected.append(await aipc.connect_unix_stream(path))

                    tg.start_soon(connect)
                    await anyio.wait_all_tasks_blocked()
                    assert not connected
                    async with await listener.accept():
                        pass  # room in the backlog: the connect completes
            async with connected[0]:
                pass
        finally:
            for raw in queued:
                raw.close()


@asynccontextmanager
async def _waiting_on(kind: str) -> AsyncIterator[tuple[Any, Any]]:
    """(resource, wait) where ``wait()`` blocks: a receive, or an accept."""
    name = _abstract()
    if kind == "listener":
        async with aipc.create_unix_listener(name) as listener:
            yield listener, listener.accept
    elif kind in ("stream", "seqpacket", "datagram"):
        a, b = aipc.create_unix_socket_pair(kind)  # type: ignore[call-overload]
        async with a, b:
            yield a, a.receive
    elif kind == "connected":
        async with (
            aipc.create_unix_datagram_socket(local_path=name),
            aipc.create_connected_unix_datagram_socket(name) as sock,
        ):
            yield sock, sock.receive
    else:
        async with aipc.create_unix_datagram_socket(local_path=name) as sock:
            yield sock, sock.receive


async def test_close_wakes_a_waiting_task() -> None:
    """A task waiting in receive (or accept) wakes with ClosedResourceError
    when another task closes the socket, gracefully or forcefully."""

    async def expect_closed(wait: Callable[[], Awaitable[object]]) -> None:
        with pytest.raises(anyio.ClosedResourceError):
            await wait()

    for kind in [*ALL_KINDS, "listener"]:
        for forcefully in (False, True):
            async with _waiting_on(kind) as (resource, wait):
                with anyio.fail_after(5):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(expect_closed, wait)
                        await anyio.wait_all_tasks_blocked()
                        if forcefully:
                            await anyio.aclose_forcefully(resource)
                        else:
                            await resource.aclose()
                assert resource.closed
                await expect_closed(wait)
                await resource.aclose()  # idempotent


# ---------------------------------------------------------------------------
# other processes: peer death, hand-off


SLEEPING_CLIENT = """
import socket, sys, time
kind = socket.SOCK_STREAM if sys.argv[2] == "stream" else socket.SOCK_SEQPACKET
s = socket.socket(socket.AF_UNIX, kind)
s.connect(sys.argv[1])
print("connected", flush=True)
time.sleep(60)
"""


async def test_killed_peer_wakes_receive_and_send(sock_dir: str) -> None:
    async def check(kind: str) -> None:
        path = os.path.join(sock_dir, "s")
        async with (
            aipc.create_unix_listener(path, kind=kind) as listener,  # type: ignore[call-overload]
            child_process(SLEEPING_CLIENT, args=[path, kind]) as (proc, stdout),
        ):
            assert await read_line(stdout) == b"connected"
            with anyio.fail_after(5):
                server = await listener.accept()
            async with server:
                _fill(server, size=4096)
                woke: list[str] = []

                async def receive() -> None:
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await server.receive()
                    woke.append("receive")

                async def send() -> None:
                    with pytest.raises(anyio.BrokenResourceError):
                        await server.send(b"blocked")
                    woke.append("send")

                with anyio.fail_after(5):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(receive)
                        tg.start_soon(send)
                        await anyio.wait_all_tasks_blocked()
                        assert not woke
                        proc.kill()
                        killed = anyio.current_time()
                    # both woke (the task group waited for them) within 1 s
                    assert anyio.current_time() - killed < 1
                assert sorted(woke) == ["receive", "send"]

    for kind in ["stream", "seqpacket"]:
        await check(kind)


HANDOFF_CHILD = """
import sys
import aipc
from tests._helpers import run_backend

async def main():
    stream = aipc.inherit("stream", aipc.UnixStream)
    packets = aipc.inherit("packets", aipc.UnixSeqpacketStream)
    datagrams = aipc.inherit("datagrams", aipc.ConnectedUnixDatagramSocket)
    listener = aipc.inherit("listener", aipc.UnixListener)
    async with stream, packets, datagrams, listener:
        print(packets.max_size, datagrams.max_size, flush=True)
        await stream.send((await stream.receive()).upper())
        await packets.send((await packets.receive()).upper())
        await datagrams.send((await datagrams.receive()).upper())
        async with await listener.accept() as conn:
            await conn.send(b"accepted in the child")
    print("child done", flush=True)

run_backend(main, sys.argv[1])
"""


async def test_handoff_to_a_child(backend_id: str, sock_dir: str) -> None:
    """Pair ends of each kind and a listener go to a child by name; the child
    uses them, and closing its listener does not unlink the parent's path."""
    path = os.path.join(sock_dir, "svc")
    s1, s2 = aipc.create_unix_socket_pair()
    p1, p2 = aipc.create_unix_socket_pair("seqpacket")
    d1, d2 = aipc.create_unix_socket_pair("datagram")
    async with s1, s2, p1, p2, d1, d2, aipc.create_unix_listener(path) as listener:
        handoff = {"stream": s2, "packets": p2, "datagrams": d2, "listener": listener}
        async with aipc_child(HANDOFF_CHILD, args=[backend_id], handoff=handoff) as (
            proc,
            stdout,
        ):
            for end in (s2, p2, d2):
                await end.aclose()  # the child has its own
            assert await read_line(stdout) == b"65536 65536"
            with anyio.fail_after(10):
                await s1.send(b"stream")
                assert await _receive_exactly(s1, 6) == b"STREAM"
                await p1.send(b"packet")
                assert await p1.receive() == b"PACKET"
                await d1.send(b"datagram")
                assert await d1.receive() == b"DATAGRAM"
                async with await aipc.connect_unix_stream(path) as conn:
                    assert await _read_all(conn) == b"accepted in the child"
                assert await read_line(stdout) == b"child done"
                assert await proc.wait() == 0
                # the child's stream end is gone with the child
                with pytest.raises(anyio.EndOfStream):
                    await s1.receive()
        # still the parent's file, still served by the parent's listener
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert len(_records(path)) == 1
        with anyio.fail_after(5):
            async with (
                await aipc.connect_unix_stream(path),
                await listener.accept(),
            ):
                pass
    assert not os.path.exists(path)


# ---------------------------------------------------------------------------
# systemd socket activation

# Puts the passed listening socket at fd 3 and a pipe at fd 4, sets the
# variables for its own pid, and execs the service (the same pid).
SYSTEMD_EXEC = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.dup2(int(sys.argv[2]), 4)
os.environ.update(
    LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="web:notasocket"
)
os.execv(sys.executable, [sys.executable, "-W", "error", "-c", *sys.argv[3:]])
"""

SYSTEMD_SERVICE = """
import os, sys
import aipc
from tests._helpers import run_backend

async def main():
    listeners = aipc.listeners_from_systemd()
    print(len(listeners), [listener.name for listener in listeners], flush=True)
    print(sorted(name for name in os.environ if name.startswith("LISTEN_")), flush=True)
    os.fstat(4)  # not a socket: left open and untouched
    [listener] = listeners
    async with listener:
        print("fd", listener.fileno(), os.get_blocking(listener.fileno()), flush=True)
        async with await listener.accept() as conn:
            await conn.send(b"hello from the activated service")
    print("closed", flush=True)

run_backend(main, sys.argv[1])
"""


async def test_systemd_socket_activation(backend_id: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "web.sock")
    unit_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # blocking
    r, w = os.pipe()
    try:
        unit_socket.bind(path)
        unit_socket.listen()
        args = [
            str(unit_socket.fileno()),
            str(r),
            textwrap.dedent(SYSTEMD_SERVICE),
            backend_id,
        ]
        async with child_process(
            SYSTEMD_EXEC, pass_fds=[unit_socket.fileno(), r], args=args
        ) as (proc, stdout):
            assert await read_line(stdout) == b"1 ['web']"
            assert await read_line(stdout) == b"[]"
            # accept has no per-call flag: the listener made it non-blocking
            assert await read_line(stdout) == b"fd 3 False"
            with anyio.fail_after(10):
                async with await aipc.connect_unix_stream(path) as conn:
                    assert await _read_all(conn) == b"hello from the activated service"
                assert await read_line(stdout) == b"closed"
                assert await proc.wait() == 0
        # nothing was unlinked: the file belongs to the socket unit
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert not _records(path)
    finally:
        unit_socket.close()
        os.close(r)
        os.close(w)
        with suppress(FileNotFoundError):
            os.unlink(path)


LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def test_systemd_without_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LISTEN_VARS:
        monkeypatch.delenv(var, raising=False)
    assert aipc.listeners_from_systemd() == []


def test_systemd_variables_for_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables meant for another process (a parent's, inherited) are not
    ours: nothing is adopted, and they are removed."""
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "web")
    assert aipc.listeners_from_systemd(unset_environment=False) == []
    assert all(var in os.environ for var in LISTEN_VARS)
    assert aipc.listeners_from_systemd() == []
    assert not any(var in os.environ for var in LISTEN_VARS)


def test_systemd_variables_for_us_with_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    assert aipc.listeners_from_systemd() == []
    assert not any(var in os.environ for var in LISTEN_VARS)
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "two")
    with pytest.raises(ValueError, match=r"^LISTEN_FDS is not a number: 'two'$"):
        aipc.listeners_from_systemd()
    assert not any(var in os.environ for var in LISTEN_VARS)


# ---------------------------------------------------------------------------
# aipc clean: a dead owner's stale socket goes, a live one stays

OWNER = """
import os, subprocess, sys
import anyio, aipc

HOLDER = '''
import anyio, aipc

async def main():
    # serves until a client says stop (a liveness probe is a connection that
    # closes at once)
    with anyio.fail_after(20):
        async with aipc.inherit("listener", aipc.UnixListener) as listener:
            while True:
                async with await listener.accept() as conn:
                    try:
                        await conn.send(b"still served")
                        if await conn.receive() == b"stop":
                            return
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        pass

anyio.run(main)
'''

async def main():
    listener = aipc.create_unix_listener(sys.argv[1])
    if sys.argv[2] == "handoff":
        holder = await aipc.open_process(
            [sys.executable, "-W", "error", "-c", HOLDER],
            handoff={"listener": listener},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None,
        )
        print(holder.pid, flush=True)
    else:
        print(os.getpid(), flush=True)
    os._exit(0)  # dies without closing: the file and its record stay

anyio.run(main)
"""


def _run_owner(path: str, mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", OWNER, path, mode],
        env=dict(os.environ, PYTHONPATH=PROJECT_ROOT),
        stdout=subprocess.PIPE,  # not stderr: the holder keeps that open
        text=True,
        timeout=30,
        check=True,
    )
    return int(result.stdout)


def test_clean_removes_a_dead_owners_socket_but_not_a_live_one(sock_dir: str) -> None:
    stale, live = os.path.join(sock_dir, "stale"), os.path.join(sock_dir, "live")
    holder_fd = -1
    try:
        owner = _run_owner(stale, "die")
        holder = _run_owner(live, "handoff")
        holder_fd = os.pidfd_open(holder)
        for path in (stale, live):
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
            [record] = _records(path)
            assert not record.owner_alive
        assert _records(stale)[0].pid == owner

        removed = aipc.clean()

        assert [o.name for o in removed] == [stale]
        assert not os.path.exists(stale)
        assert not _records(stale)
        # the listener lives on in the holder: its file and record stay, and
        # it serves
        assert stat.S_ISSOCK(os.lstat(live).st_mode)
        assert len(_records(live)) == 1
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(live)
            assert client.recv(100) == b"still served"
            client.sendall(b"stop")
        assert select.select([holder_fd], [], [], 10)[0], "the holder did not exit"
    finally:
        if holder_fd >= 0:
            with suppress(ProcessLookupError):
                signal.pidfd_send_signal(holder_fd, signal.SIGKILL)
            os.close(holder_fd)
        for path in (stale, live):
            _registry.unregister("unix-socket", path)
            with suppress(FileNotFoundError):
                os.unlink(path)


# ---------------------------------------------------------------------------
# finalizers, repr, statistics


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("stream", "UNIX stream socket"),
        ("seqpacket", "UNIX seqpacket socket"),
        ("datagram", "UNIX datagram socket"),
        ("listener", "UNIX listening socket"),
    ],
)
def test_unclosed_socket_warns_and_closes(kind: str, what: str) -> None:
    if kind == "listener":
        sock: Any = aipc.create_unix_listener(_abstract())
        peer = None
    else:
        sock, peer = aipc.create_unix_socket_pair(kind)  # type: ignore[call-overload]
        peer.close()
    fd = sock.fileno()
    with pytest.warns(ResourceWarning, match=f"^unclosed {what} fd={fd}; "):  # noqa: PT031
        del sock
        gc.collect()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


async def test_repr_and_statistics(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s")
    async with _connected(path) as (listener, client, server):
        assert repr(listener) == (
            f"<UnixListener stream fd={listener.fileno()} {path!r} accepted=1 "
            "refused=0>"
        )
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_receive_exactly, server, 7)
                await anyio.wait_all_tasks_blocked()
                await client.send(b"abc")
                await client.send(b"defg")
        assert client.statistics() == aipc.UnixSocketStatistics(0, 7, 0, 2, 0, 0, 0)
        stats = server.statistics()
        assert (stats.bytes_received, stats.bytes_sent) == (7, 0)
        assert stats.waits >= 1
        assert repr(client).startswith(f"<UnixStream fd={client.fileno()}")
        assert repr(client).endswith("received=0B sent=7B>")
    assert repr(client) == "<UnixStream closed received=0B sent=7B>"
    assert repr(listener) == "<UnixListener stream closed accepted=1 refused=0>"
    a, b = aipc.create_unix_socket_pair("datagram")
    async with a, b:
        await a.send(b"12345")
        with anyio.fail_after(5):
            await b.receive()
        assert a.statistics() == aipc.UnixSocketStatistics(0, 5, 0, 1, 0, 0, 0)
        assert b.statistics() == aipc.UnixSocketStatistics(5, 0, 1, 0, 0, 0, 0)
        assert repr(b) == (
            f"<ConnectedUnixDatagramSocket fd={b.fileno()} received=1 sent=0>"
        )


async def test_max_size_of_pairs_and_accepted_seqpacket(sock_dir: str) -> None:
    a, b = aipc.create_unix_socket_pair("seqpacket", max_size=100_000)
    async with a, b:
        assert b.max_size == 100_000
        await a.send(b"x" * 90_000)
        with anyio.fail_after(5):
            assert len(await b.receive()) == 90_000
    c, d = aipc.create_unix_socket_pair("datagram", max_size=10)
    async with c, d:
        await c.send(b"x" * 11)
        with anyio.fail_after(5), pytest.raises(aipc.LimitExceededError):
            await d.receive()
    path = os.path.join(sock_dir, "big")
    listener = aipc.create_unix_listener(path, kind="seqpacket", max_size=200_000)
    async with listener, await aipc.connect_unix_seqpacket(path):
        with anyio.fail_after(5):
            async with await listener.accept() as server:
                assert server.max_size == 200_000
    with pytest.raises(ValueError, match="max_size must be at least 1"):
        aipc.create_unix_socket_pair("seqpacket", max_size=0)
