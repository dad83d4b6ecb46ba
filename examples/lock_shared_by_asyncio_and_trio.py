"""One file lock shared by an asyncio process and a trio process.

The parent, under ``asyncio.run``, writes ``0`` to a counter file and starts
this script again under ``trio.run`` (``... trio PATH``). Both processes then
add 1 to the number in the file, 250 times each, each time under an exclusive
``aipc.FileLock`` on that file: read the number, write the number plus one.
Without the lock, the two would read the same number and lose increments; with
it the total is exact. The reads and writes go through ``anyio.Path``, which
runs them in a worker thread on either loop, so neither loop is blocked while
the other process waits in the kernel for the lock (no polling).

Run it with ``python examples/lock_shared_by_asyncio_and_trio.py``; it
prints::

    asyncio process: 250 increments
    trio process: 250 increments
    final total: 500
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import anyio
import trio

import aipc

ROUNDS = 250


async def add(path: str, rounds: int) -> None:
    """Increment the counter in ``path`` ``rounds`` times under the lock."""
    counter = anyio.Path(path)
    lock = aipc.FileLock(path, create=False)
    try:
        for _ in range(rounds):
            async with lock:  # exclusive; released when the block is left
                value = int(await counter.read_text())
                await counter.write_text(str(value + 1))
    finally:
        await lock.aclose()


async def trio_child(path: str) -> None:
    """The other process: a trio program with the same lock."""
    print("ready", flush=True)
    with trio.fail_after(20):  # never wait forever on another process
        await add(path, ROUNDS)
    print(f"trio process: {ROUNDS} increments", flush=True)


async def asyncio_parent() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "counter")
        with open(path, "w") as f:
            f.write("0")
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "trio", path, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            async with asyncio.timeout(20):
                assert await child.stdout.readline() == b"ready\n"
                await add(path, ROUNDS)  # while the trio process does the same
                child_says = (await child.stdout.readline()).decode().strip()
                returncode = await child.wait()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        if returncode != 0:
            raise SystemExit(f"the trio process exited with {returncode}")
        print(f"asyncio process: {ROUNDS} increments")
        print(child_says)
        with open(path) as f:
            print(f"final total: {f.read()}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "trio":
        trio.run(trio_child, sys.argv[2])
    else:
        asyncio.run(asyncio_parent())


if __name__ == "__main__":
    main()
