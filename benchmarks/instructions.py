"""Instructions per round trip of aipc's stream path, counted by callgrind.

On a shared, noisy machine a timing moves by 20 % between runs, which hides
the few percent a change to a hot path is worth. valgrind's callgrind counts
the instructions a program executes instead: the same count for the same
code, whatever else the machine is doing. This runs the in-process ping-pong
of ``benchmarks/inprocess.py`` (two pipes, two tasks, one event loop) under
callgrind twice, with N + 1 round trips and with one, and prints the
difference divided by N: the instructions of one round trip (two sends and two
receives), beside the loop's own pipe streams measured the same way.

    python benchmarks/instructions.py [asyncio|uvloop|trio|all] [N] [ring]

With ``ring`` it counts aipc's message ring (the same ping-pong over two
rings) beside aipc's pipe instead of the loop's own streams.

Needs ``valgrind`` (Debian: ``apt install valgrind``); each count takes 10 to
40 seconds. To compare two commits, run it from a checkout of each (or with
``PYTHONPATH`` pointing at the other tree): the child processes import aipc
the way this process does. Instructions are not time (a syscall or a cache
miss costs far more than its instructions), so confirm a change that matters
with ``aipc bench``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

_CHILD = """
import sys, anyio
sys.path.insert(0, {here!r})
import inprocess
backend, which, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
measure = {{
    "aipc": inprocess._aipc,
    "streams": inprocess._asyncio_streams,
    "fdstream": inprocess._trio_fdstream,
    "ring": inprocess._aipc_ring,
}}[which]
async def run():
    await measure(n)
if backend == "uvloop":
    import uvloop
    anyio.run(run, backend="asyncio",
              backend_options={{"loop_factory": uvloop.new_event_loop}})
else:
    anyio.run(run, backend=backend)
"""


_TWO = """
import os, sys, anyio, aipc
backend, which, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
a, b = os.pipe(), os.pipe()  # a: driver -> echo, b: echo -> driver


async def ends(r, w):
    # (receive(max), send(data)) over the read end r and the write end w
    if which == "streams":
        import asyncio
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0))
        t, p = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(w, "wb", 0))
        writer = asyncio.StreamWriter(t, p, None, loop)

        async def send(data):
            writer.write(data)
            await writer.drain()
        return reader.read, send
    if which == "fdstream":
        import trio
        rx, tx = trio.lowlevel.FdStream(r), trio.lowlevel.FdStream(w)
        return rx.receive_some, tx.send_all
    if which == "ring":
        rx, tx = RINGS[r]

        async def receive(_max):
            return await rx.receive()
        return receive, tx.send
    rx, tx = aipc.PipeReceiveStream.from_fd(r), aipc.PipeSendStream.from_fd(w)
    return rx.receive, tx.send


def run(main):
    if backend == "uvloop":
        import uvloop
        anyio.run(main, backend="asyncio",
                  backend_options={{"loop_factory": uvloop.new_event_loop}})
    else:
        anyio.run(main, backend=backend)


if which == "ring":
    # two rings made before the fork, indexed by the read end ends() gets
    (ra, wa), (rb, wb) = aipc.create_ring(), aipc.create_ring()
    RINGS = {{a[0]: (ra, wb), b[0]: (rb, wa)}}
os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})
if os.fork() == 0:
    os.close(a[1]); os.close(b[0])

    async def echo():
        receive, send = await ends(a[0], b[1])
        for _ in range(n):
            await send(await receive(65536))
    run(echo)
    os._exit(0)
os.close(a[0]); os.close(b[1])


async def drive():
    receive, send = await ends(b[0], a[1])
    for _ in range(n):
        await send(b"12345678")
        await receive(65536)
run(drive)
os.wait()
"""


def _instructions(script: str, backend: str, which: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--trace-children=yes",
                f"--callgrind-out-file={out}/callgrind.%p",
                sys.executable,
                script,
                backend,
                which,
                str(n),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        # one "Collected" line per process (the forked echo of ``two`` too)
        counts = re.findall(r"Collected : ([\d,]+)", result.stderr)
        if not counts:
            raise RuntimeError(f"no instruction count from valgrind:\n{result.stderr}")
        return sum(int(c.replace(",", "")) for c in counts)


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "all"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    ring = "ring" in sys.argv[3:]
    two = "two" in sys.argv[3:]
    if shutil.which("valgrind") is None:
        sys.exit("instructions.py needs valgrind (apt install valgrind)")
    backends = ("asyncio", "uvloop", "trio") if backend == "all" else (backend,)
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "child.py")
        with open(script, "w") as f:
            f.write(_TWO.format() if two else _CHILD.format(here=here))
        for name in backends:
            peer = "fdstream" if name == "trio" else "streams"
            label = "trio FdStream" if name == "trio" else f"{name} pipe streams"
            if ring:
                peer, label = "ring", "aipc ring"
            mine = "aipc pipe"
            if two:
                label += ", two processes"
                mine += ", two processes"
            for which, title in ((peer, label), ("aipc", mine)):
                # one round trip in the baseline: the measuring code divides
                # by the count, and set-up and warm-up cancel out
                base = _instructions(script, name, which, 1)
                total = _instructions(script, name, which, n + 1)
                per_trip = (total - base) / n
                print(
                    f"{name:8} {title:36} {per_trip:9,.0f} instructions per round trip",
                    flush=True,
                )


if __name__ == "__main__":
    main()
