"""System V message queues: type filtering, back-pressure, cancellation that
loses no message, other processes, errors."""

from __future__ import annotations

import errno
import os
import random
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
import sysv_ipc

import aipc
from aipc._core import _sys
from aipc._core._bridge import INTERRUPT_SIGNAL

from ._helpers import child_process, read_line

pytestmark = pytest.mark.anyio


@pytest.fixture
async def queue(sysv_key: Callable[[], int]) -> AsyncIterator[aipc.SysVMessageQueue]:
    q = aipc.create_sysv_message_queue(sysv_key(), remove_on_close=True)
    try:
        yield q
    finally:
        await q.aclose()


async def test_type_filtering(queue: aipc.SysVMessageQueue) -> None:
    for data, mtype in [(b"a", 3), (b"b", 1), (b"c", 2), (b"d", 1), (b"e", 5)]:
        await queue.send(data, type=mtype)
    assert queue.current_messages == 5
    # > 0: the oldest of exactly that type
    assert await queue.receive_message(type=1) == (b"b", 1)
    # < 0: the oldest of the lowest type at most 4
    assert await queue.receive_message(type=-4) == (b"d", 1)
    assert await queue.receive_message(type=-4) == (b"c", 2)
    with pytest.raises(anyio.WouldBlock):
        queue.receive_nowait(type=4)
    # 0: the oldest of any type
    assert await queue.receive() == b"a"
    assert queue.receive_message_nowait() == (b"e", 5)
    stats = queue.statistics()
    assert (stats.sent, stats.received, stats.waits, stats.requeued) == (5, 5, 0, 0)


async def test_object_stream_until_removed(queue: aipc.SysVMessageQueue) -> None:
    got: list[bytes] = []
    three = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                async for message in queue:  # ends when the queue is removed
                    got.append(message)
                    if len(got) == 3:
                        three.set()

            tg.start_soon(reader)
            for i in range(3):
                await queue.send(b"%d" % i)
            await three.wait()
            await anyio.wait_all_tasks_blocked()
            assert queue.remove()
    assert got == [b"0", b"1", b"2"]
    assert not queue.remove()
    with pytest.raises(anyio.BrokenResourceError, match="message queue was removed"):
        await queue.send(b"x")
    with pytest.raises(anyio.EndOfStream):
        queue.receive_nowait()


async def test_cancelled_receive_loses_nothing_and_leaves_no_thread(
    queue: aipc.SysVMessageQueue,
) -> None:
    limiter = anyio.to_thread.current_default_thread_limiter()
    before = limiter.borrowed_tokens
    for _ in range(3):
        with anyio.move_on_after(0.02) as scope:
            await queue.receive()
        assert scope.cancelled_caught
    assert limiter.borrowed_tokens == before
    await queue.send(b"after")
    assert queue.receive_nowait() == b"after"


async def test_a_stray_interrupt_does_not_end_the_wait(
    queue: aipc.SysVMessageQueue,
) -> None:
    # EINTR without a cancellation (sysv_ipc reports it as its bare base
    # class): the worker waits on instead of failing or losing the message
    got: list[bytes] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                got.append(await queue.receive())

            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            for _ in range(10):
                for thread in threading.enumerate():
                    if thread is not threading.current_thread() and thread.ident:
                        signal.pthread_kill(thread.ident, INTERRUPT_SIGNAL)
                await anyio.sleep(0.005)
            assert got == []
            await queue.send(b"still there")
    assert got == [b"still there"]


def test_a_zero_size_receive_leaves_a_message_with_text_in_place() -> None:
    # What the waiting receive relies on, checked on the running kernel: a
    # matching message longer than the size asked for (without MSG_NOERROR) is
    # reported with E2BIG and left where it is; an empty message fits and is
    # taken; the size-0 wait of a receive takes nothing else.
    q = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX)
    try:
        q.send(b"first", type=3)
        q.send(b"second", type=2)
        nowait = 0o4000  # IPC_NOWAIT
        for wanted in (0, 3, -3, -2):
            with pytest.raises(OSError, match=os.strerror(errno.E2BIG)) as info:
                _sys.msgrcv(q.id, 0, wanted, nowait)
            assert info.value.errno == errno.E2BIG
        with pytest.raises(OSError, match=os.strerror(errno.ENOMSG)) as info:
            _sys.msgrcv(q.id, 0, 5, nowait)
        assert info.value.errno == errno.ENOMSG
        q.send(b"", type=4)
        assert _sys.msgrcv(q.id, 0, 4, nowait) == (b"", 4)
        assert q.current_messages == 2
        assert q.receive() == (b"first", 3)
        assert q.receive() == (b"second", 2)
    finally:
        q.remove()


async def test_cancel_racing_a_send_keeps_the_message_in_place(
    queue: aipc.SysVMessageQueue,
) -> None:
    # send() and cancel together: the waiting receive either returned the
    # message or left it in the queue, in its place: before a message sent
    # after it, never behind it.
    for i in range(10):
        taken: list[bytes] = []
        scope = anyio.CancelScope()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def reader(
                    scope: anyio.CancelScope = scope, taken: list[bytes] = taken
                ) -> None:
                    with scope:
                        taken.append(await queue.receive())

                tg.start_soon(reader)
                await anyio.wait_all_tasks_blocked()
                queue.send_nowait(b"m%d" % i, type=7)
                queue.send_nowait(b"later", type=8)
                scope.cancel()
        left = [queue.receive_nowait() for _ in range(queue.current_messages)]
        assert taken + left == [b"m%d" % i, b"later"]
    assert queue.statistics().requeued == 0


@pytest.mark.parametrize("text", [True, False], ids=["text", "empty"])
async def test_receives_cancelled_at_random_never_lose_or_reorder(
    queue: aipc.SysVMessageQueue, text: bool
) -> None:
    # A sender thread (its own handle) sends a numbered sequence at a random
    # pace, so that receives find it waiting, or arriving, or not there yet;
    # the receives are cancelled after random delays. The receiver must see
    # the exact sequence. Empty messages carry their number in their type, and
    # are the one case a wait takes itself: if one was taken at the instant
    # of a cancellation it went to the tail (requeued), so only their order
    # may change then, never their number.
    count = 1500
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    pauses = [rng.uniform(0, 200e-6) if rng.random() < 0.7 else 0 for _ in range(count)]
    deadlines = [rng.uniform(0, 300e-6) for _ in range(4 * count)]
    sender_q = sysv_ipc.MessageQueue(queue.key)

    def send_all() -> None:
        for i, pause in enumerate(pauses):
            if text:
                sender_q.send(b"%d" % i, type=1)
            else:
                sender_q.send(b"", type=i + 1)
            if pause:
                time.sleep(pause)  # the pace, not a synchronisation

    got: list[int] = []
    cancelled = 0
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, send_all)
            while len(got) < count:
                deadline = deadlines[(len(got) + cancelled) % len(deadlines)]
                with anyio.move_on_after(deadline) as scope:
                    data, mtype = await queue.receive_message()
                    got.append(int(data) if text else mtype - 1)
                cancelled += scope.cancelled_caught
    stats = queue.statistics()
    context = f"seed={seed} cancelled={cancelled} {stats}"
    assert queue.current_messages == 0, context
    assert sorted(got) == list(range(count)), context
    if text or stats.requeued == 0:
        assert got == list(range(count)), context
    if text:
        assert stats.requeued == 0, context
    assert cancelled > 0, context
    assert stats.waits > 0, context


async def test_full_queue_back_pressure(queue: aipc.SysVMessageQueue) -> None:
    big = b"x" * queue.max_message_size
    sent = 0
    while True:
        try:
            queue.send_nowait(big)
        except anyio.WouldBlock:
            break
        sent += 1
    assert sent >= 1
    with anyio.move_on_after(0.05) as scope:
        await queue.send(b"blocked")  # no room, nobody receives
    assert scope.cancelled_caught
    assert queue.current_messages == sent  # the cancelled send queued nothing
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.send, b"waits for room")
            await anyio.wait_all_tasks_blocked()
            assert await queue.receive() == big
    for _ in range(sent - 1):
        assert queue.receive_nowait() == big
    assert queue.receive_nowait() == b"waits for room"


async def test_aclose_ends_a_waiting_receive(sysv_key: Callable[[], int]) -> None:
    q = aipc.create_sysv_message_queue(sysv_key(), remove_on_close=True)
    limiter = anyio.to_thread.current_default_thread_limiter()
    before = limiter.borrowed_tokens
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await q.receive()

            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            await q.aclose()
    assert limiter.borrowed_tokens == before
    assert q.closed
    assert "closed" in repr(q)
    with pytest.raises(anyio.ClosedResourceError):
        await q.send(b"x")
    await q.aclose()  # idempotent


_ECHO = """
import sys, anyio, aipc
from tests._helpers import run_backend
async def main():
    q = aipc.attach_sysv_message_queue(int(sys.argv[1]))
    print("ready", flush=True)
    while True:
        data, mtype = await q.receive_message(type=-99)  # requests: types 1..99
        if data == b"stop":
            break
        await q.send(data.upper(), type=100 + mtype)  # answers: 100 + type
    await q.aclose()
    print("done", flush=True)
run_backend(main, sys.argv[2])
"""


async def test_across_processes(queue: aipc.SysVMessageQueue, backend_id: str) -> None:
    async with child_process(_ECHO, args=[str(queue.key), backend_id]) as (
        proc,
        stdout,
    ):
        assert await read_line(stdout) == b"ready"
        with anyio.fail_after(10):
            for i in range(1, 21):
                await queue.send(b"hello %d" % i, type=i)
                # the answer to this request, by its type; never another's
                assert await queue.receive_message(type=100 + i) == (
                    b"HELLO %d" % i,
                    100 + i,
                )
            await queue.send(b"stop")
        assert await read_line(stdout) == b"done"
        with anyio.fail_after(10):
            assert await proc.wait() == 0
    assert queue.current_messages == 0


async def test_create_attach_and_mode(sysv_key: Callable[[], int]) -> None:
    key = sysv_key()
    q = aipc.create_sysv_message_queue(key, mode=0o640)
    try:
        assert q.owned
        assert sysv_ipc.MessageQueue(key).mode & 0o777 == 0o640
        with pytest.raises(FileExistsError):
            aipc.create_sysv_message_queue(key)
        other = aipc.create_sysv_message_queue(key, exist_ok=True)
        attached = aipc.attach_sysv_message_queue(key)
        assert (other.owned, attached.owned, attached.id) == (False, False, q.id)
        assert not attached.remove()
        await attached.send(b"hi")
        assert await other.receive() == b"hi"
        await other.aclose()
        await attached.aclose()
    finally:
        assert q.remove()
        await q.aclose()
    with pytest.raises(FileNotFoundError):
        aipc.attach_sysv_message_queue(key)
    fresh = aipc.create_sysv_message_queue(remove_on_close=True)
    assert fresh.key != 0
    await fresh.aclose()


async def test_limits_and_bad_arguments(queue: aipc.SysVMessageQueue) -> None:
    with pytest.raises(aipc.LimitExceededError, match=r"kernel\.msgmax") as info:
        await queue.send(b"x" * (queue.max_message_size + 1))
    assert info.value.limit == queue.max_message_size
    with pytest.raises(ValueError, match="type must be between 1 and 2147483647"):
        await queue.send(b"x", type=0)
    with pytest.raises(ValueError, match="type must be between -2147483647"):
        await queue.receive(type=2**31)
    with pytest.raises(TypeError, match="message must be a bytes-like object"):
        await queue.send("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="type must be an int, not str"):
        queue.send_nowait(b"x", type="1")  # type: ignore[arg-type]
    assert queue.current_messages == 0


# ---- the registry ------------------------------------------------------------


def _records(key: int) -> list[aipc.NamedObject]:
    name = f"{key & 0xFFFFFFFF:#010x}"
    return [
        o
        for o in aipc.list_objects()
        if (o.kind, o.name) == ("sysv-message-queue", name)
    ]


def _exists(key: int) -> bool:
    try:
        sysv_ipc.MessageQueue(key)
    except sysv_ipc.ExistentialError:
        return False
    return True


async def test_creation_is_recorded_attaching_is_not(
    sysv_key: Callable[[], int],
) -> None:
    key = sysv_key()
    q = aipc.create_sysv_message_queue(key)
    try:
        [record] = _records(key)
        assert (record.dev, record.inode, record.pid) == (key, q.id, os.getpid())
        assert record.owner_alive
        assert record.exists()
        other = aipc.create_sysv_message_queue(key, exist_ok=True)
        attached = aipc.attach_sysv_message_queue(key)
        await other.aclose()
        await attached.aclose()
        assert _records(key) == [record]
        await q.aclose()  # closing without remove_on_close keeps both
        assert _records(key) == [record]
    finally:
        assert q.remove()
    assert not _records(key)
    assert not record.exists()
    # remove_on_close forgets the record too, and so with a fresh (negative
    # or positive) key
    q = aipc.create_sysv_message_queue(remove_on_close=True)
    assert [o.inode for o in _records(q.key)] == [q.id]
    await q.aclose()
    assert not _records(q.key)


_CREATE_AND_EXIT = """
import sys, aipc
aipc.create_sysv_message_queue(int(sys.argv[1])).send_nowait(b"orphaned")
# exits without removing the queue: a crash, to aipc
"""


async def test_clean_removes_a_dead_owners_queue_only(
    sysv_key: Callable[[], int],
) -> None:
    dead, replaced = sysv_key(), sysv_key()
    for key in (dead, replaced):
        async with child_process(_CREATE_AND_EXIT, args=[str(key)]) as (proc, _):
            with anyio.fail_after(10):
                assert await proc.wait() == 0
        [record] = _records(key)
        assert record.pid == proc.pid
        assert not record.owner_alive
        assert record.exists()
    # a newer queue under the second key (a new id): never removed
    [stale] = _records(replaced)
    sysv_ipc.remove_message_queue(stale.inode)
    newer = sysv_ipc.MessageQueue(replaced, sysv_ipc.IPC_CREX)
    mine = aipc.create_sysv_message_queue(sysv_key())
    try:
        [orphan] = _records(dead)
        assert aipc.clean(dry_run=True) == [orphan]
        assert _exists(dead)
        assert aipc.clean() == [orphan]
        assert not _exists(dead)
        assert not _records(dead)
        assert not _records(replaced)  # the stale record went, the queue stays
        assert _exists(replaced)
        # the live owner's queue and record are left alone
        assert _exists(mine.key)
        assert [o.pid for o in _records(mine.key)] == [os.getpid()]
    finally:
        newer.remove()
        assert mine.remove()
        await mine.aclose()


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"key": 0}, ValueError, "key must be a non-zero 32-bit int"),
        ({"key": -(2**31) - 1}, ValueError, "key must be a non-zero 32-bit int"),
        ({"key": 1.5}, TypeError, "key must be an int, not float"),
        ({"mode": 0o1000}, ValueError, "mode must be a permission mask within 0o777"),
    ],
)
def test_create_bad_arguments(
    kwargs: dict[str, object], exc: type[Exception], message: str
) -> None:
    with pytest.raises(exc, match=message):
        aipc.create_sysv_message_queue(**kwargs)  # type: ignore[arg-type]
