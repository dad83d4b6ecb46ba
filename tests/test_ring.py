"""Shared-memory rings: messages, leases, batches, byte streams, hand-off,
rendezvous, peer death and the wake-up protocol, on every backend."""

from __future__ import annotations

import array
import fcntl
import hashlib
import os
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from anyio.abc import ByteReceiveStream, ByteSendStream

import aipc
from aipc import _ring

from . import _conformance, _trio_adapter
from ._helpers import aipc_child, read_line

pytestmark = pytest.mark.anyio

SMALL = 4096

# the prelude of every child: the backend is argv[1]
CHILD = """
import sys, os, time, anyio, aipc
from tests._helpers import run_backend
backend = sys.argv[1]
"""


@pytest.fixture(autouse=True, params=["compiled", "python"])
def ring_steps(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: with the compiled helper's steps (aipc/_ringc.c),
    and with the Python steps, which are what an install without a C
    compiler runs. In the second, child processes import aipc with
    AIPC_PURE_PYTHON=1, so that they run the pure Python build as it is."""
    if request.param == "compiled":
        if _ring._ringc is None:
            pytest.skip("the C helper is not built (no compiler at install?)")
    else:
        monkeypatch.setattr(_ring, "_FAST", False)
        monkeypatch.setenv("AIPC_PURE_PYTHON", "1")
    return str(request.param)


def test_pure_python_build_is_what_children_get(ring_steps: str) -> None:
    """The switch the Python variant relies on: with AIPC_PURE_PYTHON=1 a
    fresh import has no compiled base class and no compiled steps."""
    import subprocess
    import sys

    code = (
        "from aipc import _ring; "
        "print(_ring._RingBase is object, _ring._FAST, _ring._ringc is None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    if ring_steps == "python":
        assert out == ["True", "False", "True"]
    else:
        assert out == ["False", "True", "False"]


def _shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def _new_aipc_shm(before: set[str]) -> set[str]:
    """/dev/shm entries made since ``before`` that could be aipc's: not
    another test run's (those carry another pid)."""
    mine = f"aipc-test-{os.getpid()}-"
    return {
        name
        for name in _shm_entries() - before
        if "aipc" in name and (not name.startswith("aipc-test-") or mine in name)
    }


# ---------------------------------------------------------------------------
# arguments and basics


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="power of two of at least 4096 bytes"):
        aipc.create_ring(5000)
    with pytest.raises(ValueError, match="power of two of at least 4096 bytes"):
        aipc.create_ring(2048)
    with pytest.raises(TypeError, match="capacity must be an int, not float"):
        aipc.create_ring(4096.0)  # type: ignore[arg-type]
    with pytest.raises(aipc.LimitExceededError, match="2\\*\\*40"):
        aipc.create_byte_ring(1 << 41)
    with pytest.raises(ValueError, match="spin_us must be between 0 and 1000000"):
        aipc.create_ring(SMALL, spin_us=-1)
    with pytest.raises(TypeError, match="spin_us must be a number, not str"):
        aipc.create_ring(SMALL, spin_us="1")  # type: ignore[arg-type]


def test_unsupported_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weakly ordered machines are refused with a clear error (see _ring)."""
    monkeypatch.setattr(_ring, "_SUPPORTED", False)
    monkeypatch.setattr(_ring.platform, "machine", lambda: "aarch64")
    with pytest.raises(
        NotImplementedError, match=r"\(TSO\) and this machine is 'aarch64'"
    ):
        aipc.create_ring()
    with pytest.raises(NotImplementedError):
        aipc.create_ring_stream_pair()


def test_segment_is_a_sealed_memfd() -> None:
    """Nothing of a ring is ever in /dev/shm: the memory is a sealed memfd."""
    rx, tx = aipc.create_ring(SMALL)
    try:
        for end in (rx, tx):
            fd = end._segment.fileno()
            assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:aipc")
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_SHRINK
            assert seals & fcntl.F_SEAL_GROW
    finally:
        rx.close()
        tx.close()


async def test_send_receive_sizes() -> None:
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        assert rx.max_message_size == tx.max_message_size == SMALL // 2 - 8
        sizes = [0, 1, 7, 8, 9, 100, SMALL // 2 - 8]
        # several rounds, so that records wrap around the end of the area
        for _ in range(6):
            for n in sizes:
                payload = os.urandom(n)
                with anyio.fail_after(5):
                    await tx.send(payload)
                    assert await rx.receive() == payload
        await tx.send(bytearray(b"ba"))
        await tx.send(memoryview(array.array("I", [1, 2])))
        assert await rx.receive() == b"ba"
        assert await rx.receive() == array.array("I", [1, 2]).tobytes()
        with pytest.raises(aipc.LimitExceededError, match="max_message_size") as info:
            await tx.send(bytes(SMALL // 2 - 7))
        assert info.value.limit == SMALL // 2 - 8
        with pytest.raises(TypeError, match="bytes-like object, not str"):
            await tx.send("text")  # type: ignore[arg-type]
        stats = tx.statistics()
        assert stats.messages == 6 * len(sizes) + 2
        assert stats.capacity == SMALL
        assert stats.used == 0
        assert "RingSender messages capacity=4096" in repr(tx)
    assert "closed" in repr(rx)


async def test_back_pressure_and_end_of_stream() -> None:
    """A full ring makes the sender wait; closing it ends the stream after
    everything was received."""
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        sent = 0
        while True:
            try:
                tx.send_nowait(b"m" * 100)
            except anyio.WouldBlock:
                break
            sent += 1
        assert sent == SMALL // (8 + 104)  # header + payload padded to 8

        async def send_more() -> None:
            for i in range(200):
                await tx.send(b"%d" % i)
            await tx.aclose()

        got = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_more)
                await anyio.wait_all_tasks_blocked()
                assert tx.statistics().waits == 1
                async for item in rx:
                    got.append(item)
        assert got == [b"m" * 100] * sent + [b"%d" % i for i in range(200)]
        with pytest.raises(anyio.EndOfStream):
            await rx.receive()
        with pytest.raises(anyio.EndOfStream):
            rx.receive_nowait()


async def test_receiver_closed_breaks_sender() -> None:
    rx, tx = aipc.create_ring(SMALL)
    async with tx:
        while True:
            try:
                tx.send_nowait(b"")  # 8-byte records fill it to the last byte
            except anyio.WouldBlock:
                break
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def blocked_send() -> None:
                    with pytest.raises(anyio.BrokenResourceError, match="closed"):
                        await tx.send(b"x")

                tg.start_soon(blocked_send)
                await anyio.wait_all_tasks_blocked()
                await rx.aclose()
        with pytest.raises(anyio.BrokenResourceError):
            await tx.send(b"x")


async def test_close_wakes_own_waiters() -> None:
    rx, tx = aipc.create_ring(SMALL)
    async with tx:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def blocked_receive() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await rx.receive()

                tg.start_soon(blocked_receive)
                await anyio.wait_all_tasks_blocked()
                await rx.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await rx.receive()
        with pytest.raises(anyio.BrokenResourceError):
            await tx.send(b"x")
    with pytest.raises(anyio.ClosedResourceError):
        await tx.send(b"x")
    await tx.aclose()  # idempotent


async def test_sleeps_in_a_row_each_wake_on_the_next_message() -> None:
    # a receiver that sleeps, wakes, takes and sleeps again, many times: on
    # trio a wake-up leaves the doorbell's count for the next sleep to drain
    # (RingReceiver._sleep_trio), which must then still sleep and wake for
    # the next message, each time in a new generation
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        with anyio.fail_after(10):
            for i in range(50):
                got: list[bytes] = []
                async with anyio.create_task_group() as tg:

                    async def receiver(got: list[bytes]) -> None:
                        got.append(await rx.receive())

                    tg.start_soon(receiver, got)
                    await anyio.wait_all_tasks_blocked()
                    await tx.send(b"%d" % i)
                assert got == [b"%d" % i]
        stats = rx.statistics()
        assert stats.waits >= 50  # each receive slept
        assert stats.messages == 50


async def test_busy() -> None:
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(rx.receive)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(anyio.BusyResourceError):
                    await rx.receive()
                with pytest.raises(anyio.BusyResourceError):
                    await rx.receive_many()
                tg.cancel_scope.cancel()


async def test_cancellation_takes_and_sends_nothing() -> None:
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        await tx.send(b"first")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await rx.receive()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await tx.send(b"never")
        # the zero-copy forms too: nothing lent or taken, neither end busy
        with anyio.CancelScope() as scope:
            scope.cancel()
            await rx.receive_lease()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await tx.loan(5)
        # a receive cancelled while it waits took nothing either
        with anyio.fail_after(5):
            assert await rx.receive() == b"first"
            with anyio.move_on_after(0.05):
                await rx.receive()
        # a send cancelled while it waits for room sent nothing
        while True:
            try:
                tx.send_nowait(b"")  # 8-byte records fill it to the last byte
            except anyio.WouldBlock:
                break
        with anyio.move_on_after(0.05):
            await tx.send(b"never")
        items = await rx.receive_many(SMALL)
        assert items == [b""] * (SMALL // 8)
        with pytest.raises(anyio.WouldBlock):
            rx.receive_nowait()


def _fill(tx: aipc.RingSender) -> None:
    """Send 1000-byte messages until the ring has no room for another."""
    while True:
        try:
            tx.send_nowait(bytes(1000))
        except anyio.WouldBlock:
            return


@contextmanager
def _after(go: threading.Event, action: Callable[[], object]) -> Iterator[None]:
    """Run ``action`` in a thread once ``go`` is set (set on exit at the
    latest); the thread is joined on exit."""

    def run() -> None:
        go.wait(10)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        go.set()
        thread.join()


async def test_spinning_receive_yields_before_it_spins(
    anyio_backend_name: str,
) -> None:
    # the schedule point comes first, while the ring is empty; a message the
    # spin then finds is returned without another pass of the event loop
    rx, tx = aipc.create_ring(SMALL, spin_us=1_000_000)  # the most allowed
    go = threading.Event()
    with _after(go, lambda: tx.send_nowait(b"spun")):
        async with rx, tx, anyio.create_task_group() as tg:
            # runs in the receive's own yield, before its spin
            tg.start_soon(_set_event, go)
            with anyio.fail_after(10):
                assert await _conformance._checkpointed(rx.receive) == b"spun"
            stats = rx.statistics()
            if anyio_backend_name != "trio":
                # asyncio runs the woken task after the receive's own yield;
                # trio may run the receive first (it shuffles a batch), which
                # then spins before the thread can send, and sleeps
                assert (stats.spins, stats.waits) == (1, 0)
            assert stats.spins + stats.waits == 1


async def _set_event(event: Any) -> None:
    event.set()


async def test_spinning_send_finds_room() -> None:
    # a sender waiting for room spins first; a receive in another thread,
    # let go only once the spin has begun, frees the room the spin finds
    rx, tx = aipc.create_ring(SMALL, spin_us=1_000_000)
    _fill(tx)
    go = threading.Event()
    taken: list[bytes] = []
    real = tx._ready  # what the spin repeats

    def spinning() -> bool:
        go.set()
        return real()

    tx._ready = spinning  # type: ignore[method-assign]
    with _after(go, lambda: taken.append(rx.receive_nowait())):
        async with rx, tx:
            with anyio.fail_after(10):
                await tx.send(b"x" * 1000)
            stats = tx.statistics()
            assert (stats.spins, stats.waits) == (1, 0)
            assert taken == [bytes(1000)]
            assert (await rx.receive_many())[-1] == b"x" * 1000


async def test_spin_that_finds_nothing_sleeps() -> None:
    # nothing in this process can free room during a synchronous spin: it
    # ends after its budget, and the sender sleeps until a receive rings it
    rx, tx = aipc.create_ring(SMALL, spin_us=50)
    _fill(tx)
    async with rx, tx, anyio.create_task_group() as tg:
        tg.start_soon(tx.send, b"x" * 1000)
        with anyio.fail_after(10):
            await anyio.wait_all_tasks_blocked()
            stats = tx.statistics()
            assert (stats.spins, stats.waits) == (0, 1)
            assert rx.receive_nowait() == bytes(1000)  # rings the sender
            while (item := await rx.receive()) == bytes(1000):
                pass
            assert item == b"x" * 1000


async def test_batches() -> None:
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        items = [b"%d" % i * (i % 7 * 20) for i in range(100)]
        sent = tx.send_many_nowait(items)
        assert 0 < sent < 100
        assert tx.statistics().messages == sent
        got = await rx.receive_many(max_items=10)
        assert got == items[:10]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def send_rest() -> None:
                    await tx.send_many(items[sent:])
                    await tx.send_many([])
                    await tx.aclose()

                tg.start_soon(send_rest)
                while True:
                    try:
                        got += await rx.receive_many()
                    except anyio.EndOfStream:
                        break
        assert got == items
        with pytest.raises(ValueError, match="max_items must be at least 1"):
            await rx.receive_many(0)


async def test_batch_records_every_way_of_receiving() -> None:
    # send_many packs runs of messages into batch records; their messages are
    # taken one at a time, several at a time or lent, in order, across
    # wrap-arounds, and counted one by one
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        assert tx.send_many_nowait([b"a", b"bb", b"", b"dddd"]) == 4
        assert rx._dq[0] & 3 == 3  # one batch record
        assert await rx.receive() == b"a"
        assert rx._hdr[_ring._W_RX_CURSOR] == 1
        assert await rx.receive_many() == [b"bb", b"", b"dddd"]
        assert rx._hdr[_ring._W_RX_CURSOR] == 0
        assert rx.statistics().used == 0
        rnd = random.Random(5)
        items = [bytes([i % 251]) * rnd.randrange(0, 200) for i in range(3000)]
        got: list[bytes] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:

                async def produce() -> None:
                    i = 0
                    while i < len(items):
                        k = rnd.randrange(1, 100)
                        await tx.send_many(items[i : i + k])
                        i += k
                    await tx.aclose()

                tg.start_soon(produce)
                while True:
                    way = rnd.randrange(3)
                    try:
                        if way == 0:
                            got.append(await rx.receive())
                        elif way == 1:
                            with await rx.receive_lease() as data:
                                got.append(bytes(data))
                        else:
                            got += await rx.receive_many(rnd.randrange(1, 20))
                    except anyio.EndOfStream:
                        break
        assert got == items
        assert rx.statistics().messages == len(items) + 4
        assert rx.statistics().bytes == sum(map(len, items)) + 7


async def test_handed_off_receiver_resumes_inside_a_batch() -> None:
    # where a receiver is inside a batch record lives in the ring's header:
    # the copy rebuilt from a hand-off takes the next message, not the first
    left, right = aipc.create_unix_socket_pair()
    rx, tx = aipc.create_ring(SMALL)
    async with left, right, tx:
        await tx.send_many([b"%d" % i for i in range(10)])
        assert await rx.receive() == b"0"
        assert await rx.receive_many(3) == [b"1", b"2", b"3"]
        lease = await rx.receive_lease()
        assert bytes(lease.data) == b"4"
        await left.send_objects(rx)  # the lease is not released: 4 comes again
        await rx.aclose()
        [copy] = await right.receive_objects()
        async with copy:
            assert await copy.receive() == b"4"
            with await copy.receive_lease() as data:
                assert bytes(data) == b"5"
            assert await copy.receive_many() == [b"6", b"7", b"8", b"9"]


async def test_handoff_with_a_corrupt_cursor_is_refused() -> None:
    # a receiver rebuilt with a cursor that points past its batch, or with no
    # batch at tail, refuses to start instead of skipping messages
    for cursor, batched in ((9, True), (1, False)):
        rx, tx = aipc.create_ring(SMALL)
        async with rx, tx:
            if batched:
                tx.send_many_nowait([b"abc"] * 4)
            else:
                tx.send_nowait(b"plain")
            fds = rx._aipc_handoff_()[1]
            rx._hdr[_ring._W_RX_CURSOR] = cursor  # a peer writing nonsense
            copies = tuple(os.dup(fd) for fd in fds)
            try:
                with pytest.raises(ValueError, match=r"cursor of \d+ outside a batch"):
                    aipc.RingReceiver._from_handoff(copies, {})
            finally:
                for fd in copies:
                    os.close(fd)  # still ours: the failed rebuild gave them back
            rx._hdr[_ring._W_RX_CURSOR] = 0
            rx._handed_off = False


async def test_handoff_with_a_corrupt_head_is_refused() -> None:
    # head and tail must make sense before an end is rebuilt on them
    for word, value in ((_ring._W_HEAD, 2**64 - 8), (_ring._W_TAIL, 64)):
        rx, tx = aipc.create_ring(SMALL)
        async with rx, tx:
            fds = rx._aipc_handoff_()[1]
            rx._hdr[word] = value  # a peer writing nonsense
            copies = tuple(os.dup(fd) for fd in fds)
            try:
                with pytest.raises(ValueError, match="corrupt header \\(head"):
                    aipc.RingReceiver._from_handoff(copies, {})
            finally:
                for fd in copies:
                    os.close(fd)  # still ours: the failed rebuild gave them back
            rx._hdr[word] = 0
            rx._handed_off = False


async def test_corrupt_batch_is_detected() -> None:
    for word, value in ((1, 10**6), (2, 1 << 32)):  # a count, a length
        rx, tx = aipc.create_ring(SMALL)
        async with rx, tx:
            tx.send_many_nowait([b"abc"] * 4)
            tx._dq[word] = value  # a peer writing nonsense
            with pytest.raises(anyio.BrokenResourceError, match="corrupt"):
                await rx.receive()


async def test_send_many_checks_sizes_first() -> None:
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        with pytest.raises(aipc.LimitExceededError):
            await tx.send_many([b"ok", bytes(SMALL)])
        assert tx.statistics().messages == 0
        with pytest.raises(anyio.WouldBlock):
            rx.receive_nowait()


async def test_lease() -> None:
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        await tx.send(b"zero-copy")
        await tx.send(b"next")
        lease = await rx.receive_lease()
        assert bytes(lease.data) == b"zero-copy"
        assert len(lease) == 9
        assert lease.data.readonly
        with pytest.raises(anyio.BusyResourceError, match="holding a lease"):
            await rx.receive()
        used = rx.statistics().used
        with lease as data:
            assert data.obj is not None
        assert lease.released
        assert "released" in repr(lease)
        assert rx.statistics().used < used
        lease.release()  # idempotent
        with await rx.receive_lease() as data:
            assert bytes(data) == b"next"
        # a sender blocked on a full ring wakes when a lease is released
        _fill(tx)
        lease = await rx.receive_lease()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(tx.send, b"after")
                await anyio.wait_all_tasks_blocked()
                lease.release()
        rest = await rx.receive_many()
        assert rest[-1] == b"after"
        # a lease held at close is released with the ring
        await tx.send(b"held")
        held = await rx.receive_lease()
    assert held.released


async def test_loan() -> None:
    """A sender writes in place: nothing is visible before the commit."""
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        with await tx.loan(5) as buf:
            buf[:] = b"hello"
            with pytest.raises(anyio.WouldBlock):
                rx.receive_nowait()
            with pytest.raises(anyio.BusyResourceError):
                await tx.send(b"x")
        assert await rx.receive() == b"hello"
        loan = await tx.loan(100)
        loan.data[:3] = b"abc"
        loan.commit(3)  # a shorter message than the room asked for
        assert loan.done
        with pytest.raises(RuntimeError, match="committed or aborted"):
            loan.commit()
        assert await rx.receive() == b"abc"
        with pytest.raises(ZeroDivisionError), await tx.loan(10) as buf:
            buf[:1] = b"x"
            raise ZeroDivisionError
        with pytest.raises(anyio.WouldBlock):
            rx.receive_nowait()
        # loans wrap around the end of the area like any record
        for i in range(20):
            with await tx.loan(1000) as buf:
                buf[:] = bytes([i]) * 1000
            assert await rx.receive() == bytes([i]) * 1000
        with pytest.raises(aipc.LimitExceededError):
            await tx.loan(SMALL)
        # leases wrap too, and a loan waits for the room a lease gives back
        for i in range(20):
            with await tx.loan(1500) as buf:
                buf[:] = bytes([i]) * 1500
            if i % 2:
                with await rx.receive_lease() as data:
                    assert bytes(data) == bytes([i - 1]) * 1500
                with await rx.receive_lease() as data:
                    assert bytes(data) == bytes([i]) * 1500
        with anyio.fail_after(5):
            await tx.send(bytes(1500))
            await tx.send(bytes(1500))
            async with anyio.create_task_group() as tg:
                lease = await rx.receive_lease()
                waits = tx.statistics().waits

                async def lend() -> None:
                    with await tx.loan(1500) as buf:
                        buf[:] = b"w" * 1500

                tg.start_soon(lend)
                await anyio.wait_all_tasks_blocked()
                assert tx.statistics().waits == waits + 1  # no room yet
                lease.release()
        assert await rx.receive() == bytes(1500)
        assert await rx.receive() == b"w" * 1500
        held = await tx.loan(8)
    assert held.done
    # a commit after the receiver closed sends nothing
    rx, tx = aipc.create_ring(SMALL)
    async with tx:
        loan = await tx.loan(8)
        await rx.aclose()
        with pytest.raises(anyio.BrokenResourceError, match="receiver is closed"):
            loan.commit()
        assert tx.statistics().messages == 0


async def test_corrupt_ring_is_detected() -> None:
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        tx._hdr[_ring._W_HEAD] = 10 * SMALL  # a peer writing nonsense
        with pytest.raises(anyio.BrokenResourceError, match="corrupt"):
            await rx.receive()


async def test_receive_checks_what_it_takes() -> None:
    """The compiled steps hand every corrupt word back to the Python steps,
    which raise; nothing is taken, written or woken on the way."""
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        await tx.send(b"12345678")
        tx._dq[0] = 64 << 1  # a record longer than what was published
        with pytest.raises(anyio.BrokenResourceError, match="a record of 64"):
            await rx.receive()
        assert rx.statistics().messages == 0
    for word in (2**64 - 2, 2**63 + 16):  # lengths no ring can hold
        rx, tx = aipc.create_ring(SMALL)
        async with rx, tx:
            await tx.send(b"12345678")
            tx._dq[0] = word
            with pytest.raises(anyio.BrokenResourceError, match="corrupt"):
                await rx.receive()
    for head in (2**64 - 8, 2**63):  # heads no sender can reach
        rx, tx = aipc.create_ring(SMALL)
        async with rx, tx:
            rx._hdr[_ring._W_HEAD] = head
            with pytest.raises(anyio.BrokenResourceError, match="corrupt"):
                await rx.receive()
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        await tx.send(b"x" * 1000)
        await tx.send(b"y" * 1000)
        await tx.send(b"z" * 1000)  # the ring now needs the receiver's tail
        tx._hdr[_ring._W_TAIL] = 2**63  # a tail beyond the sender's head
        with pytest.raises(anyio.BrokenResourceError, match="corrupt"):
            await tx.send(b"w" * 1500)
        assert tx.statistics().messages == 3


async def test_lease_checks_what_it_lends() -> None:
    """receive_lease takes a plain record without _locate: the same checks."""
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        tx._hdr[_ring._W_HEAD] = 10 * SMALL  # a head beyond the capacity
        with pytest.raises(anyio.BrokenResourceError, match="corrupt"):
            await rx.receive_lease()
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        await tx.send(b"12345678")
        tx._dq[0] = 64 << 1  # a record longer than what was published
        with pytest.raises(anyio.BrokenResourceError, match="a record of 64"):
            await rx.receive_lease()
    rx, tx = aipc.create_ring(SMALL)
    async with rx, tx:
        await tx.send(b"last")
        await tx.aclose()  # what was sent is still lent, then the end
        with await rx.receive_lease() as data:
            assert bytes(data) == b"last"
        with pytest.raises(anyio.EndOfStream):
            await rx.receive_lease()
        await rx.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await rx.receive_lease()


async def test_channel_over_rings() -> None:
    """Object channels work over a message ring and a ring stream."""
    create_channel = getattr(aipc, "create_channel", None)
    if create_channel is None:  # pragma: no cover - channels not merged yet
        pytest.skip("aipc.create_channel is not available")
    rx, tx = aipc.create_ring(SMALL)
    receiver, sender = create_channel(rx), create_channel(tx)
    async with receiver, sender:
        await sender.send({"n": 1, "data": b"x" * 100})
        with anyio.fail_after(5):
            assert await receiver.receive() == {"n": 1, "data": b"x" * 100}
    a, b = aipc.create_ring_stream_pair(SMALL)
    left, right = create_channel(a), create_channel(b)
    async with left, right:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(left.send, ["big", b"y" * 20000])
                assert await right.receive() == ["big", b"y" * 20000]


# ---------------------------------------------------------------------------
# byte streams: the conformance suites


async def _byte_ring() -> tuple[ByteSendStream, ByteReceiveStream]:
    r, s = aipc.create_byte_ring(SMALL)
    return s, r


async def _clogged_byte_ring() -> tuple[ByteSendStream, ByteReceiveStream]:
    s, r = await _byte_ring()
    assert isinstance(s, aipc.RingByteSendStream)
    assert s._write(memoryview(b"x" * SMALL), 1) == SMALL
    return s, r


@pytest.mark.parametrize("check", list(_conformance.CHECKS))
async def test_byte_ring_conformance(check: str) -> None:
    await _conformance.run_check(check, _byte_ring, _clogged_byte_ring)


async def test_byte_ring_trio_checker() -> None:
    await _trio_adapter.check_one_way_stream_with_trio(_byte_ring, _clogged_byte_ring)


class _TrioStream(trio.abc.HalfCloseableStream):
    """A RingStream as a trio HalfCloseableStream (see tests/_trio_adapter.py)."""

    def __init__(self, stream: aipc.RingStream, caller: Any) -> None:
        self.stream = stream
        self._caller = caller

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._caller.call(self.stream.send, data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._caller.call(self.stream.wait_writable)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        n = _trio_adapter.DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        try:
            data: bytes = await self._caller.call(self.stream.receive, n)
        except anyio.EndOfStream:
            return b""
        return data

    async def send_eof(self) -> None:
        await self._caller.call(self.stream.send_eof)

    async def aclose(self) -> None:
        await self._caller.call(self.stream.aclose)


async def test_ring_stream_trio_two_way_checker() -> None:
    """trio's check_half_closeable_stream (a superset of check_two_way_stream)
    on the two-way RingStream."""
    made: list[aipc.RingStream] = []

    async def make() -> tuple[aipc.RingStream, aipc.RingStream]:
        a, b = aipc.create_ring_stream_pair(SMALL)
        made.extend((a, b))
        return a, b

    async def make_clogged() -> tuple[aipc.RingStream, aipc.RingStream]:
        a, b = await make()
        # both directions: trio's checker also runs on the flipped pair
        a.send_stream._write(memoryview(b"x" * SMALL), 1)
        b.send_stream._write(memoryview(b"x" * SMALL), 1)
        return a, b

    async def check(caller: Any) -> None:
        async def maker() -> tuple[_TrioStream, _TrioStream]:
            a, b = await caller.call(make)
            return _TrioStream(a, caller), _TrioStream(b, caller)

        async def clogged_maker() -> tuple[_TrioStream, _TrioStream]:
            a, b = await caller.call(make_clogged)
            return _TrioStream(a, caller), _TrioStream(b, caller)

        await trio.testing.check_half_closeable_stream(maker, clogged_maker)

    try:
        await _trio_adapter.run_in_trio(check)
    finally:
        for stream in made:
            await anyio.aclose_forcefully(stream)


async def test_byte_ring_wraps_and_splits() -> None:
    r, s = aipc.create_byte_ring(SMALL)
    async with r, s:
        data = os.urandom(5 * SMALL + 123)
        got = bytearray()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(s.send, data)
                while len(got) < len(data):
                    got += await r.receive(1000)
        assert got == data
        assert s.statistics().bytes == len(data)
        assert "bytes capacity=4096" in repr(s)


# ---------------------------------------------------------------------------
# hand-off, fd passing and the named rendezvous


async def test_send_objects_over_a_socket() -> None:
    left, right = aipc.create_unix_socket_pair()
    rx, tx = aipc.create_ring(SMALL)
    async with left, right, rx:
        await left.send_objects(tx)
        await tx.aclose()  # handed off: the copy over there carries on
        [copy] = await right.receive_objects()
        assert type(copy) is aipc.RingSender
        async with copy:
            await copy.send(b"through a socket")
            assert await rx.receive() == b"through a socket"
        with pytest.raises(anyio.EndOfStream):
            await rx.receive()


async def test_from_handoff_rejects_and_leaves_fds(tmp_path: Any) -> None:
    r, w = os.pipe()
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        with pytest.raises(ValueError, match="not a ring's shared memory"):
            aipc.RingReceiver._from_handoff((r, efd, efd, w), {})
        seg = aipc.create_shared_memory(8192)
        with seg, pytest.raises(ValueError, match="not an aipc ring"):
            aipc.RingReceiver._from_handoff((seg.fileno(), efd, efd, w), {})
        rx, tx = aipc.create_ring(SMALL)
        async with rx, tx:
            fds = tx._aipc_handoff_()[1]
            with pytest.raises(ValueError, match="is a messages ring, not a bytes"):
                aipc.RingByteSendStream._from_handoff(fds, {})
            with pytest.raises(ValueError, match="not an eventfd"):
                aipc.RingSender._from_handoff((fds[0], r, fds[2], fds[3]), {})
            with pytest.raises(ValueError, match="not a socket"):
                aipc.RingSender._from_handoff((fds[0], fds[1], fds[2], r), {})
            tx._handed_off = False
        for fd in (r, w, efd):
            os.fstat(fd)  # still open: they stayed ours
    finally:
        for fd in (r, w, efd):
            os.close(fd)


CHILD_HANDOFF = (
    CHILD
    + """
async def main():
    stream = aipc.inherit("stream", aipc.RingStream)
    out = aipc.inherit("bytes", aipc.RingByteSendStream)
    async with stream, out:
        print("ready", flush=True)
        await out.send(bytes(range(256)) * 400)
        await out.aclose()
        while True:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                break
            await stream.send(data.upper())
run_backend(main, backend)
"""
)


async def test_handoff_to_child(backend_id: str) -> None:
    mine, theirs = aipc.create_ring_stream_pair(SMALL)
    r, s = aipc.create_byte_ring(SMALL)
    async with (
        mine,
        r,
        aipc_child(
            CHILD_HANDOFF, handoff={"stream": theirs, "bytes": s}, args=[backend_id]
        ) as (proc, stdout),
    ):
        await theirs.aclose()
        await s.aclose()
        assert await read_line(stdout) == b"ready"
        with anyio.fail_after(10):
            got = bytearray()
            while True:
                try:
                    got += await r.receive()
                except anyio.EndOfStream:
                    break
            assert got == bytes(range(256)) * 400
            await mine.send(b"hello ring")
            reply = b""
            while len(reply) < 10:
                reply += await mine.receive()
            assert reply == b"HELLO RING"
            await mine.send_eof()
            assert await proc.wait() == 0


CHILD_CONNECT = (
    CHILD
    + """
async def main():
    tx = await aipc.connect_ring(sys.argv[2])
    async with tx:
        for i in range(100):
            await tx.send(b"%s %d" % (sys.argv[3].encode(), i))
run_backend(main, backend)
"""
)


async def test_named_rendezvous_two_producers(backend_id: str) -> None:
    """Two unrelated producers find the consumer by name; each gets a ring of
    its own (the several-producers pattern)."""
    name = f"test-{os.getpid()}-{random.getrandbits(32):x}"
    got: dict[bytes, list[int]] = {b"a": [], b"b": []}
    async with aipc.create_ring_listener(name, capacity=SMALL) as listener:
        assert listener.name == name
        assert listener.address == f"\0aipc-ring-{os.getuid()}-{name}"
        with anyio.fail_after(20):
            async with (
                aipc_child(CHILD_CONNECT, args=[backend_id, name, "a"]),
                aipc_child(CHILD_CONNECT, args=[backend_id, name, "b"]),
                anyio.create_task_group() as tg,
            ):

                async def consume(rx: aipc.RingReceiver) -> None:
                    async with rx:
                        async for item in rx:
                            who, i = item.split()
                            got[who].append(int(i))

                for _ in range(2):
                    tg.start_soon(consume, await listener.accept())
    assert got == {b"a": list(range(100)), b"b": list(range(100))}
    with pytest.raises(ConnectionRefusedError):
        await aipc.connect_ring(name)


async def test_rendezvous_errors() -> None:
    with pytest.raises(ValueError, match="without '/'"):
        aipc.create_ring_listener("a/b")
    with pytest.raises(ValueError, match="kind must be"):
        aipc.create_ring_listener("x", kind="pipes")  # type: ignore[call-overload]
    name = f"test-{os.getpid()}-{random.getrandbits(32):x}"
    with pytest.raises(ConnectionRefusedError):
        await aipc.connect_ring(name)
    async with aipc.create_ring_listener(name, kind="bytes", capacity=SMALL) as lst:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def accept() -> None:
                    end = await lst.accept()
                    await end.aclose()

                tg.start_soon(accept)
                with pytest.raises(TypeError, match="not a RingSender"):
                    await aipc.connect_ring(name)

                async def hang_up() -> None:
                    conn = await lst._listener.accept()
                    await conn.aclose()

                tg.start_soon(hang_up)
                with pytest.raises(anyio.BrokenResourceError, match="without"):
                    await aipc.connect_ring(name, kind="bytes")


# ---------------------------------------------------------------------------
# across processes: a million messages, peer death, the wake-up protocol

CHILD_MILLION = (
    CHILD
    + """
import array, hashlib, random
async def main():
    tx = aipc.inherit("tx", aipc.RingSender)
    total = int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]))
    blob = memoryview(rng.randbytes(1 << 16))
    # 50 distinct batches of random sizes and contents, sent in turn: the
    # child's own Python stays off the measured path
    batches, pos = [], 0
    for b in range(50):
        sizes = rng.choices(range(300), k=2000)
        if b % 10 == 0:
            sizes[0] = tx.max_message_size  # a few of the largest
        batch = []
        for n in sizes:
            if pos + n > len(blob):
                pos = 0
            batch.append(blob[pos : pos + n])
            pos += n
        batches.append((batch, b"".join(batch), array.array("I", sizes).tobytes()))
    content, sizes_hash = hashlib.blake2b(), hashlib.blake2b()
    sent = 0
    async with tx:
        while sent < total:
            batch, joined, sizes = batches[rng.randrange(len(batches))]
            await tx.send_many(batch)
            content.update(joined)
            sizes_hash.update(sizes)
            sent += len(batch)
    print(content.hexdigest(), sizes_hash.hexdigest(), flush=True)
run_backend(main, backend)
"""
)


async def test_a_million_messages_byte_exact(backend_id: str) -> None:
    total = 1_000_000
    rx, tx = aipc.create_ring(1 << 16)
    content, sizes_hash = hashlib.blake2b(), hashlib.blake2b()
    count = 0
    async with (
        rx,
        aipc_child(
            CHILD_MILLION,
            handoff={"tx": tx},
            args=[backend_id, str(total), str(random.getrandbits(32))],
        ) as (proc, stdout),
    ):
        await tx.aclose()
        with anyio.fail_after(120):
            while True:
                try:
                    items = await rx.receive_many(8192)
                except anyio.EndOfStream:
                    break
                content.update(b"".join(items))
                sizes_hash.update(array.array("I", map(len, items)).tobytes())
                count += len(items)
        line = await read_line(stdout)
        assert await proc.wait() == 0
    assert count == total
    assert line.decode() == f"{content.hexdigest()} {sizes_hash.hexdigest()}"


CHILD_ECHO_LOANS = (
    CHILD
    + """
from aipc import _ring
async def main():
    rx = aipc.inherit("rx", aipc.RingReceiver)
    tx = aipc.inherit("tx", aipc.RingSender)
    print(_ring._FAST, flush=True)
    async with rx, tx:
        i = 0
        while True:
            try:
                if i % 3:
                    data = await rx.receive()
                else:
                    with await rx.receive_lease() as view:
                        data = bytes(view)
            except anyio.EndOfStream:
                break
            if i % 2:
                await tx.send(data)
            else:
                with await tx.loan(len(data)) as buf:
                    buf[:] = data
            i += 1
run_backend(main, backend)
"""
)


async def test_compiled_and_python_steps_share_a_ring(
    backend_id: str, ring_steps: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ring's format is the same whichever steps run it: a child on the
    other build (the pure one when this process runs the compiled steps, the
    compiled one otherwise) echoes messages of random sizes through small
    rings, so that records wrap and padding records are frequent, with
    send / loan and receive / receive_lease in turn on both sides."""
    if _ring._ringc is None:
        pytest.skip("the C helper is not built (no compiler at install?)")
    if ring_steps == "compiled":
        monkeypatch.setenv("AIPC_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("AIPC_PURE_PYTHON")
    rng = random.Random()
    out_rx, out_tx = aipc.create_ring(SMALL)
    back_rx, back_tx = aipc.create_ring(SMALL)
    async with (
        out_tx,
        back_rx,
        aipc_child(
            CHILD_ECHO_LOANS,
            handoff={"rx": out_rx, "tx": back_tx},
            args=[backend_id],
        ) as (proc, stdout),
    ):
        await out_rx.aclose()
        await back_tx.aclose()
        with anyio.fail_after(60):
            assert await read_line(stdout) == (
                b"False" if ring_steps == "compiled" else b"True"
            )
            for i in range(3000):
                data = rng.randbytes(rng.choice((0, 1, 7, 8, 9, 100, 1000, 2040)))
                if i % 2:
                    await out_tx.send(data)
                else:
                    with await out_tx.loan(len(data)) as buf:
                        buf[:] = data
                if i % 3:
                    assert await back_rx.receive() == data
                else:
                    with await back_rx.receive_lease() as view:
                        assert view == data
            await out_tx.aclose()
            with pytest.raises(anyio.EndOfStream):
                await back_rx.receive()
            assert await proc.wait() == 0


CHILD_SENDER_FOREVER = (
    CHILD
    + """
async def main():
    tx = aipc.inherit("tx", aipc.RingSender)
    print("ready", flush=True)
    i = 0
    while True:
        await tx.send_many([b"%d" % (i + k) for k in range(100)])
        i += 100
run_backend(main, backend)
"""
)

CHILD_RECEIVER_FOREVER = (
    CHILD
    + """
async def main():
    rx = aipc.inherit("rx", aipc.RingReceiver)
    print("ready", flush=True)
    n = 0
    while True:
        n += len(await rx.receive_many())
        if n >= 1000:
            print("got 1000", flush=True)
            n = -10**9
run_backend(main, backend)
"""
)


async def test_writer_killed_wakes_reader(backend_id: str) -> None:
    before = _shm_entries()
    rx, tx = aipc.create_ring(SMALL)
    async with (
        rx,
        aipc_child(CHILD_SENDER_FOREVER, handoff={"tx": tx}, args=[backend_id]) as (
            proc,
            stdout,
        ),
    ):
        await tx.aclose()
        assert await read_line(stdout) == b"ready"
        with anyio.fail_after(10):
            expected = 0
            while expected < 1000:
                for item in await rx.receive_many():
                    assert item == b"%d" % expected
                    expected += 1
        proc.kill()
        # everything the writer completed is delivered, then the death
        with anyio.fail_after(1):
            with pytest.raises(anyio.BrokenResourceError, match="died"):
                while True:
                    for item in await rx.receive_many():
                        assert item == b"%d" % expected
                        expected += 1
            assert await proc.wait() == -9
    assert not _new_aipc_shm(before)


async def test_reader_killed_wakes_writer(backend_id: str) -> None:
    before = _shm_entries()
    rx, tx = aipc.create_ring(SMALL)
    async with (
        tx,
        aipc_child(CHILD_RECEIVER_FOREVER, handoff={"rx": rx}, args=[backend_id]) as (
            proc,
            stdout,
        ),
    ):
        await rx.aclose()
        assert await read_line(stdout) == b"ready"
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def keep_sending() -> None:
                    with pytest.raises(anyio.BrokenResourceError, match="died"):
                        while True:
                            await tx.send(b"x" * 50)

                tg.start_soon(keep_sending)
                assert await read_line(stdout) == b"got 1000"
                proc.kill()
                with anyio.fail_after(1):
                    assert await proc.wait() == -9
                    # keep_sending ends with BrokenResourceError
    assert not _new_aipc_shm(before)


CHILD_ECHO = (
    CHILD
    + """
import random
async def main():
    rx = aipc.inherit("rx", aipc.RingReceiver)
    tx = aipc.inherit("tx", aipc.RingSender)
    rng = random.Random(int(sys.argv[2]))
    async with rx, tx:
        print("ready", flush=True)
        async for item in rx:
            # a random pause (busy, so that the other side's timing shifts by
            # less than a sleep would) to land in every phase of its wait
            end = time.perf_counter_ns() + rng.choice((0, 0, 1000, 5000, 20000))
            while time.perf_counter_ns() < end:
                pass
            if rng.random() < 0.1:
                rx.spin_us = rng.choice((0, 0, 50))
            await tx.send(item)
        print(rx._seq // 2, rx.statistics().waits, flush=True)
run_backend(main, backend)
"""
)


async def test_no_lost_wakeups_under_stress(backend_id: str) -> None:
    """Round trips with random pauses, bursts and spinning on both sides: a
    lost wake-up would hang (fail_after catches it). The sender rings at most
    once per announced sleep of the receiver: no wake-up storm."""
    requests_rx, requests = aipc.create_ring(SMALL)
    replies, replies_tx = aipc.create_ring(SMALL)
    rng = random.Random()
    seed = rng.getrandbits(32)
    rounds = 3000
    async with (
        requests,
        replies,
        aipc_child(
            CHILD_ECHO,
            handoff={"rx": requests_rx, "tx": replies_tx},
            args=[backend_id, str(seed)],
        ) as (proc, stdout),
    ):
        await requests_rx.aclose()
        await replies_tx.aclose()
        assert await read_line(stdout) == b"ready"
        sent = received = 0
        with anyio.fail_after(60):
            while received < rounds:
                burst = rng.choice((1, 1, 1, 2, 5, 40))
                for _ in range(burst):
                    await requests.send(struct.pack("Q", sent))
                    sent += 1
                if rng.random() < 0.1:
                    replies.spin_us = rng.choice((0, 0, 50))
                end = time.perf_counter_ns() + rng.choice((0, 2000, 10000))
                while time.perf_counter_ns() < end:
                    pass
                while received < sent:
                    (value,) = struct.unpack("Q", await replies.receive())
                    assert value == received
                    received += 1
            await requests.aclose()
            announced, waits = map(int, (await read_line(stdout)).split())
            assert await proc.wait() == 0
    wakeups = requests.statistics().wakeups
    assert waits <= announced
    # one ring per announced sleep at most, plus the one of the close
    assert wakeups <= announced + 1, (wakeups, announced)


CHILD_IDLE = (
    CHILD
    + """
async def main():
    rx = aipc.inherit("rx", aipc.RingReceiver)
    async with rx:
        print("ready", flush=True)
        cpu = time.process_time()
        item = await rx.receive()
        cpu = time.process_time() - cpu
        print(item.decode(), rx.statistics().waits, f"{cpu:.4f}", flush=True)
run_backend(main, backend)
"""
)


async def test_idle_ring_costs_nothing(backend_id: str) -> None:
    """A receiver waiting on an idle ring sleeps once and burns no CPU: no
    polling, no timer."""
    rx, tx = aipc.create_ring(SMALL)
    async with (
        tx,
        aipc_child(CHILD_IDLE, handoff={"rx": rx}, args=[backend_id]) as (proc, stdout),
    ):
        if True:
            await rx.aclose()
            assert await read_line(stdout) == b"ready"
            await anyio.sleep(0.5)  # the idle period under test, not a sync
            await tx.send(b"wake")
            item, waits, cpu = (await read_line(stdout)).decode().split()
            assert await proc.wait() == 0
    assert item == "wake"
    assert int(waits) == 1
    assert float(cpu) < 0.05


async def test_many_sleeps_in_process() -> None:
    """Producer and consumer tasks in one loop: the consumer sleeps on most
    messages, the producer rings once per sleep, and nothing is lost."""
    rx, tx = aipc.create_ring(SMALL)
    n = 5000
    async with rx, tx:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def produce() -> None:
                    for i in range(n):
                        await tx.send(b"%d" % i)

                tg.start_soon(produce)
                for i in range(n):
                    assert await rx.receive() == b"%d" % i
        assert tx.statistics().wakeups <= rx._seq // 2
        assert rx.statistics().waits <= rx._seq // 2
