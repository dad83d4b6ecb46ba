"""The Linux system calls the stdlib lacks, through ctypes (Linux only).

``signalfd``, raw ``sigaction`` save and restore, ``pidfd_send_signal`` with a
``siginfo_t`` (the stdlib only sends without one), ``pidfd_getfd``, the
blocking bridge's interrupt handler, and one-attempt ``flock`` and OFD
``fcntl`` locks that report ``EINTR`` (the stdlib's retry it), and a one-attempt
SysV ``msgrcv`` that can wait for a message without taking it. The
pidfd calls are new enough (Linux 5.1+) to have one system call number on
every architecture; ``rt_sigqueueinfo`` has not, so a payload to a pid goes
through a short-lived pidfd instead.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import struct
import sys
from collections.abc import Iterable

__all__ = [
    "OFF_MAX",
    "SIGNALFD_SIGINFO_SIZE",
    "SI_QUEUE",
    "SI_TKILL",
    "SI_USER",
    "flock",
    "install_interrupt_handler",
    "msgrcv",
    "ofd_lock",
    "pidfd_getfd",
    "pidfd_send_signal",
    "restore_sigaction",
    "save_sigaction",
    "signalfd",
    "sigqueue",
    "unpack_signalfd_siginfo",
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# unified system call numbers (the same on every architecture since 5.1)
_SYS_PIDFD_SEND_SIGNAL = 424
_SYS_PIDFD_GETFD = 438

SI_USER = 0
SI_QUEUE = -1
SI_TKILL = -6

_SFD_NONBLOCK = os.O_NONBLOCK
_SFD_CLOEXEC = os.O_CLOEXEC

# glibc's sigset_t: 1024 bits as unsigned longs; signal n is bit n - 1
_SigSet = ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong)))
_WORD_BITS = 8 * ctypes.sizeof(ctypes.c_ulong)

# struct signalfd_siginfo: the fields aipc reads, then padding to 128 bytes
_SIGNALFD_SIGINFO = struct.Struct("=IiiIIiIIIIiiQQQQ")
SIGNALFD_SIGINFO_SIZE = 128


class _SigAction(ctypes.Structure):
    # glibc's struct sigaction (x86-64, aarch64 and the other 64-bit ports)
    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", _SigSet),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


# the kernel's signal mask is 64 bits; glibc copies 1024 into sa_mask on the
# way out, the rest of them stack garbage, which a saved disposition drops
_KERNEL_MASK_WORDS = 64 // _WORD_BITS
# glibc adds SA_RESTORER and its own trampoline to every sigaction it makes: a
# saved disposition leaves them out, so that saving what was restored compares
# equal to what was saved
_SA_RESTORER = 0x04000000


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _sigset(signals: Iterable[int]) -> ctypes.Array[ctypes.c_ulong]:
    mask = _SigSet()
    for sig in signals:
        word, bit = divmod(sig - 1, _WORD_BITS)
        mask[word] |= 1 << bit
    return mask


def signalfd(fd: int, signals: Iterable[int]) -> int:
    """Create (``fd=-1``) or re-mask a signalfd; non-blocking, close-on-exec."""
    mask = _sigset(signals)
    result = _libc.signalfd(fd, ctypes.byref(mask), _SFD_NONBLOCK | _SFD_CLOEXEC)
    if result < 0:
        _raise_errno("signalfd")
    return int(result)


def unpack_signalfd_siginfo(
    data: bytes, offset: int
) -> tuple[int, int, int, int, int, int, int]:
    """(signo, code, pid, uid, status, int value, errno) from one record."""
    fields = _SIGNALFD_SIGINFO.unpack_from(data, offset)
    # ssi_signo, ssi_errno, ssi_code, ssi_pid, ssi_uid, ..., ssi_status, ssi_int
    return fields[0], fields[2], fields[3], fields[4], fields[10], fields[11], fields[1]


def save_sigaction(sig: int) -> bytes:
    """The kernel's whole disposition for ``sig`` (handler, flags, mask)."""
    action = _SigAction()
    if _libc.sigaction(sig, None, ctypes.byref(action)) != 0:
        _raise_errno("sigaction")
    for i in range(_KERNEL_MASK_WORDS, len(action.mask)):
        action.mask[i] = 0
    action.flags &= ~_SA_RESTORER
    action.restorer = None
    return bytes(action)


def restore_sigaction(sig: int, saved: bytes) -> None:
    """Put back exactly what :func:`save_sigaction` returned."""
    action = _SigAction.from_buffer_copy(saved)
    if _libc.sigaction(sig, ctypes.byref(action), None) != 0:
        _raise_errno("sigaction")


class _SigVal(ctypes.Union):
    _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]


class _Rt(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_int), ("uid", ctypes.c_uint), ("value", _SigVal)]


class _SigInfoFields(ctypes.Union):
    _fields_ = [("rt", _Rt), ("_pad", ctypes.c_char * 112)]


class _SigInfo(ctypes.Structure):
    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("fields", _SigInfoFields),
    ]


def pidfd_send_signal(pidfd: int, sig: int, value: int | None) -> None:
    """Send ``sig`` through a pidfd; with ``value``, as ``sigqueue`` would.

    Raises ``ProcessLookupError`` if the process has exited, and
    ``BlockingIOError`` when its queue of pending realtime signals is full.
    """
    if value is None:
        signal.pidfd_send_signal(pidfd, sig)
        return
    info = _SigInfo()
    info.si_signo = sig
    info.si_code = SI_QUEUE
    info.fields.rt.pid = os.getpid()
    info.fields.rt.uid = os.getuid()
    info.fields.rt.value.sival_int = value
    if _libc.syscall(_SYS_PIDFD_SEND_SIGNAL, pidfd, sig, ctypes.byref(info), 0) != 0:
        raise _sigqueue_error(ctypes.get_errno(), "pidfd_send_signal")


# glibc's sigqueue(pid_t, int, const union sigval): the union (an int or a
# pointer, 8 bytes) is passed by value, in a register like a pointer on the
# 64-bit ABIs, with sival_int in its low 32 bits on little-endian machines
_libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_SIGQUEUE_DIRECT = sys.byteorder == "little" and ctypes.sizeof(ctypes.c_void_p) == 8


def sigqueue(pid: int, sig: int, value: int) -> None:
    """``sigqueue(3)``: send ``sig`` with ``value`` to ``pid``.

    A pid names a process as ``kill(2)`` does: it may be a recycled one.
    Elsewhere than little-endian 64-bit, through a short-lived pidfd (three
    system calls instead of one).
    """
    if _SIGQUEUE_DIRECT:
        if _libc.sigqueue(pid, sig, value & 0xFFFFFFFF) != 0:
            err = ctypes.get_errno()
            raise _sigqueue_error(err, "sigqueue")
        return
    pidfd = os.pidfd_open(pid)
    try:
        pidfd_send_signal(pidfd, sig, value)
    finally:
        os.close(pidfd)


def _sigqueue_error(err: int, what: str) -> OSError:
    if err == errno.EAGAIN:
        return BlockingIOError(
            err,
            "the process's queue of pending signals is full (RLIMIT_SIGPENDING): "
            "its receiver is not keeping up; try again later",
        )
    # OSError picks the subclass: ProcessLookupError, PermissionError, ...
    return OSError(err, f"{what}: {os.strerror(err)}")


def install_interrupt_handler(sig: int) -> None:
    """Make ``sig`` interrupt blocking system calls in the thread it is sent to.

    A handler that does nothing, installed without ``SA_RESTART`` so that the
    interrupted call fails with ``EINTR``. Only if ``sig`` is at its default
    action: a handler someone else installed interrupts as well (Python's are
    installed without ``SA_RESTART`` too). ``RuntimeError`` if it is ignored,
    since an ignored signal interrupts nothing.

    The handler is libc's ``sched_yield``: a C function that ignores its
    argument and is async-signal-safe. A Python handler would do, but can only
    be installed from the main thread, and each interrupt would wake the event
    loop through the wakeup fd to run it.
    """
    current = _SigAction()
    if _libc.sigaction(sig, None, ctypes.byref(current)) != 0:
        _raise_errno("sigaction")
    if current.handler == signal.SIG_IGN:
        raise RuntimeError(
            f"signal {sig} is ignored (SIG_IGN), so it cannot interrupt a blocked "
            "worker thread; aipc's blocking bridge needs it at its default action "
            "or with a handler"
        )
    if current.handler not in (None, signal.SIG_DFL):
        return
    action = _SigAction()
    action.handler = ctypes.cast(_libc.sched_yield, ctypes.c_void_p).value
    if _libc.sigaction(sig, ctypes.byref(action), None) != 0:
        _raise_errno("sigaction")


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate another process's ``target_fd`` into this one (close-on-exec)."""
    result = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, target_fd, 0)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pidfd_getfd: {os.strerror(err)}")
    return int(result)


# File locks. Python's fcntl.flock / fcntl.fcntl retry on EINTR (PEP 475), so a
# wait in them cannot be interrupted; these make one attempt each, which the
# blocking bridge needs.


def flock(fd: int, operation: int) -> None:
    """``flock(2)``, one attempt.

    ``InterruptedError`` on ``EINTR``; ``BlockingIOError`` when ``LOCK_NB`` is
    in ``operation`` and another open file description holds a conflicting
    lock; other errors as the ``OSError`` subclass of their errno.
    """
    if _libc.flock(fd, operation) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"flock: {os.strerror(err)}")


class _Flock(ctypes.Structure):
    # struct flock on the 64-bit ports (off_t is 64 bits; the compiler pads
    # after l_whence and after l_pid exactly as ctypes does)
    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    ]


#: The largest file offset (off_t): a lock range must end at or before it.
OFF_MAX = 2**63 - 1


def ofd_lock(fd: int, command: int, lock_type: int, start: int, length: int) -> None:
    """``fcntl(fd, command, &flock)`` for an open-file-description lock, one attempt.

    ``command`` is ``F_OFD_SETLK`` or ``F_OFD_SETLKW``; ``lock_type`` is
    ``F_RDLCK``, ``F_WRLCK`` or ``F_UNLCK``; the range is ``length`` bytes from
    ``start`` (``length`` 0: to the end of the file and beyond, however it
    grows). ``InterruptedError`` on ``EINTR``; ``BlockingIOError`` when
    ``F_OFD_SETLK`` meets a conflicting lock (POSIX allows ``EACCES`` there
    too; it is reported the same way).
    """
    request = _Flock()
    request.l_type = lock_type
    request.l_whence = os.SEEK_SET
    request.l_start = start
    request.l_len = length
    request.l_pid = 0  # must be 0 for OFD locks
    if _libc.fcntl(fd, command, ctypes.byref(request)) != 0:
        err = ctypes.get_errno()
        if err == errno.EACCES and command == fcntl.F_OFD_SETLK:
            err = errno.EAGAIN
        raise OSError(err, f"fcntl: {os.strerror(err)}")


# SysV msgrcv. sysv_ipc's blocking receive always takes the message; the
# blocking bridge needs a wait that takes nothing, which msgrcv gives with a
# text size of 0 (see msgrcv below).

_libc.msgrcv.restype = ctypes.c_ssize_t
_libc.msgrcv.argtypes = [
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_long,
    ctypes.c_int,
]
_LONG_SIZE = ctypes.sizeof(ctypes.c_long)


def msgrcv(msqid: int, max_size: int, msgtyp: int, flags: int) -> tuple[bytes, int]:
    """``msgrcv(2)``, one attempt: take a message of at most ``max_size`` bytes
    that matches ``msgtyp`` and return its text and type.

    Without ``MSG_NOERROR`` in ``flags``, a matching message longer than
    ``max_size`` is *not taken*: it stays in the queue, in its place, and the
    call fails with ``E2BIG``. So ``max_size=0`` without ``IPC_NOWAIT`` waits
    until a matching message is there and leaves it (a message with no text
    at all fits, and is taken). Errors are the ``OSError`` subclass of their
    errno: ``InterruptedError`` on ``EINTR`` (never retried), ``ENOMSG`` with
    ``IPC_NOWAIT`` and nothing matching, ``EIDRM`` / ``EINVAL`` once the queue
    is removed, ``E2BIG`` as above.
    """
    buf = ctypes.create_string_buffer(_LONG_SIZE + max_size)
    n = _libc.msgrcv(msqid, buf, max_size, msgtyp, flags)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"msgrcv: {os.strerror(err)}")
    return buf.raw[_LONG_SIZE : _LONG_SIZE + n], ctypes.c_long.from_buffer(buf).value
