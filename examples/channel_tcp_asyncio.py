"""A typed request/reply service over TCP, with the server in another process
(asyncio).

The parent starts this same script as the server, which listens on
127.0.0.1 with ``aipc.open_tcp_channel_listener`` and prints its port. The
parent connects with ``aipc.connect_tcp_channel`` and sends ``Job`` requests;
the server answers each with a ``Result``. Both directions carry msgspec
structs of a tagged union, so every message is decoded into the right class
and checked. Moving the server to another host changes only the address.

Run it with ``python examples/channel_tcp_asyncio.py``; it prints
``client got 10 results; sum 285`` and ``server handled 10 jobs, exit code 0``.
"""

from __future__ import annotations

import asyncio
import sys

import anyio
import msgspec
from anyio.abc import SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream

import aipc


class Job(msgspec.Struct, tag=True):
    """A request: square this number."""

    number: int


class Result(msgspec.Struct, tag=True):
    """A reply: the square."""

    number: int
    square: int


# one codec for both directions: each message is a Job or a Result, told
# apart by its tag and validated on receipt
CODEC = aipc.MsgpackCodec(Job | Result)


async def server() -> None:
    """Serve one client, then exit."""
    listener = await aipc.open_tcp_channel_listener(local_host="127.0.0.1", codec=CODEC)
    handled = 0
    async with listener, anyio.create_task_group() as tg:

        async def handle(channel: aipc.Channel[Job | Result]) -> None:
            nonlocal handled
            async for job in channel:  # until the client closes its end
                assert isinstance(job, Job)
                await channel.send(Result(job.number, job.number**2))
                handled += 1
            tg.cancel_scope.cancel()  # one client is all this demo serves

        print(listener.extra(SocketAttribute.local_port), flush=True)
        await listener.serve(handle, tg)
    print(f"handled {handled} jobs", flush=True)


async def client() -> None:
    """Start the server process, send it jobs, collect the results."""
    process = await anyio.open_process(
        [sys.executable, __file__, "server"], stdin=None, stderr=None
    )
    try:
        assert process.stdout is not None
        output = BufferedByteReceiveStream(process.stdout)
        with anyio.fail_after(10):  # never wait forever on another process
            port = int(await output.receive_until(b"\n", 100))
            async with await aipc.connect_tcp_channel(
                "127.0.0.1", port, codec=CODEC
            ) as channel:
                results = []
                for number in range(10):
                    await channel.send(Job(number))
                    result = await channel.receive()
                    assert isinstance(result, Result)
                    results.append(result)
            last = await output.receive_until(b"\n", 100)
            returncode = await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()
    print(f"client got {len(results)} results; sum {sum(r.square for r in results)}")
    print(f"server {last.decode()}, exit code {returncode}")


if __name__ == "__main__":
    asyncio.run(server() if sys.argv[1:] == ["server"] else client())
