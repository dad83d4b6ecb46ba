"""Signal receivers and sending: real signals from real processes, on every backend.

conftest.py blocks the test signals in the main thread before any thread
starts (as docs/signals.md recommends), so their "previous" mask is blocked;
the tests of the unblocked case unblock them in the main thread themselves.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import anyio
import pytest

import aipc
from aipc._core import _sys

from ._helpers import child_process, read_line

pytestmark = pytest.mark.anyio

RT = signal.SIGRTMIN + 1


@contextmanager
def unblocked_with_handler(*signums: int) -> Iterator[list[int]]:
    """The signals unblocked in the main thread with a Python handler that
    records them (the "previous disposition" a receiver must restore)."""
    got: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    old = {sig: signal.signal(sig, handler) for sig in signums}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)
    try:
        yield got
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, signums)
        for sig, previous in old.items():
            signal.signal(sig, previous)


def blocked() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


SENDER = """
import os, sys, signal
import aipc
parent, signum, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with_value = sys.argv[4] == "value"
for i in range(count):
    while True:
        try:
            aipc.send_signal(parent, signum, i if with_value else None)
            break
        except BlockingIOError:  # the parent's queue is full: it catches up
            os.sched_yield()
print("sent", flush=True)
"""


async def send_from_child(signum: int, count: int, value: bool) -> int:
    """A child sends ``count`` signals to us; return its pid once it is done."""
    args = [str(os.getpid()), str(signum), str(count), "value" if value else "-"]
    async with child_process(SENDER, args=args) as (proc, stdout):
        assert await read_line(stdout, timeout=30) == b"sent"
        return proc.pid


async def test_sender_pid_uid_and_payload_round_trip() -> None:
    with aipc.open_signal_receiver(signal.SIGUSR1, RT) as received:
        pid = await send_from_child(RT, 3, value=True)
        pid_user = await send_from_child(signal.SIGUSR1, 1, value=False)
        with anyio.fail_after(5):
            infos = [await received.receive() for _ in range(4)]
    # the kernel hands out standard signals before realtime ones
    usr1, *rts = infos
    assert (usr1.signum, usr1.pid, usr1.uid) == (signal.SIGUSR1, pid_user, os.getuid())
    assert (usr1.code, usr1.value) == (_sys.SI_USER, None)
    assert usr1.signum is signal.SIGUSR1
    assert usr1.name == "SIGUSR1"
    assert [(i.signum, i.pid, i.code, i.value) for i in rts] == [
        (RT, pid, _sys.SI_QUEUE, v) for v in range(3)
    ]
    assert rts[0].name == "SIGRTMIN+1"
    assert received.statistics() == aipc.SignalReceiverStatistics(4, 0, 0, 0)


async def test_async_iteration_and_async_with() -> None:
    async with aipc.open_signal_receiver(RT) as received:
        values = [7, -7, aipc.SIGNAL_VALUE_MAX, aipc.SIGNAL_VALUE_MIN]
        for value in values:
            aipc.send_signal(os.getpid(), RT, value)
        got = []
        with anyio.fail_after(5):
            async for info in received:
                got.append(info.value)
                if len(got) == len(values):
                    break
    assert got == values
    assert received.closed


async def test_standard_signals_coalesce_realtime_ones_queue() -> None:
    with aipc.open_signal_receiver(signal.SIGUSR2, RT) as received:
        await send_from_child(signal.SIGUSR2, 5, value=False)
        await send_from_child(RT, 5, value=False)
        with anyio.fail_after(5):
            infos = [await received.receive() for _ in range(6)]
        with pytest.raises(anyio.WouldBlock):
            received.receive_nowait()
    assert [i.signum for i in infos] == [signal.SIGUSR2] + [RT] * 5


async def test_a_queued_standard_signal_coalesces_in_the_receiver_too() -> None:
    with aipc.open_signal_receiver(signal.SIGUSR2) as received:
        with aipc.open_signal_receiver(signal.SIGUSR2) as other:
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGUSR2)
                with anyio.fail_after(5):
                    await other.receive()  # reads the kernel's one for both
            assert received.statistics().coalesced == 2
        with anyio.fail_after(5):
            assert (await received.receive()).signum == signal.SIGUSR2
        with pytest.raises(anyio.WouldBlock):
            received.receive_nowait()


async def test_nested_receivers_each_get_every_signal() -> None:
    with aipc.open_signal_receiver(RT) as outer:
        with aipc.open_signal_receiver(RT, signal.SIGUSR1) as inner:
            aipc.send_signal(os.getpid(), RT, 1)
            with anyio.fail_after(5):
                assert (await inner.receive()).value == 1
        # leaving the inner one changes nothing for the outer one
        aipc.send_signal(os.getpid(), RT, 2)
        with anyio.fail_after(5):
            assert [(await outer.receive()).value for _ in range(2)] == [1, 2]


async def test_concurrent_receivers_in_tasks_each_get_every_signal() -> None:
    results: dict[str, list[int | None]] = {"a": [], "b": [], "c": []}
    with (
        aipc.open_signal_receiver(RT) as a,
        aipc.open_signal_receiver(RT) as b,
        aipc.open_signal_receiver(RT) as c,
    ):

        async def collect(name: str, received: aipc.SignalReceiver) -> None:
            for _ in range(3):
                results[name].append((await received.receive()).value)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for name, received in (("a", a), ("b", b), ("c", c)):
                    tg.start_soon(collect, name, received)
                await anyio.wait_all_tasks_blocked()
                await send_from_child(RT, 3, value=True)
    assert results == {"a": [0, 1, 2], "b": [0, 1, 2], "c": [0, 1, 2]}


async def test_the_reader_leaving_hands_over_to_a_waiting_receiver() -> None:
    with (
        aipc.open_signal_receiver(RT) as first,
        aipc.open_signal_receiver(RT) as second,
    ):
        got: list[int | None] = []
        reader_scope = anyio.CancelScope()

        async def read_first() -> None:
            with reader_scope:
                await first.receive()

        async def read_second() -> None:
            got.append((await second.receive()).value)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_first)  # becomes the reader
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(read_second)
                await anyio.wait_all_tasks_blocked()
                reader_scope.cancel()
                await anyio.wait_all_tasks_blocked()
                aipc.send_signal(os.getpid(), RT, 5)
        assert got == [5]
        # the cancelled receive took nothing: the record is still queued
        assert first.receive_nowait().value == 5


async def test_close_wakes_a_waiting_receive() -> None:
    with aipc.open_signal_receiver(RT) as other:
        received = aipc.open_signal_receiver(RT).__enter__()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def wait_closed(r: aipc.SignalReceiver) -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await r.receive()

                tg.start_soon(wait_closed, received)  # the reader
                tg.start_soon(wait_closed, other)  # a follower, closed below
                await anyio.wait_all_tasks_blocked()
                received.close()
                other.close()
        received.close()  # idempotent


async def test_previous_handler_and_mask_come_back_exactly() -> None:
    for sig in (signal.SIGUSR1, RT):
        # blocked before (conftest): stays blocked, with the same disposition
        action = _sys.save_sigaction(sig)
        handler = signal.getsignal(sig)
        with aipc.open_signal_receiver(sig):
            assert signal.getsignal(sig) is not handler
            with aipc.open_signal_receiver(sig):
                pass
            assert sig in blocked()
        assert sig in blocked()
        assert signal.getsignal(sig) == handler
        assert _sys.save_sigaction(sig) == action
        # unblocked before, with a Python handler
        with unblocked_with_handler(sig):
            handler = signal.getsignal(sig)
            action = _sys.save_sigaction(sig)
            with aipc.open_signal_receiver(sig), aipc.open_signal_receiver(sig):
                assert sig in blocked()
            assert sig not in blocked()
            assert signal.getsignal(sig) is handler
            assert _sys.save_sigaction(sig) == action


async def test_pending_signals_go_to_the_previous_disposition_at_last_close() -> None:
    with unblocked_with_handler(signal.SIGUSR1, RT) as handled:
        with aipc.open_signal_receiver(signal.SIGUSR1, RT) as received:
            # one left in the kernel, one read into the receiver but not taken
            aipc.send_signal(os.getpid(), RT, 9)
            with anyio.fail_after(5):
                assert received.receive_nowait().signum == RT
            os.kill(os.getpid(), signal.SIGUSR1)
            aipc.send_signal(os.getpid(), RT, 10)
            assert handled == []
            received.receive_nowait()  # reads both, takes SIGUSR1
            assert received.statistics().queued == 1
            os.kill(os.getpid(), signal.SIGUSR1)  # stays in the kernel
        # Python has run the handlers by now: at its first check after the
        # unblocking call returned, in this thread
        assert sorted(handled) == sorted([signal.SIGUSR1, RT])


async def test_a_signal_caught_by_a_thread_that_does_not_block_it() -> None:
    ready, done = threading.Event(), threading.Event()

    def unblocked_thread() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR2])
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=unblocked_thread)
    thread.start()
    try:
        ready.wait(10)
        with aipc.open_signal_receiver(signal.SIGUSR2) as received:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    got: list[aipc.SignalInfo] = []

                    async def receive() -> None:
                        got.append(await received.receive())

                    tg.start_soon(receive)
                    # the loop sleeps in epoll_wait: only the wakeup fd wakes it
                    await anyio.wait_all_tasks_blocked()
                    assert thread.ident is not None
                    signal.pthread_kill(thread.ident, signal.SIGUSR2)
            assert got == [
                aipc.SignalInfo(signal.SIGUSR2, None, None, None, None, None)
            ]
            assert received.statistics().without_sender == 1
            # the next one from the same process is a real tgkill again
            signal.raise_signal(signal.SIGUSR2)
            with anyio.fail_after(5):
                info = await received.receive()
            assert (info.pid, info.code) == (os.getpid(), _sys.SI_TKILL)
    finally:
        done.set()
        thread.join()


async def test_ten_thousand_realtime_signals_in_order_while_receivers_churn() -> None:
    count = 10_000
    other_rt = RT + 1
    with aipc.open_signal_receiver(RT) as received:
        values: list[int | None] = []
        churned = 0
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:

                async def churn() -> None:
                    nonlocal churned
                    while True:
                        with (
                            aipc.open_signal_receiver(RT),
                            aipc.open_signal_receiver(other_rt),
                        ):
                            await anyio.sleep(0)
                        churned += 1

                async def send() -> None:
                    args = [str(os.getpid()), str(RT), str(count), "value"]
                    async with child_process(SENDER, args=args) as (proc, stdout):
                        pids.add(proc.pid)
                        await read_line(stdout, timeout=60)

                pids: set[int] = set()
                tg.start_soon(churn)
                tg.start_soon(send)
                while len(values) < count:
                    info = await received.receive()
                    pids.add(info.pid or 0)
                    values.append(info.value)
                tg.cancel_scope.cancel()
    assert values == list(range(count))
    assert len(pids) == 1
    assert churned > 0
    assert received.statistics().without_sender == 0


SIGCHLD_CHILD = """
import signal, sys
import anyio
import aipc
from tests._helpers import run_backend

async def main():
    # Closed before waiting on purpose: on uvloop the loop's own child watcher
    # needs SIGCHLD to reap, and the receiver takes it while open; at close
    # aipc leaves uvloop's handler in place and raises one SIGCHLD for it.
    received = aipc.open_signal_receiver(signal.SIGCHLD).__enter__()
    try:
        code = "import sys; sys.exit(3)"
        async with await anyio.open_process([sys.executable, "-c", code]) as proc:
            with anyio.fail_after(10):
                info = await received.receive()
            received.close()
            with anyio.fail_after(10):
                await proc.wait()
    finally:
        received.close()
    print(info.pid == proc.pid, info.code, info.status, proc.returncode, flush=True)

run_backend(main, sys.argv[1])
"""


async def test_sigchld_carries_the_child_status(backend_id: str) -> None:
    # In a fresh interpreter: SIGCHLD cannot be blocked in the suite's threads
    # (uvloop reaps on it), so here a worker thread left by an earlier test
    # could take it, and it would arrive without its sender and status.
    async with child_process(SIGCHLD_CHILD, args=[backend_id]) as (_proc, stdout):
        line = await read_line(stdout, timeout=30)
    assert line.split() == [b"True", str(os.CLD_EXITED).encode(), b"3", b"3"]


async def test_receiver_misuse_is_a_clear_error() -> None:
    received = aipc.open_signal_receiver(RT)
    with pytest.raises(RuntimeError, match="enter the receiver first"):
        await received.receive()
    with received, pytest.raises(RuntimeError, match="entered only once"):
        received.__enter__()
    with pytest.raises(anyio.ClosedResourceError):
        await received.receive()
    with pytest.raises(anyio.ClosedResourceError):
        received.receive_nowait()


@pytest.mark.parametrize(
    ("signals", "message"),
    [
        ((), "at least one signal"),
        ((signal.SIGKILL,), "SIGKILL cannot be caught"),
        ((signal.SIGSTOP,), "SIGSTOP cannot be caught"),
        ((signal.SIGSEGV,), "SIGSEGV is a synchronous fault signal"),
        ((0,), "signals=0 is out of range"),
        ((signal.NSIG,), f"signals={signal.NSIG} is out of range"),
        ((signal.SIGRTMIN - 1,), "keeps the realtime signals below SIGRTMIN"),
    ],
)
async def test_bad_signals_raise_value_error(
    signals: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        aipc.open_signal_receiver(*signals)
    with pytest.raises(TypeError, match="signals must be an int"):
        aipc.open_signal_receiver("SIGUSR1")  # type: ignore[arg-type]


async def test_receivers_belong_to_the_main_thread() -> None:
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            aipc.open_signal_receiver(RT)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert "main thread" in str(errors[0])


async def test_send_signal_errors() -> None:
    with pytest.raises(LimitExceededError_, match=r"value=2147483648 exceeds"):
        aipc.send_signal(os.getpid(), RT, 2**31)
    with pytest.raises(LimitExceededError_, match=r"value=-2147483649 exceeds"):
        aipc.send_signal(os.getpid(), RT, -(2**31) - 1)
    with pytest.raises(TypeError, match="value must be an int or None"):
        aipc.send_signal(os.getpid(), RT, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="signum=99 is out of range"):
        aipc.send_signal(os.getpid(), 99)
    with pytest.raises(ValueError, match="target must be a pid > 0"):
        aipc.send_signal(0, RT)
    with pytest.raises(TypeError, match="target must be a pid"):
        aipc.send_signal("1", RT)  # type: ignore[arg-type]
    async with child_process("print('up', flush=True)") as (proc, stdout):
        await read_line(stdout)
        await proc.wait()
        gone = proc.pid
    for value in (None, 1):
        with pytest.raises(ProcessLookupError):
            aipc.send_signal(gone, RT, value)


LimitExceededError_ = aipc.LimitExceededError
