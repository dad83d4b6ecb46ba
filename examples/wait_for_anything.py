"""Wait on a process exit, a pipe and a signal at once, in one task group (anyio).

The parent starts a child with ``aipc.open_process`` and waits for three kinds
of events, one task each:

- data on a pipe whose write end it handed to the child (``handoff=``);
- a signal: the child sends its parent SIGUSR1 with a value,
  ``aipc.send_signal(os.getppid(), signal.SIGUSR1, 42)``, and the parent's
  ``aipc.open_signal_receiver`` reads who sent it and the value;
- the child's exit, through its pidfd (``Process.wait()``), after which
  nothing more can come, so that task cancels the others.

Each task prints its event as it comes. The child does one thing at a time
and waits for the parent to acknowledge it (through an ``EventFd``, handed off
too), so that the output comes in a fixed order; without that handshake the
events would still all arrive, in whatever order the kernel reports them.

It is written with anyio, so the same code runs on every backend: choose
with ``--backend asyncio`` (the default), ``uvloop`` or ``trio``. Neither the
pidfd nor the signal receiver depends on who handles SIGCHLD, which differs
on each.

Run it with ``python examples/wait_for_anything.py [--backend trio]``; it
prints::

    pipe: b'hello from the child'
    SIGUSR1 from the child, value 42
    child exited with 7
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

import aipc

T = TypeVar("T")


async def child() -> int:
    """Write to the pipe, then signal the parent, then exit with status 7."""
    async with (
        aipc.inherit("data", aipc.PipeSendStream) as data,
        aipc.inherit("acks", aipc.EventFd) as acks,
    ):
        with anyio.fail_after(10):  # never wait forever on another process
            await data.send(b"hello from the child")
            await acks.wait()
            aipc.send_signal(os.getppid(), signal.SIGUSR1, 42)
            await acks.wait()
    return 7


async def parent(backend: str) -> None:
    # Open the receiver before the child exists: from here on SIGUSR1 is
    # queued for us instead of running its default action (ending the process).
    with aipc.open_signal_receiver(signal.SIGUSR1) as signals:
        data_receive, data_send = aipc.create_pipe()
        async with data_receive, aipc.EventFd() as acks:
            async with data_send:  # the child's end: our copy closes at once
                process = await aipc.open_process(
                    [sys.executable, __file__, "--child", "--backend", backend],
                    handoff={"data": data_send, "acks": acks},
                    stdin=None,
                    stdout=None,
                    stderr=None,
                )
            async with process:

                async def on_data() -> None:
                    async for chunk in data_receive:  # ends when the child exits
                        print(f"pipe: {chunk!r}")
                        acks.set()

                async def on_signal() -> None:
                    async for info in signals:
                        sender = "the child" if info.pid == process.pid else info.pid
                        print(f"{info.name} from {sender}, value {info.value}")
                        acks.set()

                async def on_exit() -> None:
                    print(f"child exited with {await process.wait()}")
                    tg.cancel_scope.cancel()  # stop waiting for the others

                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(on_data)
                        tg.start_soon(on_signal)
                        tg.start_soon(on_exit)


def run(function: Callable[..., Awaitable[T]], *args: object, backend: str) -> T:
    if backend == "uvloop":
        import uvloop

        options = {"loop_factory": uvloop.new_event_loop}
        return anyio.run(function, *args, backend="asyncio", backend_options=options)
    return anyio.run(function, *args, backend=backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.exit(run(child, backend=args.backend))
    run(parent, args.backend, backend=args.backend)


if __name__ == "__main__":
    main()
