"""Shared-memory rings: single-producer single-consumer channels (Linux, x86-64).

A ring is a sealed memfd (:mod:`aipc._shm`) holding a fixed header and a data
area, plus two eventfds (the *doorbells*: the receiver's rings when data
arrives, the sender's when room frees up) and a UNIX socket pair whose ends
the two sides hold, so that each side learns of the other's death by end of
file. Each end waits on its doorbell and its socket together
(:class:`aipc._core._waitset.WaitSet`), through ``_core``'s readiness: on
asyncio and uvloop both are registered with the loop, on trio a private epoll
set of the two is.

Layout (64-bit words, native byte order; each hot word on its own cache line)::

    byte 0    magic b"AIPCRING", version, mode (1 messages, 2 bytes),
              capacity, data offset
    byte 64   head   total bytes published by the sender (written by it only)
    byte 128  tail   total bytes consumed by the receiver (written by it only)
    byte 192  the receiver's sleep generation (odd: asleep or going to sleep)
    byte 256  the sender's sleep generation
    byte 320  the sender closed the ring        byte 384  the receiver did
    byte 448  the receiver's cursor: messages it took from the batch record
              at tail (written by it only; a handed-off copy resumes there)
    byte 4096 the data area: ``capacity`` bytes, a power of two

Message mode stores records: an 8-byte word ``length << 1`` then the payload,
padded to 8 bytes. ``send_many`` packs runs of messages into *batch records*
instead: the word ``body << 2 | 3`` (``body`` bytes follow it), the count of
messages, their 4-byte lengths (padded to 8 bytes), then the messages back to
back. The receiver copies them out with a few C-level calls per batch (one
slice of the map each) rather than a dozen Python steps per message, which is
what brings 64-byte messages to millions a second; it takes them one by one
or many at a time alike, advancing its cursor, and gives the room back when
the last one is taken. A record never wraps: when it does not fit before the end
of the area, a padding record (word 1) fills the rest and the record starts
at offset 0. So a message is always one contiguous slice (the zero-copy
lease), and the largest message is ``capacity // 2 - 8`` bytes, which makes
"padding plus record" always fit in an empty ring. Byte mode stores plain
bytes, wrapping freely.

**Wake-up protocol.** The receiver, finding the ring empty, may spin for a
bounded time, then makes its generation odd, executes a full fence, and
re-checks ``head`` and the sender's closed flag; only if nothing changed does
it wait on its doorbell. The sender publishes ``head``, executes a full
fence, then reads the receiver's generation, and writes the doorbell only if
it is odd and it has not rung for that generation yet (one syscall per sleep,
however many messages arrive meanwhile: no wake-up storm). This is Dekker's
pattern: each side stores, fences, then loads what the other stores, so at
least one of them sees the other: either the sender sees the receiver asleep
and rings (an eventfd count persists until read, so a ring before the wait
still wakes it), or the receiver's re-check sees the new ``head``. No
wake-up is lost. The sender's wait for room is the mirror image (the
receiver publishes ``tail``, fences, reads the sender's generation). A
closing side sets its closed flag and rings unconditionally; a dying side's
socket end closes, which wakes the other side's wait set.

The doorbell's count is read as the receiver wakes (by the loop's reader
callback on asyncio and uvloop), except on trio, where the compiled receive
leaves it and drains it just before its next sleep, after a wake-up
(``_sleep_trio``). A drain after the generation went odd may take this
generation's own ring, so the receiver then moves to a new generation before
it re-checks: the sender rings once per generation, and a receiver that
slept again in a generation it had been rung for would never be woken.

**Memory ordering (why this is correct on x86-64, and refused elsewhere).**
Every shared word is read and written as one aligned 8-byte access through a
``memoryview`` cast to ``'Q'``: CPython packs and unpacks it with an 8-byte
``memcpy``, which compiles to one ``mov``, single-copy atomic on x86-64.
Between these accesses the interpreter makes opaque calls, so the C compiler
cannot reorder them; what remains is the hardware's order. x86-64 is TSO:
stores become visible in program order, loads are not reordered with loads,
and a load is never reordered with a later store. That orders the data path
with plain accesses: payload stores before the ``head`` store (store→store),
``head`` load before the payload loads (load→load), payload loads before the
``tail`` store (load→store), and the ``tail`` load before the sender
overwrites (load→store). Fast-string copies (``rep movsb``) may reorder
within themselves but not with a later separate store, and glibc ends its
non-temporal copies with ``sfence``. The one reordering TSO allows is a load
passing an earlier store (StoreLoad), which is exactly the wake-up protocol's
pair: there a full fence is needed on both sides. Pure Python has no fence
instruction, so aipc uses a lock: acquiring and releasing an uncontended
``threading.Lock`` runs an atomic read-modify-write (glibc's semaphore or
mutex, ``lock cmpxchg`` / ``lock xadd``), and every locked instruction is a
full barrier on x86-64; any correct mutual-exclusion lock must contain one.
It costs two C calls, a few hundred nanoseconds in CPython, on each publish;
syscalls are not used as fences, since not every syscall is one.

On aarch64 and other weakly ordered machines plain stores may be reordered
with each other and loads with loads, so the data path itself would need
release/acquire accesses, which pure Python cannot give and a lock around
each access would make slower than a pipe. The optional compiled helper
(``aipc/_ringc.c``, below) uses the C compiler's acquire loads, release
stores and sequentially consistent fence, right on any machine, but it runs
only the commonest steps, and an install without a compiler has none of it.
So aipc refuses to create or attach a ring there, with
``NotImplementedError`` naming the machine; pipes and UNIX sockets work
everywhere.

**The compiled helper.** Where the package build found a C compiler,
``aipc._ringc.RingCore`` is the base class of the ring ends: it keeps their
hot state (``_head``, ``_tail``, ``_seq``, the counters, the closed flags) in
C fields, which the Python code here reads and writes as plain attributes,
and runs the per-message steps in C: ``_cput`` (send's ``_write`` and
``_publish_head``), ``_ctake`` (receive's copy of a plain record and
``_publish_tail``), ``_cready`` / ``_cwoke`` (the receiver's way to sleep,
without a spin), ``_clease`` / ``_crelease`` (receive_lease's plain record,
and giving its room back), ``_cloan`` / ``_ccommit`` (loan's room, and the
commit's record word and publish). They follow the steps here exactly and
hand every unusual case (padding and batch records, corruption, a closed
end, a dead peer) back to the Python steps, which raise. ``_FAST`` says
whether they run; without the helper, or with ``AIPC_PURE_PYTHON=1``, the
base class is ``object``.

**Several producers.** The ring is single-producer single-consumer: a
multi-producer ring needs an atomic compare-and-swap on shared memory,
which pure Python does not have. The pattern is one ring per producer,
which is also what the named rendezvous gives: each :meth:`RingListener.accept`
makes a new ring for the producer that connected, and the consumer receives
from each in its own task (see docs/rings.md).
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import socket
import stat
import struct
import sys
import threading
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from time import perf_counter_ns
from typing import Any, Self

import anyio
from anyio.abc import (
    ByteReceiveStream,
    ByteSendStream,
    ByteStream,
    ObjectReceiveStream,
    ObjectSendStream,
)

from ._core._args import check_int
from ._core._errors import LimitExceededError
from ._core._fd import FdHandle, checkpoint, current_library, skip_checkpoint
from ._core._notifier import _is_eventfd
from ._core._waitset import WaitSet
from ._shm import SharedMemory, create_shared_memory

__all__ = [
    "DEFAULT_RING_CAPACITY",
    "RingByteReceiveStream",
    "RingByteSendStream",
    "RingLease",
    "RingLoan",
    "RingReceiver",
    "RingSender",
    "RingStatistics",
    "RingStream",
    "create_byte_ring",
    "create_ring",
    "create_ring_stream_pair",
]

#: The default capacity of a ring's data area, in bytes.
DEFAULT_RING_CAPACITY = 1 << 20

_MIN_CAPACITY = 4096
_MAX_CAPACITY = 1 << 40
_HEADER_SIZE = 4096
_MAGIC = int.from_bytes(b"AIPCRING", "little")
_VERSION = 2
_MESSAGES = 1
_BYTES = 2
_MODE_NAMES = {_MESSAGES: "messages", _BYTES: "bytes"}

# word indices in the header (8-byte words)
_W_MAGIC = 0
_W_VERSION = 1
_W_MODE = 2
_W_CAPACITY = 3
_W_DATA_OFFSET = 4
_W_HEAD = 8
_W_TAIL = 16
_W_RX_SEQ = 24
_W_TX_SEQ = 32
_W_TX_CLOSED = 40
_W_RX_CLOSED = 48
_W_RX_CURSOR = 56
#: send_many packs runs of at least this many messages into batch records, of
#: at most _BATCH_MAX messages each
_BATCH_MIN = 4
_BATCH_MAX = 4096

#: byte-mode sends of at most this many bytes are written whole or not at all
#: (as a pipe's PIPE_BUF), so a small send cancelled while waiting wrote nothing
_ATOMIC_SEND = 4096
_DEFAULT_RECEIVE_SIZE = 65536

_SUPPORTED = platform.machine() in ("x86_64", "AMD64") and sys.maxsize > 2**32

# The StoreLoad fence (see the module docstring). One lock for the process:
# two threads fencing at once just serialise for a moment, which is still a
# fence for both.
_fence_lock = threading.Lock()
_acquire = _fence_lock.acquire
_release = _fence_lock.release


def _load_helper() -> Any:
    """The compiled helper (aipc/_ringc.c), or None: not built (no compiler
    at install), from another version of aipc, or AIPC_PURE_PYTHON=1."""
    if os.environ.get("AIPC_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _ringc  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _ringc if getattr(_ringc, "VERSION", None) == 3 else None


_ringc = _load_helper()
#: The base class of the ring ends: the compiled one keeps their hot state in
#: C fields, read and written as the same attributes.
_RingBase: type = object if _ringc is None else _ringc.RingCore
#: Whether the ring ends take their compiled steps (send, receive, the
#: receiver's sleep, loan, commit, receive_lease, release). Tests turn it off
#: to run the Python steps on the same build.
_FAST = _ringc is not None


def _check_platform() -> None:
    if not _SUPPORTED:
        raise NotImplementedError(
            f"aipc shared-memory rings need x86-64's memory ordering (TSO) and "
            f"this machine is {platform.machine()!r}: on a weakly ordered CPU the "
            "ring would need atomic release/acquire accesses that pure Python "
            "cannot make. Use pipes or UNIX sockets here (docs/rings.md)"
        )


def _check_capacity(capacity: object) -> int:
    capacity = check_int("capacity", capacity)
    if capacity < _MIN_CAPACITY or capacity & (capacity - 1):
        raise ValueError(
            f"capacity must be a power of two of at least {_MIN_CAPACITY} bytes, "
            f"got {capacity}"
        )
    if capacity > _MAX_CAPACITY:
        raise LimitExceededError("capacity", capacity, _MAX_CAPACITY, "2**40 bytes")
    return capacity


def _check_spin(spin_us: object) -> float:
    if isinstance(spin_us, bool) or not isinstance(spin_us, (int, float)):
        raise TypeError(f"spin_us must be a number, not {type(spin_us).__name__}")
    if not 0 <= spin_us <= 1_000_000:
        raise ValueError(
            f"spin_us must be between 0 and 1000000 microseconds, got {spin_us}"
        )
    return float(spin_us)


def _as_bytes(item: object) -> bytes | bytearray | memoryview:
    """``item`` as something a byte slice assignment takes, with len() in bytes."""
    cls = type(item)
    if cls is bytes or cls is bytearray:
        return item  # type: ignore[return-value]
    if isinstance(item, str):
        raise TypeError("item must be a bytes-like object, not str")
    try:
        view = memoryview(item)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"item must be a bytes-like object, not {type(item).__name__}"
        ) from None
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if view.c_contiguous:
        return view.cast("B")
    return view.tobytes()


_Bytes = bytes | bytearray | memoryview


@dataclass(frozen=True)
class RingStatistics:
    """Counters of one ring end (cheap: two memory loads, no syscall).

    Attributes:
        capacity: the size of the data area in bytes.
        used: bytes in the ring now (records with their headers and padding,
            in message mode), 0 once this end is closed.
        messages: messages this end sent or received (byte streams: send and
            receive calls that moved data).
        bytes: payload bytes this end sent or received.
        waits: times this end slept on its doorbell (the ring was empty, or
            full for a sender).
        wakeups: times this end wrote the peer's doorbell (at most once per
            sleep of the peer).
        spins: waits avoided because the peer acted while this end spun.
    """

    capacity: int
    used: int
    messages: int
    bytes: int
    waits: int
    wakeups: int
    spins: int


# ---------------------------------------------------------------------------
# what both ends share


class _RingEnd(_RingBase):  # type: ignore[misc]
    """The mapping, the doorbells, the liveness socket, sleeping and closing."""

    _role = ""  # "sender" or "receiver"
    _kind = ""  # the hand-off kind
    _mode = _MESSAGES
    # header words this end writes and reads (set by the role classes)
    _W_MY_SEQ = 0
    _W_MY_CLOSED = 0
    _W_PEER_CLOSED = 0

    def __init__(
        self,
        segment: SharedMemory,
        doorbell: FdHandle,
        peer_doorbell: FdHandle,
        sock: socket.socket,
        spin_us: float,
    ) -> None:
        self._segment = segment
        buffer = segment.buffer  # the views are released by close()
        self._hdr = buffer[:_HEADER_SIZE].cast("Q")
        hdr = self._hdr
        cap = hdr[_W_CAPACITY]
        self._cap = cap
        self._mask = cap - 1
        self._data = buffer[_HEADER_SIZE : _HEADER_SIZE + cap]
        self._dq = self._data.cast("Q")
        # leases slice this: one view each, not a slice and its toreadonly()
        self._rdata = self._data.toreadonly()
        # slicing the mmap itself copies in one step: bytes(view[a:b]) costs
        # several times more (a temporary view, then the generic buffer path)
        self._mm = segment._map
        # the wait set first: it is the only step that can fail (EMFILE), and
        # the caller still owns the descriptors if it does
        self._waitset = WaitSet(f"ring {self._role} wait set")
        try:
            self._waitset.add(doorbell.fileno())
            self._waitset.add(sock.fileno())
        except BaseException:
            self._waitset.close()
            raise
        self._doorbell = doorbell
        self._peer_doorbell = peer_doorbell
        self._sock = sock
        self._sock_handle = FdHandle(sock.fileno(), "ring socket", closer=sock.close)
        self._closed = False
        self._handed_off = False
        self._peer_gone = False
        self._busy = False
        seq = hdr[self._W_MY_SEQ]
        self._seq = seq + (seq & 1)  # a copy that died asleep left it odd
        self._signalled = -1  # the peer generation we last rang for
        self._spin_ns = int(spin_us * 1000)
        self._wait = self._waitset.wait  # bound once: the hot path
        self._attempt_cb = self._attempt
        self._messages = self._bytes = 0
        self._waits = self._wakeups = self._spins = 0
        # trio: a wake-up left the doorbell's count for the next sleep
        self._undrained = False
        if _ringc is not None:
            # the compiled steps point at the views until close() unbinds
            self._bind(self._hdr, self._data, peer_doorbell.fileno())

    # -- construction from handed-over descriptors

    @classmethod
    def _from_handoff(cls, fds: tuple[int, ...], meta: Any) -> Self:
        """The end on ``fds`` (segment, own doorbell, peer's doorbell, socket),
        which it then owns; on error they stay the caller's."""
        _check_platform()
        memfd, doorbell, peer_doorbell, sockfd = (check_int("fd", fd) for fd in fds)
        _validate_segment(memfd, cls._mode)
        for fd in (doorbell, peer_doorbell):
            if not _is_eventfd(fd):
                raise ValueError(f"fd {fd} is not an eventfd (a ring doorbell)")
            if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
                raise ValueError(
                    f"eventfd {fd} is blocking: ring doorbells are created "
                    "non-blocking by aipc, and aipc never changes a shared description"
                )
        spin = _check_spin(meta.get("spin_us", 0.0))
        try:
            sock = socket.socket(fileno=sockfd)
        except OSError:
            raise ValueError(
                f"fd {sockfd} is not a socket (a ring's liveness socket)"
            ) from None
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise ValueError(f"fd {sockfd} is not a UNIX stream socket")
        for fd in fds:
            os.set_inheritable(fd, False)
        try:
            segment = SharedMemory.from_fd(memfd)
        except BaseException:
            sock.detach()
            raise
        bells = (
            FdHandle(doorbell, "ring doorbell"),
            FdHandle(peer_doorbell, "ring doorbell"),
        )
        try:
            return cls(segment, bells[0], bells[1], sock, spin)
        except BaseException:
            for bell in bells:
                bell.detach()
            sock.detach()
            segment._handle.detach()
            segment.close()
            raise

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, Any]]:
        fds = (
            self._segment.fileno(),
            self._doorbell.fileno(),
            self._peer_doorbell.fileno(),
            self._sock_handle.fileno(),
        )
        # another process carries on with this end: closing this copy must
        # not tell the peer that the end is closed (see close())
        self._handed_off = True
        return self._kind, fds, {"spin_us": self._spin_ns / 1000}

    # -- properties

    @property
    def capacity(self) -> int:
        """The size of the data area in bytes."""
        return self._cap

    @property
    def closed(self) -> bool:
        """Whether this end has been closed."""
        return self._closed

    @property
    def spin_us(self) -> float:
        """How long this end busy-waits before sleeping, in microseconds
        (0: never). Settable. See docs/rings.md for the CPU it costs."""
        return self._spin_ns / 1000

    @spin_us.setter
    def spin_us(self, value: float) -> None:
        self._spin_ns = int(_check_spin(value) * 1000)

    def statistics(self) -> RingStatistics:
        """Counters of this end (see :class:`RingStatistics`)."""
        used = 0 if self._closed else self._hdr[_W_HEAD] - self._hdr[_W_TAIL]
        return RingStatistics(
            self._cap,
            used,
            self._messages,
            self._bytes,
            self._waits,
            self._wakeups,
            self._spins,
        )

    # -- the doorbells

    def _wake_peer(self, seq: int) -> None:
        """After publishing, the peer was seen asleep in generation ``seq``
        (see the protocol, and ``_publish_head`` / ``_publish_tail``): ring
        its doorbell, once per generation."""
        if seq != self._signalled:
            self._signalled = seq
            fd = self._peer_doorbell.fd
            if fd < 0:
                raise anyio.ClosedResourceError
            try:
                os.eventfd_write(fd, 1)
            except BlockingIOError:
                pass  # the count is at its maximum: the peer is woken anyway
            self._wakeups += 1

    def _write_doorbell(self) -> None:
        fd = self._peer_doorbell.fd
        if fd < 0:
            raise anyio.ClosedResourceError
        try:
            os.eventfd_write(fd, 1)
        except BlockingIOError:
            pass  # the count is at its maximum: the peer is woken anyway
        self._wakeups += 1

    def _attempt(self) -> int:
        """In the wait: take the doorbell's count, or return 0 if the peer has
        hung up; ``BlockingIOError`` for neither (stale readiness)."""
        fd = self._doorbell.fd
        if fd < 0:
            raise anyio.ClosedResourceError
        try:
            return os.eventfd_read(fd)
        except BlockingIOError:
            pass
        try:
            data = self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            raise
        except ConnectionError:
            return 0
        if not data:
            return 0  # end of file: every copy of the peer's end is closed
        # nobody writes on this socket; drop what a stranger wrote and go on
        self._sock.recv(65536, socket.MSG_DONTWAIT)
        raise BlockingIOError

    def _spin(self) -> bool:
        """Busy-wait up to the spin budget for the peer; whether it acted."""
        ready = self._ready
        deadline = perf_counter_ns() + self._spin_ns
        while perf_counter_ns() < deadline:
            if ready():
                self._spins += 1
                return True
        return False

    async def _sleep(self) -> None:
        """The ring looked empty (full, for a sender): spin, then sleep until
        the peer rings or hangs up. The caller re-checks the ring after."""
        if self._spin_ns and self._spin():
            return
        hdr = self._hdr
        seq = self._seq + 1
        hdr[self._W_MY_SEQ] = seq
        _acquire()  # StoreLoad between the generation and the re-check
        _release()
        try:
            if self._ready():
                return
            self._waits += 1
            if not await self._wait(self._attempt_cb):
                self._peer_gone = True
        finally:
            self._seq = seq + 1
            if not self._closed:
                hdr[self._W_MY_SEQ] = seq + 1

    def _ready(self) -> bool:
        raise NotImplementedError

    # -- closing

    def close(self) -> None:
        """Close this end (idempotent).

        Unless this end was handed to another process (which carries on with
        it), the peer learns that it was closed: a receiver then gets
        ``EndOfStream`` once it has taken everything, a sender
        ``BrokenResourceError``. A task waiting on this end gets
        ``ClosedResourceError``.
        """
        if self._closed:
            return
        self._closed = True
        if _ringc is not None:
            self._unbind()  # before the views it points into are released
        self._close_lease()
        if not self._handed_off:
            self._hdr[self._W_MY_CLOSED] = 1
            try:
                self._write_doorbell()  # unconditionally: the count persists
            except (OSError, anyio.ClosedResourceError):
                pass
        self._waitset.close()
        self._sock_handle.close()
        self._doorbell.close()
        self._peer_doorbell.close()
        self._dq.release()
        self._rdata.release()
        self._data.release()
        self._hdr.release()
        self._segment.close()

    async def aclose(self) -> None:
        """Close this end (idempotent, also when cancelled); see :meth:`close`."""
        self.close()
        await checkpoint()

    def _give_back(self) -> None:
        """Unmap and forget the descriptors without closing them (they are
        the caller's again: a rebuild that failed half-way)."""
        self._closed = True
        if _ringc is not None:
            self._unbind()
        self._waitset.close()
        self._sock_handle.detach()
        self._sock.detach()
        self._doorbell.detach()
        self._peer_doorbell.detach()
        self._dq.release()
        self._rdata.release()
        self._data.release()
        self._hdr.release()
        self._segment._handle.detach()
        self._segment.close()

    def _close_lease(self) -> None:
        pass

    def _describe(self) -> str:
        if self._closed:
            return "closed"
        used = self._hdr[_W_HEAD] - self._hdr[_W_TAIL]
        return f"capacity={self._cap} used={used}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._describe()}>"


def _validate_segment(memfd: int, mode: int) -> None:
    """Check that ``memfd`` holds a ring of ``mode`` before mapping it."""
    try:
        st = os.fstat(memfd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise ValueError(f"fd {memfd} is not an open file descriptor") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"fd {memfd} is not a ring's shared memory")
    header = os.pread(memfd, 48, 0)
    if len(header) < 48:
        raise ValueError(f"fd {memfd} is not a ring (too small)")
    words = memoryview(header).cast("Q")
    if words[_W_MAGIC] != _MAGIC:
        raise ValueError(f"fd {memfd} is not an aipc ring (bad magic number)")
    if words[_W_VERSION] != _VERSION:
        raise ValueError(
            f"fd {memfd} is a version {words[_W_VERSION]} ring; this aipc reads "
            f"version {_VERSION}"
        )
    if words[_W_MODE] != mode:
        raise ValueError(
            f"fd {memfd} is a {_MODE_NAMES.get(words[_W_MODE], '?')} ring, not a "
            f"{_MODE_NAMES[mode]} ring"
        )
    cap = words[_W_CAPACITY]
    if (
        cap < _MIN_CAPACITY
        or cap & (cap - 1)
        or words[_W_DATA_OFFSET] != _HEADER_SIZE
        or st.st_size < _HEADER_SIZE + cap
    ):
        raise ValueError(f"fd {memfd} is a ring with a corrupt header")
    head, tail = struct.unpack(
        "QQ", os.pread(memfd, 8, _W_HEAD * 8) + os.pread(memfd, 8, _W_TAIL * 8)
    )
    if head >= 1 << 63 or not 0 <= head - tail <= cap:
        # (the compiled helper keeps them in signed 64-bit fields: a ring
        # moves 2**63 bytes in three years at 100 GB/s)
        raise ValueError(
            f"fd {memfd} is a ring with a corrupt header (head {head}, tail {tail})"
        )
    cursor = struct.unpack("Q", os.pread(memfd, 8, _W_RX_CURSOR * 8))[0]
    if mode == _MESSAGES and cursor:
        # a receiver handed off inside a batch: the record at tail must be
        # that batch, with more messages than the cursor (the take paths
        # trust a non-zero cursor only there; _batch_at checks the rest)
        tail = struct.unpack("Q", os.pread(memfd, 8, _W_TAIL * 8))[0]
        at = _HEADER_SIZE + (tail & (cap - 1))
        word, count = struct.unpack("QQ", os.pread(memfd, 16, at))
        if word & 3 != 3 or count <= cursor:
            raise ValueError(
                f"fd {memfd} is a ring with a corrupt header (a receiver cursor "
                f"of {cursor} outside a batch)"
            )


def _corrupt(what: str) -> anyio.BrokenResourceError:
    return anyio.BrokenResourceError(
        f"the ring's shared memory is corrupt ({what}): the peer wrote to it "
        "outside the protocol"
    )


# ---------------------------------------------------------------------------
# the two roles


class _Receiving(_RingEnd):
    """The consumer side: owns ``tail``, sleeps while the ring is empty."""

    _role = "receiver"
    _W_MY_SEQ = _W_RX_SEQ
    _W_MY_CLOSED = _W_RX_CLOSED
    _W_PEER_CLOSED = _W_TX_CLOSED

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._tail = self._hdr[_W_TAIL]
        self._head = self._tail  # the last head seen

    def _ready(self) -> bool:
        hdr = self._hdr
        return hdr[_W_HEAD] != self._tail or bool(hdr[_W_TX_CLOSED])

    def _available(self) -> int:
        """Bytes published and not yet taken (reloads head only when the last
        one seen is used up); raises ClosedResourceError once closed."""
        if self._closed:
            raise anyio.ClosedResourceError
        tail = self._tail
        if self._head == tail:
            head = self._hdr[_W_HEAD]
            if head == tail:
                return 0
            if not 0 < head - tail <= self._cap:
                raise _corrupt(f"head {head}, tail {tail}")
            self._head = head
        return self._head - tail

    async def _until_available(self) -> None:
        """Return once something can be taken; a checkpoint either way.

        When the ring is empty the wait itself is the schedule point, so a
        receive that has to wait costs one pass of the event loop, not two
        (the checkpoint-first order would yield once for nothing). With a
        spin budget, an empty ring is a checkpoint before the spin, so that
        what the spin finds is returned without another pass. When it is
        not empty, or the wait ends without sleeping (re-check), this
        checkpoints before anything is taken, so a cancelled receive takes
        nothing. End of stream and errors are checkpoints too.

        The sleep protocol (see the module docstring) is inlined here: this
        is the hot path of every receive that finds the ring empty.
        """
        if _FAST and not self._spin_ns:
            # the compiled steps of the loop below, without a spin: the
            # generation, the fence and the re-check happen in _cready
            state = self._cready()
            if state > 0:
                if not skip_checkpoint():
                    await checkpoint()
                return
            if not state and current_library() == "trio":
                if await self._sleep_trio():
                    return
                state = -1
            while not state:
                self._waits += 1
                try:
                    if not await self._wait(self._attempt_cb):
                        self._peer_gone = True
                finally:
                    self._cwoke()
                state = self._cready()
                if state > 0:
                    return  # the wait was the schedule point
            # closed, at the end, the sender gone or corrupt: the Python
            # steps below raise (after a checkpoint)
        yielded = False
        try:
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                tail = self._tail
                if self._head != tail:
                    break
                hdr = self._hdr
                # the flag before head: the sender publishes its last head
                # before the flag, so a set flag and an unchanged head mean
                # that nothing more comes
                closed = hdr[_W_TX_CLOSED]
                head = hdr[_W_HEAD]
                if head != tail:
                    if not 0 < head - tail <= self._cap:
                        raise _corrupt(f"head {head}, tail {tail}")
                    self._head = head
                    break
                if closed:
                    raise anyio.EndOfStream
                if self._peer_gone:
                    raise anyio.BrokenResourceError(
                        "the ring's sender died (or every copy of it was handed "
                        "off and closed) without closing the ring"
                    )
                if self._spin_ns:
                    if not yielded:
                        # the schedule point first, while the ring is empty:
                        # a message found by the spin is then taken and
                        # returned at once, instead of after one more pass of
                        # the event loop on the round trip's critical path
                        yielded = True
                        await checkpoint()
                        continue
                    if self._spin():
                        continue
                seq = self._seq + 1
                hdr[_W_RX_SEQ] = seq  # "going to sleep"
                _acquire()  # StoreLoad: the generation, then the re-check
                _release()
                try:
                    if hdr[_W_HEAD] != tail or hdr[_W_TX_CLOSED]:
                        continue
                    self._waits += 1
                    yielded = True
                    if not await self._wait(self._attempt_cb):
                        self._peer_gone = True
                finally:
                    self._seq = seq + 1
                    if not self._closed:
                        hdr[_W_RX_SEQ] = seq + 1
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            if not yielded:
                await checkpoint()
            raise
        except anyio.ClosedResourceError:
            if not yielded:
                await checkpoint()
            raise
        if not yielded:
            await checkpoint()

    async def _sleep_trio(self) -> bool:
        """The compiled receive's sleep on trio, _cready() having found the
        ring empty (generation odd): True once a message is there, having
        yielded; False for the Python steps (closed, ended, sender gone).

        The wait takes nothing: the doorbell's count is left for the next
        sleep to drain, off the round trip's critical path (between a
        wake-up and the reply that follows it, where the other backends'
        reader callback reads it). trio polls a descriptor only while a task
        waits on it, so a count left over costs nothing meanwhile. The drain
        comes after the generation went odd, so it may take this
        generation's doorbell; the sender published before it rang, so the
        re-check after the drain sees that message.
        """
        wait = self._waitset.wait_readable
        drain = self._undrained
        self._undrained = False
        yielded = False
        while True:
            if drain:
                # the count of a wake-up (or, after an empty one, the sign of
                # a dead sender: its socket at end of file)
                try:
                    if not self._attempt():
                        self._peer_gone = True
                        return False
                except BlockingIOError:
                    pass  # nothing to drain
                else:
                    # the count may be this generation's ring: look again in
                    # a new generation (the sender rings once per generation)
                    self._cwoke()
                    state: int = self._cready()
                    if state:
                        if state > 0 and not yielded and not skip_checkpoint():
                            await checkpoint()
                        return state > 0
            self._waits += 1
            try:
                await wait()
            finally:
                self._cwoke()
            yielded = True
            state = self._cready()
            if state:
                self._undrained = True
                return state > 0  # the wait was the schedule point
            drain = True  # woke to an empty ring

    def _publish_tail(self, tail: int) -> None:
        """Give the room up to ``tail`` back, then wake the sender if it
        sleeps waiting for room: the store, a full fence, the load of its
        generation (the wake-up protocol). Every receive's path."""
        self._tail = tail
        hdr = self._hdr
        hdr[_W_TAIL] = tail
        _acquire()
        _release()
        seq = hdr[_W_TX_SEQ]
        if seq & 1:
            self._wake_peer(seq)

    def _check_receive(self) -> None:
        if self._busy:
            raise anyio.BusyResourceError("receiving from")


class _Sending(_RingEnd):
    """The producer side: owns ``head``, sleeps while the ring is full."""

    _role = "sender"
    _W_MY_SEQ = _W_TX_SEQ
    _W_MY_CLOSED = _W_TX_CLOSED
    _W_PEER_CLOSED = _W_RX_CLOSED

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._head = self._hdr[_W_HEAD]
        self._tail = self._hdr[_W_TAIL]  # the last tail seen
        self._need = 1  # the free bytes the current wait is for

    def _ready(self) -> bool:
        hdr = self._hdr
        return self._cap - (self._head - hdr[_W_TAIL]) >= self._need or bool(
            hdr[_W_RX_CLOSED]
        )

    def _broken(self) -> anyio.BrokenResourceError:
        return anyio.BrokenResourceError(
            "the ring's receiver is closed"
            if self._hdr[_W_RX_CLOSED]
            else "the ring's receiver died without closing it"
        )

    def _reload_tail(self) -> int:
        """Read the receiver's tail; return the free bytes."""
        tail = self._hdr[_W_TAIL]
        if not 0 <= self._head - tail <= self._cap:
            raise _corrupt(f"head {self._head}, tail {tail}")
        self._tail = tail
        return self._cap - (self._head - tail)

    def _free(self, need: int) -> int:
        """Free bytes, reloading tail only when the last one seen leaves fewer
        than ``need``; raises if this end is closed or the receiver is gone."""
        if self._closed:
            raise anyio.ClosedResourceError
        if self._hdr[_W_RX_CLOSED] or self._peer_gone:
            raise self._broken()
        free = self._cap - (self._head - self._tail)
        if free < need:
            free = self._reload_tail()
        return free

    async def _wait_space(self, need: int) -> None:
        self._need = need
        await self._sleep()

    def _publish_head(self, head: int) -> None:
        """Publish what was written up to ``head``, then wake the receiver if
        it sleeps: the mirror image of ``_publish_tail``. Every send's path."""
        self._head = head
        hdr = self._hdr
        hdr[_W_HEAD] = head
        _acquire()
        _release()
        seq = hdr[_W_RX_SEQ]
        if seq & 1:
            self._wake_peer(seq)

    def _check_send(self) -> None:
        if self._busy:
            raise anyio.BusyResourceError("sending to")


# ---------------------------------------------------------------------------
# message mode


class RingLease:
    """A received message still in the ring: :attr:`data` is a read-only view.

    The message stays in shared memory, and the sender cannot overwrite it,
    until :meth:`release` (or leaving ``with``). Release promptly: while a
    lease is held the ring does not free the message's room and the receiver
    takes nothing else. After release, ``data`` is released too; views you
    sliced from it must not be used any more (the sender may overwrite them).
    """

    __slots__ = ("_cursor", "_owner", "_tail", "data")

    def __init__(
        self, owner: RingReceiver, data: memoryview, tail: int, cursor: int
    ) -> None:
        self._owner: RingReceiver | None = owner
        self.data = data
        self._tail = tail  # the receiver's tail and cursor once released
        self._cursor = cursor

    @property
    def released(self) -> bool:
        """Whether the lease has been released."""
        return self._owner is None

    def release(self) -> None:
        """Give the message's room back to the sender (idempotent)."""
        owner, self._owner = self._owner, None
        if owner is None:
            return
        self.data.release()
        owner._end_lease(self)

    def __enter__(self) -> memoryview:
        return self.data

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        state = "released" if self._owner is None else f"{len(self.data)}B"
        return f"<RingLease {state}>"


class RingLoan:
    """Room for one message, lent by :meth:`RingSender.loan`: fill, then commit.

    :attr:`data` is a writable memoryview of ``size`` bytes in the ring
    itself: write the message there (no copy on the sending side either) and
    :meth:`commit` it, or :meth:`abort`. As a context manager it commits when
    the block ends normally and aborts when it raises::

        with await sender.loan(len(frame)) as buf:
            buf[:] = frame

    Until then the sender is busy (other sends raise ``BusyResourceError``);
    nothing is visible to the receiver before the commit.
    """

    __slots__ = ("_head", "_owner", "_start", "data")

    def __init__(
        self, owner: RingSender, data: memoryview, start: int, head: int
    ) -> None:
        self._owner: RingSender | None = owner
        self.data = data
        self._start = start  # the head before (padding included)
        self._head = head  # where the record starts

    @property
    def done(self) -> bool:
        """Whether the loan was committed or aborted."""
        return self._owner is None

    def commit(self, size: int | None = None) -> None:
        """Publish the message: its first ``size`` bytes (default: all).

        Raises ``ValueError`` for a size beyond the loan, ``RuntimeError`` if
        the loan is done, and what :meth:`RingSender.send` raises if the ring
        was closed meanwhile (then nothing is sent).
        """
        owner = self._owner
        if owner is None:
            raise RuntimeError("this loan was committed or aborted already")
        data = self.data
        if size is None:
            n = len(data)
        else:
            n = check_int("size", size)
            if not 0 <= n <= len(data):
                raise ValueError(f"size must be between 0 and {len(data)}, got {n}")
        self._owner = None
        data.release()
        owner._end_loan(self, n)

    def abort(self) -> None:
        """Give the room back unsent (idempotent)."""
        owner, self._owner = self._owner, None
        if owner is not None:
            self.data.release()
            owner._end_loan(self, None)

    def __enter__(self) -> memoryview:
        return self.data

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._owner is None:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __repr__(self) -> str:
        state = "done" if self._owner is None else f"{len(self.data)}B"
        return f"<RingLoan {state}>"


class RingReceiver(_Receiving, ObjectReceiveStream[bytes]):
    """The receiving end of a message ring (``ObjectReceiveStream[bytes]``).

    Made by :func:`create_ring`, a hand-off (``aipc.inherit``,
    ``receive_objects``) or :meth:`RingListener.accept`. It owns a mapping of
    the ring and four descriptors (the memfd, two eventfds, a socket), all
    close-on-exec, closed by :meth:`aclose`. One task receives at a time.
    """

    _kind = "ring-receiver"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._lease: RingLease | None = None
        # messages already taken from the batch record at tail (kept in the
        # header, so that a handed-off receiver carries on where this one was)
        self._cursor = self._hdr[_W_RX_CURSOR]
        # (tail, start offsets, size) of the last batch record parsed
        self._batch: tuple[int, list[int], int] | None = None

    @property
    def max_message_size(self) -> int:
        """The largest message the ring carries: ``capacity // 2 - 8`` bytes."""
        return self._cap // 2 - 8

    def _locate(
        self, tail: int, off: int, word: int, avail: int
    ) -> tuple[int, int, int, int]:
        """(offset in the data area, length, tail after, cursor after) of the
        message whose record word ``word`` is at ``tail`` (data offset
        ``off``) when it is padding or a batch record (``word & 1``); a plain
        record is receive_lease's own fast path."""
        if word == 1:  # padding: the message starts at offset 0
            skip = self._cap - off
            if skip >= avail:
                raise _corrupt("a padding record with nothing after it")
            tail += skip
            avail -= skip
            off = 0
            word = self._dq[0]
        if word & 1:
            starts, size = self._batch_at(tail, off, word, tail + avail)
            c = self._cursor
            start, n = starts[c] - _HEADER_SIZE, starts[c + 1] - starts[c]
            if c + 2 == len(starts):  # the batch's last message
                return start, n, tail + size, 0
            return start, n, tail, c + 1
        n = word >> 1
        size = 8 + ((n + 7) & -8)
        if size > avail or off + size > self._cap:
            raise _corrupt(f"a record of {n} bytes at offset {off}")
        return off + 8, n, tail + size, 0

    def _batch_at(
        self, tail: int, off: int, word: int, head: int
    ) -> tuple[list[int], int]:
        """The batch record at ``tail`` (data offset ``off``): the map offsets
        where its messages start plus where the last one ends, and the
        record's size. Checked once, then remembered until tail moves."""
        batch = self._batch
        if batch is not None and batch[0] == tail:
            return batch[1], batch[2]
        body = word >> 2
        size = 8 + ((body + 7) & -8)
        if word & 3 != 3 or size > head - tail or off + size > self._cap:
            raise _corrupt(f"a record word {word:#x} at offset {off}")
        k = self._dq[(off >> 3) + 1]
        table = 8 + ((4 * k + 7) & -8)
        if not 0 < k < body // 4 or table > body or self._cursor >= k:
            raise _corrupt(f"a batch of {k} messages in a record of {body} bytes")
        lens = self._data[off + 16 : off + 16 + 4 * k].cast("I")
        try:
            starts = list(accumulate(lens, initial=_HEADER_SIZE + off + 8 + table))
        finally:
            lens.release()
        if starts[-1] != _HEADER_SIZE + off + 8 + body:
            raise _corrupt(f"a batch whose lengths do not add up at offset {off}")
        self._batch = (tail, starts, size)
        return starts, size

    def _take_batch(
        self, tail: int, off: int, word: int, head: int, max_items: int
    ) -> tuple[list[bytes], int, int]:
        """Copy out up to ``max_items`` messages of the batch record at
        ``tail``: (messages, tail after, bytes). The cursor moves; the caller
        publishes the tail."""
        starts, size = self._batch_at(tail, off, word, head)
        c = self._cursor
        k = len(starts) - 1
        end = k if k - c <= max_items else c + max_items
        # one C loop: each message a slice of the map, as _take_one's
        mm = self._mm
        cuts = map(slice, starts[c:end], starts[c + 1 : end + 1])
        items = list(map(mm.__getitem__, cuts))
        nbytes = starts[end] - starts[c]
        if end == k:
            tail += size
            end = 0
        self._cursor = end
        self._hdr[_W_RX_CURSOR] = end
        return items, tail, nbytes

    def _take_many(self, max_items: int) -> list[bytes]:
        """Copy out up to ``max_items`` messages; give their room back once."""
        if self._lease is not None:
            raise anyio.BusyResourceError("holding a lease on")
        if not self._available():
            return []
        items: list[bytes] = []
        append = items.append
        mm = self._mm
        dq = self._dq
        cap = self._cap
        mask = cap - 1
        tail = self._tail
        head = self._head
        nbytes = 0
        while len(items) < max_items:
            if tail == head:
                # what was published meanwhile belongs to this batch too
                head = self._hdr[_W_HEAD]
                if head == tail:
                    break
                if not 0 < head - tail <= cap:
                    raise _corrupt(f"head {head}, tail {tail}")
                self._head = head
            off = tail & mask
            word = dq[off >> 3]
            if word & 1:
                if word == 1:  # padding: the record starts at offset 0
                    tail += cap - off
                    off = 0
                    word = dq[0]
                if word & 1:  # a batch record
                    more, tail, n = self._take_batch(
                        tail, off, word, head, max_items - len(items)
                    )
                    items += more
                    nbytes += n
                    continue
            n = word >> 1
            size = 8 + ((n + 7) & -8)
            if size > head - tail or off + size > cap:
                raise _corrupt(f"a record of {n} bytes at offset {off}")
            start = _HEADER_SIZE + 8 + off
            append(mm[start : start + n])
            nbytes += n
            tail += size
        self._messages += len(items)
        self._bytes += nbytes
        self._publish_tail(tail)
        return items

    def _take(self) -> bytes | None:
        if not self._available():
            return None
        return self._take_one()

    def _take_one(self) -> bytes:
        """Copy out the next message, known to be there (``_head`` ahead)."""
        tail = self._tail
        cap = self._cap
        off = tail & (cap - 1)
        dq = self._dq
        word = dq[off >> 3]
        if word & 1:
            if word == 1:  # padding: the record starts at offset 0
                tail += cap - off
                off = 0
                word = dq[0]
            if word & 1:  # a batch record
                items, tail, n = self._take_batch(tail, off, word, self._head, 1)
                self._messages += 1
                self._bytes += n
                if tail != self._tail:
                    self._publish_tail(tail)
                return items[0]
        n = word >> 1
        size = 8 + ((n + 7) & -8)
        if size > self._head - tail or off + size > cap:
            raise _corrupt(f"a record of {n} bytes at offset {off}")
        start = _HEADER_SIZE + 8 + off
        item = self._mm[start : start + n]
        self._messages += 1
        self._bytes += n
        self._publish_tail(tail + size)
        return item

    def _check_receive(self) -> None:
        super()._check_receive()
        if self._lease is not None:
            raise anyio.BusyResourceError("holding a lease on")

    def receive_nowait(self) -> bytes:
        """Take the next message without waiting (not a checkpoint).

        Raises ``anyio.WouldBlock`` if the ring is empty, ``EndOfStream`` if
        it is empty and the sender closed it, ``BrokenResourceError`` if it is
        empty and the sender died, and what :meth:`receive` raises.
        """
        self._check_receive()
        item = self._take()
        if item is not None:
            return item
        hdr = self._hdr
        closed = hdr[_W_TX_CLOSED]
        if hdr[_W_HEAD] == self._tail:
            if closed:
                raise anyio.EndOfStream
            if self._peer_gone:
                raise anyio.BrokenResourceError("the ring's sender died")
        raise anyio.WouldBlock

    async def receive(self) -> bytes:
        """Receive the next message (a copy, as ``bytes``), waiting for one.

        Raises:
            EndOfStream: the ring is empty and the sender closed it.
            BrokenResourceError: the ring is empty and the sender died
                without closing it (everything it sent was received first).
            ClosedResourceError: this end is or gets closed.
            BusyResourceError: another task is receiving, or a lease is held.

        **Cancellation:** nothing is taken; the message stays for the next
        receive.
        """
        if self._busy or self._lease is not None:
            self._check_receive()  # raises
        self._busy = True
        try:
            await self._until_available()
            if _FAST:
                # a plain record's compiled copy and _publish_tail; padding,
                # batch records and corruption are the Python steps'
                item = self._ctake()
                if item is not None:
                    return item  # type: ignore[no-any-return]
            return self._take_one()
        finally:
            self._busy = False

    async def receive_many(self, max_items: int = 1024) -> list[bytes]:
        """Receive every message available, up to ``max_items``, waiting for
        at least one. The room they took is given back once, at the end.

        Raises what :meth:`receive` raises (``EndOfStream`` only if no message
        is available). **Cancellation:** nothing is taken.
        """
        max_items = check_int("max_items", max_items)
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self._check_receive()
        self._busy = True
        try:
            await self._until_available()
            return self._take_many(max_items)
        finally:
            self._busy = False

    async def receive_lease(self) -> RingLease:
        """Wait for the next message and lend it in place (zero copy).

        ``lease.data`` is a read-only memoryview of the message in shared
        memory, valid until the lease is released::

            with await receiver.receive_lease() as data:
                process(data)

        Until then the message's room is not given back and other receives
        raise ``BusyResourceError``. Raises what :meth:`receive` raises.
        **Cancellation:** nothing is taken or lent.
        """
        if self._busy or self._lease is not None:
            self._check_receive()  # raises
        self._busy = True
        try:
            tail = self._tail
            if not self._closed and (self._head != tail or self._hdr[_W_HEAD] != tail):
                # something is there: only the checkpoint, without
                # _until_available's coroutine (_locate checks what is there)
                if not skip_checkpoint():
                    await checkpoint()
            else:
                await self._until_available()
            # one consumer: what was there still is (avail > 0)
            if _FAST:
                # a plain record, located and counted in C; padding, batch
                # records and corruption are the Python steps'
                found = self._clease()
                if found is not None:
                    start, n, tail = found
                    view = self._rdata[start : start + n]
                    self._lease = lease = RingLease(self, view, tail, 0)
                    return lease
            avail = self._available()
            tail = self._tail
            off = tail & self._mask
            word = self._dq[off >> 3]
            if word & 1:
                start, n, tail, cursor = self._locate(tail, off, word, avail)
            else:
                n = word >> 1
                size = 8 + ((n + 7) & -8)
                if size > avail or off + size > self._cap:
                    raise _corrupt(f"a record of {n} bytes at offset {off}")
                start, tail, cursor = off + 8, tail + size, 0
            view = self._rdata[start : start + n]
            self._lease = lease = RingLease(self, view, tail, cursor)
            self._messages += 1
            self._bytes += n
            return lease
        finally:
            self._busy = False

    def _end_lease(self, lease: RingLease) -> None:
        if self._lease is lease:
            self._lease = None
            if not self._closed:
                if lease._cursor != self._cursor:
                    self._cursor = lease._cursor
                    self._hdr[_W_RX_CURSOR] = lease._cursor
                if lease._tail != self._tail and not (
                    _FAST and self._crelease(lease._tail)
                ):
                    self._publish_tail(lease._tail)

    def _close_lease(self) -> None:
        lease = self._lease
        if lease is not None:
            lease._owner = None
            lease.data.release()
            self._lease = None

    def _describe(self) -> str:
        return f"messages {super()._describe()} received={self._messages}"


class RingSender(_Sending, ObjectSendStream[bytes]):
    """The sending end of a message ring (``ObjectSendStream[bytes]``).

    Made by :func:`create_ring`, a hand-off or :func:`connect_ring`. It owns
    a mapping of the ring and four descriptors, closed by :meth:`aclose`,
    which tells the receiver that nothing more comes. One task sends at a
    time.
    """

    _kind = "ring-sender"
    _loan: RingLoan | None = None

    @property
    def max_message_size(self) -> int:
        """The largest message the ring carries: ``capacity // 2 - 8`` bytes."""
        return self._cap // 2 - 8

    def _check_size(self, n: int) -> None:
        limit = self._cap // 2 - 8
        if n > limit:
            raise LimitExceededError(
                "len(item)",
                n,
                limit,
                "the ring's max_message_size (capacity // 2 - 8)",
                "create the ring with a larger capacity",
            )

    def _write(self, data: _Bytes, n: int) -> int:
        """Write one record at head if it fits; return the new head, or 0 if
        there is no room (then ``_need`` says how much is needed)."""
        if self._closed:
            raise anyio.ClosedResourceError
        hdr = self._hdr
        if hdr[_W_RX_CLOSED] or self._peer_gone:
            raise self._broken()
        head = self._head
        cap = self._cap
        off = head & (cap - 1)
        size = 8 + ((n + 7) & -8)
        to_end = cap - off
        need = size if size <= to_end else to_end + size
        if cap - (head - self._tail) < need and self._reload_tail() < need:
            self._need = need
            return 0
        dq = self._dq
        if size > to_end:
            dq[off >> 3] = 1  # padding to the end of the area
            head += to_end
            off = 0
        dq[off >> 3] = n << 1
        if n:
            start = _HEADER_SIZE + 8 + off
            self._mm[start : start + n] = data
        self._bytes += n
        return head + size

    async def loan(self, size: int) -> RingLoan:
        """Wait for room for a ``size``-byte message and lend it (zero copy).

        Write the message into ``loan.data`` and commit it (see
        :class:`RingLoan`); the receiver sees nothing before. Raises
        ``LimitExceededError`` for a size above :attr:`max_message_size` and
        what :meth:`send` raises. **Cancellation:** nothing is lent or sent.
        """
        n = size if type(size) is int else check_int("size", size)
        if n < 0:
            raise ValueError(f"size must be >= 0, got {n}")
        if n > (self._cap >> 1) - 8:
            self._check_size(n)
        if self._busy:
            self._check_send()  # raises
        self._busy = True
        try:
            if not skip_checkpoint():
                await checkpoint()
            while _FAST:
                room = self._cloan(n)
                if type(room) is tuple:
                    off, start, head = room
                    self._loan = loan = RingLoan(
                        self, self._data[off : off + n], start, head
                    )
                    return loan  # busy until it ends
                if room:  # closed, broken or corrupt: the Python steps raise
                    break
                await self._wait_space(self._need)
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                if self._hdr[_W_RX_CLOSED] or self._peer_gone:
                    raise self._broken()
                head = self._head
                cap = self._cap
                off = head & (cap - 1)
                size_ = 8 + ((n + 7) & -8)
                to_end = cap - off
                need = size_ if size_ <= to_end else to_end + size_
                if cap - (head - self._tail) >= need or self._reload_tail() >= need:
                    break
                await self._wait_space(need)
        except BaseException:
            self._busy = False
            raise
        start = head
        if size_ > to_end:
            head += to_end
            off = 0
        view = self._data[off + 8 : off + 8 + n]
        self._loan = loan = RingLoan(self, view, start, head)
        return loan  # busy until it ends

    def _close_lease(self) -> None:
        loan = self._loan
        if loan is not None:
            loan._owner = None
            loan.data.release()
            self._loan = None

    def _end_loan(self, loan: RingLoan, n: int | None) -> None:
        self._busy = False
        self._loan = None
        if n is None or self._closed:
            return
        if _FAST and self._ccommit(loan._start, loan._head, n) > 0:
            return
        # broken, or not what loan() lent (_ccommit wrote nothing): the
        # Python steps below raise, or write the record themselves
        if self._hdr[_W_RX_CLOSED] or self._peer_gone:
            raise self._broken()
        dq = self._dq
        start, head = loan._start, loan._head
        mask = self._mask
        if head != start:
            dq[(start & mask) >> 3] = 1  # padding to the end of the area
        dq[(head & mask) >> 3] = n << 1
        self._bytes += n
        self._messages += 1
        self._publish_head(head + 8 + ((n + 7) & -8))

    def send_nowait(self, item: bytes | bytearray | memoryview) -> None:
        """Send ``item`` if there is room now (not a checkpoint).

        Raises ``anyio.WouldBlock`` if the ring is too full, and what
        :meth:`send` raises.
        """
        data = _as_bytes(item)
        n = len(data)
        self._check_size(n)
        self._check_send()
        head = self._write(data, n)
        if not head:
            raise anyio.WouldBlock
        self._messages += 1
        self._publish_head(head)

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send one message (copied into the ring), waiting while it is full.

        Raises:
            LimitExceededError: ``item`` is larger than
                :attr:`max_message_size` (checked before anything happens).
            BrokenResourceError: the receiver closed the ring or died (a
                dead receiver is noticed when the ring fills up).
            ClosedResourceError: this end is or gets closed.
            BusyResourceError: another task is sending on this end.

        **Cancellation:** nothing was sent. A message is never half-sent.
        """
        data = item if type(item) is bytes else _as_bytes(item)
        n = len(data)
        if n > (self._cap >> 1) - 8:
            self._check_size(n)
        if self._busy:
            raise anyio.BusyResourceError("sending to")
        self._busy = True
        try:
            if not skip_checkpoint():
                await checkpoint()
            while True:
                if _FAST:
                    # the compiled steps of _write and _publish_head; when
                    # closed, broken or corrupt the Python steps below raise
                    put = self._cput(data)
                    if put > 0:
                        return
                    if not put:
                        await self._wait_space(self._need)
                        continue
                head = self._write(data, n)
                if head:
                    self._messages += 1
                    self._publish_head(head)
                    return
                await self._wait_space(self._need)
        finally:
            self._busy = False

    def send_many_nowait(self, items: Sequence[bytes | bytearray | memoryview]) -> int:
        """Send as many of ``items`` as fit now, in order, with one publish
        and at most one wake-up; return how many were sent (not a checkpoint).

        Raises what :meth:`send` raises (sizes are checked first).
        """
        datas = self._checked(items)
        self._check_send()
        return self._write_many(datas, 0)

    def _write_many(self, datas: Sequence[_Bytes], i: int) -> int:
        """Write datas[i:] while they fit; publish once; return the new i."""
        if self._closed:
            raise anyio.ClosedResourceError
        hdr = self._hdr
        if hdr[_W_RX_CLOSED] or self._peer_gone:
            raise self._broken()
        start_i = i
        count = len(datas)
        head = self._head
        cap = self._cap
        mask = cap - 1
        dq = self._dq
        mm = self._mm
        free = cap - (head - self._tail)
        nbytes = 0
        while i < count:
            if count - i >= _BATCH_MIN:
                if free < cap >> 1:  # the receiver may have made room since
                    self._reload_tail()
                    free = cap - (head - self._tail)
                done = self._write_batch(datas, i, head, free)
                if done is not None:
                    head, free, i, n = done
                    nbytes += n
                    continue
            data = datas[i]
            n = len(data)
            off = head & mask
            size = 8 + ((n + 7) & -8)
            to_end = cap - off
            need = size if size <= to_end else to_end + size
            if free < need:
                # the receiver's tail, against our unpublished head
                tail = hdr[_W_TAIL]
                if not 0 <= self._head - tail <= cap:
                    raise _corrupt(f"head {self._head}, tail {tail}")
                self._tail = tail
                free = cap - (head - tail)
                if free < need:
                    self._need = need
                    break
            if size > to_end:
                dq[off >> 3] = 1  # padding to the end of the area
                head += to_end
                off = 0
            dq[off >> 3] = n << 1
            if n:
                start = _HEADER_SIZE + 8 + off
                mm[start : start + n] = data
            nbytes += n
            head += size
            free -= need
            i += 1
        if i > start_i:
            self._bytes += nbytes
            self._messages += i - start_i
            self._publish_head(head)
        return i

    def _write_batch(
        self, datas: Sequence[_Bytes], i: int, head: int, free: int
    ) -> tuple[int, int, int, int] | None:
        """Write as many of datas[i:] as fit, at least two, as one batch
        record at ``head`` (unpublished): (head, free, i, bytes) after it, or
        None when fewer than two fit.

        A batch record is the word ``body << 2 | 3``, then the count ``k``,
        ``k`` 4-byte lengths padded to 8 bytes, then the messages back to
        back; ``body`` counts the bytes after the word. Like any record it
        never wraps and is at most half the ring.
        """
        window = datas[i : i + _BATCH_MAX]
        lens = list(map(len, window))
        cum = list(accumulate(lens))
        cap = self._cap
        off = head & (cap - 1)
        to_end = cap - off

        def fit(budget: int) -> int:
            # the most messages whose record fits in budget bytes: a record
            # of k takes 16 + pad8(4k) + pad8(sum) <= 4k + sum + 27 bytes
            return bisect_right(
                range(len(cum)), budget - 27, key=lambda j: cum[j] + 4 * j + 4
            )

        half = cap >> 1
        k = fit(min(to_end, free, half))
        wrap = False
        if k < len(cum) and free > to_end:
            k_wrapped = fit(min(free - to_end, half))
            if k_wrapped > k:
                k, wrap = k_wrapped, True
        if k < 2:
            return None
        dq = self._dq
        if wrap:
            dq[off >> 3] = 1  # padding to the end of the area
            head += to_end
            free -= to_end
            off = 0
        nbytes = cum[k - 1]
        table = 8 + ((4 * k + 7) & -8)
        body = table + nbytes
        base = _HEADER_SIZE + off
        mm = self._mm
        dq[off >> 3] = body << 2 | 3
        dq[(off >> 3) + 1] = k
        mm[base + 16 : base + 16 + 4 * k] = array("I", lens[:k])
        start = base + 8 + table
        mm[start : start + nbytes] = b"".join(window[:k])
        size = 8 + ((body + 7) & -8)
        return head + size, free - size, i + k, nbytes

    def _checked(self, items: Iterable[bytes | bytearray | memoryview]) -> list[_Bytes]:
        """``items`` as a list of byte buffers, each within the size limit."""
        datas: list[_Bytes] = list(items)
        if not set(map(type, datas)) <= {bytes}:
            datas = [_as_bytes(item) for item in datas]
        if datas and max(map(len, datas)) > (self._cap >> 1) - 8:
            for data in datas:
                self._check_size(len(data))
        return datas

    async def send_many(self, items: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send every item, in order, publishing each batch that fits at once.

        Sizes are checked first: a ``LimitExceededError`` sends nothing.
        Raises what :meth:`send` raises.

        **Cancellation:** only while waiting for room, and then the items
        before the wait were sent, whole (``statistics().messages`` counts
        them); no item is ever half-sent.
        """
        datas = self._checked(items)
        self._check_send()
        self._busy = True
        try:
            await checkpoint()
            i = 0
            while True:
                i = self._write_many(datas, i)
                if i == len(datas):
                    return
                await self._wait_space(self._need)
        finally:
            self._busy = False

    async def wait_writable(self) -> None:
        """Wait until there is room for at least an empty message.

        Raises what :meth:`send` raises. **Cancellation:** nothing to undo.
        """
        self._check_send()
        self._busy = True
        try:
            await checkpoint()
            while self._free(8) < 8:
                await self._wait_space(8)
        finally:
            self._busy = False

    def _describe(self) -> str:
        return f"messages {super()._describe()} sent={self._messages}"


# ---------------------------------------------------------------------------
# byte mode


def _check_max_bytes(max_bytes: object) -> int:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool):
        raise TypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    return max_bytes


class RingByteReceiveStream(_Receiving, ByteReceiveStream):
    """The receiving end of a byte ring (anyio ``ByteReceiveStream``).

    Bytes arrive in order with no message boundaries, like a pipe. Made by
    :func:`create_byte_ring`, a hand-off or :meth:`RingListener.accept`; owns
    a mapping and four descriptors, closed by :meth:`aclose`.
    """

    _kind = "ring-byte-receive"
    _mode = _BYTES

    def _take(self, max_bytes: int) -> bytes:
        avail = self._available()
        if not avail:
            return b""
        n = min(avail, max_bytes)
        tail = self._tail
        off = tail & self._mask
        first = self._cap - off
        mm = self._mm
        start = _HEADER_SIZE + off
        if n <= first:
            out = mm[start : start + n]
        else:
            out = (
                mm[start : _HEADER_SIZE + self._cap]
                + mm[_HEADER_SIZE : _HEADER_SIZE + n - first]
            )
        self._publish_tail(tail + n)
        self._messages += 1
        self._bytes += n
        return out

    async def receive(self, max_bytes: int = _DEFAULT_RECEIVE_SIZE) -> bytes:
        """Receive at most ``max_bytes`` bytes, waiting until at least one is
        available.

        Raises ``EndOfStream`` when the ring is empty and the sender closed
        it, ``BrokenResourceError`` when it is empty and the sender died,
        ``ClosedResourceError`` if this end is or gets closed, and
        ``BusyResourceError`` if another task is receiving.

        **Cancellation:** nothing is taken.
        """
        if type(max_bytes) is not int or max_bytes < 1:
            _check_max_bytes(max_bytes)
        self._check_receive()
        self._busy = True
        try:
            await self._until_available()
            return self._take(max_bytes)
        finally:
            self._busy = False

    def _describe(self) -> str:
        return f"bytes {super()._describe()} received={self._bytes}B"


class RingByteSendStream(_Sending, ByteSendStream):
    """The sending end of a byte ring (anyio ``ByteSendStream``).

    Made by :func:`create_byte_ring`, a hand-off or :func:`connect_ring`;
    owns a mapping and four descriptors, closed by :meth:`aclose`, which the
    receiver sees as end of stream.
    """

    _kind = "ring-byte-send"
    _mode = _BYTES

    def _write(self, view: memoryview, need: int) -> int:
        """Copy as much of ``view`` as fits, if at least ``need`` bytes are
        free; publish; return how much was written (0: wait for ``need``)."""
        free = self._free(need)
        if free < need:
            return 0
        n = min(free, len(view))
        head = self._head
        off = head & self._mask
        first = self._cap - off
        data = self._data
        if n <= first:
            data[off : off + n] = view[:n]
        else:
            data[off:] = view[:first]
            data[: n - first] = view[first:n]
        self._bytes += n
        self._publish_head(head + n)
        return n

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send all of ``item``, waiting while the ring is full.

        Raises ``BrokenResourceError`` if the receiver closed the ring or
        died (a dead receiver is noticed when the ring fills up),
        ``ClosedResourceError`` if this end is or gets closed, and
        ``BusyResourceError`` if another task is sending.

        **Cancellation:** a send of at most 4096 bytes (and at most the
        capacity) is written whole or not at all, so a cancelled one wrote
        nothing. A larger send cancelled while waiting for room may have
        written a prefix of ``item``; ``statistics().bytes`` counts exactly
        what was written.
        """
        data = _as_bytes(item)
        self._check_send()
        self._busy = True
        try:
            await checkpoint()
            view = memoryview(data)
            total = len(view)
            if not total:
                if self._closed:
                    raise anyio.ClosedResourceError
                self._free(0)  # raises if the receiver is gone
                return
            # all or nothing for small sends, any room at all for large ones
            need = total if total <= min(_ATOMIC_SEND, self._cap) else 1
            while view:
                n = self._write(view, need)
                if n:
                    view = view[n:]
                    need = 1
                else:
                    await self._wait_space(need)
            self._messages += 1
        finally:
            self._busy = False

    async def _send_some(self, data: bytes | bytearray | memoryview) -> int:
        """Write a non-empty prefix of ``data`` with one copy; return its
        length (for object channels, which finish a cancelled frame later).

        Waits while the ring is full, the only cancel point: a cancelled call
        wrote nothing. Not a checkpoint when it can write at once.
        """
        self._check_send()
        self._busy = True
        try:
            view = memoryview(data)
            while True:
                n = self._write(view, 1)
                if n:
                    return n
                await self._wait_space(1)
        finally:
            self._busy = False

    async def wait_writable(self) -> None:
        """Wait until at least one byte can be sent without waiting.

        Raises ``ClosedResourceError`` if this end is or gets closed and
        ``BrokenResourceError`` if the receiver is gone.
        **Cancellation:** nothing to undo.
        """
        self._check_send()
        self._busy = True
        try:
            await checkpoint()
            while self._free(1) < 1:
                await self._wait_space(1)
        finally:
            self._busy = False

    def _describe(self) -> str:
        return f"bytes {super()._describe()} sent={self._bytes}B"


class RingStream(ByteStream):
    """A two-way byte stream over two byte rings (anyio ``ByteStream``).

    :func:`create_ring_stream_pair` returns two, connected like a socket
    pair. :meth:`send_eof` closes the sending direction (the peer receives
    end of stream, this end can still receive); :meth:`aclose` closes both.
    Hand it to another process like the one-way ends (eight descriptors).
    """

    def __init__(
        self, send_stream: RingByteSendStream, receive_stream: RingByteReceiveStream
    ) -> None:
        self.send_stream = send_stream
        self.receive_stream = receive_stream

    @classmethod
    def _from_handoff(cls, fds: tuple[int, ...], meta: Any) -> Self:
        send = RingByteSendStream._from_handoff(fds[:4], meta)
        try:
            receive = RingByteReceiveStream._from_handoff(fds[4:], meta)
        except BaseException:
            send._give_back()  # on error the descriptors are the caller's
            raise
        return cls(send, receive)

    def _aipc_handoff_(self) -> tuple[str, tuple[int, ...], dict[str, Any]]:
        _, send_fds, meta = self.send_stream._aipc_handoff_()
        _, receive_fds, _ = self.receive_stream._aipc_handoff_()
        return "ring-stream", send_fds + receive_fds, meta

    @property
    def closed(self) -> bool:
        """Whether both directions are closed."""
        return self.send_stream.closed and self.receive_stream.closed

    def receive(self, max_bytes: int = _DEFAULT_RECEIVE_SIZE) -> Any:
        """See :meth:`RingByteReceiveStream.receive`."""
        return self.receive_stream.receive(max_bytes)

    def send(self, item: bytes | bytearray | memoryview) -> Any:
        """See :meth:`RingByteSendStream.send`."""
        return self.send_stream.send(item)

    def _send_some(self, data: bytes | bytearray | memoryview) -> Any:
        return self.send_stream._send_some(data)

    def wait_writable(self) -> Any:
        """See :meth:`RingByteSendStream.wait_writable`."""
        return self.send_stream.wait_writable()

    async def send_eof(self) -> None:
        """Close the sending direction; the peer receives end of stream.

        Sending afterwards raises ``ClosedResourceError``; calling it again
        does nothing. Raises ``BusyResourceError`` while a task is sending
        (or waiting to): half-closing under it would cut its data short.
        """
        self.send_stream._check_send()
        await self.send_stream.aclose()

    def statistics(self) -> tuple[RingStatistics, RingStatistics]:
        """The (send, receive) rings' statistics."""
        return self.send_stream.statistics(), self.receive_stream.statistics()

    def close(self) -> None:
        """Close both directions (idempotent)."""
        self.send_stream.close()
        self.receive_stream.close()

    async def aclose(self) -> None:
        """Close both directions (idempotent, also when cancelled)."""
        self.close()
        await checkpoint()

    def __repr__(self) -> str:
        return (
            f"<RingStream send={self.send_stream._describe()} "
            f"receive={self.receive_stream._describe()}>"
        )


# ---------------------------------------------------------------------------
# factories


def _new_ring(
    capacity: int, mode: int
) -> tuple[SharedMemory, int, int, socket.socket, socket.socket]:
    """A fresh ring: the segment, the receiver's and the sender's doorbells
    (fds), and the receiver's and the sender's liveness sockets."""
    segment = create_shared_memory(_HEADER_SIZE + capacity)
    fds: list[int] = []
    try:
        hdr = segment.buffer[:_HEADER_SIZE].cast("Q")
        hdr[_W_MAGIC] = _MAGIC
        hdr[_W_VERSION] = _VERSION
        hdr[_W_MODE] = mode
        hdr[_W_CAPACITY] = capacity
        hdr[_W_DATA_OFFSET] = _HEADER_SIZE
        hdr.release()
        flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
        fds.append(os.eventfd(0, flags))
        fds.append(os.eventfd(0, flags))
        # close-on-exec, as every socket Python creates
        rsock, ssock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    except BaseException:
        for fd in fds:
            os.close(fd)
        segment.close()
        raise
    return segment, fds[0], fds[1], rsock, ssock


def _make_pair(
    capacity: int, spin_us: float, receiver_cls: Any, sender_cls: Any
) -> tuple[Any, Any]:
    segment, rx_bell, tx_bell, rsock, ssock = _new_ring(capacity, receiver_cls._mode)
    receiver = sender = None
    try:
        receiver = receiver_cls(
            segment,
            FdHandle(rx_bell, "ring doorbell"),
            FdHandle(tx_bell, "ring doorbell"),
            rsock,
            spin_us,
        )
        sender = sender_cls(
            SharedMemory.from_fd(os.dup(segment.fileno())),
            FdHandle(os.dup(tx_bell), "ring doorbell"),
            FdHandle(os.dup(rx_bell), "ring doorbell"),
            ssock,
            spin_us,
        )
    except BaseException:
        if receiver is not None:
            receiver._handed_off = True
            receiver.close()
        else:
            segment.close()
            os.close(rx_bell)
            os.close(tx_bell)
            rsock.close()
        ssock.close()
        raise
    return receiver, sender


def create_ring(
    capacity: int = DEFAULT_RING_CAPACITY, *, spin_us: float = 0
) -> tuple[RingReceiver, RingSender]:
    """Create a message ring in anonymous shared memory: ``(receiver, sender)``.

    ``capacity`` is the size of the data area, a power of two of at least
    4096 bytes; the largest message is ``capacity // 2 - 8`` bytes. Give one
    end to another process with ``aipc.open_process(..., handoff=...)`` or
    ``send_objects``, and close this process's copy of it. ``spin_us``: how
    long each end busy-waits before sleeping (0, the default, never does;
    see docs/rings.md for what spinning costs).

    Raises ``TypeError`` / ``ValueError`` for a bad capacity,
    ``LimitExceededError`` if the memory is not available, and
    ``NotImplementedError`` on a machine other than x86-64 (see the module
    documentation: the ring relies on x86-64's memory ordering).
    """
    _check_platform()
    capacity = _check_capacity(capacity)
    spin_us = _check_spin(spin_us)
    receiver, sender = _make_pair(capacity, spin_us, RingReceiver, RingSender)
    return receiver, sender


def create_byte_ring(
    capacity: int = DEFAULT_RING_CAPACITY, *, spin_us: float = 0
) -> tuple[RingByteReceiveStream, RingByteSendStream]:
    """Create a one-way byte ring: ``(receive_stream, send_stream)``.

    The anyio byte-stream counterpart of :func:`create_ring`, like a pipe
    with a ``capacity``-byte buffer in shared memory. Same arguments and
    errors as :func:`create_ring`.
    """
    _check_platform()
    capacity = _check_capacity(capacity)
    spin_us = _check_spin(spin_us)
    receive, send = _make_pair(
        capacity, spin_us, RingByteReceiveStream, RingByteSendStream
    )
    return receive, send


def create_ring_stream_pair(
    capacity: int = DEFAULT_RING_CAPACITY, *, spin_us: float = 0
) -> tuple[RingStream, RingStream]:
    """Create two connected two-way byte streams over two byte rings.

    What one sends the other receives, each direction with a
    ``capacity``-byte ring. Same arguments and errors as :func:`create_ring`.
    """
    _check_platform()
    capacity = _check_capacity(capacity)
    spin_us = _check_spin(spin_us)
    a_receive, b_send = _make_pair(
        capacity, spin_us, RingByteReceiveStream, RingByteSendStream
    )
    try:
        b_receive, a_send = _make_pair(
            capacity, spin_us, RingByteReceiveStream, RingByteSendStream
        )
    except BaseException:
        a_receive.close()
        b_send.close()
        raise
    return RingStream(a_send, a_receive), RingStream(b_send, b_receive)
