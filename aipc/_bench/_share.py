"""Hand multiprocessing objects (queues, shared arrays) to the bench's children.

``multiprocessing.Queue`` and ``faster_fifo.Queue`` can only be pickled while a
process is being spawned: their locks, pipes and shared memory travel as
descriptors the child inherits. The bench starts its children with
``subprocess.Popen``, not ``multiprocessing.Process``, so ``dumps`` plays the
part of the spawning ``Popen`` object: it collects the descriptors to pass
(``pass_fds`` keeps their numbers) and pickles the objects as multiprocessing's
own spawn start method would. ``loads`` is what the child runs.
"""

from __future__ import annotations

import base64
import contextlib
import pickle
from collections.abc import Iterator
from typing import Any

__all__ = ["InheritedFd", "dumps", "loads", "stop_tracker_after"]


class InheritedFd:
    """A descriptor the child inherits under the same number."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def detach(self) -> int:
        return self.fd


class _Spawning:
    """What ``multiprocessing.reduction.DupFd`` asks of a spawning Popen."""

    DupFd = InheritedFd

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(fd)
        return fd


def dumps(obj: object) -> tuple[str, list[int]]:
    """Pickle ``obj`` for a child about to be spawned: (text, fds to pass)."""
    from multiprocessing import context, reduction

    spawning = _Spawning()
    as_popen: Any = spawning  # it quacks like one, for DupFd's needs only
    context.set_spawning_popen(as_popen)
    try:
        data = reduction.ForkingPickler.dumps(obj)
    finally:
        context.set_spawning_popen(None)
    return base64.b64encode(data).decode("ascii"), sorted(set(spawning.fds))


def loads(text: str) -> Any:
    """In the child: rebuild what ``dumps`` pickled."""
    # the parent's own data, handed over on the command line
    return pickle.loads(base64.b64decode(text))


@contextlib.contextmanager
def stop_tracker_after() -> Iterator[None]:
    """Stop and reap multiprocessing's resource tracker at the end, if it was
    started inside (by the named semaphores of a ``multiprocessing.Queue``).

    By then the queues are gone, their semaphores unlinked and unregistered; a
    tracker that ran before is left alone.
    """
    from multiprocessing import resource_tracker

    tracker: Any = getattr(resource_tracker, "_resource_tracker", None)
    running = getattr(tracker, "_fd", None) is not None
    try:
        yield
    finally:
        if (
            not running
            and getattr(tracker, "_fd", None) is not None
            and hasattr(tracker, "_stop")
        ):
            tracker._stop()
