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

On asyncio's own loop and uvloop a wait does not go through the epoll
descriptor: the members themselves are registered with the loop, each
calling the same persistent registration (``_Watcher`` with ``also``). A
wake-up through a nested epoll costs the kernel a second round of callbacks
on the writer's side and a poll of the inner set on the reader's, on a
round trip's critical path (see the rings' performance notes in
docs/rings.md). trio can wait on one descriptor per task, so there the set
is waited on as before.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from . import _fd
from ._fd import FdHandle, _raise_closed, _running_loop, _Watcher, current_library

__all__ = ["WaitSet"]

T = TypeVar("T")


class WaitSet:
    """Waits until any of several descriptors is readable or hung up: their
    own registrations with the loop on asyncio and uvloop, a private epoll
    descriptor of them on trio (and for :meth:`fileno`)."""

    __slots__ = ("_direct", "_epoll", "_handle", "_members", "_nested")

    def __init__(self, what: str) -> None:
        self._epoll = select.epoll(2, select.EPOLL_CLOEXEC)
        # the epoll object's close closes the fd, called in FdHandle's order
        self._handle = FdHandle(self._epoll.fileno(), what, closer=self._epoll.close)
        self._members: tuple[int, ...] = ()
        # asyncio/uvloop: the members' registration with the running loop
        self._direct: _Watcher | None = None
        # whether the members are in the epoll set: only once a wait needs
        # it (trio), so that on asyncio and uvloop a member's wake-up runs
        # no callback of the set's at all
        self._nested = False

    def add(self, fd: int) -> None:
        """Make the set ready while ``fd`` is readable or hung up. Add the
        members before the first wait."""
        if self._nested:
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self._members += (fd,)

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def fileno(self) -> int:
        """The epoll descriptor, readable while a member is."""
        fd = self._handle.fileno()  # raises first if the set is closed
        self._nest()
        return fd

    def _nest(self) -> None:
        # the members enter the epoll set when a wait or a caller needs it
        if not self._nested:
            for fd in self._members:
                try:
                    self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
                except FileExistsError:
                    pass  # registered by a call that failed on the next
            self._nested = True

    def wait(self, attempt: Callable[[], T]) -> Awaitable[T]:
        """Wait until ``attempt()`` succeeds, trying it each time the set is
        ready (``BlockingIOError`` means "not yet"). ``ClosedResourceError``
        if the set is or gets closed. See :meth:`FdHandle.read_when_ready`;
        nothing is kept for a cancelled wait: attempts here only take a
        doorbell count, which the caller can afford to lose."""
        direct = self._direct
        if direct is not None and direct.loop is _running_loop():
            return direct.arm(attempt)  # the common case: the future itself
        return self._wait(attempt)

    def wait_readable(self) -> Awaitable[bool]:
        """Wait until the set is ready, consuming nothing (the caller acts
        on the members itself). ``ClosedResourceError`` if the set is or
        gets closed."""
        direct = self._direct
        if direct is not None and direct.loop is _running_loop():
            return direct.arm(None)
        return self._wait(None)

    def _wait(self, attempt: Callable[[], Any] | None) -> Awaitable[Any]:
        if self._handle.closed:
            return _raise_closed()
        if self._members and not _fd._GENERIC_WAIT and current_library() == "asyncio":
            # first wait, or a new loop: register the members directly
            self._drop_direct()
            self._direct = direct = _Watcher(
                asyncio.get_running_loop(),
                self._members[0],
                True,
                also=self._members[1:],
            )
            return direct.arm(attempt)
        self._nest()
        if attempt is None:
            return self._handle.wait_readable()
        return self._handle.read_when_ready(attempt)

    def _drop_direct(self) -> None:
        direct, self._direct = self._direct, None
        if direct is not None:
            try:
                direct.close()  # wakes a waiter with ClosedResourceError
            except RuntimeError:
                pass  # its loop is closed: nothing is registered there

    def close(self) -> None:
        """Close the epoll descriptor (idempotent) and drop the members'
        registration; a waiter gets ``ClosedResourceError``."""
        self._drop_direct()
        self._handle.close()
