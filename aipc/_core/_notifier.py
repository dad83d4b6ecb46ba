"""The eventfd-backed notifier: the one primitive for "something changed".

Counter mode: ``wait()`` returns the whole count and resets it to zero.
Semaphore mode (EFD_SEMAPHORE): ``wait()`` takes one unit and returns 1.
Writes never block: an addition that would overflow the counter fails at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import anyio

from ._errors import EventFdOverflowError, translate_os_error
from ._fd import FdHandle, checkpoint

__all__ = ["EVENTFD_MAX", "Notifier", "EventFdStatistics"]

#: The largest value an eventfd counter can hold.
EVENTFD_MAX = 2**64 - 2


@dataclass(frozen=True)
class EventFdStatistics:
    """Counters of one eventfd handle (this process's view).

    Attributes:
        sets: successful ``set()`` calls.
        waits_completed: ``wait()`` / ``wait_nowait()`` calls that returned.
        sleeps: times ``wait()`` found the counter at zero and slept.
    """

    sets: int
    waits_completed: int
    sleeps: int


def _check_value(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"value must be an int, not {type(value).__name__}")
    if not 1 <= value <= EVENTFD_MAX:
        raise ValueError(f"value must be between 1 and {EVENTFD_MAX}, got {value}")
    return value


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def _fdinfo_semaphore(fd: int) -> bool | None:
    """Whether the eventfd is in semaphore mode, if the kernel tells (6.6+)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("eventfd-semaphore:"):
                    return line.split(":", 1)[1].strip() == "1"
    except OSError:
        pass
    return None


class Notifier:
    """An eventfd: a kernel counter with a pollable "non-zero" state."""

    def __init__(
        self, initial: int = 0, *, semaphore: bool = False, _fd: int | None = None
    ) -> None:
        if _fd is None:
            if not isinstance(initial, int) or isinstance(initial, bool):
                raise TypeError(f"initial must be an int, not {type(initial).__name__}")
            # eventfd(2) takes an unsigned int as the initial value
            if not 0 <= initial <= 0xFFFFFFFF:
                raise ValueError(
                    f"initial must be between 0 and {0xFFFFFFFF} (eventfd's limit), "
                    f"got {initial}"
                )
            flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
            if semaphore:
                flags |= os.EFD_SEMAPHORE
            _fd = os.eventfd(initial, flags)
        self._handle = FdHandle(_fd, "eventfd")
        self._semaphore = semaphore
        self._waiting = False
        self._sets = self._waits_completed = self._sleeps = 0

    @property
    def semaphore(self) -> bool:
        """True in semaphore mode (each wait takes one unit)."""
        return self._semaphore

    @property
    def closed(self) -> bool:
        """Whether this handle has been closed."""
        return self._handle.closed

    def fileno(self) -> int:
        """The eventfd descriptor (owned by this object; do not close it)."""
        return self._handle.fileno()

    def set(self, value: int = 1) -> None:
        """Add ``value`` to the counter and wake a waiter. Never blocks.

        Raises:
            EventFdOverflowError: the counter would exceed 2**64 - 2; it is
                left unchanged.
            ValueError: ``value`` is below 1 or above 2**64 - 2.
            ClosedResourceError: this handle is closed.
        """
        _check_value(value)
        fd = self._handle.fd
        if fd < 0:
            raise anyio.ClosedResourceError
        try:
            os.eventfd_write(fd, value)
        except BlockingIOError:
            raise EventFdOverflowError(value, EVENTFD_MAX) from None
        except OSError as exc:
            raise translate_os_error(
                exc, closed=self._handle.closed, what="eventfd"
            ) from exc
        self._sets += 1

    def wait_nowait(self) -> int:
        """Take the count (or one unit in semaphore mode) without waiting.

        Raises ``anyio.WouldBlock`` when the counter is zero.
        """
        fd = self._handle.fd
        if fd < 0:
            raise anyio.ClosedResourceError
        try:
            value = os.eventfd_read(fd)
        except BlockingIOError:
            raise anyio.WouldBlock from None
        except OSError as exc:
            raise translate_os_error(
                exc, closed=self._handle.closed, what="eventfd"
            ) from exc
        self._waits_completed += 1
        return value

    async def wait(self) -> int:
        """Wait until the counter is non-zero, then take it.

        Returns the count and resets it to zero; in semaphore mode, takes one
        unit and returns 1.

        Raises ``ClosedResourceError`` if the handle is or gets closed and
        ``BusyResourceError`` if another task is waiting on this handle (for
        several waiters, give each its own handle:
        ``EventFd.from_fd(os.dup(efd.fileno()), semaphore=efd.semaphore)``).

        **Cancellation:** nothing is taken: the counter is read only by a wait
        that returns.
        """
        if self._waiting:
            raise anyio.BusyResourceError("waiting on")
        self._waiting = True
        try:
            handle = self._handle
            fd = handle.fd
            if fd < 0:
                await checkpoint()
                raise anyio.ClosedResourceError
            put_back = partial(self._put_back, fd)
            try:
                try:
                    value = os.eventfd_read(fd)
                except BlockingIOError:
                    self._sleeps += 1
                    # the loop callback makes the read (see FdHandle); a count
                    # read for a wait cancelled before it resumed is put back
                    value = await handle.read_when_ready(
                        partial(os.eventfd_read, fd), put_back
                    )
                else:
                    try:
                        await checkpoint()
                    except BaseException:
                        put_back(value)
                        raise
            except OSError as exc:
                raise translate_os_error(
                    exc, closed=handle.closed, what="eventfd"
                ) from exc
            self._waits_completed += 1
            return value
        finally:
            self._waiting = False

    def _put_back(self, fd: int, value: int) -> None:
        # Undo the read of a cancelled wait, so that it took nothing. If the
        # handle was closed meanwhile, the number may belong to another file
        # now: the count goes with the closed handle.
        if self._handle.fd == fd:
            os.eventfd_write(fd, value)

    def statistics(self) -> EventFdStatistics:
        """Counters of this handle (no syscall)."""
        return EventFdStatistics(self._sets, self._waits_completed, self._sleeps)

    def close(self) -> None:
        """Close this handle (idempotent); a waiting task gets ClosedResourceError."""
        self._handle.close()

    async def aclose(self) -> None:
        """Close this handle (idempotent), even when cancelled."""
        self._handle.close()
        await checkpoint()

    def __repr__(self) -> str:
        fd = self._handle.fd
        state = "closed" if fd < 0 else f"fd={fd}"
        mode = "semaphore" if self._semaphore else "counter"
        return f"<{type(self).__name__} {mode} {state} sets={self._sets}>"
