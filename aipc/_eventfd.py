"""EventFd: an awaitable kernel counter, shareable between processes (Linux only)."""

from __future__ import annotations

from typing import Self

from anyio.abc import AsyncResource

from ._core._fd import reopen_private_nonblocking
from ._core._notifier import (
    EVENTFD_MAX,
    EventFdStatistics,
    Notifier,
    _fdinfo_semaphore,
    _is_eventfd,
)

__all__ = ["EVENTFD_MAX", "EventFd", "EventFdStatistics"]


class EventFd(Notifier, AsyncResource):
    """An eventfd counter: ``set()`` adds to it, ``await wait()`` takes it.

    ``EventFd()`` creates a counter-mode eventfd starting at ``initial``;
    ``EventFd(semaphore=True)`` creates one in semaphore mode, where each
    ``wait()`` takes one unit. The object owns the fd (close-on-exec,
    non-blocking) and closes it on ``aclose()``.

    Across processes: pass ``pass_fds=[efd.fileno()]`` to the child and rebuild
    it there with :meth:`from_fd`; both handles then name the same counter.
    """

    @classmethod
    def from_fd(cls, fd: int, *, semaphore: bool | None = None) -> Self:
        """Take ownership of ``fd``, an eventfd, and wrap it.

        ``semaphore`` must match how the eventfd was created; on Linux 6.6+ it is
        read from ``/proc/self/fdinfo`` when omitted (and checked when given).
        The fd must be non-blocking (aipc creates it so): an eventfd cannot be
        reopened into a private description, and aipc never flips O_NONBLOCK on
        a description another process may share.
        """
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        if not _is_eventfd(fd):
            raise ValueError(f"fd {fd} is not an open eventfd")
        kernel_says = _fdinfo_semaphore(fd)
        if semaphore is None:
            if kernel_says is None:
                raise ValueError(
                    "this kernel does not report the eventfd mode; pass semaphore="
                )
            semaphore = kernel_says
        elif kernel_says is not None and kernel_says != semaphore:
            raise ValueError(
                f"semaphore={semaphore} but fd {fd} is a "
                f"{'semaphore' if kernel_says else 'counter'}-mode eventfd"
            )
        reopen_private_nonblocking(fd, "eventfd")
        return cls(semaphore=semaphore, _fd=fd)

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, object]]:
        # for aipc.open_process(handoff=...); rebuilt by from_fd (_handoff.py)
        return "eventfd", (self.fileno(),), {"semaphore": self.semaphore}
