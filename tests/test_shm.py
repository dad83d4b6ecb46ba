"""Shared memory segments: anonymous sealed memfds and named /dev/shm segments,
ownership, limits, and hand-off to other processes."""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import aipc
from aipc import _shm

from ._helpers import aipc_child, child_process, read_line

pytestmark = pytest.mark.anyio


def _shm_path(name: str) -> Path:
    return Path("/dev/shm") / name[1:]


def test_anonymous_segment_is_sealed_and_zeroed() -> None:
    with aipc.create_shared_memory(10_000) as seg:
        assert seg.size == 10_000
        assert seg.name is None
        assert seg.owner
        assert seg.statistics() == aipc.SharedMemoryStatistics(10_000, True, True)
        assert bytes(seg.buffer[:16]) == bytes(16)
        seals = fcntl.fcntl(seg.fileno(), fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK
        assert seals & fcntl.F_SEAL_GROW
        assert seals & fcntl.F_SEAL_SEAL
        assert fcntl.fcntl(seg.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        # a peer holding the descriptor cannot resize it
        with pytest.raises(PermissionError):
            os.ftruncate(seg.fileno(), 10)
        with pytest.raises(PermissionError):
            os.ftruncate(seg.fileno(), 20_000)
        assert repr(seg).startswith("<SharedMemory anonymous 10000B owner fd=")
    assert seg.closed
    assert repr(seg) == "<SharedMemory anonymous 10000B owner closed>"
    with pytest.raises(anyio.ClosedResourceError):
        seg.buffer  # noqa: B018


def test_from_fd_shares_memory_and_verifies_seals() -> None:
    with aipc.create_shared_memory(4096) as seg:
        seg.buffer[:5] = b"hello"
        with aipc.SharedMemory.from_fd(os.dup(seg.fileno())) as copy:
            assert not copy.owner
            assert bytes(copy.buffer[:5]) == b"hello"
            copy.buffer[5:6] = b"!"
        assert bytes(seg.buffer[:6]) == b"hello!"
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(ValueError, match="is a memfd that is not sealed"):
            aipc.SharedMemory.from_fd(fd)
        os.fstat(fd)  # still the caller's
    finally:
        os.close(fd)
    directory = os.open("/", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(ValueError, match="is not a shared memory file"):
            aipc.SharedMemory.from_fd(directory)
    finally:
        os.close(directory)


def test_views_outlive_close_safely() -> None:
    seg = aipc.create_shared_memory(4096)
    view = seg.buffer[:100]
    view[:3] = b"abc"
    seg.close()
    # the mapping stays while a view is alive: reading it is safe
    assert bytes(view[:3]) == b"abc"
    view.release()


def test_named_segment_ownership(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    owner = aipc.create_shared_memory(8192, name=name)
    try:
        st = _shm_path(name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        records = [o for o in aipc.list_objects() if o.kind == "shm"]
        assert [r.name for r in records] == [name]
        with aipc.attach_shared_memory(name) as attached:
            assert not attached.owner
            attached.buffer[0] = 42
            assert owner.buffer[0] == 42
        # closing an attacher never removes the name (unlike gh-82300)
        assert _shm_path(name).exists()
        with pytest.raises(FileExistsError):
            aipc.create_shared_memory(4096, name=name)
    finally:
        owner.close()
    assert not _shm_path(name).exists()
    assert not [o for o in aipc.list_objects() if o.kind == "shm"]


def test_unlink_only_our_segment(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    first = aipc.create_shared_memory(4096, name=name, unlink_on_close=False)
    attached = aipc.attach_shared_memory(name)
    assert first.unlink()
    assert not first.unlink()  # gone already
    # a new segment under the same name is not ours to remove
    second = aipc.create_shared_memory(4096, name=name)
    try:
        assert not attached.unlink()
        attached.close()
        first.close()
        assert _shm_path(name).exists()
    finally:
        second.close()
    assert not _shm_path(name).exists()


def test_mode_and_bad_arguments(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    old = os.umask(0o077)
    try:
        with aipc.create_shared_memory(4096, name=name, mode=0o640):
            assert stat.S_IMODE(_shm_path(name).stat().st_mode) == 0o640
    finally:
        os.umask(old)
    with pytest.raises(ValueError, match="size must be at least 1 byte, got 0"):
        aipc.create_shared_memory(0)
    with pytest.raises(TypeError, match="size must be an int, not float"):
        aipc.create_shared_memory(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be a slash and then a name"):
        aipc.create_shared_memory(10, name="frames")
    with pytest.raises(ValueError, match="name must be a slash and then a name"):
        aipc.create_shared_memory(10, name="/a/b")
    with pytest.raises(aipc.LimitExceededError, match=r"len\(name\)=256 exceeds"):
        aipc.create_shared_memory(10, name="/" + "x" * 256)
    with pytest.raises(ValueError, match="mode must be a permission mask"):
        aipc.create_shared_memory(10, name=name, mode=0o1000)
    with pytest.raises(FileNotFoundError):
        aipc.attach_shared_memory(name)


def test_size_beyond_the_system_fails_before_creating(
    shm_name: Callable[[], str],
) -> None:
    name = shm_name()
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    with pytest.raises(
        aipc.LimitExceededError, match="the free space of /dev/shm"
    ) as e:
        aipc.create_shared_memory(free + 2**30, name=name)
    assert e.value.argument == "size"
    assert not _shm_path(name).exists()
    with pytest.raises(aipc.LimitExceededError, match="memory available"):
        aipc.create_shared_memory(2**60)


ATTACH_AND_EXIT = """
import sys
import aipc
seg = aipc.attach_shared_memory(sys.argv[1])
seg.buffer[0] = 99
print("attached", flush=True)
# exits without closing: the attacher's exit must not remove the segment
"""


async def test_an_attacher_exiting_never_unlinks(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    async with aipc.create_shared_memory(4096, name=name) as seg:
        async with child_process(ATTACH_AND_EXIT, args=[name]) as (proc, stdout):
            assert await read_line(stdout) == b"attached"
            with anyio.fail_after(10):
                assert await proc.wait() == 0
        assert seg.buffer[0] == 99
        assert _shm_path(name).exists()


SHRINK_CHILD = """
import os, sys
import aipc

async def main():
    seg = aipc.inherit("seg", aipc.SharedMemory)
    try:
        os.ftruncate(seg.fileno(), 1)
    except PermissionError:
        print("shrink refused", flush=True)
    seg.buffer[:6] = b"child!"
    seg.close()

from tests._helpers import run_backend
run_backend(main, sys.argv[1])
"""


async def test_handoff_and_a_peer_cannot_shrink(backend_id: str) -> None:
    async with aipc.create_shared_memory(mmap.PAGESIZE) as seg:
        async with aipc_child(
            SHRINK_CHILD, args=[backend_id], handoff={"seg": seg}
        ) as (proc, stdout):
            assert await read_line(stdout) == b"shrink refused"
            with anyio.fail_after(10):
                assert await proc.wait() == 0
        assert bytes(seg.buffer[:6]) == b"child!"
        assert seg.size == mmap.PAGESIZE


async def test_send_over_a_socket() -> None:
    left, right = aipc.create_unix_socket_pair()
    async with left, right, aipc.create_shared_memory(4096) as seg:
        await left.send_objects(seg)
        with anyio.fail_after(5):
            [copy] = await right.receive_objects()
        async with copy:
            assert isinstance(copy, aipc.SharedMemory)
            assert not copy.owner
            copy.buffer[:2] = b"ok"
        assert bytes(seg.buffer[:2]) == b"ok"


def test_clean_removes_a_dead_owners_segment(
    shm_name: Callable[[], str], tmp_path: Path
) -> None:
    name = shm_name()
    seg = aipc.create_shared_memory(4096, name=name, unlink_on_close=False)
    seg.close()
    [record] = [o for o in aipc.list_objects() if o.name == name]
    assert record.exists()
    # pretend the owner died: rewrite the record with a pid that cannot exist
    from aipc._core import _registry

    _registry.unregister("shm", name)
    _registry.register("shm", name, record.dev, record.inode)
    path = _registry._record_path("shm", name)
    text = Path(path).read_text().replace(f'"pid": {os.getpid()}', '"pid": 999999999')
    Path(path).write_text(text)
    removed = aipc.clean()
    assert [o.name for o in removed] == [name]
    assert not _shm_path(name).exists()
    assert _shm._SHM_DIR == "/dev/shm"
