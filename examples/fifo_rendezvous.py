"""Two writer processes meet one reader at a FIFO found by its path (asyncio).

The parent creates the FIFO (mode 0600, recorded as its own), starts two writer
processes that know only the path, then opens the read end. Each writer's
``open_fifo_sender`` waits until a reader has the FIFO open. Every line is
shorter than PIPE_BUF, so the kernel never interleaves two writers' lines.
The reader uses ``keep_open=True`` so that the first writer to finish does not
end the stream for the other; it stops after the expected number of lines.
Only the creator removes the FIFO: here ``unlink_on_close=True`` does it when
the ``Fifo`` is closed (``Fifo.unlink()`` does it explicitly).

Run it with ``python examples/fifo_rendezvous.py``; it prints
``reader got 100 lines from 2 writers``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import aipc

WRITERS = ("a", "b")
LINES_EACH = 50
LINE_SIZE = 1000  # bytes, newline included: below PIPE_BUF, so atomic


def make_line(writer: str, i: int) -> bytes:
    head = f"{writer} {i} ".encode()
    return head + b"x" * (LINE_SIZE - len(head) - 1) + b"\n"


async def writer(path: str, name: str) -> None:
    # Attach by path: opening does not make this process an owner of the FIFO.
    async with await aipc.open_fifo_sender(path) as send:
        for i in range(LINES_EACH):
            await send.send(make_line(name, i))


async def reader() -> None:
    directory = tempfile.mkdtemp(prefix="aipc-example-")
    try:
        # 0600: only this user can open it. We created it, so we own it, and
        # with unlink_on_close=True leaving the block removes the node.
        path = os.path.join(directory, "rendezvous")
        async with aipc.create_fifo(path, unlink_on_close=True) as fifo:
            seen = await read_from_writers(fifo)
    finally:
        os.rmdir(directory)  # fails if the FIFO were still there
    print(f"reader got {sum(seen.values())} lines from {len(WRITERS)} writers")


async def read_from_writers(fifo: aipc.Fifo) -> dict[str, int]:
    """Start the writers, read every line, reap the writers."""
    processes = []
    try:
        for name in WRITERS:
            processes.append(
                await anyio.open_process(
                    [sys.executable, __file__, "writer", fifo.path, name],
                    stdin=None,
                    stdout=None,
                    stderr=None,
                )
            )
        seen = dict.fromkeys(WRITERS, 0)
        with anyio.fail_after(10):  # never wait forever on other processes
            async with await fifo.open_receiver(keep_open=True) as receive:
                lines = BufferedByteReceiveStream(receive)
                for _ in range(len(WRITERS) * LINES_EACH):
                    line = await lines.receive_until(b"\n", aipc.PIPE_BUF)
                    name, i = line.decode().split(" ", 2)[:2]
                    # whole lines, each writer's in its own order
                    assert line + b"\n" == make_line(name, int(i)), line
                    assert int(i) == seen[name], line
                    seen[name] += 1
            for process in processes:
                if await process.wait() != 0:
                    raise SystemExit(f"writer exited with {process.returncode}")
    finally:
        with anyio.CancelScope(shield=True):
            for process in processes:
                if process.returncode is None:
                    process.kill()
                await process.aclose()  # reaps the writer
    return seen


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "writer":
        asyncio.run(writer(sys.argv[2], sys.argv[3]))
    else:
        asyncio.run(reader())


if __name__ == "__main__":
    main()
