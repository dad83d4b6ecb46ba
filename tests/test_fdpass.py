"""Descriptor passing over UNIX sockets: SCM_RIGHTS, credentials, truncation,
ownership and aipc objects rebuilt on the other side."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import aipc

from ._helpers import child_process

pytestmark = pytest.mark.anyio

KINDS = ["stream", "seqpacket", "datagram"]


def _open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Any]]:
    a, b = aipc.create_unix_socket_pair(request.param)
    async with a, b:
        yield a, b


def _same_file(fd1: int, fd2: int) -> bool:
    s1, s2 = os.fstat(fd1), os.fstat(fd2)
    return (s1.st_dev, s1.st_ino) == (s2.st_dev, s2.st_ino)


@pytest.mark.parametrize("pair", KINDS, indirect=True)
async def test_fds_arrive_close_on_exec_and_owned(pair: tuple[Any, Any]) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        await a.send_fds(b"two ends", [r, w])
        with anyio.fail_after(5), await b.receive_fds() as message:
            assert message.data == b"two ends"
            assert len(message.fds) == 2
            for fd, original in zip(message.fds, (r, w), strict=True):
                assert fd.fileno() not in (r, w)
                assert _same_file(fd.fileno(), original)
                assert fcntl.fcntl(fd.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            kept = message.fds[0].take()
        # the message closed the one not taken; the taken one is ours
        assert message.fds[1].closed
        os.close(kept)
        assert a.statistics().fds_sent == 2
        assert b.statistics().fds_received == 2
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("pair", KINDS, indirect=True)
async def test_ten_thousand_transfers_leak_nothing(pair: tuple[Any, Any]) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        before = _open_fd_count()
        with anyio.fail_after(60):
            for i in range(10_000):
                await a.send_fds(b"x", [r, w])
                message = await b.receive_fds()
                assert len(message.fds) == 2
                message.close()
                if i % 2500 == 0:
                    assert _open_fd_count() == before
        assert _open_fd_count() == before
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("pair", KINDS, indirect=True)
async def test_truncation_closes_what_arrived(pair: tuple[Any, Any]) -> None:
    a, b = pair
    fds = [os.dup(0) for _ in range(5)]
    try:
        before = _open_fd_count()
        await a.send_fds(b"five", fds)
        with anyio.fail_after(5), pytest.raises(aipc.FdTruncatedError) as info:
            await b.receive_fds(max_fds=2)
        assert info.value.data == b"five"
        assert info.value.max_fds == 2
        assert info.value.received >= 2
        assert "more descriptors than max_fds=2" in str(info.value)
        assert _open_fd_count() == before
        # the socket goes on working
        await a.send_fds(b"one", fds[:1])
        with anyio.fail_after(5), await b.receive_fds(max_fds=2) as message:
            assert message.data == b"one"
            assert len(message.fds) == 1
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("pair", KINDS, indirect=True)
async def test_credentials_with_fds_are_parsed(pair: tuple[Any, Any]) -> None:
    a, b = pair
    b.pass_credentials()
    r, w = os.pipe()
    try:
        await a.send_fds(b"who", [r], credentials=True)
        with anyio.fail_after(5), await b.receive_fds(max_fds=1) as message:
            assert message.credentials == aipc.PeerCredentials(
                os.getpid(), os.getuid(), os.getgid()
            )
            assert len(message.fds) == 1
            assert _same_file(message.fds[0].fileno(), r)
        # SO_PASSCRED alone: the kernel attaches them to every message
        await a.send_fds(b"again", [w])
        with anyio.fail_after(5), await b.receive_fds(max_fds=1) as message:
            assert message.credentials is not None
            assert message.credentials.pid == os.getpid()
            assert len(message.fds) == 1
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("pair", KINDS, indirect=True)
async def test_cancelled_receive_loses_nothing_and_close_closes(
    pair: tuple[Any, Any],
) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        before = _open_fd_count()
        # a receive cancelled while waiting: the next one gets the message
        with anyio.move_on_after(0.05):
            await b.receive_fds()
        await a.send_fds(b"after", [r])
        with anyio.fail_after(5), await b.receive_fds() as message:
            assert message.data == b"after"
            assert len(message.fds) == 1
        # a receive cancelled after it took the message (cancelled before it
        # even starts: the receive still makes its attempt, then checkpoints)
        await a.send_fds(b"kept", [w])
        with anyio.CancelScope() as scope:
            scope.cancel()
            await b.receive_fds()
        assert _open_fd_count() in (before, before + 1)
        with anyio.fail_after(5), await b.receive_fds() as message:
            assert message.data == b"kept"
            assert len(message.fds) == 1
        # kept descriptors are closed with the socket
        await a.send_fds(b"dropped", [w])
        with anyio.CancelScope() as scope:
            scope.cancel()
            await b.receive_fds()
        await b.aclose()
        assert _open_fd_count() == before - 1  # b's own descriptor is gone too
    finally:
        os.close(r)
        os.close(w)


async def test_plain_receive_drops_fds_without_leaking() -> None:
    for kind in KINDS:
        a, b = aipc.create_unix_socket_pair(kind)  # type: ignore[call-overload]
        async with a, b:
            before = _open_fd_count()
            await a.send_fds(b"data", [0, 1])
            with anyio.fail_after(5):
                received = await b.receive() if kind != "stream" else await b.receive(4)
            assert received == b"data"
            assert _open_fd_count() == before


async def test_unconnected_datagram_with_address(tmp_path: Path) -> None:
    server_path = str(tmp_path / "srv")
    async with (
        aipc.create_unix_datagram_socket(local_path=server_path) as server,
        aipc.create_unix_datagram_socket() as client,
    ):
        r, w = os.pipe()
        try:
            await client.send_fds(b"hi", [r], server_path)
            with anyio.fail_after(5), await server.receive_fds() as message:
                assert message.data == b"hi"
                assert message.address == client.extra(
                    anyio.abc.SocketAttribute.local_address
                )
                assert len(message.fds) == 1
            async with aipc.EventFd() as efd:
                await client.send_objects(efd, address=server_path)
                with anyio.fail_after(5):
                    objects, address = await server.receive_objects()
                assert address == message.address
                async with objects[0] as copy:
                    efd.set(3)
                    assert await copy.wait() == 3
        finally:
            os.close(r)
            os.close(w)


async def test_bad_arguments() -> None:
    a, b = aipc.create_unix_socket_pair()
    async with a, b:
        with pytest.raises(aipc.LimitExceededError, match=r"len\(fds\)=254 exceeds"):
            await a.send_fds(b"x", [0] * 254)
        with pytest.raises(TypeError, match="fds items must be ints or objects"):
            await a.send_fds(b"x", ["0"])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="fds must be a sequence"):
            await a.send_fds(b"x", 0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="data must not be empty"):
            await a.send_fds(b"", [0])
        with pytest.raises(ValueError, match=r"max_fds must be between 1 and 253"):
            await b.receive_fds(max_fds=0)
        with pytest.raises(TypeError, match="max_fds must be an int"):
            await b.receive_fds(max_fds=1.5)  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=r"objects\[0\]: int objects cannot be handed over a socket"
        ):
            await a.send_objects(3)
        # nothing half-sent: the stream still carries a clean message
        await a.send(b"clean")
        with anyio.fail_after(5):
            assert await b.receive() == b"clean"
    x, y = aipc.create_unix_socket_pair("seqpacket")
    async with x, y:
        with pytest.raises(ValueError, match="a seqpacket message must not be empty"):
            await x.send_fds(b"", [0])


NOT_OBJECTS = "not an aipc objects message"


async def test_receive_objects_refuses_garbage_and_closes_fds() -> None:
    a, b = aipc.create_unix_socket_pair("seqpacket")
    async with a, b:
        before = _open_fd_count()
        await a.send_fds(b"not json", [0, 1])
        with (
            anyio.fail_after(5),
            pytest.raises(ValueError, match="not an aipc objects"),
        ):
            await b.receive_objects()
        assert _open_fd_count() == before
    a2, b2 = aipc.create_unix_socket_pair()
    async with a2, b2:
        await a2.send_fds(b"\xff\xff\xff\xffjunk", [0])
        with (
            anyio.fail_after(5),
            pytest.raises(ValueError, match="not an aipc objects"),
        ):
            await b2.receive_objects()
        assert _open_fd_count() == before


@pytest.mark.parametrize("pair", KINDS, indirect=True)
async def test_objects_are_rebuilt_as_the_same_kind(
    pair: tuple[Any, Any], tmp_path: Path
) -> None:
    a, b = pair
    receive, send = aipc.create_pipe()
    efd = aipc.EventFd(semaphore=True)
    s1, s2 = aipc.create_unix_socket_pair("seqpacket")
    fifo = aipc.create_fifo(tmp_path / "fifo", unlink_on_close=True)
    listener = aipc.create_unix_listener(tmp_path / "l")
    process = aipc.Process.from_pid(os.getpid())
    async with receive, send, efd, s1, s2, fifo, listener, process:
        rx = await aipc.open_fifo_receiver(fifo.path, keep_open=True)
        async with rx:
            originals = [receive, send, efd, s1, rx, listener, process]
            await a.send_objects(*originals)
            with anyio.fail_after(5):
                copies = await b.receive_objects()
            try:
                assert [type(c) for c in copies] == [type(o) for o in originals]
                _, c_send, c_efd, c_s1, c_rx, c_listener, c_process = copies
                await c_send.send(b"through the copy")
                with anyio.fail_after(5):
                    assert await receive.receive() == b"through the copy"
                efd.set(2)
                with anyio.fail_after(5):
                    assert await c_efd.wait() == 1  # semaphore mode came along
                await s2.send(b"to the copy")
                with anyio.fail_after(5):
                    assert await c_s1.receive() == b"to the copy"
                assert c_rx.path == rx.path
                assert c_rx.keep_open
                assert c_process.pid == os.getpid()
                async with await aipc.connect_unix_stream(tmp_path / "l") as client:
                    with anyio.fail_after(5):
                        async with await c_listener.accept() as server:
                            await client.send(b"ping")
                            assert await server.receive() == b"ping"
            finally:
                for c in copies:
                    await c.aclose()
        # the copy of the listener did not unlink the path
        assert (tmp_path / "l").exists()


UNRELATED_CHILD = """
import sys
import aipc
from tests._helpers import run_backend

async def main():
    # this process got no descriptor from its parent: it connects by path
    async with await aipc.connect_unix_stream(sys.argv[2]) as stream:
        [send_end] = await stream.receive_objects()
        async with send_end:
            await send_end.send(b"written by an unrelated process")

run_backend(main, sys.argv[1])
"""


async def test_pass_a_pipe_to_an_unrelated_process(
    backend_id: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "svc")
    receive, send = aipc.create_pipe()
    async with (
        receive,
        send,
        aipc.create_unix_listener(path) as listener,
        child_process(UNRELATED_CHILD, args=[backend_id, path]) as (proc, _),
    ):
        with anyio.fail_after(10):
            async with await listener.accept() as conn:
                assert conn.peer_credentials().pid == proc.pid
                await conn.send_objects(send)
            await send.aclose()  # the child holds the only write end now
            data = b""
            try:
                while True:
                    data += await receive.receive()
            except anyio.EndOfStream:
                pass
            assert data == b"written by an unrelated process"
            assert await proc.wait() == 0


def test_unclosed_received_fd_warns() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        fd = os.dup(0)
        received = aipc.ReceivedFd(fd)
        with pytest.warns(ResourceWarning, match="unclosed received fd"):
            del received
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)  # closed by the finalizer


def test_received_fd_take_and_close() -> None:
    fd = os.dup(0)
    received = aipc.ReceivedFd(fd)
    assert repr(received).startswith(f"<ReceivedFd fd={fd} ")
    assert received.take() == fd
    assert received.closed
    with pytest.raises(anyio.ClosedResourceError):
        received.take()
    received.close()  # nothing: it was taken
    os.fstat(fd)
    os.close(fd)
    assert repr(received) == "<ReceivedFd closed>"
    assert sys.getrefcount(received) >= 1
