"""Per-message cost of aipc's stream path, without the kernel's cross-process wake-up.

Two pipes, one event loop, a ping-pong of 8-byte messages between two tasks: the
time per round trip is the Python and syscall cost of two sends and two
receives (each receive waits on the loop). Beside aipc it runs the loop's own
pipe streams (asyncio/uvloop: connect_read_pipe + StreamReader/StreamWriter;
trio: FdStream), so the two are compared in the same process.

    python benchmarks/inprocess.py asyncio|uvloop|trio [ROUND_TRIPS] [ring]

With ``ring`` the comparison is aipc's message ring (two rings, the same
ping-pong) against aipc's pipe instead.

glibc's mmap threshold is raised first (asyncio's pipe transport reads 256 KiB
at a time, which otherwise costs an mmap/munmap per message), as ``aipc
bench`` does by running its throughput phases first.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import anyio

import aipc

_warm = bytearray(1 << 20)
del _warm


async def _ping_pong(make_pair: Any, n: int) -> float:
    # two (receiver, sender) pairs from make_pair, an echo task on the first,
    # n 8-byte round trips from this one; seconds per round trip
    ar, aw = make_pair()
    br, bw = make_pair()

    async def echo() -> None:
        while True:
            try:
                data = await ar.receive()
            except anyio.EndOfStream:
                break
            await bw.send(data)

    async with ar, aw, br, bw, anyio.create_task_group() as tg:
        tg.start_soon(echo)
        start = time.perf_counter()
        for _ in range(n):
            await aw.send(b"12345678")
            await br.receive()
        elapsed = time.perf_counter() - start
        await aw.aclose()
    return elapsed / n


async def _aipc(n: int) -> float:
    return await _ping_pong(aipc.create_pipe, n)


async def _aipc_ring(n: int) -> float:
    # spin_us=0: each receive that finds its ring empty sleeps on its
    # doorbell through the loop
    return await _ping_pong(aipc.create_ring, n)


async def _asyncio_streams(n: int) -> float:
    loop = asyncio.get_running_loop()

    async def pair() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = os.pipe()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(w, "wb", 0)
        )
        return reader, asyncio.StreamWriter(transport, protocol, None, loop)

    ar, aw = await pair()
    br, bw = await pair()

    async def echo() -> None:
        while data := await ar.read(65536):
            bw.write(data)

    task = asyncio.ensure_future(echo())
    start = time.perf_counter()
    for _ in range(n):
        aw.write(b"12345678")
        await br.read(65536)
    elapsed = time.perf_counter() - start
    aw.close()
    await task
    bw.close()
    return elapsed / n


async def _trio_fdstream(n: int) -> float:
    import trio

    a = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    b = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    ar, aw = trio.lowlevel.FdStream(a[0]), trio.lowlevel.FdStream(a[1])
    br, bw = trio.lowlevel.FdStream(b[0]), trio.lowlevel.FdStream(b[1])

    async def echo() -> None:
        while data := await ar.receive_some(65536):
            await bw.send_all(data)

    async with ar, aw, br, bw, trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        start = time.perf_counter()
        for _ in range(n):
            await aw.send_all(b"12345678")
            await br.receive_some(65536)
        elapsed = time.perf_counter() - start
        await aw.aclose()
    return elapsed / n


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    ring = len(sys.argv) > 3 and sys.argv[3] == "ring"

    async def run() -> None:
        peer = _trio_fdstream if backend == "trio" else _asyncio_streams
        name = "trio FdStream" if backend == "trio" else f"{backend} pipe streams"
        if ring:
            peer, name = _aipc_ring, "aipc ring"
        for label, measure in ((name, peer), ("aipc pipe", _aipc)):
            per_trip = await measure(n) * 1e6
            print(f"{backend:8} {label:22} {per_trip:7.2f} µs per round trip")

    if backend == "uvloop":
        import uvloop

        options = {"loop_factory": uvloop.new_event_loop}
        anyio.run(run, backend="asyncio", backend_options=options)
    else:
        anyio.run(run, backend=backend)


if __name__ == "__main__":
    main()
