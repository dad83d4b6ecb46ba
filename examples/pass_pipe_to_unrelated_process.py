"""Pass the write end of a pipe to an unrelated process over a UNIX socket.

The helper process is started without any inherited descriptor (no
``pass_fds``, no hand-off): it finds the parent by the socket's path, receives
a pipe end with ``receive_objects()``, and writes through it. The parent checks
who connected (``peer_credentials()``) before it hands anything over.

Run: python examples/pass_pipe_to_unrelated_process.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile

import anyio

import aipc

HELPER = """
import asyncio, os, sys
import aipc

async def main():
    async with await aipc.connect_unix_stream(sys.argv[1]) as stream:
        [write_end] = await stream.receive_objects()
    async with write_end:  # an aipc.PipeSendStream, as the parent's
        for i in range(3):
            line = f"line {i} from pid {os.getpid()}\\n"
            await write_end.send(line.encode())

asyncio.run(main())
"""


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "broker.sock")
        receive, send = aipc.create_pipe()
        async with receive, aipc.create_unix_listener(path) as listener:
            helper = await anyio.open_process(
                [sys.executable, "-c", HELPER, path],
                stdin=subprocess.DEVNULL,
                stdout=None,
                stderr=None,
            )
            async with helper:
                with anyio.fail_after(10):
                    async with await listener.accept() as conn:
                        peer = conn.peer_credentials()
                        if peer.uid != os.getuid():
                            raise PermissionError(f"unexpected peer {peer}")
                        print(f"the peer is the helper: {peer.pid == helper.pid}")
                        await conn.send_objects(send)
                    # the helper holds the only write end now: EOF when it is done
                    await send.aclose()
                    data = b""
                    try:
                        while True:
                            data += await receive.receive()
                    except anyio.EndOfStream:
                        pass
                    await helper.wait()
            lines = data.decode().splitlines()
            print(f"parent read {len(lines)} lines written by the helper")


if __name__ == "__main__":
    asyncio.run(main())
