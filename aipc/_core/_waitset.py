"""A wait set: one pollable descriptor that is ready when any of several is.

Some waits must end on either of two events: a shared-memory ring's reader
waits for its doorbell (an eventfd the writer signals) *or* for the writer's
death (end of file on a socket whose other end the writer holds). Waiting on
two descriptors through anyio means two tasks per wait; instead the two are
registered in a private epoll instance, whose own descriptor polls readable
while any member is ready (nested epoll, a documented Linux feature). The
event loop then waits on that one descriptor through the usual
:class:`FdHandle` readiness, with its persistent registration on asyncio and
uvloop.

Members are level-triggered: an eventfd with a count, or a socket at end of
file, keeps the set readable until the caller consumes or acts on it. The set
owns only its epoll descriptor; members stay owned by their own handles and
must outlive the set (close the set first).
"""

from __future__ import annotations

import select
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ._fd import FdHandle

__all__ = ["WaitSet"]

T = TypeVar("T")


class WaitSet:
    """A private epoll descriptor that polls readable when a member is."""

    __slots__ = ("_epoll", "_handle")

    def __init__(self, what: str) -> None:
        self._epoll = select.epoll(2, select.EPOLL_CLOEXEC)
        # the epoll object's close closes the fd, called in FdHandle's order
        self._handle = FdHandle(self._epoll.fileno(), what, closer=self._epoll.close)

    def add(self, fd: int) -> None:
        """Make the set ready while ``fd`` is readable or hung up."""
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def fileno(self) -> int:
        return self._handle.fileno()

    def wait(self, attempt: Callable[[], T]) -> Awaitable[T]:
        """Wait until ``attempt()`` succeeds, trying it each time the set is
        ready (``BlockingIOError`` means "not yet"). ``ClosedResourceError``
        if the set is or gets closed. See :meth:`FdHandle.read_when_ready`;
        nothing is kept for a cancelled wait: attempts here only take a
        doorbell count, which the caller can afford to lose."""
        return self._handle.read_when_ready(attempt)

    def wait_readable(self) -> Awaitable[bool]:
        """Wait until the set is ready, consuming nothing (the caller acts
        on the members itself). ``ClosedResourceError`` if the set is or
        gets closed."""
        return self._handle.wait_readable()

    def close(self) -> None:
        """Close the epoll descriptor (idempotent); a waiter gets
        ``ClosedResourceError``."""
        self._handle.close()
