"""``aipc bench``: every mechanism between two real processes, beside its peers.

For each mechanism the orchestrator starts two processes (a *driver* that sends
and times, a *peer* that echoes and acknowledges), pins them to two CPUs and
then to one, and measures the round-trip latency of 8-byte messages, the
one-way throughput of 64 KiB and 1 MiB chunks and the rate of 64-byte messages
streamed one way. aipc rows run on the backend chosen with ``--backend``; the
peers (blocking ``os.read``/``os.write``, ``multiprocessing.Pipe`` and
``Queue``, ``faster_fifo.Queue``, pyzmq over ``ipc://``, asyncio and uvloop
pipe streams, trio's ``FdStream``, ``filelock.AsyncFileLock``) run on their
own loops in the same run, so that the ratios compare like with like. POSIX
message queues, file locks and POSIX semaphores have rows of their own: round
trips and messages per second for the queue, hand-off latency (release in one
process to acquire in the other) for the locks and semaphores. UNIX stream and
seqpacket sockets are compared with anyio's own on the same backend; object
channels (64-byte msgpack objects) with pyzmq (sync and ``zmq.asyncio``) and
``multiprocessing.Pipe`` sending the same objects; shared-memory rings (copies,
spinning, batches, loans and leases) with iceoryx2's Python bindings (busy
polling, blocking, reading in place). See ``benchmarks/README.md``.

This package imports its heavy parts only when ``run`` is called.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``aipc bench`` options to ``parser``."""
    from ._runner import add_arguments as _add

    _add(parser)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by the parsed ``args``; return the exit status."""
    from ._runner import run as _run

    return _run(args)
