"""Fd ownership and readiness: the only place aipc closes or waits on a descriptor.

An :class:`FdHandle` owns exactly one descriptor. Closing it follows the order
that makes a concurrent waiter safe and a recycled fd number harmless:

1. *forget the number*: every later use raises ``ClosedResourceError`` instead
   of touching whatever object the kernel gives that number to next;
2. *notify*: tasks blocked in :meth:`FdHandle.wait_readable` /
   :meth:`FdHandle.wait_writable` (and anyio's own waiters on the fd) wake with
   ``ClosedResourceError``; the event loop drops its registration while the fd
   is still valid, so epoll never sees a closed number;
3. ``os.close``.

Readiness on asyncio and uvloop uses a *persistent* registration: the reader
callback stays installed while the fd is in use and is removed lazily, the
second time in a row it fires with nobody waiting (the loops' selectors are
level-triggered, so leaving it installed then would spin). A waiting receive
hands its read to the callback, so stale readiness never wakes a task for
nothing. aipc owns the registration: do not wait on an aipc object's
``fileno()`` with ``anyio.wait_readable`` or ``loop.add_reader`` yourself.
anyio's generic ``wait_readable`` installs and removes the callback on every
wait, which costs two ``epoll_ctl`` calls and, on uvloop, a poll handle
allocation per message;
``aipc bench`` shows the difference (``AIPC_GENERIC_WAIT=1`` switches back to
anyio's generic waits and checkpoints on every backend).
On trio the backend's own wait is used: trio already keeps epoll registrations
between waits.
"""

from __future__ import annotations

import asyncio
import os
import select
import stat
import sys
import types
import warnings
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

import anyio
import sniffio
from anyio.lowlevel import checkpoint as _anyio_checkpoint

__all__ = [
    "LARGE_OPERATION",
    "FdHandle",
    "checkpoint",
    "checkpoint_large",
    "current_library",
    "skip_checkpoint",
    "reopen_private_nonblocking",
]

_GENERIC_WAIT = os.environ.get("AIPC_GENERIC_WAIT", "") not in ("", "0")


def _trio() -> Any:
    # trio is imported by whoever runs trio.run(); importing it here eagerly
    # would cost asyncio-only users ~100 ms at start-up
    return sys.modules["trio"]


@types.coroutine
def _yield() -> Generator[None, None, None]:
    # what asyncio.sleep(0) does, minus its two wrapper frames: a bare yield
    # makes the task reschedule itself, and cancellation lands here
    yield


_sniffio_thread = sniffio.thread_local
_sniffio_cvar = sniffio.current_async_library_cvar


def current_library() -> str:
    """``sniffio.current_async_library()`` for aipc's own coroutines, cheaper.

    trio names itself in sniffio's thread-local around every task step (guest
    mode too) and ``anyio.run`` sets sniffio's context variable: both are read
    first, as sniffio does. When neither is set, sniffio sniffs with an import
    statement and ``asyncio.current_task()`` (whose loop lookup makes a
    ``getpid()`` syscall): about 1 µs under a plain ``asyncio.run`` or
    ``uvloop.run``, paid by every send and receive. aipc's coroutines only
    run under anyio's two backends, so a coroutine that is not trio's runs on
    asyncio: the answer without the sniff. (Outside any loop, the asyncio
    calls that follow fail as they would have.)
    """
    name = _sniffio_thread.name
    if name is None:
        name = _sniffio_cvar.get()
        if name is None:
            return "asyncio"
    return name


#: A checkpoint with nothing else to run may skip its pass of the event loop
#: this many times in a row (see _nothing_to_run).
SKIP_BUDGET = 16
#: Operations moving more than this many bytes use checkpoint_large (the
#: compiled helper reads it at bind(), so it is defined before that).
LARGE_OPERATION = 16384
_skipped = 0
_get_running_loop = asyncio.events._get_running_loop
# asyncio's private state that the skip reads (CPython 3.11 to 3.13); should a
# later CPython drop one of them, checkpoints simply always yield
_current_tasks: dict[Any, Any] | None = getattr(asyncio.tasks, "_current_tasks", None)
#: Loop types with no ``_ready`` attribute (uvloop's), and those of them whose
#: ready queue could not be found either: their checkpoints always yield.
_HIDDEN_READY_QUEUE: set[type] = set()
_NO_SKIP: set[type] = set()
#: uvloop keeps its ready queue and timers in C fields; found once per loop
#: (_find_uvloop_queues): by id(loop), a weak reference to the loop, its ready
#: deque, its set of timer handles
_uv_queues: dict[int, tuple[Any, Any, Any]] = {}
#: With more live uvloop timers than this, a checkpoint yields instead of
#: scanning them for a due one.
_UV_MAX_TIMERS = 8


def _nothing_to_run() -> bool:
    """On asyncio and uvloop: whether a pass of the loop now would run nothing
    but the current task again, so a checkpoint can skip it.

    A pass costs 3 to 6 µs of Python on asyncio's own loop (``_run_once``, the
    selector, the task step) and about 2 µs on uvloop, a third of a pipe
    round trip's CPU on one core. It is skipped only when no callback or task
    is ready (the ready queue: a task woken, a ``call_soon``, anyio's delivery
    of a cancel scope's cancellation, a callback from another thread), no
    timer is due (a deadline of ``anyio.move_on_after`` or
    ``asyncio.timeout``) and no plain ``Task.cancel()`` is pending for this
    task (``_must_cancel``): exactly the cases where a yield would let
    something else run or raise a cancellation here. What it cannot see is
    I/O readiness of other descriptors (and, on uvloop, transport writes
    queued for the end of the pass), so at most SKIP_BUDGET checkpoints in a
    row skip: a task that never waits still polls the loop every SKIP_BUDGET
    operations (for comparison, asyncio's own ``StreamWriter.write`` never
    yields).
    """
    global _skipped
    if _skipped >= SKIP_BUDGET:
        return False
    loop: Any = _get_running_loop()
    last = _last_loop
    if last[0]() is not loop:
        last = _learn_loop(loop)
    kind = last[1]
    try:
        if kind is _ASYNCIO:
            ready = loop._ready
            if ready and not _only_stale_fires(ready):
                return False
            scheduled = loop._scheduled
            if scheduled and scheduled[0]._when < loop.time() + loop._clock_resolution:
                return False
        elif kind is _UVLOOP:
            # a uvloop handle hides whether it is cancelled: any entry counts
            if last[2]:
                return False
            timers = last[3]
            if timers:
                if len(timers) > _UV_MAX_TIMERS:
                    return False
                now = loop.time()
                for timer in timers:
                    if timer.when() <= now:
                        return False
        else:
            return False
        task = _current_tasks.get(loop)  # type: ignore[union-attr]  # _learn_loop
        if task is None or task._must_cancel:
            return False
    except AttributeError:  # a loop or task without asyncio's private state
        return False
    _skipped += 1
    return True


def _noop() -> None:
    pass


#: What the skip reads of a loop kind: asyncio's own loop (its ``_ready`` and
#: ``_scheduled``, read each time: asyncio replaces the timer heap when it
#: prunes cancelled timers), uvloop (its ready deque and timer set, found by
#: _find_uvloop_queues), or neither (checkpoints always yield).
_ASYNCIO = "asyncio"
_UVLOOP = "uvloop"
_NEVER = "never"
#: The last loop a checkpoint ran in, one tuple so that threads running other
#: loops never see half of another's entry: (weak reference to the loop, kind,
#: uvloop's ready deque, uvloop's timer set).
_last_loop: tuple[Any, str, Any, Any] = (_noop, _NEVER, None, None)


def _learn_loop(loop: Any) -> tuple[Any, str, Any, Any]:
    """The skip's entry for ``loop`` (a loop the last checkpoint did not run
    in), remembered in _last_loop."""
    global _last_loop
    try:
        ref = weakref.ref(loop)
    except TypeError:
        return (_noop, _NEVER, None, None)  # not remembered: yields each time
    kind, ready, timers = _NEVER, None, None
    if _current_tasks is None:
        pass
    elif type(loop) in _HIDDEN_READY_QUEUE:
        queues = _uv_queues.get(id(loop))
        if queues is None or queues[0]() is not loop:
            queues = None if type(loop) in _NO_SKIP else _find_uvloop_queues(loop, ref)
        if queues is not None:
            kind, ready, timers = _UVLOOP, queues[1], queues[2]
    elif all(
        hasattr(loop, name) for name in ("_ready", "_scheduled", "_clock_resolution")
    ):
        kind = _ASYNCIO
    elif not hasattr(loop, "_ready"):
        # uvloop: remembered by type, since a failed getattr costs more than
        # the rest of a checkpoint
        _HIDDEN_READY_QUEUE.add(type(loop))
        return _learn_loop(loop)
    _last_loop = entry = (ref, kind, ready, timers)
    return entry


def _find_uvloop_queues(loop: Any, ref: Any) -> tuple[Any, Any, Any] | None:
    """Find uvloop's ready deque and timer set among the loop's references
    (``ref``: a weak reference to ``loop``, kept with them in _uv_queues).

    They are C fields of uvloop's ``Loop``, invisible as attributes, but the
    loop reports them to the garbage collector (``gc.get_referents``). The
    one deque that holds a fresh ``call_soon`` handle is the ready queue, the
    one set that holds a fresh ``call_later`` handle (and drops it when it is
    cancelled) the live timers. Both probes are cancelled at once; the
    cancelled ready entry only makes the next checkpoint yield. A loop where
    either is not found exactly once always yields from then on.
    """
    import collections
    import gc

    handle = loop.call_soon(_noop)
    timer = loop.call_later(3600.0, _noop)
    try:
        refs = gc.get_referents(loop)
        readies = [r for r in refs if type(r) is collections.deque and handle in r]
        timer_sets = [r for r in refs if type(r) is set and timer in r]
    finally:
        handle.cancel()
        timer.cancel()
    if len(readies) != 1 or len(timer_sets) != 1 or timer in timer_sets[0]:
        _NO_SKIP.add(type(loop))
        return None
    for key, (other, _, _) in list(_uv_queues.items()):
        if other() is None:
            del _uv_queues[key]  # a closed loop's entry
    queues = _uv_queues[id(loop)] = (ref, readies[0], timer_sets[0])
    return queues


def _only_stale_fires(ready: Any) -> bool:
    # whether every ready handle is a watcher's report that it will ignore
    # (_Watcher.stale): running them would do nothing
    for handle in ready:
        if handle._cancelled:
            continue
        watcher = getattr(handle._callback, "__self__", None)
        if type(watcher) is not _Watcher or not watcher.stale:
            return False
    return True


_trio_context: Any = None


def _nothing_to_run_trio() -> bool:
    """On trio: whether trio's scheduler, given a pass now, would run nothing
    but the current task again, so a checkpoint can skip it.

    trio's own ``checkpoint()`` allows exactly this: "the scheduler has the
    option of ignoring this and continuing to run the current task if it
    decides this is appropriate (e.g. for increased efficiency)". A pass of
    trio's run loop costs about 6 µs here. It is skipped only when no task is
    runnable (``runq``; tasks later in the current batch are not visible
    there, and run at the latest SKIP_BUDGET operations later), no deadline
    is due, this task is not cancelled and no KeyboardInterrupt is pending.
    The skipped checkpoint still counts as a schedule and cancel point for
    ``trio.testing.assert_checkpoints``. I/O readiness of other descriptors is
    invisible, hence the same SKIP_BUDGET as on asyncio.
    """
    global _skipped, _trio_context
    if _skipped >= SKIP_BUDGET:
        return False
    context = _trio_context
    if context is None:
        run = sys.modules.get("trio._core._run")
        context = _trio_context = getattr(run, "GLOBAL_RUN_CONTEXT", False)
    if context is False:
        return False
    try:
        runner = context.runner
        if runner.runq or runner.ki_pending:
            return False
        task = context.task
        if task._cancel_status.effectively_cancelled:
            return False
        heap = runner.deadlines._heap
        if heap and heap[0][0] <= runner.clock.current_time():
            return False
        task._schedule_points += 1
        task._cancel_points += 1
    except AttributeError:  # a trio without this private state: always yield
        _trio_context = False
        return False
    _skipped += 1
    return True


def _skip_checkpoint_py() -> bool:
    """The decision of :func:`checkpoint` without its coroutine: ``True`` when
    this checkpoint skips its pass of the loop (counted as skipped, exactly as
    :func:`checkpoint` counts it), ``False`` when the caller must still
    ``await checkpoint()``. For the hot paths, written
    ``if not skip_checkpoint(): await checkpoint()``: creating, awaiting and
    finishing the coroutine cost about as much as the decision (0.45 of
    1.2 µs per checkpoint here).

    These are the Python steps; ``skip_checkpoint`` is their compiled twin
    (``aipc/_core/_corec.c``) where the package build compiled it.
    """
    if _GENERIC_WAIT:
        return False
    # current_library(), inlined: this runs on every send and receive
    lib = _sniffio_thread.name
    if lib is None:
        lib = _sniffio_cvar.get() or "asyncio"
    if lib == "asyncio":
        return _nothing_to_run()
    if lib == "trio":
        return _nothing_to_run_trio()
    return False  # pragma: no cover - another anyio backend


def _load_compiled() -> Any:
    """The compiled helper ``aipc._core._corec``, bound to this module's
    state; None without it: not built (no C compiler at install), from
    another version of aipc, ``AIPC_PURE_PYTHON=1``, or ``AIPC_GENERIC_WAIT``
    (whose checkpoints never skip)."""
    if _GENERIC_WAIT or os.environ.get("AIPC_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _corec  # type: ignore[attr-defined]
    except ImportError:
        return None
    if getattr(_corec, "VERSION", None) != 4:
        return None
    try:
        _corec.bind(globals())
    except (TypeError, RuntimeError):  # asyncio or sniffio changed shape
        return None
    # the helper remembers the running loop (see running_loop() there); a
    # forked child starts afresh, as asyncio's own check of getpid() does
    os.register_at_fork(after_in_child=_corec.forget)
    return _corec


_corec = _load_compiled()
#: The checkpoint's decision (see _skip_checkpoint_py): the same steps
#: compiled where the helper is built, on asyncio's own loop and uvloop
#: (about 0.3 µs less per send, and no getpid() system call); on trio the
#: helper hands over to _nothing_to_run_trio, which is faster in Python.
skip_checkpoint: Callable[[], bool] = (
    _skip_checkpoint_py if _corec is None else _corec.skip_checkpoint
)
#: asyncio's running loop of this thread, or None: the compiled helper's
#: answer without asyncio's getpid() where it is built.
_running_loop: Callable[[], Any] = (
    _get_running_loop if _corec is None else _corec.running_loop
)


async def checkpoint() -> None:
    """A cancel point, and a schedule point whenever something else can run.

    Same semantics as ``anyio.lowlevel.checkpoint()`` as far as any other
    task, callback, timer or cancellation can tell, without its generic
    dispatch (about as much again as the yield itself on asyncio). A
    checkpoint with nothing else to run skips the pass of the loop, at most
    SKIP_BUDGET times in a row (:func:`_nothing_to_run`,
    :func:`_nothing_to_run_trio`).
    """
    global _skipped
    if skip_checkpoint():
        return
    if _GENERIC_WAIT:
        await _anyio_checkpoint()
        return
    lib = current_library()
    if lib == "asyncio":
        _skipped = 0
        await _yield()
    elif lib == "trio":
        _skipped = 0
        await _trio().lowlevel.checkpoint()
    else:  # pragma: no cover - another anyio backend
        await _anyio_checkpoint()


async def checkpoint_large() -> None:
    """The checkpoint of an operation that moves more than LARGE_OPERATION
    bytes and over a quarter of its kernel buffer (``FdSendStream.send``):
    on trio and uvloop a pass of the loop, never skipped.

    There the pass costs little beside the copy, and it keeps a producer and
    a consumer that each move a whole kernel buffer at a time out of
    lock-step, where each finds the buffer full (empty) and sleeps until the
    other wakes it. Across cores, 64 KiB sends into a default 64 KiB pipe
    went from 2.3 to 1.3 GB/s on trio when their checkpoints were skipped,
    and back with this. On asyncio's own loop the pass costs more Python than
    it buys back: there this is :func:`checkpoint`.
    """
    global _skipped
    lib = current_library()
    if _GENERIC_WAIT or (
        lib == "asyncio" and type(_get_running_loop()) not in _HIDDEN_READY_QUEUE
    ):
        await checkpoint()
        return
    _skipped = 0
    if lib == "trio":
        await _trio().lowlevel.checkpoint()
    elif lib == "asyncio":  # uvloop
        await _yield()
    else:  # pragma: no cover - another anyio backend
        await _anyio_checkpoint()


T = TypeVar("T")

_SYNC_RESUME = os.environ.get("AIPC_NO_SYNC_RESUME", "") in ("", "0")


def _idle(loop: Any) -> bool:
    """Whether ``loop`` is asyncio's own, runs no task now and has nothing
    ready to run: a task stepped now overtakes nothing that a pass of the
    loop would run first (uvloop: see :class:`_Waiter`)."""
    if _current_tasks is None or _current_tasks.get(loop) is not None:
        return False
    last = _last_loop
    if last[0]() is not loop:
        last = _learn_loop(loop)
    return last[1] is _ASYNCIO and not loop._ready


class _Waiter(asyncio.Future):  # type: ignore[type-arg]
    """The future a task awaits in :meth:`_Watcher.wait` on asyncio's own
    loop, which steps the task within the loop callback that completes it.

    An asyncio future schedules its callbacks with ``call_soon``: a task woken
    by a reader callback runs one pass of the loop later, after another
    ``epoll_wait`` and the selector's Python, all of it on a round trip's
    critical path. asyncio's ``Task`` registers its wake-up with
    ``add_done_callback`` on any future that is not exactly ``asyncio.Future``
    (the protocol of future-like objects), and that wake-up steps the task at
    once. This future keeps that one callback and, when the watcher's
    callback completes it with no task running and nothing else ready in the
    loop (:func:`_idle`: the task overtakes nothing), calls it there and then.
    Completed in any other state (a close from another task, other callbacks
    ready), or cancelled, it schedules the callback as any future does.

    Not used on uvloop: it already runs a woken task in the same pass, and
    stepping it from the I/O callback measured slower there on one core
    (``AIPC_NO_SYNC_RESUME=1`` turns this off everywhere, for A/B runs).
    """

    __slots__ = ("_wakeup", "_wakeup_context")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._wakeup: Callable[[Any], object] | None = None
        self._wakeup_context: Any = None

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        if self._wakeup is None and not self.done():
            self._wakeup = fn
            self._wakeup_context = context
        else:
            super().add_done_callback(fn, context=context)

    def remove_done_callback(self, fn: Any) -> int:
        if self._wakeup is not None and self._wakeup == fn:
            self._wakeup = self._wakeup_context = None
            return 1 + super().remove_done_callback(fn)
        return super().remove_done_callback(fn)

    def _schedule(self) -> None:
        fn = self._wakeup
        if fn is not None:
            self._wakeup = None
            self.get_loop().call_soon(fn, self, context=self._wakeup_context)

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        self._schedule()

    def set_exception(self, exception: Any) -> None:
        super().set_exception(exception)
        self._schedule()

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg=msg):
            return False
        self._schedule()
        return True

    def resume(self, result: Any, exc: BaseException | None = None) -> bool:
        """Complete the future; step the waiting task now if no task runs
        (and say whether it did)."""
        if exc is None:
            super().set_result(result)
        else:
            super().set_exception(exc)
        fn = self._wakeup
        if fn is None:
            return False
        loop = self.get_loop()
        if not _idle(loop):
            self._schedule()
            return False
        self._wakeup = None
        context = self._wakeup_context
        if context is None:
            fn(self)
        else:
            context.run(fn, self)
        return True


class _WatcherFields:
    """The fields of a :class:`_Watcher` in the Python steps; where the
    helper is compiled, ``_corec.WatcherCore`` holds them in C instead."""

    __slots__ = (
        "also",
        "attempt",
        "fd",
        "idle",
        "loop",
        "readable",
        "registered",
        "reports_twice",
        "resumes",
        "stale",
        "waiter",
    )


# a statement, not a conditional expression: mypy takes a base class only
# from a name bound this way
if TYPE_CHECKING or _corec is None:  # noqa: SIM108
    _WatcherBase = _WatcherFields
else:
    _WatcherBase = _corec.WatcherCore


class _Watcher(_WatcherBase):
    """A persistent asyncio/uvloop reader or writer registration for one fd.

    A waiter may hand over an *attempt* (the non-blocking syscall it wants to
    make). The callback makes it on the waiter's behalf: the result goes to the
    waiter, and ``EAGAIN`` (readiness that went stale: on asyncio the callback
    may run on a select() result taken before the data was consumed) just keeps
    it waiting instead of waking the task for nothing. Nothing is ever taken
    from the kernel unless a task is waiting for it.

    Where the helper is compiled, :meth:`_fire` and :meth:`arm` are its C
    steps (``aipc/_core/_corec.c``), the methods below step for step.
    """

    __slots__ = ()

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        readable: bool,
        also: tuple[int, ...] = (),
    ) -> None:
        self.loop = loop
        self.fd = fd
        self.readable = readable
        # more descriptors whose readability fires the same callback (a
        # WaitSet's members on asyncio and uvloop): registered and dropped
        # with fd; readable watchers only
        self.also = also
        self.registered = False
        self.idle = 0
        self.waiter: asyncio.Future[Any] | None = None
        self.attempt: Callable[[], Any] | None = None
        # asyncio's own loop wakes a task one iteration after the callback
        # that completed its future, and polls in between: a wait that only
        # asked for readiness (no attempt: the task acts on the fd itself)
        # sees its fd reported once more before the task has acted. That
        # report is stale (see _fire), and a checkpoint need not yield for it
        # (_only_stale_fires). uvloop runs the task in the same iteration.
        self.reports_twice = hasattr(loop, "_ready")
        # asyncio's own loop: the task is stepped from the callback (_Waiter)
        self.resumes = _SYNC_RESUME and self.reports_twice
        self.stale = False

    def _fire(self) -> None:
        waiter = self.waiter
        if self.stale:
            # The report after a readiness-only fire (see __init__), taken
            # before the woken task acted on the fd. With nobody waiting it is
            # dropped. If the task has acted and waits again, whether the fd
            # is still ready is a question for the kernel, not for that old
            # report: one poll() answers it (request/response traffic: no,
            # and the task is spared a wake-up for nothing; a stream: yes).
            self.stale = False
            if waiter is None or waiter.done() or not self._ready_now():
                return
        if waiter is None or waiter.done():
            # Ready with nobody waiting. On asyncio the task woken by the previous
            # fire only runs in the next loop iteration, after a select() that
            # still reports the fd (its data is not read yet): that first idle
            # fire is expected and costs nothing. A second one in a row means
            # nobody is reading: unregister, or the level-triggered selector
            # would call us on every iteration until someone does.
            self.idle += 1
            if self.idle >= 2:
                self.unregister()
            return
        self.idle = 0
        attempt = self.attempt
        result: Any = True
        error: BaseException | None = None
        if attempt is not None:
            try:
                result = attempt()
            except BlockingIOError:
                return  # stale readiness: keep waiting
            except BaseException as exc:
                error = exc
        self.waiter = self.attempt = None
        if type(waiter) is _Waiter:
            if waiter.resume(result, error):
                return  # the task has run and acted: nothing stale
        elif error is None:
            waiter.set_result(result)
        else:
            waiter.set_exception(error)
        if attempt is None:
            self.stale = self.reports_twice

    def _ready_now(self) -> bool:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN if self.readable else select.POLLOUT)
        for fd in self.also:
            poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    def _register(self) -> None:
        # at the first wait and the first after an idle unregister; the
        # compiled arm() calls this too
        if self.readable:
            self.loop.add_reader(self.fd, self._fire)
            for fd in self.also:
                self.loop.add_reader(fd, self._fire)
        else:
            self.loop.add_writer(self.fd, self._fire)
        self.registered = True

    def unregister(self) -> None:
        self.idle = 0
        self.stale = False
        if self.registered:
            self.registered = False
            if self.readable:
                self.loop.remove_reader(self.fd)
                for fd in self.also:
                    self.loop.remove_reader(fd)
            else:
                self.loop.remove_writer(self.fd)

    def arm(self, attempt: Callable[[], Any] | None) -> asyncio.Future[Any]:
        """The first half of :meth:`wait`: the future the task awaits, which
        the callback completes with the result of ``attempt`` (``True``
        without one), or fails with ``ClosedResourceError`` when the fd is
        closed. Awaited as it is, it loses the attempt's result if the task
        is cancelled after the callback made it; a caller with something to
        keep hands an exception to :meth:`disarm`."""
        global _skipped
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            # another task waits (a cancelled waiter's future is done: the
            # task that awaited it is gone)
            raise anyio.BusyResourceError(
                "reading from" if self.readable else "writing to"
            )
        waiter = _Waiter(self.loop) if self.resumes else self.loop.create_future()
        self.waiter = waiter
        self.attempt = attempt
        if not self.registered:
            self._register()
        # the task yields to the loop on this pending future: the budget of
        # skipped checkpoints starts over
        _skipped = 0
        return waiter

    def disarm(
        self, waiter: asyncio.Future[Any], keep: Callable[[Any], None] | None
    ) -> None:
        """The second half of :meth:`wait` when awaiting ``waiter`` raised
        (cancelled): forget it and, if the callback made the attempt for it
        (a plain task.cancel() can land between the fire and the task's
        resumption), hand the result to ``keep`` so that nothing is lost."""
        if self.waiter is waiter:
            self.waiter = self.attempt = None
        if (
            keep is not None
            and waiter.done()
            and not waiter.cancelled()
            and waiter.exception() is None
        ):
            keep(waiter.result())

    async def wait(
        self,
        attempt: Callable[[], T] | None,
        keep: Callable[[T], None] | None,
    ) -> Any:
        waiter = self.arm(attempt)
        try:
            return await waiter
        except BaseException:
            self.disarm(waiter, keep)
            raise

    def close(self) -> None:
        """Wake the waiter with ClosedResourceError and drop the registration."""
        waiter, self.waiter, self.attempt = self.waiter, None, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(anyio.ClosedResourceError())
        self.unregister()


#: The Python steps of the watcher's callback and arm (the tests run both).
_WATCHER_PYTHON_STEPS = (_Watcher._fire, _Watcher.arm)
if _corec is not None:
    # every wait on asyncio and uvloop arms a watcher, and every wake-up is
    # its callback: their compiled steps (7 % of a uvloop pipe round trip's
    # instructions, 3 % of asyncio's)
    _Watcher._fire = _corec.WatcherCore._cfire  # type: ignore[method-assign]
    _Watcher.arm = _corec.WatcherCore._carm  # type: ignore[method-assign]


async def _raise_closed() -> Any:
    raise anyio.ClosedResourceError


def _current(watcher: _Watcher | None) -> TypeGuard[_Watcher]:
    # a watcher of the loop this thread runs now (not of a loop that ran
    # before, or of one another thread runs)
    return watcher is not None and watcher.loop is _running_loop()


class FdHandle:
    """Owns one descriptor: ``fileno()``, safe idempotent ``close()``, readiness.

    The descriptor must already be close-on-exec and, for readiness waits,
    non-blocking. ``what`` names the resource in messages ("pipe", "eventfd").

    ``closer``, if given, closes the descriptor in step 3 instead of
    ``os.close(fd)``: for a descriptor opened by a library that keeps its own
    copy of the number (posix_ipc's message queues, whose ``close()`` is
    ``mq_close``). Calling the library's close lets it forget the number too, so
    that no later call through it can reach a file that reuses the number, and
    nothing closes the descriptor twice; the order (forget, notify, close)
    stays this class's. ``closer`` must close exactly ``fd``; do not
    :meth:`detach` such a handle.
    """

    __slots__ = ("__weakref__", "_closer", "_fd", "_rwatch", "_wwatch", "what")

    def __init__(
        self, fd: int, what: str, closer: Callable[[], object] | None = None
    ) -> None:
        if not isinstance(fd, int) or isinstance(fd, bool):
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        if fd < 0:
            raise ValueError(f"fd must be >= 0, got {fd}")
        self._fd = fd
        self._closer = closer
        self.what = what
        self._rwatch: _Watcher | None = None
        self._wwatch: _Watcher | None = None

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def fd(self) -> int:
        """The descriptor, or -1 once closed (never raises; for fast paths)."""
        return self._fd

    def fileno(self) -> int:
        fd = self._fd
        if fd < 0:
            raise anyio.ClosedResourceError
        return fd

    def close(self) -> None:
        fd = self._fd
        if fd < 0:
            return
        # 1. forget the number: nothing in aipc can use it from here on
        self._fd = -1
        # 2. wake our waiters and anyio's, and drop loop registrations while the
        #    number still names this file
        self._drop_watchers()
        try:
            anyio.notify_closing(fd)
        except (RuntimeError, sniffio.AsyncLibraryNotFoundError):
            pass  # no event loop running: nobody can be waiting on it
        # 3. close
        if self._closer is None:
            os.close(fd)
        else:
            self._closer()

    def detach(self) -> int:
        """Give up ownership: return the fd, which this handle will not close."""
        fd = self.fileno()
        self._drop_watchers()
        self._fd = -1
        return fd

    def _drop_watchers(self) -> None:
        for watcher in (self._rwatch, self._wwatch):
            if watcher is not None:
                try:
                    watcher.close()
                except RuntimeError:
                    pass  # the loop is closed already: nothing is registered there
        self._rwatch = self._wwatch = None

    # These return the awaitable instead of being coroutines themselves: one
    # frame less to create and to resume through on every message.

    def wait_readable(self) -> Awaitable[Any]:
        """Wait until the fd is readable (``ClosedResourceError`` if closed)."""
        return self._wait(True, None, None)

    def wait_writable(self) -> Awaitable[Any]:
        """Wait until the fd is writable (``ClosedResourceError`` if closed)."""
        return self._wait(False, None, None)

    def read_when_ready(
        self, attempt: Callable[[], T], keep: Callable[[T], None] | None = None
    ) -> Awaitable[T]:
        """Wait for readability and return ``attempt()``, a non-blocking read.

        ``attempt`` raising ``BlockingIOError`` means "not yet": the wait goes
        on. Its other exceptions propagate. On asyncio/uvloop the attempt is
        made from the loop callback; should the task be cancelled after it
        succeeded, ``keep`` receives the result so that nothing is lost.
        Without ``keep`` such a result is dropped, and on asyncio/uvloop the
        awaitable is the watcher's future itself: nothing runs after it, so
        no coroutine wraps it (a ring's doorbell, a readiness-only wait).
        """
        watcher = self._rwatch
        if watcher is not None and self._fd >= 0 and watcher.loop is _running_loop():
            # _wait's common case, without its dispatch: every receive's path
            if keep is None:
                return watcher.arm(attempt)  # nothing to keep: the future itself
            return watcher.wait(attempt, keep)
        return self._wait(True, attempt, keep)

    def _wait(
        self,
        readable: bool,
        attempt: Callable[[], T] | None,
        keep: Callable[[T], None] | None,
    ) -> Awaitable[Any]:
        fd = self._fd
        if fd < 0:
            return _raise_closed()
        watcher = self._rwatch if readable else self._wwatch
        if watcher is not None and _current(watcher):
            # the common case on asyncio/uvloop: no backend lookup, and
            # without a keep the future itself, no coroutine around it
            if keep is None:
                return watcher.arm(attempt)
            return watcher.wait(attempt, keep)
        lib = current_library()
        if lib == "asyncio" and not _GENERIC_WAIT:
            # first wait, or a new loop: (re)create the registration
            watcher = _Watcher(asyncio.get_running_loop(), fd, readable)
            if readable:
                self._rwatch = watcher
            else:
                self._wwatch = watcher
            return watcher.wait(attempt, keep)
        return self._wait_generic(lib, fd, readable, attempt)

    async def _wait_generic(
        self,
        lib: str,
        fd: int,
        readable: bool,
        attempt: Callable[[], T] | None,
    ) -> Any:
        global _skipped
        trio = _trio() if lib == "trio" and not _GENERIC_WAIT else None
        while True:
            if trio is not None:
                # trio's own wait, called directly: it keeps the epoll
                # registration between waits (EPOLLONESHOT re-armed by MOD)
                try:
                    if readable:
                        await trio.lowlevel.wait_readable(fd)
                    else:
                        await trio.lowlevel.wait_writable(fd)
                    _skipped = 0  # trio has run a pass: the budget starts over
                except trio.ClosedResourceError:
                    raise anyio.ClosedResourceError from None
                except trio.BusyResourceError:
                    raise anyio.BusyResourceError(
                        "reading from" if readable else "writing to"
                    ) from None
            elif readable:
                await anyio.wait_readable(fd)
            else:
                await anyio.wait_writable(fd)
            if attempt is None:
                return True
            if self._fd < 0:
                raise anyio.ClosedResourceError
            try:
                return attempt()
            except BlockingIOError:
                continue

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<FdHandle {self.what} {state}>"

    def __del__(self, _warn: Any = warnings.warn, _close: Any = os.close) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            # close first: with warnings turned into errors, the warning raises
            closer = getattr(self, "_closer", None)
            try:
                if closer is None:
                    _close(fd)
                else:
                    closer()
            except Exception:  # OSError, or the closer library's own error
                pass
            if not sys.is_finalizing():
                _warn(
                    f"unclosed {self.what} fd={fd}; close it with aclose() or close()",
                    ResourceWarning,
                    stacklevel=2,
                    source=self,
                )


def reopen_private_nonblocking(fd: int, what: str) -> int:
    """Return a non-blocking, close-on-exec fd on the file behind ``fd``.

    O_NONBLOCK lives in the open file description, which other processes may
    share (an inherited pipe, stdin). If ``fd`` is already non-blocking it is
    returned as is (nothing is flipped). Otherwise the file is reopened through
    ``/proc/self/fd/N`` to get a *private* description, and the new fd is
    returned; the caller then closes ``fd``. Files that cannot be reopened that
    way (anonymous inodes such as eventfds, sockets) raise ``ValueError``.
    """
    import fcntl

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_NONBLOCK:
        os.set_inheritable(fd, False)
        return fd
    mode = os.fstat(fd).st_mode
    if not stat.S_ISFIFO(mode):
        raise ValueError(
            f"fd {fd} ({what}) is in blocking mode, and its open file description "
            "may be shared with other processes; aipc will not switch it to "
            "non-blocking for them, and this kind of file cannot be reopened "
            "privately through /proc/self/fd. Pass an fd created non-blocking "
            "(every aipc object is)."
        )
    try:
        return os.open(
            f"/proc/self/fd/{fd}",
            (flags & os.O_ACCMODE) | os.O_NONBLOCK | os.O_CLOEXEC,
        )
    except OSError as exc:
        raise ValueError(
            f"fd {fd} ({what}) is in blocking mode and could not be reopened "
            f"privately through /proc/self/fd/{fd} ({exc.strerror}); aipc will not "
            "switch a possibly shared description to non-blocking"
        ) from exc
