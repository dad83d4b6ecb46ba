"""A producer and a consumer talking over aipc pipes into a child process (trio).

The same program as ``pipe_child_asyncio.py``, inside a trio nursery under
``trio.run``: aipc streams are anyio streams, so nothing else changes. The
parent passes the child's pipe ends with ``pass_fds`` and closes its own
copies; the child rebuilds them with ``from_fd`` and acknowledges each line
until the parent closes the pipe.

Run it with ``python examples/pipe_child_trio.py``; it prints
``consumer got 100 messages``.
"""

from __future__ import annotations

import sys

import anyio
import trio
from anyio.streams.buffered import BufferedByteReceiveStream

import aipc

MESSAGES = 100


async def receive_line(stream: BufferedByteReceiveStream) -> bytes | None:
    """The next line without its newline, or None at a clean end of stream."""
    try:
        return await stream.receive_until(b"\n", aipc.PIPE_BUF)
    except anyio.IncompleteRead:
        if stream.buffer:
            raise  # the peer stopped in the middle of a line
        return None


async def child(data_fd: int, ack_fd: int) -> None:
    """The consumer: read lines until end of stream, acknowledge each one."""
    # from_fd takes ownership of each inherited fd: the streams close them.
    async with (
        aipc.PipeReceiveStream.from_fd(data_fd) as data,
        aipc.PipeSendStream.from_fd(ack_fd) as acks,
    ):
        lines = BufferedByteReceiveStream(data)
        while (line := await receive_line(lines)) is not None:
            # each line is far below PIPE_BUF, so each send is one atomic write
            await acks.send(b"ack " + line + b"\n")


async def parent() -> None:
    """The producer: start the child, send lines, count the acknowledgements."""
    data_receive, data_send = aipc.create_pipe()
    ack_receive, ack_send = aipc.create_pipe()
    async with data_send, ack_receive:
        # The child's ends: pass them, then close our copies right away, so
        # that the child sees end of stream when we close data_send and we see
        # it when the child exits.
        async with data_receive, ack_send:
            child_fds = [data_receive.fileno(), ack_send.fileno()]
            process = await anyio.open_process(
                [sys.executable, __file__, "child", *map(str, child_fds)],
                pass_fds=child_fds,
                stdin=None,
                stdout=None,
                stderr=None,
            )
        try:
            acknowledged = 0

            async def produce() -> None:
                async with data_send:  # closing it is the child's end of stream
                    for i in range(MESSAGES):
                        await data_send.send(f"message {i}\n".encode())

            async def read_acks() -> None:
                nonlocal acknowledged
                lines = BufferedByteReceiveStream(ack_receive)
                while (line := await receive_line(lines)) is not None:
                    assert line == f"ack message {acknowledged}".encode(), line
                    acknowledged += 1

            with trio.fail_after(10):  # never wait forever on another process
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(produce)
                    nursery.start_soon(read_acks)
                returncode = await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.aclose()  # reaps the child
    if returncode != 0:
        raise SystemExit(f"child exited with {returncode}")
    print(f"consumer got {acknowledged} messages")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        trio.run(child, int(sys.argv[2]), int(sys.argv[3]))
    else:
        trio.run(parent)


if __name__ == "__main__":
    main()
