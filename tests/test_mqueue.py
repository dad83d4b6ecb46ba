"""POSIX message queues: creation and safe defaults, priority order,
back-pressure, cancellation, closing, limits, the registry, other processes."""

from __future__ import annotations

import io
import json
import os
import re
import resource
import stat
from collections.abc import Callable

import anyio
import posix_ipc
import pytest
import sniffio

import aipc
from aipc import _mqueue
from aipc._core import _registry

from ._conformance import _checkpointed, _expect_cancelled
from ._helpers import child_process, read_line

pytestmark = pytest.mark.anyio

Names = Callable[[], str]

#: A marker no test sends except where it checks that a send did not happen.
MARKER = b"<must not arrive>"


def _mode(mq: aipc.MessageQueue) -> int:
    return stat.S_IMODE(os.fstat(mq.fileno()).st_mode)


def _create(mq_name: Names, **kwargs: object) -> aipc.MessageQueue:
    """A small queue that goes with its handle."""
    options: dict[str, object] = {
        "max_messages": 4,
        "max_message_size": 64,
        "unlink_on_close": True,
    }
    options.update(kwargs)
    return aipc.create_message_queue(mq_name(), **options)  # type: ignore[arg-type]


def _drain(mq: aipc.MessageQueue) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(mq.receive_nowait())
        except anyio.WouldBlock:
            return out


# ---- creating, opening, names and modes --------------------------------------


def test_create_is_0600_and_registered(mq_name: Names) -> None:
    old_umask = os.umask(0)
    try:
        mq = aipc.create_message_queue(mq_name(), max_messages=3, max_message_size=32)
    finally:
        os.umask(old_umask)
    try:
        assert _mode(mq) == 0o600
        assert mq.owned
        assert mq.readable
        assert mq.writable
        assert (mq.max_messages, mq.max_message_size) == (3, 32)
        assert mq.attributes == aipc.MessageQueueAttributes(3, 32, 0)
        [record] = [o for o in _registry.list_objects() if o.name == mq.name]
        st = os.fstat(mq.fileno())
        assert (record.kind, record.dev, record.inode) == (
            "mqueue",
            st.st_dev,
            st.st_ino,
        )
        assert record.pid == os.getpid()
        assert record.owner_alive
        assert record.exists()
    finally:
        assert mq.unlink()
        mq.close()
    assert _registry.mqueue_identity(mq.name) is None
    assert not [o for o in _registry.list_objects() if o.name == mq.name]
    assert not record.exists()


def test_exact_mode_whatever_the_umask(mq_name: Names) -> None:
    old_umask = os.umask(0o077)
    try:
        mq = _create(mq_name, mode=0o640)
    finally:
        os.umask(old_umask)
    try:
        assert _mode(mq) == 0o640
    finally:
        mq.close()


async def test_exists(mq_name: Names) -> None:
    name = mq_name()
    async with aipc.create_message_queue(
        name, max_messages=2, max_message_size=8, unlink_on_close=True
    ) as mq:
        with pytest.raises(FileExistsError, match=re.escape(name)):
            aipc.create_message_queue(name, max_messages=2, max_message_size=8)
        async with aipc.create_message_queue(
            name,
            max_messages=2,
            max_message_size=8,
            exist_ok=True,
            unlink_on_close=True,  # ignored: not ours
        ) as other:
            assert not other.owned
            assert not other.unlink()  # attaching never makes us the owner
            other.send_nowait(b"shared")
        assert mq.receive_nowait() == b"shared"  # the same queue
        with pytest.raises(
            ValueError,
            match=re.escape(
                f"the message queue {name!r} exists with max_messages=2, "
                "max_message_size=8, not the 3 and 8 asked for"
            ),
        ):
            aipc.create_message_queue(
                name, max_messages=3, max_message_size=8, exist_ok=True
            )
        assert _registry.mqueue_identity(name) is not None
    assert _registry.mqueue_identity(name) is None


async def test_open(mq_name: Names) -> None:
    name = mq_name()
    with pytest.raises(FileNotFoundError, match=re.escape(name)):
        await aipc.open_message_queue(name)
    with pytest.raises(ValueError, match="at least one of read and write"):
        await aipc.open_message_queue(name, read=False, write=False)
    async with _create(lambda: name) as mq:
        async with (
            await aipc.open_message_queue(name, read=False) as sender,
            await aipc.open_message_queue(name, write=False) as receiver,
        ):
            assert not sender.owned
            assert not receiver.owned
            assert (sender.readable, sender.writable) == (False, True)
            assert (receiver.readable, receiver.writable) == (True, False)
            assert (receiver.max_messages, receiver.max_message_size) == (4, 64)
            await sender.send(b"through the name")
            assert await receiver.receive() == b"through the name"
            with pytest.raises(io.UnsupportedOperation, match="write=False"):
                await receiver.send(b"x")
            with pytest.raises(io.UnsupportedOperation, match="read=False"):
                await sender.receive()
            with pytest.raises(io.UnsupportedOperation, match="read=False"):
                sender.receive_nowait()
            assert not sender.unlink()
        # closing the opened handles left the queue
        assert _registry.mqueue_identity(name) is not None
        assert mq.owned


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("jobs", "name must start with '/', got 'jobs'"),
        ("", "name must start with '/', got ''"),
        ("/", "name must have at least one character after the '/'"),
        ("/a/b", "name must not contain '/' after the leading one, got '/a/b'"),
        ("//", "name must not contain '/' after the leading one"),
        ("/.", "name must not be '/.' or '/..', got '/.'"),
        ("/..", "name must not be '/.' or '/..', got '/..'"),
        ("/a\0b", "name must not contain NUL characters"),
        (
            "/" + "x" * 256,
            "name must be at most 255 bytes after the '/' (NAME_MAX), got 256",
        ),
        (
            "/" + "é" * 128,
            "name must be at most 255 bytes after the '/' (NAME_MAX), got 256",
        ),
    ],
)
async def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        aipc.create_message_queue(name, max_messages=1, max_message_size=1)
    with pytest.raises(ValueError, match=re.escape(message)):
        await aipc.open_message_queue(name)


async def test_longest_name(mq_name: Names) -> None:
    prefix = mq_name()
    name = prefix + "x" * (256 - len(prefix))
    async with (
        aipc.create_message_queue(
            name, max_messages=1, max_message_size=1, unlink_on_close=True
        ) as mq,
        await aipc.open_message_queue(mq.name) as other,
    ):
        assert other.name == name


def test_bad_arguments(mq_name: Names) -> None:
    name = mq_name()
    with pytest.raises(TypeError, match="name must be a str, not bytes"):
        aipc.create_message_queue(b"/x", max_messages=1, max_message_size=1)  # type: ignore[arg-type]
    for argument in ("max_messages", "max_message_size"):
        sizes = {"max_messages": 1, "max_message_size": 1}
        for bad in (0, -1):
            sizes[argument] = bad
            with pytest.raises(
                ValueError, match=re.escape(f"{argument} must be at least 1, got {bad}")
            ):
                aipc.create_message_queue(name, **sizes)
        for wrong in (1.5, True, "2"):
            with pytest.raises(TypeError, match=f"{argument} must be an int"):
                aipc.create_message_queue(name, **{**sizes, argument: wrong})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be a permission mask within 0o777"):
        aipc.create_message_queue(name, max_messages=1, max_message_size=1, mode=0o4600)
    assert _registry.mqueue_identity(name) is None


# ---- sending and receiving ---------------------------------------------------


async def test_priority_order(mq_name: Names) -> None:
    async with _create(mq_name, max_messages=8) as mq:
        sent = [
            (b"low", 0),
            (b"high", 9),
            (b"mid-1", 5),
            (b"top", aipc.MQ_PRIORITY_MAX),
        ]
        sent += [(b"mid-2", 5), (b"low-2", 0)]
        for data, priority in sent:
            await mq.send(data, priority)
        assert mq.attributes.current_messages == 6
        got = [await mq.receive_with_priority() for _ in sent]
        # highest priority first; the order of sending within one priority
        assert got == [
            (b"top", aipc.MQ_PRIORITY_MAX),
            (b"high", 9),
            (b"mid-1", 5),
            (b"mid-2", 5),
            (b"low", 0),
            (b"low-2", 0),
        ]
        await mq.send(b"a", priority=1)
        mq.send_nowait(b"b", priority=2)
        assert mq.receive_with_priority_nowait() == (b"b", 2)
        assert await mq.receive() == b"a"


async def test_message_types_and_sizes(mq_name: Names) -> None:
    async with _create(mq_name, max_messages=8, max_message_size=16) as mq:
        buffer = bytearray(b"bytearray")
        await mq.send(b"")
        await mq.send(buffer)
        buffer[0:1] = b"X"  # the message was copied when sent
        await mq.send(memoryview(b"-slice-")[1:6])
        await mq.send(memoryview(b"0123456789abcdef")[::2])  # not contiguous
        await mq.send(b"x" * 16)
        assert [await mq.receive() for _ in range(5)] == [
            b"",
            b"bytearray",
            b"slice",
            b"02468ace",
            b"x" * 16,
        ]
        with pytest.raises(
            aipc.LimitExceededError,
            match=re.escape(
                f"len(item)=17 exceeds the max_message_size of {mq.name!r} (16)"
            ),
        ) as caught:
            await mq.send(b"y" * 17)
        assert (caught.value.argument, caught.value.value, caught.value.limit) == (
            "len(item)",
            17,
            16,
        )
        with pytest.raises(aipc.LimitExceededError, match="nothing was sent"):
            mq.send_nowait(bytearray(17))
        with pytest.raises(TypeError, match="item must be bytes-like, not str"):
            await mq.send("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="item must be bytes-like, not int"):
            await mq.send(3)  # type: ignore[arg-type]
        for bad in (-1, aipc.MQ_PRIORITY_MAX + 1):
            with pytest.raises(
                ValueError,
                match=re.escape(
                    f"priority must be between 0 and 32767 (MQ_PRIORITY_MAX), got {bad}"
                ),
            ):
                await mq.send(b"x", bad)
        with pytest.raises(TypeError, match="priority must be an int"):
            await mq.send(b"x", 1.0)  # type: ignore[arg-type]
        assert mq.attributes.current_messages == 0  # nothing refused was sent


async def test_back_pressure(mq_name: Names) -> None:
    async with _create(mq_name, max_messages=2) as mq:
        await mq.send(b"1")
        await mq.send(b"2")
        with pytest.raises(anyio.WouldBlock):
            mq.send_nowait(b"x")
        reports, sent = anyio.create_memory_object_stream[bytes](2)
        with anyio.fail_after(5):
            async with reports, sent, anyio.create_task_group() as tg:

                async def send_more() -> None:
                    for data in (b"3", b"4"):
                        await mq.send(data)
                        await reports.send(data)

                tg.start_soon(send_more)
                await anyio.wait_all_tasks_blocked()
                # the queue is full and nobody receives: the send waits
                with pytest.raises(anyio.WouldBlock):
                    sent.receive_nowait()
                assert await mq.receive() == b"1"  # makes room for one
                assert await sent.receive() == b"3"
                # full again ("2", "3"): the sender waits for room for "4"
                await anyio.wait_all_tasks_blocked()
                assert await mq.receive() == b"2"
                assert await sent.receive() == b"4"
        assert _drain(mq) == [b"3", b"4"]
        assert mq.statistics().send_waits == 2
        with pytest.raises(anyio.WouldBlock):
            mq.receive_nowait()


async def test_waiting_receive(mq_name: Names) -> None:
    async with _create(mq_name) as mq:
        got: list[bytes] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def receive_one() -> None:
                    got.append(await mq.receive())

                tg.start_soon(receive_one)
                await anyio.wait_all_tasks_blocked()
                assert got == []
                await mq.send(b"hello")
        assert got == [b"hello"]


async def test_several_consumers_get_each_message_once(mq_name: Names) -> None:
    async with _create(mq_name, max_messages=3) as mq:
        got: list[bytes] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    # one handle per consumer: the kernel gives each message to one
                    async with await aipc.open_message_queue(
                        mq.name, write=False
                    ) as rx:
                        while (data := await rx.receive()) != b"stop":
                            got.append(data)

                for _ in range(4):
                    tg.start_soon(consume)
                for i in range(50):
                    await mq.send(b"%d" % i, priority=1)
                for _ in range(4):
                    await mq.send(b"stop", priority=0)
        assert sorted(got, key=int) == [b"%d" % i for i in range(50)]


async def test_iteration_until_closed(mq_name: Names) -> None:
    async with _create(mq_name) as mq:
        for data in (b"a", b"b", b"c"):
            await mq.send(data)
        got = []
        async for data in mq:
            got.append(data)
            if len(got) == 3:
                break
        assert got == [b"a", b"b", b"c"]


async def test_busy(mq_name: Names) -> None:
    async with _create(mq_name, max_messages=1) as mq:
        busy: list[str] = []

        async def run(afn: Callable[[], object]) -> None:
            try:
                await afn()  # type: ignore[misc]
            except anyio.BusyResourceError as exc:
                busy.append(str(exc))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, mq.receive)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(run, mq.receive_with_priority)
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
            await mq.send(b"full")
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, lambda: mq.send(b"1"))
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(run, lambda: mq.send(b"2"))
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
        assert len(busy) == 2
        # the refused and the cancelled calls did nothing
        assert _drain(mq) == [b"full"]


async def test_checkpoints(mq_name: Names) -> None:
    """Every call that may wait is a checkpoint, whether it returns at once,
    waits, or raises."""
    async with _create(mq_name) as mq:
        await _checkpointed(mq.send, b"x")
        assert await _checkpointed(mq.receive) == b"x"
        await _checkpointed(mq.send, b"y", 3)
        assert await _checkpointed(mq.receive_with_priority) == (b"y", 3)
        async with await _checkpointed(aipc.open_message_queue, mq.name) as other:
            await _checkpointed(other.aclose)
            with pytest.raises(anyio.ClosedResourceError):
                await _checkpointed(other.receive)
            with pytest.raises(anyio.ClosedResourceError):
                await _checkpointed(other.send, b"z")
        with pytest.raises(FileNotFoundError):
            await _checkpointed(aipc.open_message_queue, mq_name())


async def test_already_cancelled(mq_name: Names) -> None:
    """In a cancelled scope, send sends nothing and receive takes nothing."""
    async with _create(mq_name) as mq:
        await _expect_cancelled(mq.send, MARKER)
        await _expect_cancelled(mq.receive)
        await mq.send(b"kept")
        await _expect_cancelled(mq.receive)
        await _expect_cancelled(mq.receive_with_priority)
        await _expect_cancelled(aipc.open_message_queue, mq.name)
        assert _drain(mq) == [b"kept"]


# ---- cancellation ------------------------------------------------------------


async def test_cancelled_waiting_receive_loses_nothing(mq_name: Names) -> None:
    async with _create(mq_name) as mq:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(mq.receive)
                await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
            await mq.send(b"after")
            # the next receive gets it: the cancelled one left nothing behind
            assert await mq.receive() == b"after"
            with anyio.move_on_after(0.05) as scope:
                await mq.receive()
            assert scope.cancelled_caught


async def test_cancelled_waiting_send_sends_nothing(mq_name: Names) -> None:
    async with _create(mq_name, max_messages=1) as mq:
        await mq.send(b"full")
        completed = False
        async with anyio.create_task_group() as tg:

            async def send_marker() -> None:
                nonlocal completed
                await mq.send(MARKER)
                completed = True

            tg.start_soon(send_marker)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert not completed
        assert _drain(mq) == [b"full"]
        assert mq.statistics().messages_sent == 1


async def test_cancel_racing_receive(mq_name: Names) -> None:
    """A waiting receive cancelled 0 to 3 scheduling rounds after a message
    arrives: the message is received exactly once, by it or by the next."""
    async with _create(mq_name) as mq:
        for i in range(32):
            message = b"%d" % i
            got: list[bytes] = []

            async def receive_one(
                got: list[bytes],
                *,
                task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
            ) -> None:
                task_status.started()
                got.append(await mq.receive())

            async with anyio.create_task_group() as tg:
                await tg.start(receive_one, got)
                await mq.send(message)
                for _ in range(i % 4):
                    await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()
            assert got + _drain(mq) == [message], f"round {i}"


async def test_cancel_racing_receive_plain_asyncio(mq_name: Names) -> None:
    """asyncio only: a plain ``Task.cancel()`` (as ``asyncio.timeout`` does) may
    land after the loop completed the task's wait and before the task ran; the
    message is still received exactly once."""
    if sniffio.current_async_library() != "asyncio":
        pytest.skip("a plain Task.cancel() exists on asyncio only")
    import asyncio

    loop = asyncio.get_running_loop()
    async with _create(mq_name) as mq:
        for i in range(32):
            message = b"%d" % i
            task = loop.create_task(mq.receive())
            await asyncio.sleep(0)  # the task runs until it waits
            await mq.send(message)
            for _ in range(i % 4):
                await asyncio.sleep(0)
            loop.call_soon(task.cancel)
            await asyncio.wait({task})
            got = [] if task.cancelled() else [task.result()]
            assert got + _drain(mq) == [message], f"round {i}"


async def test_cancel_racing_send(mq_name: Names) -> None:
    """A send waiting on a full queue, cancelled 0 to 3 rounds after a receive
    made room: the message is in the queue if and only if the send returned."""
    async with _create(mq_name, max_messages=1) as mq:
        for rounds in range(4):
            await mq.send(b"full")
            completed = False

            async def send_marker(
                *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                nonlocal completed
                task_status.started()
                await mq.send(MARKER)
                completed = True

            async with anyio.create_task_group() as tg:
                await tg.start(send_marker)
                assert await mq.receive() == b"full"
                for _ in range(rounds):
                    await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()
            assert _drain(mq) == ([MARKER] if completed else []), f"rounds={rounds}"


# ---- closing -----------------------------------------------------------------


async def test_close_wakes_waiters(mq_name: Names) -> None:
    mq = _create(mq_name, max_messages=1)
    other = await aipc.open_message_queue(mq.name)
    try:
        await other.send(b"full")
        errors: list[str] = []

        async def expect_closed(afn: Callable[[], object], what: str) -> None:
            try:
                await afn()  # type: ignore[misc]
            except anyio.ClosedResourceError:
                errors.append(what)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(expect_closed, lambda: other.send(b"x"), "send")
                await anyio.wait_all_tasks_blocked()
                await other.aclose()
            assert errors == ["send"]
            assert other.closed

            assert mq.receive_nowait() == b"full"
            async with anyio.create_task_group() as tg:
                tg.start_soon(expect_closed, mq.receive, "receive")
                await anyio.wait_all_tasks_blocked()
                mq.close()  # synchronous close wakes it too
            assert errors == ["send", "receive"]
        for call in (mq.receive, mq.receive_with_priority, lambda: mq.send(b"x")):
            with pytest.raises(anyio.ClosedResourceError):
                await call()
        for sync_call in (mq.receive_nowait, lambda: mq.send_nowait(b"x"), mq.fileno):
            with pytest.raises(anyio.ClosedResourceError):
                sync_call()
        with pytest.raises(anyio.ClosedResourceError):
            mq.attributes  # noqa: B018
        await mq.aclose()  # idempotent
        assert not mq.unlink()
        assert "closed" in repr(mq)
    finally:
        await other.aclose()
        await mq.aclose()
    assert _registry.mqueue_identity(mq.name) is None  # unlink_on_close


async def test_cancelled_aclose_still_closes(mq_name: Names) -> None:
    mq = _create(mq_name)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await mq.aclose()
    assert mq.closed
    assert _registry.mqueue_identity(mq.name) is None


async def test_close_keeps_the_queue_unless_asked(mq_name: Names) -> None:
    name = mq_name()
    mq = aipc.create_message_queue(name, max_messages=2, max_message_size=8)
    await mq.send(b"survives")
    await mq.aclose()
    assert not mq.owned
    assert not mq.unlink()  # no longer ours to judge: closed
    # the queue, its message and its record outlive the handle
    async with await aipc.open_message_queue(name) as again:
        assert await again.receive() == b"survives"
    assert [o.name for o in _registry.list_objects() if o.name == name] == [name]
    posix_ipc.unlink_message_queue(name)
    _registry.unregister("mqueue", name)


async def test_unlink_keeps_the_handle_working(mq_name: Names) -> None:
    async with _create(mq_name, unlink_on_close=False) as mq:
        assert mq.unlink()
        assert not mq.owned
        assert not mq.unlink()
        with pytest.raises(FileNotFoundError):
            await aipc.open_message_queue(mq.name)
        await mq.send(b"still")
        assert await mq.receive() == b"still"


async def test_unlink_never_removes_a_replacement(mq_name: Names) -> None:
    async with _create(mq_name) as mq:
        posix_ipc.unlink_message_queue(mq.name)
        # someone else's queue under the same name
        replacement = posix_ipc.MessageQueue(mq.name, posix_ipc.O_CREX)
        try:
            assert not mq.unlink()
            assert _registry.mqueue_identity(mq.name) == (
                os.fstat(replacement.mqd).st_dev,
                os.fstat(replacement.mqd).st_ino,
            )
        finally:
            replacement.close()
            replacement.unlink()


async def test_repr_and_statistics(mq_name: Names) -> None:
    async with _create(mq_name) as mq:
        await mq.send(b"abc")
        await mq.send(b"de")
        assert await mq.receive() == b"abc"
        assert mq.statistics() == aipc.MessageQueueStatistics(
            messages_sent=2,
            bytes_sent=5,
            messages_received=1,
            bytes_received=3,
            send_waits=0,
            receive_waits=0,
        )
        assert repr(mq) == (
            f"<MessageQueue {mq.name!r} fd={mq.fileno()} owned rw max_messages=4 "
            "max_message_size=64 sent=2 received=1>"
        )
        async with await aipc.open_message_queue(mq.name, write=False) as rx:
            assert repr(rx).startswith(f"<MessageQueue {mq.name!r} fd={rx.fileno()} r ")


# ---- the registry ------------------------------------------------------------


def test_clean_removes_the_queue_of_a_dead_owner(mq_name: Names) -> None:
    orphan, reused = mq_name(), mq_name()
    queues = []
    for name in (orphan, reused):
        queue = posix_ipc.MessageQueue(name, posix_ipc.O_CREX)
        st = os.fstat(queue.mqd)
        queue.close()
        _registry.register("mqueue", name, st.st_dev, st.st_ino)
        # a record as a crashed process would have left it
        path = _registry._record_path("mqueue", name)
        with open(path) as f:
            data = json.load(f)
        data["pid"], data["pid_start"] = 2**22 + 1, 12345
        with open(path, "w") as f:
            json.dump(data, f)
        queues.append(path)
    # the second name now belongs to a newer queue: never removed
    posix_ipc.unlink_message_queue(reused)
    newer = posix_ipc.MessageQueue(reused, posix_ipc.O_CREX)
    try:
        assert [o.name for o in _registry.clean(dry_run=True)] == [orphan]
        assert [o.name for o in _registry.clean()] == [orphan]
        assert _registry.mqueue_identity(orphan) is None
        assert _registry.mqueue_identity(reused) is not None
        assert not any(os.path.exists(path) for path in queues)
    finally:
        newer.close()
        newer.unlink()


# ---- limits ------------------------------------------------------------------


def _sysctl(name: str) -> int:
    with open(f"/proc/sys/fs/mqueue/{name}") as f:
        return int(f.read())


def test_limits_up_front(mq_name: Names) -> None:
    """Beyond msg_max or msgsize_max (or the hard ceilings with
    CAP_SYS_RESOURCE): LimitExceededError before the kernel is asked; at the
    limit, the kernel agrees."""
    if _mqueue._has_sys_resource():
        limits = {"max_messages": (65536, "HARD_MSGMAX")}
        limits["max_message_size"] = (16 * 1024 * 1024, "HARD_MSGSIZEMAX")
    else:
        limits = {
            "max_messages": (_sysctl("msg_max"), "/proc/sys/fs/mqueue/msg_max"),
            "max_message_size": (
                _sysctl("msgsize_max"),
                "/proc/sys/fs/mqueue/msgsize_max",
            ),
        }
    for argument, (limit, limit_name) in limits.items():
        sizes = {"max_messages": 1, "max_message_size": 1, argument: limit + 1}
        name = mq_name()
        with pytest.raises(
            aipc.LimitExceededError,
            match=re.escape(f"{argument}={limit + 1} exceeds {limit_name} ({limit})"),
        ) as caught:
            aipc.create_message_queue(name, **sizes)
        error = caught.value
        assert (error.argument, error.value, error.limit) == (
            argument,
            limit + 1,
            limit,
        )
        assert error.limit_name == limit_name
        assert _registry.mqueue_identity(name) is None
        sizes[argument] = limit
        soft = resource.getrlimit(resource.RLIMIT_MSGQUEUE)[0]
        if (
            _mqueue._queue_bytes(sizes["max_messages"], sizes["max_message_size"])
            < soft
        ):
            aipc.create_message_queue(name, **sizes, unlink_on_close=True).close()
    if not _mqueue._has_sys_resource():
        assert "sysctl fs.mqueue.msg_max=N" in str(caught.value) or (
            "sysctl fs.mqueue.msgsize_max=N" in str(caught.value)
        )


def test_rlimit_msgqueue_up_front(mq_name: Names) -> None:
    """A queue whose bytes alone exceed RLIMIT_MSGQUEUE is refused up front,
    with the kernel's formula; the same queue fits under a limit one byte
    larger (the kernel counts exactly that)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    cost = 10 * (100 + 96)
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (cost - 1, hard))
    try:
        name = mq_name()
        with pytest.raises(
            aipc.LimitExceededError,
            match=re.escape(
                f"max_messages * (max_message_size + 96)={cost} exceeds "
                f"RLIMIT_MSGQUEUE ({cost - 1}); RLIMIT_MSGQUEUE counts the bytes"
            ),
        ) as caught:
            aipc.create_message_queue(name, max_messages=10, max_message_size=100)
        assert "ulimit -q" in str(caught.value)
        assert caught.value.limit_name == "RLIMIT_MSGQUEUE"
        assert _registry.mqueue_identity(name) is None
    finally:
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (soft, hard))


def test_rlimit_msgqueue_with_other_queues(mq_name: Names) -> None:
    """RLIMIT_MSGQUEUE counts all of the user's queues: the kernel's EMFILE
    for it becomes a LimitExceededError that says so. (Other processes of this
    user may hold queues too, so fewer than three may fit.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    cost = 10 * (100 + 96)
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (3 * cost + cost // 2, hard))
    queues: list[aipc.MessageQueue] = []
    try:
        with pytest.raises(aipc.LimitExceededError) as caught:
            for _ in range(5):
                queues.append(
                    aipc.create_message_queue(
                        mq_name(), max_messages=10, max_message_size=100
                    )
                )
        assert len(queues) <= 3
        assert str(caught.value).startswith(
            f"max_messages * (max_message_size + 96)={cost} exceeds RLIMIT_MSGQUEUE "
            f"({3 * cost + cost // 2}); this user's other queues already take more "
            f"than {2 * cost + cost // 2} of its {3 * cost + cost // 2} bytes"
        )
    finally:
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (soft, hard))
        for mq in queues:
            mq.unlink()
            mq.close()


CHILD_PRIVATE_NAMESPACE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x08000000) != 0:  # CLONE_NEWIPC: sysctls of our own
    print("skip: unshare(CLONE_NEWIPC):", os.strerror(ctypes.get_errno()))
    sys.exit(0)
for key, value in (("msg_max", 4), ("msgsize_max", 128), ("queues_max", 2)):
    with open("/proc/sys/fs/mqueue/" + key, "w") as f:
        f.write(str(value))

# drop CAP_SYS_RESOURCE, which lifts these limits, as an ordinary user has none
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [(f, ctypes.c_uint32) for f in ("effective", "permitted", "inheritable")]
header, data = Header(0x20080522, 0), (Data * 2)()
assert libc.capget(ctypes.byref(header), data) == 0
data[0].effective &= ~(1 << 24)
data[0].permitted &= ~(1 << 24)
assert libc.capset(ctypes.byref(header), data) == 0

import aipc
from aipc import _mqueue
assert not _mqueue._has_sys_resource()
names = sys.argv[1:]
for sizes in ({"max_messages": 5, "max_message_size": 1},
              {"max_messages": 1, "max_message_size": 129}):
    try:
        aipc.create_message_queue(names[0], **sizes)
    except aipc.LimitExceededError as exc:
        print(exc)
# at the limits the kernel agrees; the third queue is one too many
first = aipc.create_message_queue(
    names[0], max_messages=4, max_message_size=128, unlink_on_close=True)
second = aipc.create_message_queue(
    names[1], max_messages=1, max_message_size=1, unlink_on_close=True)
try:
    aipc.create_message_queue(names[2], max_messages=1, max_message_size=1)
except aipc.LimitExceededError as exc:
    print(exc)
first.close()
second.close()
print("done")
"""


async def test_limits_in_a_private_ipc_namespace(mq_name: Names) -> None:
    """msg_max, msgsize_max and queues_max as the kernel applies them to a
    process without CAP_SYS_RESOURCE, in an IPC namespace of the child's own
    (so that lowering them touches nothing else)."""
    names = [mq_name() for _ in range(3)]
    async with child_process(CHILD_PRIVATE_NAMESPACE, args=names) as (_, stdout):
        first = await read_line(stdout)
        if first.startswith(b"skip:"):
            pytest.skip(first.decode())
        lines = [first] + [await read_line(stdout) for _ in range(3)]
    assert lines[0].startswith(
        b"max_messages=5 exceeds /proc/sys/fs/mqueue/msg_max (4); raise it as root "
        b"with 'sysctl fs.mqueue.msg_max=N'"
    )
    assert lines[1].startswith(
        b"max_message_size=129 exceeds /proc/sys/fs/mqueue/msgsize_max (128); "
        b"raise it as root with 'sysctl fs.mqueue.msgsize_max=N'"
    )
    assert lines[2].startswith(
        b"queues in this IPC namespace=3 exceeds /proc/sys/fs/mqueue/queues_max "
        b"(2); unlink queues that are no longer used"
    )
    assert lines[3] == b"done"


# ---- other processes ---------------------------------------------------------

CHILD = """
import sys, anyio, aipc
from tests._helpers import run_backend
async def main():
    name, backend, direction = sys.argv[1:]
    async with await aipc.open_message_queue(name) as mq:
        print("ready", flush=True)
        if direction == "receive":
            got = [await mq.receive_with_priority() for _ in range(20)]
            print(repr(got), flush=True)
        else:
            for i in range(5):
                await mq.send(b"child %d" % i, priority=i)
            print("sent", flush=True)
            await anyio.sleep(60)
run_backend(main, sys.argv[2])
"""


async def test_parent_sends_child_receives(mq_name: Names, backend_id: str) -> None:
    async with (
        _create(mq_name, max_messages=2) as mq,
        child_process(CHILD, args=[mq.name, backend_id, "receive"]) as (_, stdout),
    ):
        assert await read_line(stdout) == b"ready"
        with anyio.fail_after(10):
            for i in range(20):  # more than the queue holds: the child makes room
                await mq.send(b"parent %d" % i, priority=7)
        assert (
            await read_line(stdout)
            == repr([(b"parent %d" % i, 7) for i in range(20)]).encode()
        )
        # (whether a send had to wait depends on how fast the child drains;
        # test_back_pressure checks the waiting deterministically)


async def test_child_sends_parent_receives(mq_name: Names, backend_id: str) -> None:
    async with (
        _create(mq_name, max_messages=8) as mq,
        child_process(CHILD, args=[mq.name, backend_id, "send"]) as (proc, stdout),
    ):
        assert await read_line(stdout) == b"ready"
        assert await read_line(stdout) == b"sent"
        with anyio.fail_after(5):
            got = [await mq.receive_with_priority() for _ in range(5)]
        assert got == [(b"child %d" % i, i) for i in reversed(range(5))]
        # no peer to lose: the child's death does not touch the queue
        proc.kill()
        await proc.wait()
        await mq.send(b"still here")
        assert await mq.receive() == b"still here"
