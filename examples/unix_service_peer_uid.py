"""A UNIX-socket service that knows who is calling, and lets in only its own
user (asyncio).

The service listens on two sockets in a private directory:

- ``user.sock`` admits peers that run as this user (``allow_uids``), and
  answers each by its pid, which the kernel tells it (``SO_PEERCRED``);
- ``admin.sock`` admits only members of an admin group (``allow_gids``),
  which the client of this demo is not in.

A client process connects to both. The listener refuses a peer before the
application sees the connection: ``accept`` never returns it, the refusal is
counted, and the client sees the connection end. The socket files are created
0600 and removed when the listeners close.

Run: python examples/unix_service_peer_uid.py
(examples/unix_service_peer_uid_trio.py runs the same service on trio.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import aipc

CLIENT = """
import os, sys
import anyio, aipc

async def main():
    user_path, admin_path = sys.argv[1:]
    async with await aipc.connect_unix_stream(user_path) as stream:
        await stream.send(b"hello")
        await stream.send_eof()
        reply = b"".join([chunk async for chunk in stream]).decode()
        print(f"user.sock knows my pid: {reply == f'hello, pid {os.getpid()}'}")
    async with await aipc.connect_unix_stream(admin_path) as stream:
        try:
            await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            print("admin.sock closed the connection")

anyio.run(main)
"""


async def main() -> None:
    admin_group = max([os.getgid(), *os.getgroups()]) + 1  # not one of ours
    with tempfile.TemporaryDirectory(prefix="svc-") as directory:
        user_path = os.path.join(directory, "user.sock")
        admin_path = os.path.join(directory, "admin.sock")

        uid = os.getuid()

        async def greet(stream: aipc.UnixStream) -> None:
            peer = stream.peer_credentials()  # taken when the client connected
            print(f"service: admitted a peer running as this user: {peer.uid == uid}")
            request = b"".join([chunk async for chunk in stream])
            await stream.send(request + b", pid %d" % peer.pid)

        async with (
            aipc.create_unix_listener(user_path, allow_uids={uid}) as users,
            aipc.create_unix_listener(admin_path, allow_gids={admin_group}) as admins,
            anyio.create_task_group() as tg,
        ):
            mode = os.stat(user_path).st_mode & 0o777
            print(f"service: listening, socket files mode {mode:o}")
            tg.start_soon(users.serve, greet, tg)
            tg.start_soon(admins.accept)  # never returns: every peer is refused
            client = await anyio.open_process(
                [sys.executable, "-c", CLIENT, user_path, admin_path],
                stdin=subprocess.DEVNULL,
                stderr=None,
            )
            async with client:
                assert client.stdout is not None
                lines = BufferedByteReceiveStream(client.stdout)
                with anyio.fail_after(10):
                    for _ in range(2):
                        line = await lines.receive_until(b"\n", 1024)
                        print(f"client: {line.decode()}")
                    await client.wait()
            stats = admins.statistics()
            counts = f"accepted {stats.accepted}, refused {stats.refused}"
            print(f"service: admin.sock {counts}")
            tg.cancel_scope.cancel()
        print(f"service: socket files removed: {not os.listdir(directory)}")


if __name__ == "__main__":
    asyncio.run(main())
