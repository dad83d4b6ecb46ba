"""Signals with sender info and sigqueue payloads, through signalfd (Linux only).

One process-wide hub owns one signalfd covering every signal some receiver is
open for. Reading a signalfd consumes the signal, so the hub hands each record
to every open receiver of that signal. No task runs in the background: the
first receiver that finds its queue empty and no reader at work becomes the
*reader* and waits on the signalfd; the others wait on their own event until
the reader hands them something or leaves (then one of them takes over).

signalfd only sees *blocked* signals: a receiver blocks its signals in the main
thread, so that every thread started from it afterwards inherits the block, and
installs a fallback handler for the threads that do not block them (started
before, or by C code). The kernel may deliver a signal to such a thread; the
handler then runs in the main thread, queues the signal for the receivers and
wakes the reader through the hub's pipe. Such a signal arrives without its
sender (``pid``, ``uid``, ``code`` and ``value`` are ``None``).
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections import deque
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Protocol, Self

import anyio
from anyio.abc import ObjectReceiveStream

from ._core import _sys
from ._core._errors import LimitExceededError
from ._core._fd import FdHandle, checkpoint

__all__ = [
    "SIGNAL_VALUE_MAX",
    "SIGNAL_VALUE_MIN",
    "SignalInfo",
    "SignalReceiver",
    "SignalReceiverStatistics",
    "open_signal_receiver",
    "send_signal",
]

#: The payload range of :func:`send_signal`: ``sigqueue``'s ``sival_int``.
SIGNAL_VALUE_MIN: int = -(2**31)
SIGNAL_VALUE_MAX: int = 2**31 - 1

# the kernel's first realtime signal; glibc keeps it and the next for threads
_KERNEL_SIGRTMIN = 32
# records read from the signalfd at once (128 bytes each)
_READ_RECORDS = 64
_UNCATCHABLE: dict[int, str] = {signal.SIGKILL: "SIGKILL", signal.SIGSTOP: "SIGSTOP"}
# raised by the CPU for the faulting thread: blocked, the kernel kills the
# process instead of queueing them, so no signalfd can ever see a real one
_FAULTS: dict[int, str] = {
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
        1 <= signum < _KERNEL_SIGRTMIN or signal.SIGRTMIN <= signum <= signal.SIGRTMAX
    ):
        raise ValueError(
            f"{argument}={signum} is out of range: valid signals are 1 to "
            f"{_KERNEL_SIGRTMIN - 1} and SIGRTMIN ({signal.SIGRTMIN}) to SIGRTMAX "
            f"({signal.SIGRTMAX}); "
            + (
                "the C library keeps the realtime signals below SIGRTMIN for itself"
                if _KERNEL_SIGRTMIN <= signum < signal.SIGRTMIN
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
            "target must be a pid (int) or an aipc.Process, "
            f"not {type(target).__name__}"
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
    else:
        _sys.sigqueue(target, sig, payload)


@dataclass(frozen=True, slots=True)
class SignalInfo:
    """One received signal, with what the kernel says about its sender.

    Attributes:
        signum: the signal number (a ``signal.Signals`` member where there is
            one; realtime signals are plain ints).
        pid: the sender's pid; ``None`` when unknown (see below).
        uid: the sender's real uid; ``None`` when unknown.
        code: ``si_code``: ``SI_USER`` (0, from ``kill``), ``SI_QUEUE`` (-1,
            from ``sigqueue`` or :func:`send_signal` with a value), ``SI_TKILL``
            (-6, ``tgkill``/``raise``), ``SI_KERNEL`` (0x80), or for
            ``SIGCHLD`` one of ``os.CLD_EXITED``, ``os.CLD_KILLED``, ...;
            ``None`` when unknown.
        value: the payload of a ``SI_QUEUE`` signal (a signed 32-bit int),
            else ``None``.
        status: for ``SIGCHLD``, the child's exit status (``CLD_EXITED``) or
            the signal that stopped or killed it; else ``None``.

    ``pid``, ``uid``, ``code`` and ``value`` are all ``None`` when the kernel
    delivered the signal to a thread that did not block it, so that aipc's
    fallback handler caught it without its ``siginfo`` (see the docs on
    threads). For ``SI_QUEUE`` signals ``pid`` and ``uid`` are what the sender
    wrote into its ``siginfo``: the kernel checks them only for ``SI_USER``.
    """

    signum: int
    pid: int | None
    uid: int | None
    code: int | None
    value: int | None
    status: int | None

    @property
    def name(self) -> str:
        """``"SIGUSR1"``, ``"SIGRTMIN+3"``, ..."""
        return _signal_name(self.signum)


@dataclass(frozen=True)
class SignalReceiverStatistics:
    """Counters of one signal receiver.

    Attributes:
        received: records returned by ``receive()`` / the iteration.
        queued: records waiting in this receiver now.
        coalesced: standard signals dropped because the same signal was still
            queued here unread (the kernel coalesces them the same way).
        without_sender: records caught by the fallback handler (no sender info).
    """

    received: int
    queued: int
    coalesced: int
    without_sender: int


_SIGNALS: dict[int, signal.Signals] = {int(sig): sig for sig in signal.Signals}


def _as_signum(signum: int) -> int:
    # a dict: signal.Signals(n) raises and catches ValueError for every
    # realtime signal, which shows in the bench
    return _SIGNALS.get(signum, signum)


class _Saved:
    """What the first receiver of a signal changed, to put back exactly."""

    __slots__ = ("blocked", "ours", "python_handler", "sigaction")

    def __init__(self, signum: int, blocked: bool) -> None:
        self.python_handler = signal.getsignal(signum)
        self.sigaction = _sys.save_sigaction(signum)
        self.blocked = blocked
        self.ours = b""  # the disposition aipc installed, once it has

    def still_ours(self, signum: int) -> bool:
        # Python's own handler function serves every signal.signal() call, so
        # the Python-level handler tells those apart; the raw disposition tells
        # a C library's (libuv installs one for SIGCHLD when uvloop spawns)
        return (
            signal.getsignal(signum) is _fallback
            and _sys.save_sigaction(signum) == self.ours
        )


class _Hub:
    """The process's one signalfd and the receivers it feeds (main thread only)."""

    def __init__(self) -> None:
        # The reader waits on ``handle``, an epoll set of the signalfd and of
        # the hub's pipe, which the fallback handler writes to (and which is
        # the process's wakeup fd when no event loop set one).
        self.handle: FdHandle | None = None
        self.signalfd: FdHandle | None = None
        self.wake_r: FdHandle | None = None
        self.wake_w: FdHandle | None = None
        self.epoll: select.epoll | None = None
        self.wakeup_checked = False
        self.own_wakeup = False
        self.receivers: dict[int, list[SignalReceiver]] = {}
        self.saved: dict[int, _Saved] = {}
        self.reader: SignalReceiver | None = None
        self.followers: dict[SignalReceiver, anyio.Event] = {}
        # signals the fallback handler caught, for the reader to hand out
        self.caught: deque[int] = deque()
        # something was written to the pipe that the reader must read back
        self.poked = False
        self.sigchld_read = False

    # -- subscription (open and close) ----------------------------------------

    def subscribe(self, receiver: SignalReceiver, signums: list[int]) -> None:
        new = [sig for sig in signums if sig not in self.receivers]
        if new:
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, new)
            try:
                self._remask(set(self.receivers) | set(new))
            except BaseException:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                raise
            for sig in new:
                # blocked first, then handled: in between, a signal waits
                # (blocked) for the signalfd or goes to the old disposition in
                # another thread, as it would have before the receiver
                saved = self.saved[sig] = _Saved(sig, sig in blocked)
                signal.signal(sig, _fallback)
                saved.ours = _sys.save_sigaction(sig)
        for sig in signums:
            self.receivers.setdefault(sig, []).append(receiver)

    def unsubscribe(self, receiver: SignalReceiver) -> None:
        gone = []
        for sig in receiver.signals:
            listeners = self.receivers.get(sig, [])
            if receiver in listeners:
                listeners.remove(receiver)
            if not listeners:
                self.receivers.pop(sig, None)
                gone.append(sig)
        if self.reader is receiver:
            self.poke()  # the reader wakes, sees it is closed, wakes the others
        event = self.followers.pop(receiver, None)
        if event is not None:
            event.set()
        if not gone:
            return
        # Stop reading the signals first, then restore the disposition, then
        # the mask: unblocking lets the kernel deliver what is still pending to
        # the previous disposition, as if aipc had never been there.
        self._remask(set(self.receivers))
        unblock = []
        for sig in gone:
            saved = self.saved.pop(sig)
            if saved.still_ours(sig):
                handler = saved.python_handler
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
                _sys.restore_sigaction(sig, saved.sigaction)
            # else someone installed a handler while the receiver was open
            # (uvloop's for SIGCHLD): theirs is the one to keep
            if not saved.blocked:
                unblock.append(sig)
        if unblock:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)
        # what this last receiver had read from the kernel but not taken goes
        # back the same way (it was the last copy)
        self._redeliver([info for info in receiver._queue if info.signum in gone])
        if signal.SIGCHLD in gone and self.sigchld_read:
            # Child watchers that reap on SIGCHLD (uvloop's, asyncio's
            # SafeChildWatcher) missed the ones aipc read: one more makes them
            # look at every child (SIGCHLD coalesces; by default it is ignored)
            self.sigchld_read = False
            signal.raise_signal(signal.SIGCHLD)

    def _redeliver(self, infos: list[SignalInfo]) -> None:
        for info in infos:
            if info.value is None:
                signal.raise_signal(info.signum)
            else:
                _sys.sigqueue(os.getpid(), info.signum, info.value)

    def _remask(self, signums: set[int]) -> None:
        if self.signalfd is not None:
            if signums:
                _sys.signalfd(self.signalfd.fileno(), signums)
            else:
                self._close()
            return
        if not signums:
            return
        self.epoll = select.epoll()
        try:
            self.signalfd = FdHandle(_sys.signalfd(-1, signums), "signalfd")
            self.epoll.register(self.signalfd.fileno(), select.EPOLLIN)
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self.wake_r, self.wake_w = FdHandle(r, "pipe"), FdHandle(w, "pipe")
            self.epoll.register(r, select.EPOLLIN)
            # the epoll object closes its own fd; the hub waits on a dup of it
            self.handle = FdHandle(os.dup(self.epoll.fileno()), "epoll")
        except BaseException:
            self._close()
            raise

    def _ensure_wakeup(self) -> None:
        # Python's C signal handler, run in whichever thread the kernel picked,
        # sets a flag for the main thread and writes to the wakeup fd: nothing
        # else wakes an event loop that sleeps in epoll_wait, and the fallback
        # handler only runs once it wakes. trio and uvloop set a wakeup fd when
        # they start, asyncio only with a signal handler of its own. Without
        # one, the hub's pipe becomes the wakeup fd. This runs in the first
        # wait, inside the event loop, so that a loop that starts later does
        # not find aipc's pipe there (trio would warn).
        self.wakeup_checked = True
        assert self.wake_w is not None
        previous = signal.set_wakeup_fd(self.wake_w.fd, warn_on_full_buffer=False)
        if previous != -1:
            # the event loop has one: put it back (trio and uvloop set theirs
            # without warnings on a full buffer, as here)
            signal.set_wakeup_fd(previous, warn_on_full_buffer=False)
        else:
            self.own_wakeup = True

    def _close(self) -> None:
        if self.own_wakeup and self.wake_w is not None:
            previous = signal.set_wakeup_fd(-1)
            if previous not in (-1, self.wake_w.fd):
                # an event loop set its own over ours meanwhile: it stays
                signal.set_wakeup_fd(previous, warn_on_full_buffer=False)
        self.own_wakeup = False
        self.caught.clear()
        for handle in (self.handle, self.signalfd, self.wake_r, self.wake_w):
            if handle is not None:
                handle.close()
        self.handle = self.signalfd = self.wake_r = self.wake_w = None
        if self.epoll is not None:
            self.epoll.close()
            self.epoll = None
        self.wakeup_checked = False

    # -- reading --------------------------------------------------------------

    def drain(self) -> bool:
        """Read every pending record and hand it out; False if there was none."""
        if self.signalfd is None or self.wake_r is None:
            return False
        if self.poked or self.own_wakeup:
            self.poked = False
            try:
                while os.read(self.wake_r.fd, 256):
                    pass  # what was written there only woke us
            except BlockingIOError:
                pass
        got = False
        caught = self.caught
        while caught:
            got = True
            self._hand_out(SignalInfo(_as_signum(caught.popleft()), *_UNKNOWN))
        fd = self.signalfd.fd
        size = _sys.SIGNALFD_SIGINFO_SIZE
        while True:
            try:
                data = os.read(fd, _READ_RECORDS * size)
            except BlockingIOError:
                return got
            got = True
            for offset in range(0, len(data) - size + 1, size):
                self._hand_out(self._record(data, offset))
            if len(data) < _READ_RECORDS * size:
                return True  # a short read: the queue is empty (or nearly)

    def _record(self, data: bytes, offset: int) -> SignalInfo:
        signo, code, pid, uid, status, value, _err = _sys.unpack_signalfd_siginfo(
            data, offset
        )
        if signo == signal.SIGCHLD:
            self.sigchld_read = True
        return SignalInfo(
            _as_signum(signo),
            pid,
            uid,
            code,
            value if code == _sys.SI_QUEUE else None,
            status if signo == signal.SIGCHLD else None,
        )

    def poke(self) -> None:
        """Wake the reader (it waits on an epoll set that holds the pipe)."""
        if self.wake_w is None:
            return
        self.poked = True
        try:
            os.write(self.wake_w.fd, b"\0")
        except BlockingIOError:
            pass  # full of wake-ups already: the reader will come

    def _hand_out(self, info: SignalInfo) -> None:
        for receiver in self.receivers.get(info.signum, ()):
            if receiver._offer(info):
                event = self.followers.get(receiver)
                if event is not None:
                    event.set()

    async def wait(self, receiver: SignalReceiver) -> None:
        """Wait until there may be something for ``receiver``."""
        if self.reader is None and self.handle is not None:
            if not self.wakeup_checked:
                self._ensure_wakeup()
            self.reader = receiver
            try:
                await self.handle.wait_readable()
            except anyio.ClosedResourceError:
                pass  # the last receiver closed: the caller sees its own state
            finally:
                if self.reader is receiver:
                    self.reader = None
                # someone else may have to take over the reading
                for event in self.followers.values():
                    event.set()
        else:
            event = self.followers[receiver] = anyio.Event()
            try:
                await event.wait()
            finally:
                if self.followers.get(receiver) is event:
                    del self.followers[receiver]


_hub = _Hub()
_MAIN_THREAD = threading.main_thread().ident
# pid, uid, code, value, status of a signal the fallback handler caught
_UNKNOWN = (None, None, None, None, None)


def _fallback(signum: int, frame: FrameType | None) -> None:
    # Python runs this in the main thread for a signal the kernel delivered to
    # a thread that does not block it (the main thread does, while a receiver
    # is open); its siginfo is gone. Queue it for the reader and wake it
    # through the hub's pipe. Raising it again at the main thread would not
    # do: a signal pending for the main thread only is invisible to an epoll
    # that waits in another thread (trio's guest mode does that).
    hub = _hub
    if signum not in hub.receivers or hub.wake_w is None:
        return
    hub.caught.append(signum)
    hub.poke()


class SignalReceiver(ObjectReceiveStream[SignalInfo]):
    """Receives the signals it was opened for, as :class:`SignalInfo` records.

    Made by :func:`open_signal_receiver`; use it as a context manager (sync or
    async) and iterate over it. Every open receiver of a signal gets every
    occurrence of it; realtime signals queue in order with their payloads,
    standard signals coalesce as the kernel does (while one is queued here
    unread, more of the same are dropped).

    It belongs to the main thread: open it, receive from it and close it
    there (the event loop runs there).
    """

    def __init__(self, signums: list[int]) -> None:
        self._signals = frozenset(signums)
        self._queue: deque[SignalInfo] = deque()
        self._queued_standard: set[int] = set()
        self._entered = self._closed = False
        self._received = self._coalesced = self._without_sender = 0
        self._receiving = False

    @property
    def signals(self) -> frozenset[int]:
        """The signal numbers this receiver was opened for."""
        return self._signals

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def _offer(self, info: SignalInfo) -> bool:
        # called by the hub; False if coalesced with a queued one
        sig = info.signum
        if sig < signal.SIGRTMIN:
            if sig in self._queued_standard:
                self._coalesced += 1
                return False
            self._queued_standard.add(sig)
        if info.pid is None:
            self._without_sender += 1
        self._queue.append(info)
        return True

    async def receive(self) -> SignalInfo:
        """The next signal: from the queue, or wait for one.

        Raises ``ClosedResourceError`` if the receiver is or gets closed, and
        ``BusyResourceError`` if another task is receiving from it.

        **Cancellation:** nothing is taken: a record stays queued until a
        receive returns it.
        """
        self._check_open()
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        try:
            await checkpoint()
            queue = self._queue
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                if not queue and _hub.reader is None:
                    _hub.drain()
                if queue:
                    info = queue.popleft()
                    self._queued_standard.discard(info.signum)
                    self._received += 1
                    return info
                await _hub.wait(self)
        finally:
            self._receiving = False

    def receive_nowait(self) -> SignalInfo:
        """The next signal if one is pending, else raise ``anyio.WouldBlock``."""
        self._check_open()
        if not self._queue and _hub.reader is None:
            _hub.drain()
        if not self._queue:
            raise anyio.WouldBlock
        info = self._queue.popleft()
        self._queued_standard.discard(info.signum)
        self._received += 1
        return info

    def close(self) -> None:
        """Stop receiving; idempotent.

        A task waiting in :meth:`receive` wakes with ``ClosedResourceError``.
        When this was the last receiver of a signal, its previous handler and
        its blocked state in the main thread come back exactly, signals still
        pending in the kernel go to that previous disposition, and so do those
        this receiver had queued but nobody took (they were the last copies).
        Other receivers keep what they have.
        """
        if self._closed:
            return
        _check_main_thread()
        self._closed = True
        if self._entered:
            _hub.unsubscribe(self)
        self._queue.clear()
        self._queued_standard.clear()

    async def aclose(self) -> None:
        self.close()
        await checkpoint()

    def statistics(self) -> SignalReceiverStatistics:
        """Cheap counters of this receiver."""
        return SignalReceiverStatistics(
            self._received, len(self._queue), self._coalesced, self._without_sender
        )

    def _check_open(self) -> None:
        _check_main_thread()
        if self._closed:
            raise anyio.ClosedResourceError
        if not self._entered:
            raise RuntimeError(
                "enter the receiver first: with open_signal_receiver(...) as received"
            )

    def __enter__(self) -> Self:
        _check_main_thread()
        if self._entered or self._closed:
            raise RuntimeError("a signal receiver can be entered only once")
        _hub.subscribe(self, sorted(self._signals))
        self._entered = True
        return self

    async def __aenter__(self) -> Self:
        return self.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(_signal_name(sig) for sig in sorted(self._signals))
        state = "closed" if self._closed else f"queued={len(self._queue)}"
        return f"<SignalReceiver {names} {state}>"


def _check_main_thread() -> None:
    if threading.get_ident() != _MAIN_THREAD:
        raise RuntimeError(
            "signal receivers work in the main thread only (the signal mask and "
            "handlers they set are the main thread's, and so is the event loop "
            "that reads them)"
        )


def open_signal_receiver(*signals: int) -> SignalReceiver:
    """Start receiving ``signals``; returns a :class:`SignalReceiver`.

    Use it as a context manager, ``with open_signal_receiver(SIGUSR1) as
    received:`` (or ``async with``), then ``async for info in received``. From
    entering it on, the signals are blocked in the main thread and read through a
    signalfd, with their sender's pid and uid and their ``sigqueue`` value; on
    close, the previous handler and mask come back. It needs no running event
    loop, so it can open before ``asyncio.run`` / ``trio.run`` and keep
    signals that arrive during start-up.

    Only from the main thread (``RuntimeError`` otherwise). ``ValueError`` for
    no signals, numbers out of range, ``SIGKILL``/``SIGSTOP`` (they cannot be
    caught) and the CPU fault signals (``SIGSEGV``, ``SIGBUS``, ``SIGFPE``,
    ``SIGILL``, ``SIGTRAP``).

    Threads: a thread started from the main thread while a receiver is open
    inherits the block and never takes the signal. Threads started before (and
    threads started by other threads that predate it) do not block it; a
    signal the kernel gives to one of them still arrives, through a fallback
    handler, but without sender info. Open receivers early (or block the
    signals with ``signal.pthread_sigmask`` before starting threads) to get
    sender info for every signal.
    """
    if not signals:
        raise ValueError("signals: give at least one signal to receive")
    signums = sorted({_check_receivable(sig) for sig in signals})
    _check_main_thread()
    return SignalReceiver(signums)
