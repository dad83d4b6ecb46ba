"""One 8-byte round trip between two processes, in isolation: aipc's pipe
against the loop's own pipe streams, with the context switches it took.

Usage::

    python benchmarks/pair.py {aipc,streams} {asyncio,uvloop,trio} \
        [--cpus 0,0] [--count 10000] [--max-bytes 8]

``aipc bench`` measures the same round trip among many rows; this script runs
only the one pair, so that ``strace -c -f`` or ``perf stat`` around it count
that pair alone. ``--cpus D,P`` pins the driver and its peer (``0,0``: one
CPU, ``0,1``: across the cores). ``--max-bytes`` is the size each receive asks
for: 8, the message's size, is the bench's pattern; a larger one makes every
read short. ``streams`` is asyncio's ``connect_read_pipe`` /
``connect_write_pipe`` (on asyncio and uvloop) or trio's ``FdStream``.
Prints the median round trip and the context switches per round trip of
each side (voluntary: it slept; involuntary: it was preempted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

WARMUP = 500
MESSAGE = b"8 bytes!"

Send = Callable[[bytes], Awaitable[Any]]
Receive = Callable[[int], Awaitable[bytes]]


def _switches() -> tuple[int, int]:
    counts = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name.endswith("ctxt_switches"):
                counts[name] = int(value)
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


async def _endpoints(mode: str, backend: str, rx: int, tx: int) -> tuple[Send, Receive]:
    if mode == "aipc":
        import aipc

        receiver = aipc.PipeReceiveStream.from_fd(rx)
        sender = aipc.PipeSendStream.from_fd(tx)
        return sender.send, receiver.receive
    if backend == "trio":
        import trio

        rs, ts = trio.lowlevel.FdStream(rx), trio.lowlevel.FdStream(tx)
        return ts.send_all, rs.receive_some
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
        open(rx, "rb", buffering=0),  # noqa: SIM115 (the transport closes it)
    )
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(loop=loop),
        open(tx, "wb", buffering=0),  # noqa: SIM115
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    return send, reader.read


async def _side(
    args: argparse.Namespace, driver: bool, rx: int, tx: int
) -> tuple[list[int], tuple[int, int]]:
    send, receive = await _endpoints(args.mode, args.backend, rx, tx)
    size, clock, samples = args.max_bytes, time.perf_counter_ns, []
    before = _switches()
    for _ in range(WARMUP + args.count):
        if driver:
            t0 = clock()
            await send(MESSAGE)
            got = 0
            while got < len(MESSAGE):
                got += len(await receive(size))
            samples.append(clock() - t0)
        else:
            data = await receive(size)
            while len(data) < len(MESSAGE):
                data += await receive(size)
            await send(data)
    after = _switches()
    return samples[WARMUP:], (after[0] - before[0], after[1] - before[1])


def _run(args: argparse.Namespace, driver: bool, rx: int, tx: int) -> Any:
    main = _side(args, driver, rx, tx)
    if args.backend == "trio":
        import trio

        async def trio_main() -> Any:
            return await main

        return trio.run(trio_main)
    if args.backend == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["aipc", "streams"])
    parser.add_argument("backend", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--cpus", default="0,0", help="driver,peer CPUs (0,0)")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--max-bytes", type=int, default=len(MESSAGE))
    args = parser.parse_args()
    driver_cpu, peer_cpu = (int(c) for c in args.cpus.split(","))
    flags = os.O_CLOEXEC | os.O_NONBLOCK
    to_peer, to_driver = os.pipe2(flags), os.pipe2(flags)
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {peer_cpu})
            _, switches = _run(args, False, to_peer[0], to_driver[1])
            os.write(result_w, b"%d %d" % switches)
        finally:
            os._exit(0)
    os.sched_setaffinity(0, {driver_cpu})
    samples, (vol, invol) = _run(args, True, to_driver[0], to_peer[1])
    os.waitpid(pid, 0)
    peer_vol, peer_invol = (int(n) for n in os.read(result_r, 64).split())
    trips = WARMUP + args.count
    print(
        f"{args.mode} {args.backend} cpus {args.cpus} max_bytes {args.max_bytes}: "
        f"median {statistics.median(samples) / 1000:.2f} µs; context switches "
        f"per round trip: driver {vol / trips:.2f} + {invol / trips:.2f}, "
        f"peer {peer_vol / trips:.2f} + {peer_invol / trips:.2f} "
        "(voluntary + involuntary)"
    )


if __name__ == "__main__":
    main()
