"""A producer child and a consumer parent over a shared-memory ring (asyncio).

The parent creates a message ring, hands its sending end to a child process
with ``aipc.open_process(..., handoff=...)`` and closes its own copy of that
end. The child rebuilds it with ``aipc.inherit``, sends 1000 small messages in
batches (``send_many``: one publish and at most one wake-up per batch) and
closes the ring. The parent reads the first message in place (a zero-copy
lease), the rest in batches, until end of stream.

Run it with ``python examples/ring_producer_consumer_asyncio.py``; it prints
``first message, read in place: item 0`` and then
``consumer got 1000 messages, sum 499500``.
"""

from __future__ import annotations

import asyncio
import sys

import anyio

import aipc

MESSAGES = 1000


async def producer() -> None:
    """The child: send MESSAGES numbered items, 100 per batch, then close."""
    sender = aipc.inherit("items", aipc.RingSender)
    async with sender:  # closing is the consumer's end of stream
        for start in range(0, MESSAGES, 100):
            await sender.send_many(
                [f"item {i}".encode() for i in range(start, start + 100)]
            )


async def consumer() -> None:
    """The parent: start the producer, receive until end of stream."""
    receiver, sender = aipc.create_ring(1 << 16)
    async with receiver:
        process = await aipc.open_process(
            [sys.executable, __file__, "producer"],
            handoff={"items": sender},
            stdin=None,
            stdout=None,
            stderr=None,
        )
        async with process:
            await sender.aclose()  # the child has its own copy now
            with anyio.fail_after(10):  # never wait forever on another process
                # the first one in place: a read-only view into shared memory,
                # valid until the lease is released (the with block)
                with await receiver.receive_lease() as data:
                    print(f"first message, read in place: {bytes(data).decode()}")
                count, total = 1, 0
                while True:
                    try:
                        batch = await receiver.receive_many()
                    except anyio.EndOfStream:
                        break
                    count += len(batch)
                    total += sum(int(item.split()[1]) for item in batch)
                returncode = await process.wait()
    if returncode != 0:
        raise SystemExit(f"producer exited with {returncode}")
    print(f"consumer got {count} messages, sum {total}")


def main() -> None:
    if sys.argv[1:] == ["producer"]:
        asyncio.run(producer())
    else:
        asyncio.run(consumer())


if __name__ == "__main__":
    main()
