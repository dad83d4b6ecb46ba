"""Signals with sender info and sigqueue payloads, through signalfd (Linux only)."""

from __future__ import annotations

import os
import signal
from typing import Protocol

from ._core import _sys
from ._core._errors import LimitExceededError

__all__ = ["SIGNAL_VALUE_MAX", "SIGNAL_VALUE_MIN", "send_signal"]

#: The payload range of :func:`send_signal`: ``sigqueue``'s ``sival_int``.
SIGNAL_VALUE_MIN: int = -(2**31)
SIGNAL_VALUE_MAX: int = 2**31 - 1

_UNCATCHABLE = {signal.SIGKILL: "SIGKILL", signal.SIGSTOP: "SIGSTOP"}
# raised by the CPU for the faulting thread: blocked, the kernel kills the
# process instead of queueing them, so no signalfd can ever see a real one
_FAULTS = {
    signal.SIGSEGV: "SIGSEGV",
    signal.SIGBUS: "SIGBUS",
    signal.SIGFPE: "SIGFPE",
    signal.SIGILL: "SIGILL",
    signal.SIGTRAP: "SIGTRAP",
}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return f"signal {signum}"


def _check_signal(signum: object, argument: str = "signum") -> int:
    """A valid signal number to send (1 .. NSIG-1, not glibc's own)."""
    if not isinstance(signum, int) or isinstance(signum, bool):
        raise TypeError(f"{argument} must be an int, not {type(signum).__name__}")
    if not (
        1 <= signum < signal.SIGRTMIN or signal.SIGRTMIN <= signum <= signal.SIGRTMAX
    ):
        raise ValueError(
            f"{argument}={signum} is out of range: valid signals are 1 to "
            f"{signal.SIGRTMIN - 1} and SIGRTMIN ({signal.SIGRTMIN}) to SIGRTMAX "
            f"({signal.SIGRTMAX}); "
            + (
                "the C library keeps the realtime signals below SIGRTMIN for itself"
                if 1 <= signum < signal.SIGRTMAX
                else f"signal.NSIG is {signal.NSIG}"
            )
        )
    return int(signum)


def _check_receivable(signum: object, argument: str = "signals") -> int:
    """A signal number a receiver can take (not SIGKILL, SIGSTOP or a fault)."""
    sig = _check_signal(signum, argument)
    if sig in _UNCATCHABLE:
        raise ValueError(
            f"{argument}: {_UNCATCHABLE[sig]} cannot be caught, blocked or received"
        )
    if sig in _FAULTS:
        raise ValueError(
            f"{argument}: {_FAULTS[sig]} is a synchronous fault signal; when the CPU "
            "raises it for a thread that blocks it, the kernel kills the process, "
            "so it cannot be received through signalfd"
        )
    return sig


def _check_value(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"value must be an int or None, not {type(value).__name__}")
    if not SIGNAL_VALUE_MIN <= value <= SIGNAL_VALUE_MAX:
        raise LimitExceededError(
            "value",
            value,
            SIGNAL_VALUE_MAX if value > 0 else SIGNAL_VALUE_MIN,
            "sigqueue's sival_int (a signed 32-bit int)",
            f"send a value from {SIGNAL_VALUE_MIN} to {SIGNAL_VALUE_MAX}",
        )
    return int(value)


class _Signallable(Protocol):
    def send_signal(self, signum: int, value: int | None = None) -> None: ...


def send_signal(
    target: int | _Signallable, signum: int, value: int | None = None
) -> None:
    """Send ``signum`` to a process: a pid, or a :class:`Process` handle.

    With ``value``, the signal is queued as ``sigqueue(3)`` does (``si_code`` is
    ``SI_QUEUE``) and the receiver's :class:`SignalInfo` carries it as
    ``value``; realtime signals with values queue in order. ``value`` is a
    signed 32-bit int. Through a :class:`Process` the signal goes through its
    pidfd, so a pid recycled after the process exited is never hit; a bare pid
    can name a recycled process, as ``kill(2)`` can.

    Raises ``ProcessLookupError`` if no such process exists (or it exited),
    ``PermissionError`` if this process may not signal it,
    :class:`LimitExceededError` (a ``ValueError``) for a value outside the
    32-bit range, ``ValueError`` for a signal number out of range, and
    ``BlockingIOError`` when the target's queue of pending realtime signals is
    full (``RLIMIT_SIGPENDING``): the receiver is not keeping up; try again
    later.
    """
    if not isinstance(target, int) or isinstance(target, bool):
        if hasattr(target, "send_signal"):
            target.send_signal(signum, value)
            return
        raise TypeError(
            f"target must be a pid (int) or an aipc.Process, not {type(target).__name__}"
        )
    sig = _check_signal(signum)
    payload = _check_value(value)
    if target <= 0:
        raise ValueError(
            f"target must be a pid > 0, got {target} (process groups are not "
            "supported: use os.killpg)"
        )
    if payload is None:
        os.kill(target, sig)
        return
    # sigqueue(3) through a pidfd: the pidfd calls share one system call number
    # on every architecture, rt_sigqueueinfo does not
    pidfd = os.pidfd_open(target)
    try:
        _sys.pidfd_send_signal(pidfd, sig, payload)
    finally:
        os.close(pidfd)
