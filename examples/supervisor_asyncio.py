"""A supervisor that restarts its worker and reloads its config on SIGHUP (asyncio).

The supervisor starts a worker process (this script with ``--worker``) with
``aipc.open_process``, handing it two pipes by name (``handoff=``): the
supervisor sends commands down one, a line of JSON each, and the worker
answers each config on the other. Everything runs under ``asyncio.run`` in
one ``asyncio.TaskGroup`` (the trio version is ``supervisor_trio.py``):

- a task keeps a worker running: it starts one, sends it the config, waits
  for it to exit through its pidfd (``Process.wait()``, no SIGCHLD involved)
  and starts the next one;
- the main task takes SIGHUP, SIGTERM and SIGINT from
  ``aipc.open_signal_receiver``. SIGHUP re-reads the config file and sends it
  to the running worker (the next worker gets it too). SIGTERM or SIGINT
  cancels the first task: leaving the worker's ``async with`` closes its
  command pipe, its cue to exit, and kills it if it has not exited 5 seconds
  later.

Run it as ``python examples/supervisor_asyncio.py CONFIG``, where CONFIG is a
file such as ``{"greeting": "hello"}``; edit the file and ``kill -HUP`` the
supervisor to reload it; stop it with Ctrl-C or ``kill``.

Without CONFIG it runs a demo and exits: with a config in a temporary
directory, it plays the operator (edits the config and sends itself SIGHUP,
makes the first worker crash with status 3, then sends itself SIGTERM) and
prints::

    worker 1 started: hello, world
    reloaded config: greeting=hi
    worker 1 answered: hi, world
    worker 1 exited with 3; restarting
    worker 2 started: hi, world
    stopping on SIGTERM
    worker 2 exited with 0
    stopped after 1 restart
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import aipc

Config = dict[str, Any]


def read_config(path: str) -> Config:
    with open(path) as f:
        config: Config = json.load(f)
    return config


class Worker:
    """A worker process, and the pipes the supervisor talks to it through."""

    def __init__(
        self,
        number: int,
        process: aipc.Process,
        commands: aipc.PipeSendStream,
        replies: aipc.PipeReceiveStream,
    ) -> None:
        self.number = number
        self.process = process
        self.commands = commands
        self.replies = BufferedByteReceiveStream(replies)
        self.lock = asyncio.Lock()  # one config and its answer at a time

    @classmethod
    async def start(cls, number: int) -> Worker:
        commands_receive, commands_send = aipc.create_pipe()
        replies_receive, replies_send = aipc.create_pipe()
        try:
            process = await aipc.open_process(
                [sys.executable, __file__, "--worker"],
                handoff={"commands": commands_receive, "replies": replies_send},
                stdin=None,
                stdout=None,
                stderr=None,
                # its own session: a Ctrl-C in the terminal reaches only the
                # supervisor, which then stops the worker its own way
                start_new_session=True,
            )
        except BaseException:
            commands_send.close()
            replies_receive.close()
            raise
        finally:
            # Our copies of the worker's ends go at once (close() has no
            # checkpoint a cancellation could stop): then the worker sees end
            # of stream when we close `commands`, and we see it on `replies`
            # if the worker dies.
            commands_receive.close()
            replies_send.close()
        return cls(number, process, commands_send, replies_receive)

    async def send(self, message: Config) -> None:
        await self.commands.send(json.dumps(message).encode() + b"\n")

    async def configure(self, config: Config) -> str:
        """Send the worker a config and return its answer.

        Raises ``BrokenResourceError`` or ``IncompleteRead`` if the worker is
        gone.
        """
        async with self.lock:
            await self.send(config)
            async with asyncio.timeout(5):
                answer = await self.replies.receive_until(b"\n", aipc.PIPE_BUF)
        return answer.decode()

    async def __aenter__(self) -> Worker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # This also runs when the supervisor is cancelled to stop: asyncio
        # cancels a task once, so these awaits go through.
        await self.replies.aclose()
        await self.commands.aclose()  # end of stream: the worker exits
        try:
            async with asyncio.timeout(5):
                # waits for the exit; cancelled by the timeout, it kills it
                await self.process.aclose()
        except TimeoutError:
            pass


class Supervisor:
    """Keeps one worker running with the config read from ``config_path``.

    ``on_answer(worker, answer)``, if given, is awaited after each answer of a
    worker to a config (the demo uses it to act at the right moments).
    """

    def __init__(
        self,
        config_path: str,
        on_answer: Callable[[Worker, str], Awaitable[None]] | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = read_config(config_path)
        self.on_answer = on_answer
        self.worker: Worker | None = None  # the running one
        self.restarts = 0

    async def answered(self, worker: Worker, answer: str) -> None:
        if self.on_answer is not None:
            await self.on_answer(worker, answer)

    async def keep_worker_running(self) -> None:
        for number in itertools.count(1):
            async with await Worker.start(number) as worker:
                self.worker = worker
                answer = await worker.configure(self.config)
                print(f"worker {number} started: {answer}")
                await self.answered(worker, answer)
                status = await worker.process.wait()
            self.worker = None
            # a real supervisor would wait a little if it keeps crashing
            print(f"worker {number} exited with {status}; restarting")
            self.restarts += 1

    async def reload(self) -> None:
        try:
            self.config = read_config(self.config_path)
        except (OSError, ValueError) as exc:
            print(f"config not reloaded: {exc}")
            return
        settings = ", ".join(f"{key}={value}" for key, value in self.config.items())
        print(f"reloaded config: {settings}")
        worker = self.worker
        if worker is None or worker.process.returncode is not None:
            return  # the next worker starts with the new config
        try:
            answer = await worker.configure(self.config)
        except (anyio.BrokenResourceError, anyio.IncompleteRead):
            return  # it just exited; the next one gets the new config
        print(f"worker {worker.number} answered: {answer}")
        await self.answered(worker, answer)

    async def run(self) -> None:
        with aipc.open_signal_receiver(
            signal.SIGHUP, signal.SIGTERM, signal.SIGINT
        ) as signals:
            async with asyncio.TaskGroup() as tg:
                workers = tg.create_task(self.keep_worker_running())
                async for info in signals:
                    if info.signum == signal.SIGHUP:
                        await self.reload()
                    else:
                        print(f"stopping on {info.name}")
                        workers.cancel()  # stops the worker
                        break
        if self.worker is not None:  # the one we stopped
            status = self.worker.process.returncode
            print(f"worker {self.worker.number} exited with {status}")
        print(f"stopped after {self.restarts} restart{'s' * (self.restarts != 1)}")


async def run_worker() -> int:
    """Answer each config from the supervisor; exit at the end of the stream."""
    async with (
        aipc.inherit("commands", aipc.PipeReceiveStream) as commands,
        aipc.inherit("replies", aipc.PipeSendStream) as replies,
    ):
        lines = BufferedByteReceiveStream(commands)
        while True:
            try:
                line = await lines.receive_until(b"\n", aipc.PIPE_BUF)
            except anyio.IncompleteRead:
                return 0  # the supervisor closed the pipe: stop
            message = json.loads(line)
            if "exit" in message:  # sent by the demo: a stand-in for a crash
                return int(message["exit"])
            greeting = message.get("greeting", "hello")
            await replies.send(f"{greeting}, world\n".encode())


async def demo() -> None:
    """Run a supervisor and play its operator, one step per worker answer."""

    def write_config(greeting: str) -> None:
        with open(config_path, "w") as f:
            json.dump({"greeting": greeting}, f)

    async def operator(worker: Worker, answer: str) -> None:
        if answer == "hello, world":  # worker 1 runs the first config
            write_config("hi")
            aipc.send_signal(os.getpid(), signal.SIGHUP)  # kill -HUP
        elif worker.number == 1:  # worker 1 took the new config
            await worker.send({"exit": 3})
        else:  # worker 2 runs: done
            aipc.send_signal(os.getpid(), signal.SIGTERM)

    with tempfile.TemporaryDirectory() as directory:
        config_path = os.path.join(directory, "config.json")
        write_config("hello")
        async with asyncio.timeout(20):  # the demo never hangs
            await Supervisor(config_path, operator).run()


def main() -> None:
    if sys.argv[1:] == ["--worker"]:
        sys.exit(asyncio.run(run_worker()))
    elif len(sys.argv) == 2:
        asyncio.run(Supervisor(sys.argv[1]).run())
    else:
        asyncio.run(demo())


if __name__ == "__main__":
    main()
