"""One side of an ``aipc bench`` measurement.

Run as ``python -m aipc._bench._child SPEC`` by the orchestrator, where SPEC is
a JSON object (see ``_runner._spawn``): the role (``driver`` or ``peer``), the
family of code to run, the event loop, the descriptors or FIFO paths inherited
from the orchestrator and the blocks of phases to walk (see ``_plan``).

The peer writes ``R`` and its pid on the control pipe once it is ready; the
driver waits for it (the handshake), reports ``ready``, and then runs one block
each time the orchestrator writes ``go`` on its stdin. On the signal rows the
handshake goes both ways: the driver then writes its own pid on a second pipe,
since the peer answers each signal by signalling the driver. The driver reports
on stdout, one JSON object per line: ``hello`` (which loop really runs),
``ready``, ``start`` and ``result`` of each measured phase (raw samples: the
orchestrator merges the rounds), ``cap`` (the pipe capacity granted), ``done``
after each block, and ``error`` (why it is about to exit) if it fails. The peer
needs no go-ahead: it is always blocked on the driver's next message. The lock
rows use the second pipe too: the peer starts waiting for a lock only once the
driver holds its two (see ``_LockHandOffs``).

The UNIX socket rows shake hands before they connect: the peer listens (on
an abstract name the orchestrator chose), says it is ready and accepts; the
driver connects once it has read that (see ``_connected``).

The ring rows rebuild their two ring ends from the hand-off descriptions in
the spec (``_handoff.rebuild``); the iceoryx2 rows open their services by the
names in the spec, and delete their ports when they end.

The msgs/s phase reuses the throughput code: ``n`` messages of ``size`` bytes
are a transfer of ``n * size`` bytes in ``size``-byte sends. Only the peer
differs: a byte stream's peer reads up to ``read`` bytes at a time (whatever
has arrived), a message transport's peer receives one message per call. The
object rows send ``_plan.OBJECT`` in every message instead of bytes.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import _share
from ._plan import MSG_SIZE, OBJECT, RING_BATCH, RING_FAMILIES, RING_SPIN_US

if TYPE_CHECKING:
    from anyio.abc import UNIXSocketStream

    from aipc import SignalReceiver

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)

__all__ = ["main"]

_MSG = b"aipc-rtt"  # the 8-byte round-trip message
assert len(_MSG) == 8
_ACK = b"A"

Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[int], Awaitable[bytes]]


# the signal rows: (driver -> peer, peer -> driver)
_SIGNALS = {
    "signal": (signal.SIGRTMIN + 1, signal.SIGRTMIN + 2),
    "anyio-signal": (signal.SIGUSR1, signal.SIGUSR2),
}


class _Accepting(Protocol[_T_co]):
    """A listener (aipc's or anyio's) as the socket rows' peer uses it."""

    async def accept(self) -> _T_co: ...
    async def aclose(self) -> None: ...


class _PeerGone(Exception):
    """The other process closed its end (it exited or failed)."""


class _WrongReply(Exception):
    """The peer answered with something else than what was sent."""


# --------------------------------------------------------------------------
# context: role, pinning, handshake, reporting


class _Ctx:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.role: str = spec["role"]
        self.driver = self.role == "driver"
        self.blocks: list[list[dict[str, Any]]] = spec["blocks"]
        self.tx: Any = spec["tx"]  # an fd, or a FIFO path
        self.rx: Any = spec["rx"]
        self.ctl: int = spec["ctl"]
        self.pid_fd: int | None = spec.get("pid_fd")
        self.partner_pid = 0  # the other process's pid, known after the handshake
        self.shaken = False  # the socket rows shake hands before they connect

    def emit(self, **event: Any) -> None:
        if self.driver:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    def wait_go(self) -> bool:
        """Driver: wait for the orchestrator's go-ahead; False means stop.

        This blocks the event loop, on purpose: between blocks nothing else
        runs in this process, and the peer is blocked waiting for us.
        """
        return sys.stdin.readline().strip() == "go"

    def pin(self, phase: dict[str, Any]) -> None:
        os.sched_setaffinity(0, {int(phase["cpus"][self.role])})

    def handshake(self) -> None:
        """Peer: say "ready", with its pid. Driver: wait until the peer said so.

        With a ``pid_fd`` (the signal rows), the driver then sends its own pid
        to the peer, and the peer waits for it. Both sides opened their signal
        receivers before: neither can get a signal it is not ready for (the
        default action of the signals used kills the process). Only the first
        call does anything (see ``_connected``).
        """
        if self.shaken:
            return
        self.shaken = True
        if self.driver:
            try:
                # "R<pid>" came in one write of less than PIPE_BUF: one read
                data = os.read(self.ctl, 64)
            finally:
                os.close(self.ctl)
            if not data:
                raise _PeerGone("the peer exited before it was ready")
            self.partner_pid = int(data[1:])
            if self.pid_fd is not None:
                try:
                    os.write(self.pid_fd, str(os.getpid()).encode())
                finally:
                    os.close(self.pid_fd)
        else:
            try:
                os.write(self.ctl, b"R%d" % os.getpid())
            finally:
                os.close(self.ctl)
            if self.pid_fd is not None:
                try:
                    data = os.read(self.pid_fd, 64)
                finally:
                    os.close(self.pid_fd)
                if not data:
                    raise _PeerGone("the driver exited before it was ready")
                self.partner_pid = int(data)

    def hello(self, loop: str) -> None:
        generic: bool | None = None
        if self.spec["family"] in ("pipe", "fifo", "eventfd"):
            from aipc._core import _fd

            generic = _fd._GENERIC_WAIT
        self.emit(event="hello", loop=loop, generic_wait=generic, pid=os.getpid())


def _tput_result(
    total: int, times_ns: list[int], capacity: int | None
) -> dict[str, Any]:
    return {"bytes": total, "times_ns": times_ns, "capacity": capacity}


def _msgs_args(phase: dict[str, Any]) -> tuple[int, int, int, int]:
    """The msgs/s phase as a transfer: (chunk, total, warm-up total, reps)."""
    size = int(phase["size"])
    return size, size * phase["n"], size * phase["warmup"], phase["reps"]


def _pipe_capacity(fd: int) -> int | None:
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:
        return None


def _set_pipe_capacity(fd: int, size: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


# --------------------------------------------------------------------------
# transports: the measuring loops, written once per kind of API


class _AsyncTransport(Protocol):
    async def rtt(self, warmup: int, n: int) -> list[int]: ...
    async def echo(self, count: int) -> None: ...
    async def tput(self, chunk: int, total: int, warm: int, reps: int) -> list[int]: ...
    async def sink(
        self, chunk: int, total: int, warm: int, reps: int, read: int
    ) -> None: ...
    def set_capacity(self, size: int) -> int: ...
    def capacity(self) -> int | None: ...


class _SyncTransport(Protocol):
    def rtt(self, warmup: int, n: int) -> list[int]: ...
    def echo(self, count: int) -> None: ...
    def tput(self, chunk: int, total: int, warm: int, reps: int) -> list[int]: ...
    def sink(self, chunk: int, total: int, warm: int, reps: int, read: int) -> None: ...
    def set_capacity(self, size: int) -> int: ...
    def capacity(self) -> int | None: ...


async def _transfers(
    send: Callable[[Any], Awaitable[object]],
    ack: Callable[[], Awaitable[object]],
    message: object,
    chunk: int,
    total: int,
    warm: int,
    reps: int,
) -> list[int]:
    """The driver's side of the transfers on an async transport: ``total //
    chunk`` sends of ``message``, each repetition timed until ``ack()`` has
    the peer's acknowledgement (after a shorter transfer, not timed, that
    warms up); one time per repetition."""
    clock = time.perf_counter_ns
    out: list[int] = []
    for rep in range(reps + 1):
        count = (total if rep else warm) // chunk
        t0 = clock()
        for _ in range(count):
            await send(message)
        await ack()
        out.append(clock() - t0)
    return out[1:]


class _AsyncStreams:
    """Any async byte stream pair given as ``send(bytes)`` / ``receive(max)``.

    ``receive`` may signal end of stream by returning ``b""`` (asyncio, trio)
    or by raising (anyio's ``EndOfStream``).
    """

    def __init__(
        self,
        send: Send,
        receive: Receive,
        tx_fd: int | None,
        set_capacity: Callable[[int], int] | None = None,
    ) -> None:
        self.send = send
        self.receive = receive
        self.tx_fd = tx_fd
        self._set_capacity = set_capacity

    async def rtt(self, warmup: int, n: int) -> list[int]:
        send, receive, clock = self.send, self.receive, time.perf_counter_ns
        msg = _MSG
        out: list[int] = []
        for _ in range(warmup + n):
            t0 = clock()
            await send(msg)
            got = 0
            while got < 8:
                data = await receive(8 - got)
                if not data:
                    raise _PeerGone
                got += len(data)
            out.append(clock() - t0)
        return out[warmup:]

    async def echo(self, count: int) -> None:
        send, receive = self.send, self.receive
        for _ in range(count):
            data = await receive(8)
            while len(data) < 8:
                more = await receive(8 - len(data))
                if not more:
                    raise _PeerGone
                data += more
            await send(data)

    async def tput(self, chunk: int, total: int, warm: int, reps: int) -> list[int]:
        return await _transfers(
            self.send, self._ack, bytes(chunk), chunk, total, warm, reps
        )

    async def _ack(self) -> None:
        if not await self.receive(1):
            raise _PeerGone

    async def sink(
        self, chunk: int, total: int, warm: int, reps: int, read: int
    ) -> None:
        send, receive = self.send, self.receive
        for rep in range(reps + 1):
            got, want = 0, total if rep else warm
            while got < want:
                data = await receive(read)
                if not data:
                    raise _PeerGone
                got += len(data)
            await send(_ACK)

    def set_capacity(self, size: int) -> int:
        if self._set_capacity is not None:
            return self._set_capacity(size)
        assert self.tx_fd is not None
        return _set_pipe_capacity(self.tx_fd, size)

    def capacity(self) -> int | None:
        return None if self.tx_fd is None else _pipe_capacity(self.tx_fd)


class _RoundTripsOnly:
    """A transport with round trips only: no throughput phases, no capacity."""

    async def tput(self, chunk: int, total: int, warm: int, reps: int) -> list[int]:
        raise NotImplementedError

    async def sink(
        self, chunk: int, total: int, warm: int, reps: int, read: int
    ) -> None:
        raise NotImplementedError

    def set_capacity(self, size: int) -> int:
        raise NotImplementedError

    def capacity(self) -> int | None:
        return None


class _AipcEventFds(_RoundTripsOnly):
    """Two aipc EventFds: ``set(1)`` on one, ``await wait()`` on the other."""

    def __init__(self, out: Any, into: Any) -> None:
        self.out = out
        self.into = into

    async def rtt(self, warmup: int, n: int) -> list[int]:
        set_, wait, clock = self.out.set, self.into.wait, time.perf_counter_ns
        out: list[int] = []
        for _ in range(warmup + n):
            t0 = clock()
            set_(1)
            await wait()
            out.append(clock() - t0)
        return out[warmup:]

    async def echo(self, count: int) -> None:
        set_, wait = self.out.set, self.into.wait
        for _ in range(count):
            await wait()
            set_(1)


class _AipcSignals(_RoundTripsOnly):
    """``aipc.send_signal(pid, sig, i)`` one way, ``await receive()`` the other.

    The peer answers with the value it received; the driver checks it.
    """

    def __init__(self, ctx: _Ctx, receiver: SignalReceiver, out: int) -> None:
        import aipc

        self.ctx = ctx
        self.send = aipc.send_signal
        self.receiver = receiver
        self.out = out

    async def rtt(self, warmup: int, n: int) -> list[int]:
        send, receive, clock = self.send, self.receiver.receive, time.perf_counter_ns
        pid, sig = self.ctx.partner_pid, self.out
        out: list[int] = []
        for i in range(warmup + n):
            t0 = clock()
            send(pid, sig, i)
            info = await receive()
            out.append(clock() - t0)
            if info.value != i:
                raise _WrongReply(
                    f"round trip {i}: the reply carried value {info.value!r} "
                    f"(from pid {info.pid}), expected {i}"
                )
        return out[warmup:]

    async def echo(self, count: int) -> None:
        send, receive = self.send, self.receiver.receive
        pid, sig = self.ctx.partner_pid, self.out
        for _ in range(count):
            info = await receive()
            send(pid, sig, info.value)


class _AnyioSignals(_RoundTripsOnly):
    """``os.kill(pid, sig)`` one way, the next signal of an anyio receiver the
    other (standard signals without a payload: nothing to check)."""

    def __init__(
        self, ctx: _Ctx, received: AsyncIterator[signal.Signals], out: int
    ) -> None:
        self.ctx = ctx
        self.received = received
        self.out = out

    async def rtt(self, warmup: int, n: int) -> list[int]:
        kill, receive, clock = os.kill, self.received.__anext__, time.perf_counter_ns
        pid, sig = self.ctx.partner_pid, self.out
        out: list[int] = []
        for _ in range(warmup + n):
            t0 = clock()
            kill(pid, sig)
            await receive()
            out.append(clock() - t0)
        return out[warmup:]

    async def echo(self, count: int) -> None:
        kill, receive = os.kill, self.received.__anext__
        pid, sig = self.ctx.partner_pid, self.out
        for _ in range(count):
            await receive()
            kill(pid, sig)


class _LockHandOffs(_RoundTripsOnly):
    """A lock passed back and forth between the two processes: one hand-off is
    ``release()`` in one process to the return of the other's waiting
    ``acquire()``.

    Two processes cannot pass one lock back and forth: flock grants a lock to
    whoever asks first once it is free, so the process that released it could
    take it back before the waiter's thread runs. Three locks take turns
    instead. Hand-off ``k`` releases lock ``k % 3``, on which the other process
    waits; the driver makes the even hand-offs, the peer the odd ones. The
    driver starts holding locks 0 and 2, the peer lock 1 (taken before the
    handshake, which the peer finishes only once the driver holds its two), so
    each process waits for a lock the other holds, and never for the one it
    has just released.

    Each sample is half a round trip of the driver (``perf_counter_ns``):
    release, the peer's acquire, the peer's release, the driver's acquire.
    ``acquire[i]`` / ``release[i]`` act on lock ``i``; ``release`` of
    filelock's lock is a coroutine, aipc's a plain call.
    """

    def __init__(
        self,
        acquire: list[Callable[[], Awaitable[object]]],
        release: list[Callable[[], object]],
        *,
        release_awaits: bool,
        driver: bool,
    ) -> None:
        self.acquire = acquire
        self.release = release
        self.release_awaits = release_awaits
        self.next = 0  # the driver releases lock next, the peer acquires it
        self.held = {0, 2} if driver else {1}

    async def _give(self, i: int) -> None:
        self.held.discard(i)
        result = self.release[i]()
        if self.release_awaits:
            await result  # type: ignore[misc]

    async def _take(self, i: int) -> None:
        await self.acquire[i]()
        self.held.add(i)

    async def rtt(self, warmup: int, n: int) -> list[int]:
        clock, i = time.perf_counter_ns, self.next
        give, take = self._give, self._take
        out: list[int] = []
        for _ in range(warmup + n):
            t0 = clock()
            await give(i)
            await take((i + 1) % 3)
            out.append((clock() - t0) // 2)
            i = (i + 2) % 3
        self.next = i
        return out[warmup:]

    async def echo(self, count: int) -> None:
        j, give, take = self.next, self._give, self._take
        for _ in range(count):
            await take(j)
            await give((j + 1) % 3)
            j = (j + 2) % 3
        self.next = j


class _SemaphoreHandOffs(_RoundTripsOnly):
    """Two POSIX named semaphores of initial value 0: ``release()`` on one,
    the other process's waiting ``acquire()`` returns; it releases the second,
    on which the first waits. Each sample is half a round trip."""

    def __init__(self, out: Any, into: Any) -> None:
        self.out = out
        self.into = into

    async def rtt(self, warmup: int, n: int) -> list[int]:
        give, take, clock = self.out.release, self.into.acquire, time.perf_counter_ns
        out: list[int] = []
        for _ in range(warmup + n):
            t0 = clock()
            give()
            await take()
            out.append((clock() - t0) // 2)
        return out[warmup:]

    async def echo(self, count: int) -> None:
        give, take = self.out.release, self.into.acquire
        for _ in range(count):
            await take()
            give()


class _RawFds:
    """Blocking ``os.read`` / ``os.write`` on two pipes: the floor."""

    def __init__(self, tx: int, rx: int) -> None:
        self.tx = tx
        self.rx = rx

    def rtt(self, warmup: int, n: int) -> list[int]:
        tx, rx, clock = self.tx, self.rx, time.perf_counter_ns
        write, read = os.write, os.read
        msg = _MSG
        out: list[int] = []
        for _ in range(warmup + n):
            t0 = clock()
            write(tx, msg)
            got = 0
            while got < 8:
                data = read(rx, 8 - got)
                if not data:
                    raise _PeerGone
                got += len(data)
            out.append(clock() - t0)
        return out[warmup:]

    def echo(self, count: int) -> None:
        tx, rx = self.tx, self.rx
        write, read = os.write, os.read
        for _ in range(count):
            data = read(rx, 8)
            while len(data) < 8:
                more = read(rx, 8 - len(data))
                if not more:
                    raise _PeerGone
                data += more
            write(tx, data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.tx, view) :]

    def tput(self, chunk: int, total: int, warm: int, reps: int) -> list[int]:
        tx, rx, clock, write = self.tx, self.rx, time.perf_counter_ns, os.write
        payload = bytes(chunk)
        out: list[int] = []
        for rep in range(reps + 1):
            count = (total if rep else warm) // chunk
            t0 = clock()
            for _ in range(count):
                if write(tx, payload) != chunk:  # only if interrupted by a signal
                    raise OSError("short write on a blocking pipe")
            if not os.read(rx, 1):
                raise _PeerGone
            out.append(clock() - t0)
        return out[1:]

    def sink(self, chunk: int, total: int, warm: int, reps: int, read: int) -> None:
        rx, os_read = self.rx, os.read
        for rep in range(reps + 1):
            got, want = 0, total if rep else warm
            while got < want:
                data = os_read(rx, read)
                if not data:
                    raise _PeerGone
                got += len(data)
            self._write_all(_ACK)

    def set_capacity(self, size: int) -> int:
        return _set_pipe_capacity(self.tx, size)

    def capacity(self) -> int | None:
        return _pipe_capacity(self.tx)


class _MessageTransport:
    """What the message transports share: ``send(message)`` / ``receive() ->
    message`` (blocking or async), and what they send.

    Every receive returns one whole message, so the peer of a transfer counts
    messages (``total // chunk``), not bytes. ``payload`` is what every
    message of the round trips and transfers carries: ``None`` for bytes (the
    8-byte round-trip message, ``chunk`` bytes in a transfer), or the object
    rows' ``OBJECT``.
    """

    def __init__(
        self,
        send: Callable[[Any], Any],
        receive: Callable[[], Any],
        payload: object = None,
    ) -> None:
        self.send = send
        self.receive = receive
        self.ping: object = _MSG if payload is None else payload
        self.payload = payload

    def message(self, chunk: int) -> object:
        return bytes(chunk) if self.payload is None else self.payload

    def set_capacity(self, size: int) -> int:
        raise NotImplementedError

    def capacity(self) -> int | None:
        return None


class _Messages(_MessageTransport):
    """A blocking message transport: ``multiprocessing.Pipe`` (send_bytes /
    recv_bytes, or send / recv of objects), the queues, pyzmq."""

    def rtt(self, warmup: int, n: int) -> list[int]:
        send, recv, clock = self.send, self.receive, time.perf_counter_ns
        msg = self.ping
        out: list[int] = []
        for _ in range(warmup + n):
            t0 = clock()
            send(msg)
            recv()
            out.append(clock() - t0)
        return out[warmup:]

    def echo(self, count: int) -> None:
        send, recv = self.send, self.receive
        for _ in range(count):
            send(recv())

    def tput(self, chunk: int, total: int, warm: int, reps: int) -> list[int]:
        send, recv, clock = self.send, self.receive, time.perf_counter_ns
        message = self.message(chunk)
        out: list[int] = []
        for rep in range(reps + 1):
            count = (total if rep else warm) // chunk
            t0 = clock()
            for _ in range(count):
                send(message)
            recv()
            out.append(clock() - t0)
        return out[1:]

    def sink(self, chunk: int, total: int, warm: int, reps: int, read: int) -> None:
        send, recv = self.send, self.receive
        for rep in range(reps + 1):
            for _ in range((total if rep else warm) // chunk):
                recv()
            send(_ACK)


class _AsyncMessages(_MessageTransport):
    """An async message transport: aipc UNIX seqpacket sockets, object
    channels, zmq.asyncio; the same loops as ``_Messages``, awaited."""

    async def rtt(self, warmup: int, n: int) -> list[int]:
        send, receive, clock = self.send, self.receive, time.perf_counter_ns
        msg = self.ping
        out: list[int] = []
        for _ in range(warmup + n):
            t0 = clock()
            await send(msg)
            await receive()
            out.append(clock() - t0)
        return out[warmup:]

    async def echo(self, count: int) -> None:
        send, receive = self.send, self.receive
        for _ in range(count):
            await send(await receive())

    async def tput(self, chunk: int, total: int, warm: int, reps: int) -> list[int]:
        return await _transfers(
            self.send, self.receive, self.message(chunk), chunk, total, warm, reps
        )

    async def sink(
        self, chunk: int, total: int, warm: int, reps: int, read: int
    ) -> None:
        send, receive = self.send, self.receive
        for rep in range(reps + 1):
            for _ in range((total if rep else warm) // chunk):
                await receive()
            await send(_ACK)


class _RingBatches(_AsyncMessages):
    """The msgs/s phase of the batched ring row: ``send_many`` of
    ``RING_BATCH`` messages at a time, ``receive_many`` of whatever has
    arrived; the acknowledgement is one message, as on the other rows."""

    def __init__(self, tx: Any, rx: Any) -> None:
        super().__init__(tx.send, rx.receive)
        self.send_many = tx.send_many
        self.receive_many = rx.receive_many

    async def tput(self, chunk: int, total: int, warm: int, reps: int) -> list[int]:
        send_many, ack, clock = self.send_many, self.receive, time.perf_counter_ns
        batch = [bytes(chunk)] * RING_BATCH
        out: list[int] = []
        for rep in range(reps + 1):
            full, rest = divmod((total if rep else warm) // chunk, RING_BATCH)
            t0 = clock()
            for _ in range(full):
                await send_many(batch)
            if rest:
                await send_many(batch[:rest])
            await ack()
            out.append(clock() - t0)
        return out[1:]

    async def sink(
        self, chunk: int, total: int, warm: int, reps: int, read: int
    ) -> None:
        receive_many = self.receive_many
        for rep in range(reps + 1):
            left = (total if rep else warm) // chunk
            while left > 0:
                left -= len(await receive_many())
            await self.send(_ACK)


class _RingLoans(_AsyncMessages):
    """The transfers of the zero-copy ring row: each message is lent in the
    ring (``loan``), given an 8-byte header in place and committed; the
    receiver reads that header in place (``receive_lease``) and releases it."""

    def __init__(self, tx: Any, rx: Any) -> None:
        super().__init__(tx.send, rx.receive)
        self.loan = tx.loan
        self.receive_lease = rx.receive_lease

    async def tput(self, chunk: int, total: int, warm: int, reps: int) -> list[int]:
        loan, ack, clock = self.loan, self.receive, time.perf_counter_ns
        header = _MSG
        out: list[int] = []
        for rep in range(reps + 1):
            count = (total if rep else warm) // chunk
            t0 = clock()
            for _ in range(count):
                lent = await loan(chunk)
                lent.data[:8] = header
                lent.commit()
            await ack()
            out.append(clock() - t0)
        return out[1:]

    async def sink(
        self, chunk: int, total: int, warm: int, reps: int, read: int
    ) -> None:
        receive_lease = self.receive_lease
        for rep in range(reps + 1):
            for _ in range((total if rep else warm) // chunk):
                lease = await receive_lease()
                if lease.data[:8] != _MSG:
                    raise _WrongReply("a lent message lost its header")
                lease.release()
            await self.send(_ACK)


#: The iceoryx2 rows: the largest message of the small-message services, and
#: how many samples a subscriber may hold (more than a msgs/s repetition sends:
#: with a 16-sample buffer, iceoryx2 0.10's RetryUntilDelivered publisher hung
#: after a few hundred back-to-back messages in a trial run).
_IOX_SMALL = max(len(_MSG), MSG_SIZE)
_IOX_SMALL_BUFFER = 4096
#: ... and of the driver→peer service of the 1 MiB messages.
_IOX_BIG = 1 << 20
_IOX_BIG_BUFFER = 64
#: ... and of the in-place row's, which sends ZERO_COPY_SCALE times as many
#: (384 per repetition by default): its publisher hung within the first
#: repetition with 64 (RetryUntilDelivered again). Only the 8-byte headers are
#: written, so the larger segment costs address space, not memory.
_IOX_IN_PLACE_BUFFER = 512
#: A polling receiver polls without a pause this long (ns), then sleeps
#: ``_IOX_IDLE_S`` between polls: an idle peer does not burn a core.
_IOX_SPIN_NS = 2_000_000
_IOX_IDLE_S = 0.0005


class _Iceoryx2:
    """iceoryx2 publish-subscribe of u8 slices (its Python bindings).

    Each direction has a service of small messages (round trips, msgs/s,
    acknowledgements); driver→peer also one of 1 MiB messages. Sending loans
    a sample, copies the message in (``memmove``) and sends it; receiving
    copies it out (``string_at``), or (``in_place``) reads its first 8 bytes
    where it lies. A receiver that finds nothing polls again at once
    (``blocking`` False: busy polling, see ``_IOX_SPIN_NS``) or sleeps in
    ``Listener.blocking_wait()`` of an event service, which the sender
    notifies after every send.
    """

    def __init__(self, ctx: _Ctx, blocking: bool, in_place: bool) -> None:
        import iceoryx2 as iox2  # type: ignore[import-untyped]

        iox2.set_log_level(iox2.LogLevel.Error)
        self.iox2 = iox2
        self.blocking = blocking
        self.in_place = in_place
        self.ports: list[Any] = []  # deleted in reverse order by close()
        self.node = (
            iox2.NodeBuilder.new()
            .signal_handling_mode(iox2.SignalHandlingMode.Disabled)
            .create(iox2.ServiceType.Ipc)
        )
        base: str = ctx.tx  # the same name on both sides
        out, into = ("ab", "ba") if ctx.driver else ("ba", "ab")
        self.pub_small = self._publisher(f"{base}/{out}/small", _IOX_SMALL)
        self.sub_small = self._subscriber(f"{base}/{into}/small", _IOX_SMALL)
        self.pub_big: Any = None
        self.sub_big: Any = None
        if ctx.driver:
            self.pub_big = self._publisher(f"{base}/ab/big", _IOX_BIG)
        else:
            self.sub_big = self._subscriber(f"{base}/ab/big", _IOX_BIG)
        self.notify: Callable[[], object] | None = None
        self.listener: Any = None
        if blocking:
            notifier = self._event(f"{base}/{out}/event").notifier_builder().create()
            self.ports.append(notifier)
            self.notify = notifier.notify
            self.listener = self._event(f"{base}/{into}/event").listener_builder()
            self.listener = self.listener.create()
            self.ports.append(self.listener)

    def _service(self, name: str, max_len: int) -> Any:
        iox2 = self.iox2
        if max_len == _IOX_SMALL:
            buffer = _IOX_SMALL_BUFFER
        else:
            buffer = _IOX_IN_PLACE_BUFFER if self.in_place else _IOX_BIG_BUFFER
        return (
            self.node.service_builder(iox2.ServiceName.new(name))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .max_publishers(1)
            .max_subscribers(1)
            .history_size(0)
            .subscriber_max_buffer_size(buffer)
            .open_or_create()
        ), buffer

    def _publisher(self, name: str, max_len: int) -> Any:
        service, _ = self._service(name, max_len)
        iox2 = self.iox2
        pub = (
            service.publisher_builder()
            .initial_max_slice_len(max_len)
            .allocation_strategy(iox2.AllocationStrategy.Static)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        self.ports.append(pub)
        return pub

    def _subscriber(self, name: str, max_len: int) -> Any:
        service, buffer = self._service(name, max_len)
        sub = service.subscriber_builder().buffer_size(buffer).create()
        self.ports.append(sub)
        return sub

    def _event(self, name: str) -> Any:
        return (
            self.node.service_builder(self.iox2.ServiceName.new(name))
            .event()
            .max_notifiers(1)
            .max_listeners(1)
            .open_or_create()
        )

    def connect(self) -> None:
        """The driver, once its ports exist: the peer's exist already, so its
        publishers see their subscribers before the first send (there is no
        history to catch up with). The peer's publisher finds the driver's
        subscriber when it first sends: a send updates the connections."""
        for port in self.ports:
            update = getattr(port, "update_connections", None)
            if update is not None:
                update()

    def close(self) -> None:
        for port in reversed(self.ports):
            port.delete()
        self.ports.clear()
        self.pub_small = self.sub_small = self.pub_big = self.sub_big = None
        self.listener = self.notify = None
        del self.node

    # the two halves of every phase

    def _send(self, pub: Any, data: bytes) -> None:
        sample = pub.loan_slice_uninit(len(data))
        ctypes.memmove(sample.payload().as_ptr(), data, len(data))
        sample.assume_init().send()
        if self.notify is not None:
            self.notify()

    def _sample(self, sub: Any) -> Any:
        receive = sub.receive
        sample = receive()
        if sample is not None:
            return sample
        if self.listener is not None:
            wait = self.listener.blocking_wait
            while sample is None:
                wait()
                sample = receive()
            return sample
        clock = time.perf_counter_ns
        deadline = clock() + _IOX_SPIN_NS
        while sample is None:
            if clock() > deadline:
                time.sleep(_IOX_IDLE_S)
            sample = receive()
        return sample

    def _receive(self, sub: Any) -> bytes:
        sample = self._sample(sub)
        payload = sample.payload()
        data = ctypes.string_at(payload.as_ptr(), payload.len())
        sample.delete()
        return data

    def _receive_in_place(self, sub: Any) -> None:
        sample = self._sample(sub)
        if ctypes.string_at(sample.payload().as_ptr(), 8) != _MSG:
            raise _WrongReply("a sample lost its header")
        sample.delete()

    def rtt(self, warmup: int, n: int) -> list[int]:
        send, receive, clock = self._send, self._receive, time.perf_counter_ns
        pub, sub, msg = self.pub_small, self.sub_small, _MSG
        out: list[int] = []
        for _ in range(warmup + n):
            t0 = clock()
            send(pub, msg)
            receive(sub)
            out.append(clock() - t0)
        return out[warmup:]

    def echo(self, count: int) -> None:
        send, receive = self._send, self._receive
        pub, sub = self.pub_small, self.sub_small
        for _ in range(count):
            send(pub, receive(sub))

    def tput(self, chunk: int, total: int, warm: int, reps: int) -> list[int]:
        clock = time.perf_counter_ns
        pub = self.pub_small if chunk <= _IOX_SMALL else self.pub_big
        send: Callable[[Any, bytes], None] = self._send
        if self.in_place:

            def send(pub: Any, data: bytes) -> None:
                sample = pub.loan_slice_uninit(chunk)
                ctypes.memmove(sample.payload().as_ptr(), _MSG, 8)
                sample.assume_init().send()

        message = bytes(chunk)
        out: list[int] = []
        for rep in range(reps + 1):
            count = (total if rep else warm) // chunk
            t0 = clock()
            for _ in range(count):
                send(pub, message)
            self._receive(self.sub_small)
            out.append(clock() - t0)
        return out[1:]

    def sink(self, chunk: int, total: int, warm: int, reps: int, read: int) -> None:
        sub = self.sub_small if chunk <= _IOX_SMALL else self.sub_big
        receive = self._receive_in_place if self.in_place else self._receive
        for rep in range(reps + 1):
            for _ in range((total if rep else warm) // chunk):
                receive(sub)
            self._send(self.pub_small, _ACK)

    def set_capacity(self, size: int) -> int:
        raise NotImplementedError

    def capacity(self) -> int | None:
        return None


# --------------------------------------------------------------------------
# walking the phases (the same order in both processes)


def _cap(ctx: _Ctx, t: _AsyncTransport | _SyncTransport, size: int) -> None:
    if not ctx.driver:
        return
    try:
        granted = t.set_capacity(size)
    except (OSError, ValueError) as exc:
        ctx.emit(event="cap", size=size, granted=t.capacity(), error=str(exc))
    else:
        ctx.emit(event="cap", size=size, granted=granted)


async def _walk_async(ctx: _Ctx, t: _AsyncTransport) -> None:
    ctx.handshake()
    ctx.emit(event="ready")
    for block in ctx.blocks:
        if ctx.driver and not ctx.wait_go():
            return
        for ph in block:
            op = ph["op"]
            if op == "pin":
                ctx.pin(ph)
            elif op == "cap":
                _cap(ctx, t, ph["size"])
            elif op == "rtt":
                if ctx.driver:
                    ctx.emit(event="start", id=ph["id"])
                    samples = await t.rtt(ph["warmup"], ph["n"])
                    ctx.emit(event="result", id=ph["id"], samples_ns=samples)
                else:
                    await t.echo(ph["warmup"] + ph["n"])
            elif op == "tput":
                args = (ph["chunk"], ph["bytes"], ph["warmup_bytes"], ph["reps"])
                if ctx.driver:
                    ctx.emit(event="start", id=ph["id"])
                    times = await t.tput(*args)
                    result = _tput_result(ph["bytes"], times, t.capacity())
                    ctx.emit(event="result", id=ph["id"], **result)
                else:
                    await t.sink(*args, ph["chunk"])
            elif op == "msgs":
                args = _msgs_args(ph)
                if ctx.driver:
                    ctx.emit(event="start", id=ph["id"])
                    times = await t.tput(*args)
                    ctx.emit(
                        event="result", id=ph["id"], messages=ph["n"], times_ns=times
                    )
                else:
                    await t.sink(*args, ph["read"])
        ctx.emit(event="done")


def _walk_sync(ctx: _Ctx, t: _SyncTransport) -> None:
    ctx.handshake()
    ctx.emit(event="ready")
    for block in ctx.blocks:
        if ctx.driver and not ctx.wait_go():
            return
        for ph in block:
            op = ph["op"]
            if op == "pin":
                ctx.pin(ph)
            elif op == "cap":
                _cap(ctx, t, ph["size"])
            elif op == "rtt":
                if ctx.driver:
                    ctx.emit(event="start", id=ph["id"])
                    samples = t.rtt(ph["warmup"], ph["n"])
                    ctx.emit(event="result", id=ph["id"], samples_ns=samples)
                else:
                    t.echo(ph["warmup"] + ph["n"])
            elif op == "tput":
                args = (ph["chunk"], ph["bytes"], ph["warmup_bytes"], ph["reps"])
                if ctx.driver:
                    ctx.emit(event="start", id=ph["id"])
                    times = t.tput(*args)
                    result = _tput_result(ph["bytes"], times, t.capacity())
                    ctx.emit(event="result", id=ph["id"], **result)
                else:
                    t.sink(*args, ph["chunk"])
            elif op == "msgs":
                args = _msgs_args(ph)
                if ctx.driver:
                    ctx.emit(event="start", id=ph["id"])
                    times = t.tput(*args)
                    ctx.emit(
                        event="result", id=ph["id"], messages=ph["n"], times_ns=times
                    )
                else:
                    t.sink(*args, ph["read"])
        ctx.emit(event="done")


# --------------------------------------------------------------------------
# the families: how each mechanism is opened on each side


def _running_loop_name() -> str:
    import sniffio

    lib = sniffio.current_async_library()
    if lib != "asyncio":
        return lib
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


async def _aipc_main(ctx: _Ctx) -> None:
    import aipc

    ctx.hello(_running_loop_name())
    family = ctx.spec["family"]
    if family == "eventfd":
        out = aipc.EventFd.from_fd(ctx.tx, semaphore=False)
        into = aipc.EventFd.from_fd(ctx.rx, semaphore=False)
        async with out, into:
            await _walk_async(ctx, _AipcEventFds(out, into))
        return
    rx: aipc.PipeReceiveStream
    tx: aipc.PipeSendStream
    if family == "fifo":
        # Receivers open at once; a sender waits for its reader, which the other
        # side opened first: no deadlock whichever process gets there first.
        rx = await aipc.open_fifo_receiver(ctx.rx)
        try:
            tx = await aipc.open_fifo_sender(ctx.tx)
        except BaseException:
            await rx.aclose()
            raise
    else:
        rx = aipc.PipeReceiveStream.from_fd(ctx.rx)
        tx = aipc.PipeSendStream.from_fd(ctx.tx)
    async with rx, tx:
        if family == "channel-pipe":
            # the channels own the pipes; closing the pipes is enough
            sender, receiver = aipc.create_channel(tx), aipc.create_channel(rx)
            await _walk_async(
                ctx, _AsyncMessages(sender.send, receiver.receive, OBJECT)
            )
            return
        transport = _AsyncStreams(
            tx.send, rx.receive, tx.fileno(), set_capacity=tx.set_capacity
        )
        await _walk_async(ctx, transport)


async def _connected(
    ctx: _Ctx,
    listen: Callable[[str], Awaitable[_Accepting[_T]]],
    connect: Callable[[str], Awaitable[_T]],
) -> _T:
    """A connected socket of the socket rows: the peer listens on the row's
    address (an abstract name, so nothing is left behind), says it is ready
    and accepts; the driver connects once it has heard so."""
    if ctx.driver:
        ctx.handshake()
        return await connect(ctx.tx)
    listener = await listen(ctx.rx)
    try:
        ctx.handshake()
        return await listener.accept()
    finally:
        await listener.aclose()


async def _aipc_socket_main(ctx: _Ctx) -> None:
    """aipc UNIX stream and seqpacket sockets, and a channel over a stream."""
    import aipc

    ctx.hello(_running_loop_name())
    family = ctx.spec["family"]
    if family == "seqpacket":

        async def listen_packets(
            address: str,
        ) -> aipc.UnixListener[aipc.UnixSeqpacketStream]:
            return aipc.create_unix_listener(address, kind="seqpacket")

        packets = await _connected(ctx, listen_packets, aipc.connect_unix_seqpacket)
        async with packets:
            await _walk_async(ctx, _AsyncMessages(packets.send, packets.receive))
        return

    async def listen(address: str) -> aipc.UnixListener[aipc.UnixStream]:
        return aipc.create_unix_listener(address)

    stream = await _connected(ctx, listen, aipc.connect_unix_stream)
    async with stream:
        if family == "channel":
            channel = aipc.create_channel(stream)  # it owns the stream
            t: _AsyncTransport = _AsyncMessages(channel.send, channel.receive, OBJECT)
        else:
            t = _AsyncStreams(stream.send, stream.receive, None)
        await _walk_async(ctx, t)


async def _anyio_socket_main(ctx: _Ctx) -> None:
    """anyio's UNIX stream or seqpacket socket streams."""
    import anyio

    ctx.hello(_running_loop_name())
    listen: Callable[[str], Awaitable[_Accepting[Any]]]
    connect: Callable[[str], Awaitable[UNIXSocketStream]]
    if ctx.spec["family"] == "anyio-seqpacket":
        listen = partial(anyio.create_unix_listener, kind=socket.SOCK_SEQPACKET)
        connect = partial(anyio.connect_unix, kind=socket.SOCK_SEQPACKET)
    else:
        listen, connect = anyio.create_unix_listener, anyio.connect_unix
    stream = await _connected(ctx, listen, connect)
    async with stream:
        if ctx.spec["family"] == "anyio-seqpacket":
            # one message per receive: the largest the rows send
            receive = partial(stream.receive, 65536)
            t: _AsyncTransport = _AsyncMessages(stream.send, receive)
        else:
            t = _AsyncStreams(stream.send, stream.receive, None)
        await _walk_async(ctx, t)


async def _aipc_mqueue_main(ctx: _Ctx) -> None:
    """Two POSIX message queues made by the orchestrator: ``tx`` and ``rx`` are
    their names. One message per receive: the transport's ``max_bytes`` goes
    unused."""
    import aipc

    ctx.hello(_running_loop_name())
    rx = await aipc.open_message_queue(ctx.rx, write=False)
    try:
        tx = await aipc.open_message_queue(ctx.tx, read=False)
    except BaseException:
        await rx.aclose()
        raise
    async with rx, tx:
        receive_message = rx.receive

        def receive(_: int) -> Awaitable[bytes]:
            # hands back rx.receive()'s own coroutine: no coroutine layer of
            # its own per message (about 0.5 µs), as the pipe row, which calls
            # rx.receive directly, has none
            return receive_message()

        await _walk_async(ctx, _AsyncStreams(tx.send, receive, None))


async def _aipc_ring_main(ctx: _Ctx) -> None:
    """Two message rings made by the orchestrator: ``tx`` and ``rx`` are the
    hand-off descriptions of this process's ends (see ``_runner._make_rings``)."""
    import aipc
    from aipc import _handoff

    ctx.hello(_running_loop_name())
    family = ctx.spec["family"]

    def end(slot: str, cls: type[_T]) -> _T:
        d = ctx.spec[slot]
        obj: _T = _handoff.rebuild(slot, d["kind"], tuple(d["fds"]), d["meta"], cls)
        return obj

    rx = end("rx", aipc.RingReceiver)
    try:
        tx = end("tx", aipc.RingSender)
    except BaseException:
        await rx.aclose()
        raise
    async with rx, tx:
        if family in ("ring-spin", "ring-zero-copy-spin"):
            rx.spin_us = tx.spin_us = RING_SPIN_US
        t: _AsyncTransport
        if family == "ring-batched":
            t = _RingBatches(tx, rx)
        elif family in ("ring-zero-copy", "ring-zero-copy-spin"):
            t = _RingLoans(tx, rx)
        else:
            t = _AsyncMessages(tx.send, rx.receive)
        await _walk_async(ctx, t)


def _iceoryx2_main(ctx: _Ctx) -> None:
    family = ctx.spec["family"]
    if ctx.driver:
        # the peer creates every service and its ports before it says it is
        # ready: the two processes never race to create one
        ctx.handshake()
    t = _Iceoryx2(
        ctx,
        blocking=family == "iceoryx2-blocking",
        in_place=family == "iceoryx2-zero-copy",
    )
    try:
        if ctx.driver:
            t.connect()
        _walk_sync(ctx, t)  # the peer's handshake
    finally:
        t.close()


async def _aipc_semaphore_main(ctx: _Ctx) -> None:
    import aipc

    ctx.hello(_running_loop_name())
    into = aipc.attach_posix_semaphore(ctx.rx)
    try:
        out = aipc.attach_posix_semaphore(ctx.tx)
    except BaseException:
        await into.aclose()
        raise
    try:
        await _walk_async(ctx, _SemaphoreHandOffs(out, into))
    finally:
        await out.aclose()
        await into.aclose()


async def _aipc_lock_main(ctx: _Ctx) -> None:
    import aipc

    ctx.hello(_running_loop_name())
    locks = [aipc.FileLock(path, create=False) for path in ctx.spec["locks"]]
    try:
        t = _LockHandOffs(
            [lock.acquire for lock in locks],
            [lock.release for lock in locks],
            release_awaits=False,
            driver=ctx.driver,
        )
        for i in sorted(t.held):  # before the handshake: see _LockHandOffs
            locks[i].acquire_nowait()
        await _walk_async(ctx, t)
    finally:
        for lock in locks:
            await lock.aclose()  # releases a lock still held


async def _filelock_main(ctx: _Ctx) -> None:
    from filelock import AsyncFileLock

    ctx.hello(_running_loop_name())
    # filelock's defaults: a waiter tries again every 50 ms
    locks = [AsyncFileLock(path) for path in ctx.spec["locks"]]
    t = _LockHandOffs(
        [lock.acquire for lock in locks],
        [lock.release for lock in locks],
        release_awaits=True,
        driver=ctx.driver,
    )
    try:
        for i in sorted(t.held):  # before the handshake: see _LockHandOffs
            await locks[i].acquire(blocking=False)
        await _walk_async(ctx, t)
    finally:
        for i in t.held:
            await locks[i].release(force=True)


def _signal_numbers(ctx: _Ctx) -> tuple[int, int]:
    """(the signal this process sends, the one it receives)."""
    to_peer, to_driver = _SIGNALS[ctx.spec["family"]]
    return (to_peer, to_driver) if ctx.driver else (to_driver, to_peer)


async def _aipc_signal_main(ctx: _Ctx) -> None:
    import aipc

    ctx.hello(_running_loop_name())
    out, into = _signal_numbers(ctx)
    with aipc.open_signal_receiver(into) as receiver:
        await _walk_async(ctx, _AipcSignals(ctx, receiver, out))


async def _anyio_signal_main(ctx: _Ctx) -> None:
    import anyio

    ctx.hello(_running_loop_name())
    out, into = _signal_numbers(ctx)
    with anyio.open_signal_receiver(signal.Signals(into)) as received:
        await _walk_async(ctx, _AnyioSignals(ctx, received, out))


async def _asyncio_main(ctx: _Ctx) -> None:
    ctx.hello(_running_loop_name())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
        open(ctx.rx, "rb", buffering=0),  # noqa: SIM115 (the transport closes it)
    )
    write_transport, write_protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(loop=loop),
        open(ctx.tx, "wb", buffering=0),  # noqa: SIM115
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    try:
        await _walk_async(ctx, _AsyncStreams(send, reader.read, ctx.tx))
    finally:
        writer.close()
        read_transport.close()
        await asyncio.sleep(0)  # let the transports' close callbacks run


async def _trio_main(ctx: _Ctx) -> None:
    import trio

    ctx.hello("trio")
    rx = trio.lowlevel.FdStream(ctx.rx)
    tx = trio.lowlevel.FdStream(ctx.tx)
    async with rx, tx:
        await _walk_async(ctx, _AsyncStreams(tx.send_all, rx.receive_some, ctx.tx))


def _queues_main(ctx: _Ctx) -> None:
    """multiprocessing.Queue or faster_fifo.Queue: ``a`` carries driver→peer,
    ``b`` peer→driver; both processes inherited both (see ``_share``)."""
    a, b = _share.loads(ctx.spec["shared"])
    out, into = (a, b) if ctx.driver else (b, a)
    if ctx.spec["family"] == "mp-queue":
        _walk_sync(ctx, _Messages(out.put, into.get))
        return
    from faster_fifo import Empty  # type: ignore[import-not-found]

    get = into.get

    def recv() -> bytes:
        # faster_fifo's get times out (10 s by default); the peer may wait
        # longer than that for the driver's next block
        while True:
            try:
                data: bytes = get(True, 60.0)
            except Empty:
                continue
            return data

    _walk_sync(ctx, _Messages(out.put, recv))


def _msgpack() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    """msgspec's msgpack encode and decode, as the object peers use them."""
    import msgspec

    return msgspec.msgpack.Encoder().encode, msgspec.msgpack.Decoder().decode


def _zmq_attach(ctx: _Ctx, sock: Any) -> None:
    """The PAIR socket's address: the peer binds, the driver connects."""
    if ctx.driver:
        sock.connect(ctx.tx)
    else:
        sock.bind(ctx.rx)


def _zmq_main(ctx: _Ctx) -> None:
    """A PAIR socket over ipc://, sync API: bytes, or (zmq-obj) objects
    encoded with msgpack."""
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PAIR)
    try:
        _zmq_attach(ctx, sock)
        if ctx.spec["family"] == "zmq-obj":
            encode, decode = _msgpack()
            send, recv = sock.send, sock.recv
            t = _Messages(lambda obj: send(encode(obj)), lambda: decode(recv()), OBJECT)
        else:
            t = _Messages(sock.send, sock.recv)
        _walk_sync(ctx, t)
    finally:
        # a bounded linger: the last echo or acknowledgement must still leave,
        # but a dead partner must not keep this process alive
        sock.close(linger=1000)
        context.term()


async def _zmq_asyncio_main(ctx: _Ctx) -> None:
    """The zmq-obj row with zmq.asyncio sockets."""
    import zmq
    import zmq.asyncio

    ctx.hello(_running_loop_name())
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.PAIR)
    encode, decode = _msgpack()

    async def send(obj: object) -> None:
        await sock.send(encode(obj))

    async def receive() -> Any:
        return decode(await sock.recv())

    try:
        _zmq_attach(ctx, sock)
        await _walk_async(ctx, _AsyncMessages(send, receive, OBJECT))
    finally:
        sock.close(linger=1000)  # see _zmq_main
        context.term()


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    import uvloop

    return uvloop.new_event_loop


def _anyio_run(main: Callable[[_Ctx], Awaitable[None]], ctx: _Ctx, loop: str) -> None:
    import anyio

    if loop == "trio":
        anyio.run(main, ctx, backend="trio")
    elif loop == "uvloop":
        anyio.run(
            main,
            ctx,
            backend="asyncio",
            backend_options={"loop_factory": _uvloop_factory()},
        )
    else:
        anyio.run(main, ctx, backend="asyncio")


def _run(ctx: _Ctx) -> None:
    family, loop = ctx.spec["family"], ctx.spec["loop"]
    if family in ("pipe", "fifo", "eventfd", "channel-pipe"):
        _anyio_run(_aipc_main, ctx, loop)
    elif family in ("unix", "seqpacket", "channel"):
        _anyio_run(_aipc_socket_main, ctx, loop)
    elif family in ("anyio-unix", "anyio-seqpacket"):
        _anyio_run(_anyio_socket_main, ctx, loop)
    elif family == "zmq-asyncio":
        _anyio_run(_zmq_asyncio_main, ctx, loop)
    elif family == "signal":
        _anyio_run(_aipc_signal_main, ctx, loop)
    elif family == "anyio-signal":
        _anyio_run(_anyio_signal_main, ctx, loop)
    elif family == "mqueue":
        _anyio_run(_aipc_mqueue_main, ctx, loop)
    elif family == "lock":
        _anyio_run(_aipc_lock_main, ctx, loop)
    elif family == "semaphore":
        _anyio_run(_aipc_semaphore_main, ctx, loop)
    elif family in RING_FAMILIES:
        _anyio_run(_aipc_ring_main, ctx, loop)
    elif family in ("iceoryx2", "iceoryx2-blocking", "iceoryx2-zero-copy"):
        ctx.hello("blocking")
        _iceoryx2_main(ctx)
    elif family == "filelock":
        _anyio_run(_filelock_main, ctx, loop)
    elif family == "asyncio":
        factory = _uvloop_factory() if loop == "uvloop" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_asyncio_main(ctx))
    elif family == "trio":
        import trio

        trio.run(_trio_main, ctx)
    elif family == "raw":
        ctx.hello("blocking")
        try:
            _walk_sync(ctx, _RawFds(ctx.tx, ctx.rx))
        finally:
            os.close(ctx.tx)
            os.close(ctx.rx)
    elif family in ("mp", "mp-obj"):
        ctx.hello("blocking")
        with Connection(ctx.tx) as conn:  # tx and rx are the same socket
            if family == "mp-obj":
                _walk_sync(ctx, _Messages(conn.send, conn.recv, OBJECT))
            else:
                _walk_sync(ctx, _Messages(conn.send_bytes, conn.recv_bytes))
    elif family in ("mp-queue", "faster-fifo"):
        ctx.hello("blocking")
        _queues_main(ctx)
    elif family in ("zmq", "zmq-obj"):
        ctx.hello("blocking")
        _zmq_main(ctx)
    else:
        raise ValueError(f"unknown family {family!r}")


def _die_with_parent(parent: int) -> None:
    """If the orchestrator dies (even by SIGKILL), take this process with it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the prctl
        os._exit(3)


def main(argv: list[str]) -> int:
    """Entry point: ``python -m aipc._bench._child SPEC``."""
    spec = json.loads(argv[1])
    _die_with_parent(spec["parent_pid"])
    # The signal mask survives fork and exec. A child of a process that blocks
    # SIGUSR1 (an aipc signal receiver does, in its main thread) would never
    # run anyio's handler for it: the anyio signal rows would wait forever.
    # Every child starts from an empty mask, whatever its ancestors block.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    ctx = _Ctx(spec)
    try:
        _run(ctx)
    except _PeerGone as exc:
        print(f"{ctx.role}: the other process went away ({exc})", file=sys.stderr)
        return 2
    except Exception as exc:
        # the first line of the row's note; the traceback goes to stderr
        message = str(exc) if isinstance(exc, _WrongReply) else repr(exc)
        try:
            ctx.emit(event="error", message=message)
        except OSError:
            pass  # the orchestrator is gone
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
