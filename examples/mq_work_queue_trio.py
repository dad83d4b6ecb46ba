"""A work queue over a POSIX message queue, feeding a trio nursery of workers.

The parent creates the queue (mode 0600, recorded as its own, removed when
it is closed thanks to ``unlink_on_close=True``) and starts its workers in a
nursery. A producer in another process knows only the queue's name: it sends
the jobs, then one stop message per worker. The queue holds at most 4
messages, so the producer waits whenever the workers fall behind
(back-pressure through the kernel, with no thread and no polling).

Each worker opens a handle of its own: the kernel gives each message to
exactly one of them (one handle receives in one task at a time). Jobs go at
priority 1 and the stop messages at priority 0, the lowest, so a stop is
never received while a job is still queued.

Run it with ``python examples/mq_work_queue_trio.py``; it prints
``producer sent 20 jobs`` and ``3 workers squared 20 numbers; sum 2870``.
"""

from __future__ import annotations

import os
import sys
from functools import partial

import trio

import aipc

WORKERS = 3
JOBS = 20
STOP = b"stop"


async def produce(name: str) -> None:
    """The producer process: attach by name (never an owner) and send."""
    async with await aipc.open_message_queue(name, read=False) as jobs:
        for n in range(1, JOBS + 1):
            await jobs.send(str(n).encode(), priority=1)  # waits while full
        for _ in range(WORKERS):
            await jobs.send(STOP, priority=0)
    print(f"producer sent {JOBS} jobs", flush=True)


async def work(name: str, results: list[int]) -> None:
    """One worker: square numbers until a stop message."""
    async with await aipc.open_message_queue(name, write=False) as jobs:
        while (job := await jobs.receive()) != STOP:
            results.append(int(job) ** 2)


async def main() -> None:
    name = f"/aipc-example-work-{os.getpid()}"
    results: list[int] = []
    async with aipc.create_message_queue(
        name, max_messages=4, max_message_size=16, unlink_on_close=True
    ):
        with trio.fail_after(10):  # never wait forever on another process
            async with trio.open_nursery() as nursery:
                for _ in range(WORKERS):
                    nursery.start_soon(work, name, results)
                producer = [sys.executable, __file__, "produce", name]
                nursery.start_soon(partial(trio.run_process, producer, check=True))
    print(f"{WORKERS} workers squared {len(results)} numbers; sum {sum(results)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["produce"]:
        trio.run(produce, sys.argv[2])
    else:
        trio.run(main)
