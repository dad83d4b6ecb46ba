"""aipc's exceptions and the one errno → exception mapping.

Every syscall site in aipc funnels its ``OSError`` through :func:`translate_os_error`
so that the same kernel condition always surfaces as the same exception, on every
backend.
"""

from __future__ import annotations

import errno

import anyio

__all__ = [
    "AipcError",
    "EventFdOverflowError",
    "LimitExceededError",
    "translate_os_error",
]


class AipcError(Exception):
    """Base class of every exception defined by aipc."""


class LimitExceededError(AipcError, ValueError):
    """A value is beyond a kernel or system limit.

    Attributes:
        argument: the name of the argument that is too large.
        value: the value that was asked for.
        limit: the largest value allowed.
        limit_name: where the limit comes from (a sysctl path, a constant).
        hint: how to raise the limit, or ``""`` when it cannot be raised.
    """

    def __init__(
        self,
        argument: str,
        value: int,
        limit: int,
        limit_name: str,
        hint: str = "",
    ) -> None:
        self.argument = argument
        self.value = value
        self.limit = limit
        self.limit_name = limit_name
        self.hint = hint
        message = f"{argument}={value} exceeds {limit_name} ({limit})"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class EventFdOverflowError(AipcError):
    """Adding to an eventfd counter would take it past its maximum.

    The counter is left unchanged. Attributes: ``value`` (what was added) and
    ``limit`` (the largest count an eventfd can hold, 2**64 - 2).
    """

    def __init__(self, value: int, limit: int) -> None:
        self.value = value
        self.limit = limit
        super().__init__(
            f"adding {value} to the eventfd counter would exceed its maximum "
            f"({limit}); a reader must wait() first"
        )


def translate_os_error(exc: OSError, *, closed: bool, what: str) -> BaseException:
    """Return the exception to raise for ``exc`` raised by a syscall on an fd.

    ``closed`` says whether aipc itself closed the descriptor (so ``EBADF`` is our
    close racing the call, not a foreign close). ``what`` names the resource for
    the message. The caller raises the result ``from exc``.
    """
    code = exc.errno
    if code == errno.EBADF and closed:
        return anyio.ClosedResourceError()
    if code in (errno.EPIPE, errno.ECONNRESET):
        return anyio.BrokenResourceError(f"the other end of the {what} is gone")
    return exc
