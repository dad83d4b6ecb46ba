"""A worker process fed through object channels over pipes (trio).

The parent creates two pipes, starts this same script as the worker with the
worker's ends in ``pass_fds``, and wraps its own ends in channels. It sends
``Task`` structs and reads ``Done`` structs back, in two tasks of a nursery.
The worker rebuilds its pipe ends with ``from_fd``, wraps them the same way,
and answers until the parent closes its channel (end of stream).

Run it with ``python examples/channel_pipe_trio.py``; it prints
``worker squared 20 numbers; sum 2470`` and ``worker exited with 0``.
"""

from __future__ import annotations

import sys

import msgspec
import trio

import aipc

COUNT = 20


class Task(msgspec.Struct):
    """Work for the worker."""

    number: int


class Done(msgspec.Struct):
    """The worker's answer."""

    number: int
    square: int


async def worker(task_fd: int, done_fd: int) -> None:
    """Square every number until the parent closes the task channel."""
    tasks = aipc.create_channel(
        aipc.PipeReceiveStream.from_fd(task_fd), codec=aipc.MsgpackCodec(Task)
    )
    done = aipc.create_channel(
        aipc.PipeSendStream.from_fd(done_fd), codec=aipc.MsgpackCodec(Done)
    )
    async with tasks, done:
        async for task in tasks:
            await done.send(Done(task.number, task.number**2))


async def parent() -> None:
    """Start the worker, send it tasks, collect the answers."""
    task_receive, task_send = aipc.create_pipe()
    done_receive, done_send = aipc.create_pipe()
    tasks = aipc.create_channel(task_send, codec=aipc.MsgpackCodec(Task))
    answers = aipc.create_channel(done_receive, codec=aipc.MsgpackCodec(Done))
    async with answers:
        # the worker's ends: pass them, then close our copies, so that each
        # side sees end of stream when the other closes
        async with task_receive, done_send:
            fds = [task_receive.fileno(), done_send.fileno()]
            process = await trio.lowlevel.open_process(
                [sys.executable, __file__, "worker", *map(str, fds)], pass_fds=fds
            )
        try:
            total = received = 0

            async def produce() -> None:
                async with tasks:  # closing it ends the worker's loop
                    for number in range(COUNT):
                        await tasks.send(Task(number))

            with trio.fail_after(10):  # never wait forever on another process
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(produce)
                    async for done in answers:
                        total += done.square
                        received += 1
                returncode = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
    print(f"worker squared {received} numbers; sum {total}")
    print(f"worker exited with {returncode}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        trio.run(worker, int(sys.argv[2]), int(sys.argv[3]))
    else:
        trio.run(parent)
