"""Byte streams over a non-blocking pipe-like descriptor (pipes, FIFOs).

The fast path is the syscall itself: ``os.read`` / ``os.write`` are tried first
and the task waits for readiness only on ``EAGAIN``. Every operation is still a
checkpoint, as trio and anyio require: a send checkpoints *before* writing (so a
cancelled send wrote nothing), a receive that did not have to wait checkpoints
*after* reading and, if cancelled there, keeps the bytes for the next receive
(so a cancelled receive lost nothing).
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import signal
import termios
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from ._errors import translate_os_error
from ._fd import (
    LARGE_OPERATION,
    FdHandle,
    _corec,
    _running_loop,
    _trio,
    checkpoint,
    checkpoint_large,
    current_library,
    skip_checkpoint,
)

__all__ = ["FdReceiveStream", "FdSendStream", "StreamStatistics"]

DEFAULT_RECEIVE_SIZE = 65536


@dataclass(frozen=True)
class StreamStatistics:
    """Counters of one stream end (cheap to take: no syscall).

    Attributes:
        bytes: bytes received or sent so far.
        operations: successful ``receive`` / ``send`` calls.
        syscalls: read or write syscalls that moved data.
        waits: times the stream waited for readiness (the kernel buffer was
            empty or full).
    """

    bytes: int
    operations: int
    syscalls: int
    waits: int


def _check_max_bytes(max_bytes: int) -> int:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool):
        raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    return max_bytes


# the raw C getsignal: signal.getsignal's enum conversion costs ~1 µs per call
_getsignal: Callable[[int], object] = getattr(signal, "_signal").getsignal  # noqa: B009


# CPython ignores SIGPIPE at start-up, so a write to a pipe without readers
# fails with EPIPE. An embedding application (or code that restored SIG_DFL)
# may have changed that; then the write must run with SIGPIPE blocked. Each
# write checks (_write_once): the disposition is the process's, and anyone may
# change it at any time.
_SIGPIPE = signal.SIGPIPE
_SIG_IGN = signal.SIG_IGN


def _write_blocking_sigpipe(fd: int, data: bytes | bytearray | memoryview) -> int:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
    try:
        return os.write(fd, data)
    except BrokenPipeError:
        # The kernel queued a SIGPIPE for this thread: consume it before the
        # mask comes back, unless one was already pending before we blocked it.
        if signal.SIGPIPE not in old:
            signal.sigtimedwait({signal.SIGPIPE}, 0)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _byte_view(item: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    # bytes and bytearray go to write() as they are; anything else is viewed
    # as bytes (a memoryview's len() counts items, not bytes)
    return item if type(item) in (bytes, bytearray) else memoryview(item).cast("B")


class _FdEnd:
    """What both ends share: the owned fd, its counters, closing, the repr."""

    _handle: FdHandle
    _counted = "bytes"  # how the repr labels the byte counter
    path = ""  # a FIFO end's path, for the repr

    def __init__(self, handle: FdHandle) -> None:
        self._handle = handle
        self._bytes = self._ops = self._syscalls = self._waits = 0

    def fileno(self) -> int:
        """The descriptor (owned by this stream; do not close it)."""
        return self._handle.fileno()

    @property
    def closed(self) -> bool:
        """Whether this end has been closed."""
        return self._handle.closed

    def statistics(self) -> StreamStatistics:
        """Byte, call, syscall and wait counters of this end."""
        return StreamStatistics(self._bytes, self._ops, self._syscalls, self._waits)

    async def aclose(self) -> None:
        """Close this end (idempotent). Closes the fd even when cancelled."""
        self._handle.close()
        await checkpoint()

    def close(self) -> None:
        """Close this end synchronously (idempotent)."""
        self._handle.close()

    def __repr__(self) -> str:
        fd = self._handle.fd
        state = "closed" if fd < 0 else f"fd={fd}"
        where = f" {self.path!r}" if self.path else ""
        return f"<{type(self).__name__}{where} {state} {self._counted}={self._bytes}B>"


class _ReceiveSteps:
    """What a receive's Python steps take from the compiled helper where it
    is not built: no common case (``_creceive`` sends every receive down the
    Python steps). Where it is, ``_corec.ReceiveCore`` holds the stream's
    counters and state in C fields, and its ``_creceive`` makes the common
    case: the bytes are there, or FIONREAD says none are."""

    def _creceive(self, max_bytes: int) -> bytes | bool | None:
        return None


# a statement, not a conditional expression: mypy takes a base class only
# from a name bound this way
if TYPE_CHECKING or _corec is None:  # noqa: SIM108
    _ReceiveBase = _ReceiveSteps
else:
    _ReceiveBase = _corec.ReceiveCore


class FdReceiveStream(_ReceiveBase, _FdEnd, ByteReceiveStream):
    """Receiving end over a non-blocking fd; subclasses add the public surface."""

    _counted = "received"

    def __init__(
        self,
        handle: FdHandle,
        read: Callable[[int, int], bytes] = os.read,
        *,
        trio_reads_first: bool = False,
    ) -> None:
        super().__init__(handle)
        # (fd, max_bytes) -> bytes: one non-blocking read; sockets pass a recv
        # with MSG_DONTWAIT, which needs no O_NONBLOCK on a shared description
        self._read = read
        # After a short read the next receive waits before it reads (below).
        # trio's own sockets always read first, and with this flag so does
        # this stream on trio: a peer that reads a bulk transfer in chunks
        # larger than the socket buffer (every read short) otherwise sleeps in
        # epoll where the read would find what the writer added meanwhile
        # (1 MiB chunks over a UNIX socket: 0.7x anyio's throughput).
        self._trio_reads_first = trio_reads_first
        self._receiving = False
        self._pending = b""
        self._expect_empty = False
        # the read a wait hands to the loop callback, kept between waits
        self._attempt: Callable[[], bytes] = partial(read, -1, 0)
        self._attempt_fd = -1
        self._attempt_size = 0
        # FIONREAD's answer, written in place (see _queued)
        self._count = array.array("i", [0])
        # the compiled common case reads with read(2) itself: os.read only
        self._cfast = read is os.read

    def _keep(self, data: bytes) -> None:
        # a read completed for a receive that was cancelled before it returned
        self._pending = data + self._pending

    def _queued(self, fd: int) -> int:
        """The bytes the kernel holds for this end now (FIONREAD: pipes, FIFOs
        and stream sockets answer it), or -1 when it cannot tell."""
        count = self._count
        try:
            fcntl.ioctl(fd, termios.FIONREAD, count)
        except OSError:
            return -1
        return count[0]

    def _at_eof(self) -> bool:
        """Called when read() returned b"": is this really the end of the stream?"""
        return True

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE_SIZE) -> bytes:
        """Receive at most ``max_bytes`` bytes, waiting until at least one arrives.

        Raises:
            EndOfStream: every writer has closed its end and all data was read.
            ClosedResourceError: this end was closed (also wakes a waiting task).
            BusyResourceError: another task is already receiving on this end.

        **Cancellation:** nothing is lost. Bytes read from the kernel in the same
        call are kept and returned by the next ``receive``.
        """
        found = self._creceive(max_bytes)
        if found.__class__ is bytes:
            return found
        if type(max_bytes) is not int or max_bytes < 1:
            _check_max_bytes(max_bytes)
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        try:
            if self._pending:
                await checkpoint()
                data, self._pending = (
                    self._pending[:max_bytes],
                    self._pending[max_bytes:],
                )
                self._bytes += len(data)
                self._ops += 1
                return data
            handle = self._handle
            # When the last receive emptied the pipe (a short read, or it had
            # to wait: request/response traffic), this one asks the kernel
            # what is queued (FIONREAD, 0.25 µs here) before it reads: with
            # nothing there it goes straight to the wait, whose loop callback
            # makes the read. That spares the read that would fail and its
            # BlockingIOError (0.8 µs here), and the question is asked while
            # the peer is still at work, off the round trip's critical path.
            # With bytes there it reads at once, as it does when the last
            # receive left bytes behind (a bulk stream whose writer is ahead:
            # no question at all).
            # (found is False: the compiled common case saw the pipe empty
            # and asked already; None: it did nothing, or left its bytes in
            # _pending above)
            probe = self._expect_empty and found is None
            queued = -1  # what the probe found, -1: no probe or no answer
            wait = found is False
            yielded = False
            read = self._read
            while True:
                fd = handle._fd
                if fd < 0:
                    if not yielded:
                        await checkpoint()
                    raise anyio.ClosedResourceError
                if probe:
                    probe = False
                    queued = self._queued(fd)
                    wait = not queued
                try:
                    if wait:
                        yielded = True
                        self._waits += 1
                        attempt = self._attempt
                        if self._attempt_size != max_bytes or self._attempt_fd != fd:
                            # one callable per (fd, size), not one per wait
                            attempt = self._attempt = partial(read, fd, max_bytes)
                            self._attempt_fd = fd
                            self._attempt_size = max_bytes
                        watcher = handle._rwatch
                        if watcher is not None and watcher.loop is _running_loop():
                            # read_when_ready's common case, without the
                            # coroutine of the watcher's wait()
                            waiter = watcher.arm(attempt)
                            try:
                                data = await waiter
                            except BaseException:
                                watcher.disarm(waiter, self._keep)
                                raise
                        else:
                            data = await handle.read_when_ready(attempt, self._keep)
                    else:
                        data = read(fd, max_bytes)
                except BlockingIOError:
                    wait = True
                    continue
                except OSError as exc:
                    raise translate_os_error(
                        exc, closed=handle.closed, what=handle.what
                    ) from exc
                if data or self._at_eof():
                    break
                # not the end yet (a FIFO that has not had a writer): wait
                wait = True
            if not yielded and not skip_checkpoint():
                # (the checkpoint's decision first, as send takes it: no
                # coroutine when the pass is skipped)
                try:
                    await checkpoint()
                except BaseException:
                    self._pending = data
                    raise
            # Did this read empty the pipe? Surely after a short read, and
            # after a probe that saw no more than it took; most likely after
            # a wait (request/response traffic). A full read made at once
            # cannot tell, and a stream read that way is usually a bulk one.
            self._expect_empty = (
                len(data) < max_bytes or yielded or 0 <= queued <= max_bytes
            ) and (not self._trio_reads_first or current_library() != "trio")
            if not data:
                raise anyio.EndOfStream
            self._bytes += len(data)
            self._ops += 1
            self._syscalls += 1
            return data
        finally:
            self._receiving = False


class _SendSteps:
    """The send's counterpart of :class:`_ReceiveSteps`: without the compiled
    helper, ``_csend`` sends every send down the Python steps; with it,
    ``_corec.SendCore`` holds the state and makes the common case."""

    def _csend(self, item: bytes | bytearray | memoryview) -> bool | int | None:
        return None


if TYPE_CHECKING or _corec is None:  # noqa: SIM108
    _SendBase = _SendSteps
else:
    _SendBase = _corec.SendCore


class FdSendStream(_SendBase, _FdEnd, ByteSendStream):
    """Sending end over a non-blocking fd; subclasses add the public surface."""

    _counted = "sent"

    def __init__(
        self,
        handle: FdHandle,
        write: Callable[[int, bytes | bytearray | memoryview], int] | None = None,
        *,
        trio_order: bool = False,
    ) -> None:
        super().__init__(handle)
        # (fd, data) -> count: one non-blocking write; None means os.write with
        # the SIGPIPE guard. Sockets pass a send with MSG_DONTWAIT|MSG_NOSIGNAL.
        self._write = write
        # on trio, send in trio's own sockets' order (_send_trio_order)
        self._trio_order = trio_order
        self._sending = False
        self._broken = False
        # the compiled common case writes with write(2) itself: os.write
        # only, and not in trio's order
        self._cfast = write is None and not trio_order
        # the kernel buffer's size as this end knows it (0: not yet), which
        # large sends are paced by: kept by _kernel_buffer() where it can ask
        # the kernel, read by the compiled common case
        self._buffer_size = 0

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send all of ``item``, waiting while the kernel buffer is full.

        Raises:
            BrokenResourceError: every reader has closed its end (never SIGPIPE).
            ClosedResourceError: this end was closed (also wakes a waiting task).
            BusyResourceError: another task is already sending on this end.

        **Cancellation:** a send cancelled before it returns wrote nothing if
        ``item`` fits in the kernel buffer at once; writes of at most PIPE_BUF
        (4096) bytes are atomic and are never split. A larger send cancelled while
        waiting for the reader may have written a prefix of ``item``;
        ``statistics().bytes`` counts exactly what was written.
        """
        sent = self._csend(item)
        if sent is True:
            return
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        if self._trio_order and item and current_library() == "trio":
            await self._send_trio_order(item)
            return
        self._sending = True
        try:
            if sent is None:  # the compiled common case did nothing
                if (
                    len(item) > LARGE_OPERATION
                    and 4 * len(item) > self._kernel_buffer()
                ):
                    await checkpoint_large()
                elif not skip_checkpoint():
                    await checkpoint()
            handle = self._handle
            data = item if type(item) is bytes else _byte_view(item)
            remaining = len(data)
            if sent:  # it skipped the checkpoint and wrote a prefix
                remaining -= sent
                data = memoryview(data)[sent:]
            elif sent is not None:  # it skipped the checkpoint; the buffer is full
                self._waits += 1
                await handle.wait_writable()
            if not remaining:
                # nothing to write: still the errors a write would raise
                if handle._fd < 0:
                    raise anyio.ClosedResourceError
                if self._broken:
                    raise anyio.BrokenResourceError(
                        f"the other end of the {handle.what} is gone"
                    )
                return
            while True:
                fd = handle._fd
                if (
                    fd >= 0
                    and self._write is None
                    and not self._broken
                    and _getsignal(_SIGPIPE) == _SIG_IGN
                ):
                    # _write_once's common case, inline: one call less per send
                    try:
                        n = os.write(fd, data)
                    except BlockingIOError:
                        n = 0
                    except OSError as exc:
                        raise self._write_error(exc) from exc
                    else:
                        self._bytes += n
                        self._syscalls += 1
                else:
                    n = self._write_once(data)  # checks closed and broken itself
                if not n:  # the buffer is full
                    self._waits += 1
                    await handle.wait_writable()
                    continue
                if n == remaining:
                    break
                remaining -= n
                data = memoryview(data)[n:]
            self._ops += 1
        finally:
            self._sending = False

    async def _send_trio_order(self, item: bytes | bytearray | memoryview) -> None:
        # trio's own sockets check for cancellation before the write and yield
        # after it, shielded (checkpoint_if_cancelled, then
        # cancel_shielded_checkpoint): the write leaves at once instead of after
        # a pass of trio's run loop, which otherwise sits on a round trip's
        # critical path (across cores it made a UNIX socket's round trip twice
        # anyio's). Between two partial writes it yields too, as trio's
        # send_all does: the retry then often finds room the peer made
        # meanwhile, where an immediate one would fail and sleep until the peer
        # wakes it. Same contract as send(): a cancelled send raised before
        # writing, or while waiting for room; a send that waited has yielded.
        lowlevel = _trio().lowlevel
        await lowlevel.checkpoint_if_cancelled()
        self._sending = True
        waits = self._waits
        try:
            handle = self._handle
            data = _byte_view(item)
            remaining = len(data)
            while True:
                n = self._write_once(data)
                if not n:  # the buffer is full
                    self._waits += 1
                    await handle.wait_writable()
                    continue
                remaining -= n
                if not remaining:
                    break
                data = memoryview(data)[n:]
                await lowlevel.cancel_shielded_checkpoint()
            self._ops += 1
        finally:
            self._sending = False
            if self._waits == waits:  # also before an error: still a checkpoint
                await lowlevel.cancel_shielded_checkpoint()

    def _kernel_buffer(self) -> int:
        """The size of the kernel buffer the sends fill (see send's use of
        checkpoint_large); subclasses that can ask the kernel do, and keep
        it in ``_buffer_size`` for the compiled common case. Here: the default
        pipe capacity, so every send over LARGE_OPERATION yields."""
        return 4 * LARGE_OPERATION

    def _try_send(self, data: bytes | bytearray | memoryview) -> int:
        """One non-blocking write of a prefix of ``data``: its length, or 0 when
        the kernel buffer is full. Never waits and is not a checkpoint.

        The object channels' fast path: a frame that fits goes out without
        the coroutine of :meth:`_send_some`. ``data`` must be non-empty and,
        if a memoryview, of bytes. Counts bytes and syscalls; raises what
        :meth:`send` raises (``BusyResourceError`` while a ``send`` or
        ``_send_some`` of another task is under way).
        """
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        return self._write_once(data)

    def _write_once(self, data: bytes | bytearray | memoryview) -> int:
        handle = self._handle
        fd = handle._fd
        if fd < 0:
            raise anyio.ClosedResourceError
        if self._broken:
            raise anyio.BrokenResourceError(
                f"the other end of the {handle.what} is gone"
            )
        write = self._write
        try:
            if write is not None:
                n = write(fd, data)
            elif _getsignal(_SIGPIPE) != _SIG_IGN:  # SIGPIPE would kill us
                n = _write_blocking_sigpipe(fd, data)
            else:
                n = os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise self._write_error(exc) from exc
        self._bytes += n
        self._syscalls += 1
        return n

    def _write_error(self, exc: OSError) -> BaseException:
        """What a failed write raises (and EPIPE marks this end broken)."""
        if exc.errno == errno.EPIPE:
            self._broken = True
        handle = self._handle
        return translate_os_error(exc, closed=handle.closed, what=handle.what)

    async def _send_some(self, data: bytes | bytearray | memoryview) -> int:
        """Write a non-empty prefix of ``data`` with one write; return its length.

        For callers that must know exactly what reached the kernel (the object
        channels keep the unsent rest of a frame for the next send). Waits while
        the kernel buffer is full; that wait is the only cancel point, so a
        cancelled call wrote nothing and one that returns wrote at least one
        byte. It is *not* a checkpoint when it can write at once: the caller
        checkpoints before its first call. ``data`` must be non-empty and, if a
        memoryview, of bytes. Counts bytes, syscalls and waits as :meth:`send`
        does (not ``operations``: the caller's unit is not a send); raises what
        :meth:`send` raises.
        """
        n = self._try_send(data)
        if n:
            return n
        self._sending = True
        try:
            handle = self._handle
            while True:
                self._waits += 1
                await handle.wait_writable()
                n = self._write_once(data)
                if n:
                    return n
        finally:
            self._sending = False

    async def wait_writable(self) -> None:
        """Wait until a ``send`` can make progress without waiting.

        Raises ``ClosedResourceError`` if this end is or gets closed.
        **Cancellation:** nothing to undo.
        """
        # a cancel point even when the fd is writable at once (the loop could
        # report it before a pending cancellation is delivered)
        await anyio.lowlevel.checkpoint_if_cancelled()
        handle = self._handle
        if handle.fd < 0:
            await checkpoint()
            raise anyio.ClosedResourceError
        await handle.wait_writable()
