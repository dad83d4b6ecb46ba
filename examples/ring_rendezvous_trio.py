"""Two producers find one consumer by name, each over its own ring (trio).

The consumer listens under a name (``aipc.create_ring_listener``: an abstract
UNIX socket of this user, nothing on disk). Each producer, a separate process
that knows only the name, calls ``aipc.connect_ring(name)`` and gets the
sending end of a ring made for it; the consumer's ``accept()`` returns the
receiving end. One ring per producer is how aipc rings take several
producers: the consumer receives from each in its own task.

Run it with ``python examples/ring_rendezvous_trio.py``; it prints
``producer a: 100 messages``, ``producer b: 100 messages`` and
``consumer got 200 messages from 2 producers``.
"""

from __future__ import annotations

import os
import sys

import trio

import aipc

PER_PRODUCER = 100


async def producer(name: str, label: str) -> None:
    """A separate process: connect by name, send, close."""
    sender = await aipc.connect_ring(name)
    async with sender:
        for i in range(PER_PRODUCER):
            await sender.send(f"{label} {i}".encode())


async def consumer() -> None:
    name = f"example-{os.getpid()}"  # any name this user's processes agree on
    counts: dict[str, int] = {}

    async def drain(receiver: aipc.RingReceiver) -> None:
        async with receiver:
            async for item in receiver:  # until the producer closes its end
                label, _ = item.decode().split()
                counts[label] = counts.get(label, 0) + 1

    async with aipc.create_ring_listener(name, capacity=1 << 16) as listener:
        processes = [
            await trio.lowlevel.open_process(
                [sys.executable, __file__, "producer", name, label]
            )
            for label in ("a", "b")
        ]
        try:
            with trio.fail_after(10):  # never wait forever on another process
                async with trio.open_nursery() as nursery:
                    for _ in processes:
                        nursery.start_soon(drain, await listener.accept())
                for process in processes:
                    if await process.wait() != 0:
                        raise SystemExit(f"a producer exited with {process.returncode}")
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    for label in sorted(counts):
        print(f"producer {label}: {counts[label]} messages")
    print(f"consumer got {sum(counts.values())} messages from {len(counts)} producers")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "producer":
        trio.run(producer, sys.argv[2], sys.argv[3])
    else:
        trio.run(consumer)


if __name__ == "__main__":
    main()
