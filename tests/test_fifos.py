"""FIFOs: creation, safe defaults, opening that waits for the peer, reader modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest

import aipc
from aipc._core import _registry

from ._helpers import child_process, read_line

pytestmark = pytest.mark.anyio


def test_create_is_0600_and_registered(fifo_dir: Path) -> None:
    old_umask = os.umask(0)
    try:
        fifo = aipc.create_fifo(fifo_dir / "f")
    finally:
        os.umask(old_umask)
    try:
        st = os.lstat(fifo.path)
        assert stat.S_ISFIFO(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert fifo.owned
        [record] = [o for o in _registry.list_objects() if o.name == fifo.path]
        assert record.kind == "fifo"
        assert record.pid == os.getpid()
        assert record.owner_alive
        assert record.exists()
    finally:
        assert fifo.unlink()
    assert not os.path.exists(fifo.path)
    assert not [o for o in _registry.list_objects() if o.name == fifo.path]


def test_exact_mode_whatever_the_umask(fifo_dir: Path) -> None:
    fifo = aipc.create_fifo(fifo_dir / "f", mode=0o640)
    try:
        assert stat.S_IMODE(os.lstat(fifo.path).st_mode) == 0o640
    finally:
        fifo.unlink()


def test_existing_path(fifo_dir: Path) -> None:
    fifo = aipc.create_fifo(fifo_dir / "f")
    try:
        with pytest.raises(FileExistsError):
            aipc.create_fifo(fifo.path)
        other = aipc.create_fifo(fifo.path, exist_ok=True)
        assert not other.owned
        assert not other.unlink()  # attaching never makes us the owner
        assert os.path.exists(fifo.path)
    finally:
        fifo.unlink()
    regular = fifo_dir / "regular"
    regular.write_bytes(b"")
    with pytest.raises(aipc.NotAFifoError, match="exists and is a regular file"):
        aipc.create_fifo(regular, exist_ok=True)
    assert regular.exists()


def test_bad_mode(fifo_dir: Path) -> None:
    with pytest.raises(ValueError, match="mode must be a permission mask within 0o777"):
        aipc.create_fifo(fifo_dir / "f", mode=0o4755)
    assert not (fifo_dir / "f").exists()


def test_unlink_never_removes_a_replacement(fifo_dir: Path) -> None:
    fifo = aipc.create_fifo(fifo_dir / "f")
    os.unlink(fifo.path)
    os.mkfifo(fifo.path)  # someone else's object under the same name
    try:
        assert not fifo.unlink()
        assert os.path.exists(fifo.path)
    finally:
        os.unlink(fifo.path)


async def test_open_checks_the_path(fifo_dir: Path) -> None:
    regular = fifo_dir / "regular"
    regular.write_bytes(b"")
    with pytest.raises(aipc.NotAFifoError):
        await aipc.open_fifo_receiver(regular)
    with pytest.raises(aipc.NotAFifoError):
        await aipc.open_fifo_sender(regular)
    with pytest.raises(FileNotFoundError):
        await aipc.open_fifo_sender(fifo_dir / "missing")


async def test_writer_open_waits_for_a_reader(fifo_dir: Path) -> None:
    fifo = aipc.create_fifo(fifo_dir / "f")
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                senders: list[aipc.FifoSendStream] = []

                async def open_sender() -> None:
                    senders.append(await fifo.open_sender())

                tg.start_soon(open_sender)
                await anyio.wait_all_tasks_blocked()
                assert not senders  # no reader yet: still waiting, no ENXIO
                receiver = await fifo.open_receiver()
            async with receiver, senders[0] as sender:
                await sender.send(b"hi")
                assert await receiver.receive() == b"hi"
                await sender.aclose()
                with pytest.raises(anyio.EndOfStream):
                    await receiver.receive()
    finally:
        fifo.unlink()


async def test_cancelled_writer_open_leaves_nothing(fifo_dir: Path) -> None:
    fifo = aipc.create_fifo(fifo_dir / "f")
    try:
        with anyio.move_on_after(0.05) as scope:
            await fifo.open_sender()
        assert scope.cancelled_caught
        # the worker thread is not left blocked: a reader sees no writer now
        async with await fifo.open_receiver() as receiver:
            with anyio.move_on_after(0.05) as scope2:
                await receiver.receive()
            assert scope2.cancelled_caught
    finally:
        fifo.unlink()


async def test_reader_waits_for_its_first_writer(fifo_dir: Path) -> None:
    fifo = aipc.create_fifo(fifo_dir / "f")
    try:
        async with await fifo.open_receiver() as receiver:
            got: list[bytes] = []
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:

                    async def reader() -> None:
                        got.append(await receiver.receive())

                    tg.start_soon(reader)
                    await anyio.wait_all_tasks_blocked()
                    # no writer has ever connected: not an end of stream
                    assert not got
                    async with await fifo.open_sender() as sender:
                        await sender.send(b"first")
            assert got == [b"first"]
    finally:
        fifo.unlink()


async def test_wait_for_writer(fifo_dir: Path) -> None:
    fifo = aipc.create_fifo(fifo_dir / "f")
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                opened: list[aipc.FifoReceiveStream] = []

                async def open_receiver() -> None:
                    opened.append(await fifo.open_receiver(wait_for_writer=True))

                tg.start_soon(open_receiver)
                await anyio.wait_all_tasks_blocked()
                assert not opened
                sender = await fifo.open_sender()
            async with sender, opened[0] as receiver:
                await sender.send(b"x")
                assert await receiver.receive() == b"x"
        # cancelled while waiting: nothing left open, no thread stuck
        with anyio.move_on_after(0.05) as scope:
            await fifo.open_receiver(wait_for_writer=True)
        assert scope.cancelled_caught
    finally:
        fifo.unlink()


async def test_keep_open_reads_across_successive_writers(fifo_dir: Path) -> None:
    fifo = aipc.create_fifo(fifo_dir / "f")
    try:
        async with await fifo.open_receiver(keep_open=True) as receiver:
            assert receiver.keep_open
            with anyio.fail_after(5):
                for i in range(3):
                    async with await fifo.open_sender() as sender:
                        await sender.send(f"writer {i}".encode())
                    assert await receiver.receive() == f"writer {i}".encode()
            # every writer has gone, yet no end of stream
            with anyio.move_on_after(0.05) as scope:
                await receiver.receive()
            assert scope.cancelled_caught
    finally:
        fifo.unlink()


CHILD_WRITER = """
import sys, anyio, aipc
from tests._helpers import run_backend
async def main():
    async with await aipc.open_fifo_sender(sys.argv[1]) as tx:
        print("ready", flush=True)
        for i in range(100):
            await tx.send(b"%04d" % i)
        print("done", flush=True)
        await anyio.sleep(60)
run_backend(main, sys.argv[2])
"""


async def test_child_writer_and_its_death(fifo_dir: Path, backend_id: str) -> None:
    fifo = aipc.create_fifo(fifo_dir / "f")
    try:
        async with (
            child_process(CHILD_WRITER, args=[fifo.path, backend_id]) as (proc, stdout),
            await fifo.open_receiver() as receiver,
        ):
            assert await read_line(stdout) == b"ready"
            assert await read_line(stdout) == b"done"
            data = b""
            with anyio.fail_after(5):
                while len(data) < 400:
                    data += await receiver.receive()
            assert data == b"".join(b"%04d" % i for i in range(100))
            proc.kill()
            with anyio.fail_after(1), pytest.raises(anyio.EndOfStream):
                await receiver.receive()
    finally:
        fifo.unlink()


def test_clean_removes_objects_of_dead_owners(fifo_dir: Path) -> None:
    path = str(fifo_dir / "orphan")
    os.mkfifo(path, 0o600)
    st = os.lstat(path)
    # a record as a crashed process would have left it (pid 0 never runs)
    _registry.register("fifo", path, st.st_dev, st.st_ino)
    record = _registry._record_path("fifo", path)
    import json

    with open(record) as f:
        data = json.load(f)
    data["pid"], data["pid_start"] = 2**22 + 1, 12345
    with open(record, "w") as f:
        json.dump(data, f)
    removed = _registry.clean()
    assert [o.name for o in removed] == [path]
    assert not os.path.exists(path)
    assert not os.path.exists(record)


async def test_unlink_on_close(fifo_dir: Path) -> None:
    async with aipc.create_fifo(fifo_dir / "f", unlink_on_close=True) as fifo:
        assert os.path.exists(fifo.path)
    assert not os.path.exists(fifo.path)
    # without the flag, closing keeps the node (and unlinking stays explicit)
    fifo = aipc.create_fifo(fifo_dir / "g")
    await fifo.aclose()
    assert os.path.exists(fifo.path)
    assert not fifo.unlink()  # no longer ours to judge: closed
    os.unlink(fifo.path)
    _registry.unregister("fifo", fifo.path)


async def test_cancel_racing_the_open_never_hangs(fifo_dir: Path) -> None:
    # The interrupt must work at every moment of the open, also before the
    # worker thread has entered its blocking open(): cancel after 0, 1, 2, ...
    # scheduling passes.
    fifo = aipc.create_fifo(fifo_dir / "f")
    try:
        with anyio.fail_after(10):
            for i in range(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: fifo.open_receiver(wait_for_writer=True))
                    for _ in range(i % 6):
                        await anyio.lowlevel.checkpoint()
                    tg.cancel_scope.cancel()
    finally:
        fifo.unlink()


CHILD_READER = """
import sys, anyio, aipc
from tests._helpers import run_backend
async def main():
    async with await aipc.open_fifo_receiver(sys.argv[1]) as rx:
        print("ready", flush=True)
        await anyio.sleep(60)
run_backend(main, sys.argv[2])
"""


async def test_child_reader_death_breaks_the_writer(
    fifo_dir: Path, backend_id: str
) -> None:
    fifo = aipc.create_fifo(fifo_dir / "f")
    try:
        async with child_process(CHILD_READER, args=[fifo.path, backend_id]) as (
            proc,
            stdout,
        ):
            assert await read_line(stdout) == b"ready"
            async with await fifo.open_sender() as sender:
                await sender.send(b"x")
                async with anyio.create_task_group() as tg:

                    async def writer() -> None:
                        with (
                            anyio.fail_after(1),
                            pytest.raises(anyio.BrokenResourceError),
                        ):
                            while True:
                                await sender.send(b"y" * 65536)

                    tg.start_soon(writer)
                    await anyio.wait_all_tasks_blocked()
                    proc.kill()
    finally:
        fifo.unlink()
