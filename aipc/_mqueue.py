"""POSIX message queues as anyio object streams of ``bytes`` (Linux only).

The queues come from the ``posix_ipc`` library, which opens them with
``mq_open``. On Linux a queue descriptor is an ordinary pollable file
descriptor: readable while the queue holds a message, writable while it has
room. So a queue is awaited like a pipe, through ``_core`` readiness on the
event loop, with no worker thread: every send and receive is a non-blocking
``mq_send`` / ``mq_receive`` (the descriptor is opened ``O_NONBLOCK``), and
``EAGAIN`` (posix_ipc's ``BusyError``) means "wait for readiness, then try
again".

**Descriptor ownership.** posix_ipc keeps the descriptor number in its own
object, and its ``close()`` is ``mq_close``. The queue's :class:`FdHandle`
owns the descriptor with posix_ipc's ``close`` as its closer, so closing
follows ``_core``'s order (forget the number, wake waiters with
``ClosedResourceError``, then ``mq_close``) and the descriptor is closed once,
by the library that opened it, which then forgets the number too. posix_ipc
never closes a descriptor when its object is garbage-collected, so nothing
else can close it twice.

**Cancellation.** Nothing is ever taken from the kernel on behalf of a task
that might not get it: a receive checkpoints *before* it calls
``mq_receive``, and when it has to wait, it waits for readability only and
calls ``mq_receive`` itself once it runs again, with no yield between that call
and its return. (Pipes let the loop callback read and keep the bytes of a
cancelled receive; a message taken for a cancelled receive could only be put
back at the tail of its priority, out of order, and only if the queue had room.)
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import resource
from dataclasses import dataclass
from typing import Final, Protocol

import anyio
import posix_ipc
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from ._core import _registry
from ._core._args import check_mode
from ._core._errors import LimitExceededError
from ._core._fd import FdHandle, checkpoint

__all__ = [
    "MQ_PRIORITY_MAX",
    "MessageQueue",
    "MessageQueueAttributes",
    "MessageQueueStatistics",
    "create_message_queue",
    "open_message_queue",
]

#: The highest message priority (Linux's ``MQ_PRIO_MAX`` is 32768).
MQ_PRIORITY_MAX: Final = 32767

_NAME_MAX = 255
# The kernel's ceilings for a process with CAP_SYS_RESOURCE, which may exceed
# the fs.mqueue sysctls (include/linux/ipc_namespace.h, Linux 3.5 and later).
_HARD_MSGMAX = 65536
_HARD_MSGSIZEMAX = 16 * 1024 * 1024
_CAP_SYS_RESOURCE = 24
_SYSCTL = "/proc/sys/fs/mqueue/"
# What RLIMIT_MSGQUEUE counts for one queue (ipc/mqueue.c, mqueue_get_inode):
# max_messages * (max_message_size + sizeof(struct msg_msg)) plus a
# struct posix_msg_tree_node for each of min(max_messages, MQ_PRIO_MAX)
# priorities. Both structs are six words (48 bytes on 64-bit).
_STRUCT_SIZE = 6 * ctypes.sizeof(ctypes.c_void_p)
_MQ_PRIO_MAX = MQ_PRIORITY_MAX + 1

# posix_ipc raises errno-less exceptions; these messages name the errno.
_POSIX_IPC_MESSAGES = {
    "This process already has the maximum number of files open": errno.EMFILE,
    "The system limit on the total number of open files has been reached": (
        errno.ENFILE
    ),
    "Insufficient space for a new queue": errno.ENOSPC,
    "Invalid parameter(s)": errno.EINVAL,
}


class _Queue(Protocol):
    """What aipc uses of a ``posix_ipc.MessageQueue``."""

    @property
    def mqd(self) -> int: ...
    @property
    def max_messages(self) -> int: ...
    @property
    def max_message_size(self) -> int: ...
    @property
    def current_messages(self) -> int: ...
    def send(
        self, message: bytes | memoryview, timeout: float | None, priority: int, /
    ) -> None: ...
    def receive(self) -> tuple[bytes, int]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class MessageQueueAttributes:
    """A queue's attributes, read from the kernel (``mq_getattr``).

    Attributes:
        max_messages: how many messages the queue holds at most.
        max_message_size: the largest message, in bytes.
        current_messages: how many messages it holds now (a snapshot: other
            processes may send and receive at any time).
    """

    max_messages: int
    max_message_size: int
    current_messages: int


@dataclass(frozen=True)
class MessageQueueStatistics:
    """Counters of one :class:`MessageQueue` handle (cheap: no syscall).

    Attributes:
        messages_sent: messages this handle sent.
        bytes_sent: their total size.
        messages_received: messages this handle received.
        bytes_received: their total size.
        send_waits: times a send waited for room (the queue was full).
        receive_waits: times a receive waited for a message (the queue was
            empty, or was expected to be).
    """

    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    send_waits: int
    receive_waits: int


# ---- argument and limit checks ----------------------------------------------


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not name.startswith("/"):
        raise ValueError(f"name must start with '/', got {name!r}")
    rest = name[1:]
    if not rest:
        raise ValueError("name must have at least one character after the '/'")
    if "/" in rest:
        raise ValueError(
            f"name must not contain '/' after the leading one, got {name!r}"
        )
    if "\0" in rest:
        raise ValueError(f"name must not contain NUL characters, got {name!r}")
    if rest in (".", ".."):
        raise ValueError(f"name must not be '/.' or '/..', got {name!r}")
    try:
        size = len(rest.encode())
    except UnicodeEncodeError:
        raise ValueError(f"name must be encodable as UTF-8, got {name!r}") from None
    if size > _NAME_MAX:
        raise ValueError(
            f"name must be at most {_NAME_MAX} bytes after the '/' (NAME_MAX), "
            f"got {size}"
        )
    return name


def _check_count(argument: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{argument} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{argument} must be at least 1, got {value}")
    return value


def _check_priority(priority: object) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    if not 0 <= priority <= MQ_PRIORITY_MAX:
        raise ValueError(
            f"priority must be between 0 and {MQ_PRIORITY_MAX} (MQ_PRIORITY_MAX), "
            f"got {priority}"
        )
    return priority


def _sysctl(name: str) -> int:
    with open(_SYSCTL + name) as f:
        return int(f.read())


def _has_sys_resource() -> bool:
    """Whether the kernel lets this process exceed fs.mqueue.msg_max and
    msgsize_max: CAP_SYS_RESOURCE in the initial user namespace (the kernel's
    ``capable()``). Conservatively False when /proc cannot tell."""
    try:
        with open("/proc/self/uid_map") as f:
            if f.read().split() != ["0", "0", "4294967295"]:
                return False  # a user namespace: its capabilities do not count
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        pass
    return False


def _queue_bytes(max_messages: int, max_message_size: int) -> int:
    """What the kernel charges to RLIMIT_MSGQUEUE for one queue."""
    return (
        max_messages * (max_message_size + _STRUCT_SIZE)
        + min(max_messages, _MQ_PRIO_MAX) * _STRUCT_SIZE
    )


def _queue_bytes_formula(max_messages: int) -> str:
    if max_messages <= _MQ_PRIO_MAX:
        return f"max_messages * (max_message_size + {2 * _STRUCT_SIZE})"
    return (
        f"max_messages * (max_message_size + {_STRUCT_SIZE}) + "
        f"{_MQ_PRIO_MAX} * {_STRUCT_SIZE}"
    )


def _rlimit_hint(hard: int) -> str:
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    return (
        "RLIMIT_MSGQUEUE counts the bytes of all of this user's queues together; "
        "unlink queues that are no longer used ('aipc clean' removes those of "
        "dead aipc processes), or raise the limit: 'ulimit -q BYTES' in the shell "
        "that starts the program, resource.setrlimit(resource.RLIMIT_MSGQUEUE, "
        "...), or 'msgqueue' in /etc/security/limits.conf (beyond the hard limit, "
        f"{hard_text} here, only with CAP_SYS_RESOURCE)"
    )


def _check_limits(max_messages: int, max_message_size: int) -> None:
    """Raise LimitExceededError where the kernel would refuse to create the queue.

    The per-queue limits are checked the way the kernel checks them
    (``mq_attr_ok``): the fs.mqueue sysctls, or the hard ceilings for a process
    with CAP_SYS_RESOURCE. Of RLIMIT_MSGQUEUE only this queue's own share can be
    checked here: the bytes the user's other queues take are not visible.
    """
    if _has_sys_resource():
        if max_messages > _HARD_MSGMAX:
            raise LimitExceededError(
                "max_messages",
                max_messages,
                _HARD_MSGMAX,
                "HARD_MSGMAX (the kernel's ceiling, also with CAP_SYS_RESOURCE)",
            )
        if max_message_size > _HARD_MSGSIZEMAX:
            raise LimitExceededError(
                "max_message_size",
                max_message_size,
                _HARD_MSGSIZEMAX,
                "HARD_MSGSIZEMAX (the kernel's ceiling, also with CAP_SYS_RESOURCE)",
            )
    else:
        msg_max = _sysctl("msg_max")
        if max_messages > msg_max:
            raise LimitExceededError(
                "max_messages",
                max_messages,
                msg_max,
                _SYSCTL + "msg_max",
                f"raise it as root with 'sysctl fs.mqueue.msg_max=N' (N up to "
                f"{_HARD_MSGMAX}; it is per IPC namespace), or run with "
                "CAP_SYS_RESOURCE, which may exceed it",
            )
        msgsize_max = _sysctl("msgsize_max")
        if max_message_size > msgsize_max:
            raise LimitExceededError(
                "max_message_size",
                max_message_size,
                msgsize_max,
                _SYSCTL + "msgsize_max",
                f"raise it as root with 'sysctl fs.mqueue.msgsize_max=N' (N up to "
                f"{_HARD_MSGSIZEMAX}; it is per IPC namespace), or run with "
                "CAP_SYS_RESOURCE, which may exceed it",
            )
    soft, hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    cost = _queue_bytes(max_messages, max_message_size)
    if soft != resource.RLIM_INFINITY and cost > soft:
        raise LimitExceededError(
            _queue_bytes_formula(max_messages),
            cost,
            soft,
            "RLIMIT_MSGQUEUE",
            _rlimit_hint(hard),
        )


# ---- posix_ipc errors ---------------------------------------------------------


def _errno_of(exc: BaseException) -> int | None:
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return code
    return _POSIX_IPC_MESSAGES.get(str(exc))


def _fd_table_full() -> bool:
    try:
        count = len(os.listdir("/proc/self/fd")) - 1  # less the listdir's own
    except OSError:
        return True
    return count >= resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _open_error(exc: Exception, name: str) -> BaseException:
    """The exception to raise for ``exc`` from opening an existing queue."""
    if isinstance(exc, posix_ipc.ExistentialError):
        return FileNotFoundError(
            errno.ENOENT, "no POSIX message queue has this name", name
        )
    if isinstance(exc, posix_ipc.PermissionsError):
        return PermissionError(
            errno.EACCES,
            "permission denied (the queue's mode does not allow this user to "
            "open it for what was asked)",
            name,
        )
    code = _errno_of(exc)
    if code in (errno.EMFILE, errno.ENFILE):
        return OSError(code, os.strerror(code))
    return exc


def _create_error(
    exc: Exception, name: str, max_messages: int, max_message_size: int
) -> BaseException:
    """The exception to raise for ``exc`` from creating a queue (not EEXIST)."""
    code = _errno_of(exc)
    if code == errno.EINVAL:
        # the sysctls may have changed since the check up front
        try:
            _check_limits(max_messages, max_message_size)
        except LimitExceededError as limit:
            return limit
        return ValueError(
            f"the kernel refused to create {name!r} with max_messages="
            f"{max_messages}, max_message_size={max_message_size} (EINVAL)"
        )
    if code == errno.EMFILE and not _fd_table_full():
        # Not the descriptor table: the queue's bytes with the user's other
        # queues' are beyond RLIMIT_MSGQUEUE (the kernel's EMFILE for it).
        soft, hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
        cost = _queue_bytes(max_messages, max_message_size)
        return LimitExceededError(
            _queue_bytes_formula(max_messages),
            cost,
            soft,
            "RLIMIT_MSGQUEUE",
            f"this user's other queues already take more than {max(soft - cost, 0)} "
            f"of its {soft} bytes; " + _rlimit_hint(hard),
        )
    if code == errno.ENOSPC:
        try:
            queues_max = _sysctl("queues_max")
        except (OSError, ValueError):
            return exc
        return LimitExceededError(
            "queues in this IPC namespace",
            queues_max + 1,
            queues_max,
            _SYSCTL + "queues_max",
            "unlink queues that are no longer used ('aipc clean' removes those of "
            "dead aipc processes), raise it as root with 'sysctl "
            "fs.mqueue.queues_max=N', or run with CAP_SYS_RESOURCE, which ignores it",
        )
    return _open_error(exc, name)


def _unlink_name(name: str) -> None:
    try:
        posix_ipc.unlink_message_queue(name)
    except posix_ipc.ExistentialError:
        pass


# ---- the queue ------------------------------------------------------------------


class MessageQueue(ObjectReceiveStream[bytes], ObjectSendStream[bytes]):
    """An open POSIX message queue: an anyio object stream of ``bytes``.

    Made by :func:`create_message_queue` or :func:`open_message_queue`, not
    directly. It is an :class:`~anyio.abc.ObjectReceiveStream` and an
    :class:`~anyio.abc.ObjectSendStream` of ``bytes``, but not an
    ``ObjectStream``: a queue has no end of stream, so there is no
    ``send_eof``, and ``receive()`` never raises ``EndOfStream`` (an
    ``async for`` over the queue runs until the handle is closed). Agree on a
    last message or a count to stop.

    A handle owns its descriptor and closes it on ``aclose()`` / ``close()``
    (even when cancelled); the *queue* lives on in the kernel until its name
    is unlinked and every descriptor on it is closed. Only the creator may
    unlink it (:meth:`unlink`, or ``unlink_on_close=True``).

    One task receives and one task sends on a handle at a time (another gets
    ``BusyResourceError``); for several consumers, give each its own handle
    from :func:`open_message_queue`: the kernel hands each message to exactly
    one of them.

    There is no peer to lose: queues have no connection, so nothing wakes a
    waiting receive when the processes that send to it die. Watch them
    (``aipc.Process.wait()``) or put a timeout around the wait.
    """

    def __init__(
        self,
        name: str,
        queue: _Queue,
        handle: FdHandle,
        *,
        owned: bool,
        unlink_on_close: bool,
        readable: bool,
        writable: bool,
    ) -> None:
        self._name = name
        self._mq: _Queue | None = queue
        self._handle = handle
        self._owned = owned
        #: Whether closing this handle unlinks the queue first (creator only).
        self.unlink_on_close = unlink_on_close
        self._readable = readable
        self._writable = writable
        self._max_messages = queue.max_messages
        self._max_message_size = queue.max_message_size
        self._sent = self._bytes_sent = self._received = self._bytes_received = 0
        self._send_waits = self._receive_waits = 0
        self._sending = self._receiving = False
        self._expect_empty = False

    # ---- properties ----

    @property
    def name(self) -> str:
        """The queue's name, such as ``"/jobs"``."""
        return self._name

    @property
    def owned(self) -> bool:
        """Whether this process created the queue through this handle, and has
        neither unlinked it nor closed the handle."""
        return self._owned and not self._handle.closed

    @property
    def readable(self) -> bool:
        """Whether this handle was opened for receiving."""
        return self._readable

    @property
    def writable(self) -> bool:
        """Whether this handle was opened for sending."""
        return self._writable

    @property
    def closed(self) -> bool:
        """Whether this handle has been closed."""
        return self._handle.closed

    @property
    def max_messages(self) -> int:
        """How many messages the queue holds at most (fixed at creation)."""
        return self._max_messages

    @property
    def max_message_size(self) -> int:
        """The largest message the queue takes, in bytes (fixed at creation)."""
        return self._max_message_size

    @property
    def attributes(self) -> MessageQueueAttributes:
        """The queue's attributes, with its current message count (one syscall).

        Raises ``ClosedResourceError`` if this handle is closed.
        """
        mq = self._mq
        if mq is None:
            raise anyio.ClosedResourceError
        return MessageQueueAttributes(
            self._max_messages, self._max_message_size, mq.current_messages
        )

    def fileno(self) -> int:
        """The queue descriptor, lent: do not close it, and do not wait on it with
        ``anyio.wait_readable`` yourself (aipc owns its event-loop registration).
        """
        return self._handle.fileno()

    def statistics(self) -> MessageQueueStatistics:
        """Message, byte and wait counters of this handle."""
        return MessageQueueStatistics(
            self._sent,
            self._bytes_sent,
            self._received,
            self._bytes_received,
            self._send_waits,
            self._receive_waits,
        )

    # ---- sending ----

    def _outgoing(
        self, item: object, priority: object
    ) -> tuple[bytes | memoryview, int]:
        """Check a send's arguments; return what to hand to mq_send, and its
        size."""
        _check_priority(priority)
        if isinstance(item, str):
            raise TypeError("item must be bytes-like, not str; encode it first")
        try:
            view = memoryview(item)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"item must be bytes-like, not {type(item).__name__}"
            ) from None
        size = view.nbytes
        if size > self._max_message_size:
            raise LimitExceededError(
                "len(item)",
                size,
                self._max_message_size,
                f"the max_message_size of {self._name!r}",
                "send it in parts, or create the queue with a larger "
                f"max_message_size (at most {_SYSCTL}msgsize_max without "
                "CAP_SYS_RESOURCE); nothing was sent",
            )
        if not self._writable:
            raise io.UnsupportedOperation(
                f"this handle on {self._name!r} was opened with write=False"
            )
        if type(item) is bytes:
            return item, size
        return (view if view.contiguous else view.tobytes()), size

    async def send(
        self, item: bytes | bytearray | memoryview, priority: int = 0
    ) -> None:
        """Send ``item`` as one message with ``priority`` (0 to 32767), waiting
        while the queue is full.

        A message is sent whole or not at all. Receivers get the highest
        priority first, and messages of one priority in the order sent.

        Raises:
            LimitExceededError: ``item`` is longer than the queue's
                ``max_message_size`` (nothing is sent).
            ValueError: ``priority`` is out of range.
            io.UnsupportedOperation: the handle was opened with ``write=False``.
            ClosedResourceError: this handle was closed (also wakes a waiting
                send).
            BusyResourceError: another task is already sending on this handle.

        **Cancellation:** a cancelled send sent nothing. It checkpoints before
        the ``mq_send``, waits only while the queue is full, and does not yield
        once the message is in the queue.
        """
        if (
            type(item) is bytes
            and type(priority) is int
            and 0 <= priority <= MQ_PRIORITY_MAX
            and len(item) <= self._max_message_size
            and self._writable
        ):
            # the common case, checked for what _outgoing() checks, at a
            # fraction of its cost
            data: bytes | memoryview = item
            size = len(item)
        else:
            data, size = self._outgoing(item, priority)
        if self._sending:
            raise anyio.BusyResourceError("sending to")
        self._sending = True
        try:
            await checkpoint()
            while True:
                mq = self._mq
                if mq is None:
                    raise anyio.ClosedResourceError
                try:
                    # positional: posix_ipc parses keywords at a cost of about
                    # half a microsecond per call; None is "no timeout"
                    mq.send(data, None, priority)
                except posix_ipc.BusyError:
                    self._send_waits += 1
                    await self._handle.wait_writable()
                    continue
                break
            self._sent += 1
            self._bytes_sent += size
        finally:
            self._sending = False

    def send_nowait(
        self, item: bytes | bytearray | memoryview, priority: int = 0
    ) -> None:
        """Send ``item`` if the queue has room now; else raise ``anyio.WouldBlock``.

        Raises what :meth:`send` raises, except ``BusyResourceError``.
        """
        data, size = self._outgoing(item, priority)
        mq = self._mq
        if mq is None:
            raise anyio.ClosedResourceError
        try:
            mq.send(data, None, priority)
        except posix_ipc.BusyError:
            raise anyio.WouldBlock from None
        self._sent += 1
        self._bytes_sent += size

    # ---- receiving ----

    def _check_readable(self) -> None:
        if not self._readable:
            raise io.UnsupportedOperation(
                f"this handle on {self._name!r} was opened with read=False"
            )

    def _count(self, message: tuple[bytes, int]) -> tuple[bytes, int]:
        self._received += 1
        self._bytes_received += len(message[0])
        return message

    def _start_receive(self) -> bool | None:
        """Claim the receiving side; return None if this handle is closed,
        else whether to wait for readability before the first attempt."""
        if not self._readable:
            self._check_readable()
        if self._receiving:
            raise anyio.BusyResourceError("receiving from")
        self._receiving = True
        if self._mq is None:
            return None
        # After a receive that had to wait, the next one most likely finds the
        # queue empty too (request/response traffic): it goes straight to the
        # wait, which is its checkpoint, and saves a failed mq_receive.
        return self._expect_empty

    def _take(self, waited: bool) -> tuple[bytes, int] | None:
        """One non-blocking mq_receive: the message, or None if the queue is
        empty (or readiness went stale: another receiver, in this process or
        another, took the message first)."""
        mq = self._mq
        if mq is None:
            raise anyio.ClosedResourceError
        try:
            message = mq.receive()
        except posix_ipc.BusyError:
            return None
        self._expect_empty = waited
        self._received += 1
        self._bytes_received += len(message[0])
        return message

    async def receive_with_priority(self) -> tuple[bytes, int]:
        """Receive the next message and its priority, waiting for one.

        The next message is the oldest one of the highest priority in the queue.

        Raises:
            io.UnsupportedOperation: the handle was opened with ``read=False``.
            ClosedResourceError: this handle was closed (also wakes a waiting
                receive).
            BusyResourceError: another task is already receiving on this handle.

        **Cancellation:** a cancelled receive took nothing: the message stays
        in the queue, in its place, for the next receive (here or in any other
        process). The receive checkpoints before it calls ``mq_receive``, waits
        for readability only, and does not yield between taking a message and
        returning it.
        """
        wait = self._start_receive()
        try:
            if wait is None:
                await checkpoint()
                raise anyio.ClosedResourceError
            if not wait:
                await checkpoint()
            while True:
                if wait:
                    self._receive_waits += 1
                    await self._handle.wait_readable()
                # no await from the take to the return: the task that took a
                # message returns it
                message = self._take(wait)
                if message is not None:
                    return message
                wait = True
        finally:
            self._receiving = False

    async def receive(self) -> bytes:
        """Receive the next message (the oldest of the highest priority),
        waiting for one.

        Same as :meth:`receive_with_priority` without the priority. Never raises
        ``EndOfStream``: a queue has no end.

        **Cancellation:** a cancelled receive took nothing; the message stays in
        the queue, in its place.
        """
        # receive_with_priority's body again rather than a call to it: one
        # coroutine layer less costs about half a microsecond per message
        wait = self._start_receive()
        try:
            if wait is None:
                await checkpoint()
                raise anyio.ClosedResourceError
            if not wait:
                await checkpoint()
            while True:
                if wait:
                    self._receive_waits += 1
                    await self._handle.wait_readable()
                message = self._take(wait)
                if message is not None:
                    return message[0]
                wait = True
        finally:
            self._receiving = False

    def receive_with_priority_nowait(self) -> tuple[bytes, int]:
        """The next message and its priority if there is one now; else raise
        ``anyio.WouldBlock``. Raises ``ClosedResourceError`` once closed."""
        self._check_readable()
        mq = self._mq
        if mq is None:
            raise anyio.ClosedResourceError
        try:
            message = mq.receive()
        except posix_ipc.BusyError:
            raise anyio.WouldBlock from None
        return self._count(message)

    def receive_nowait(self) -> bytes:
        """The next message if there is one now; else raise ``anyio.WouldBlock``.
        Raises ``ClosedResourceError`` once closed."""
        return self.receive_with_priority_nowait()[0]

    # ---- the name and closing ----

    def unlink(self) -> bool:
        """Remove the queue's name if this handle created the queue and the name
        still names it; return True if it was removed.

        A queue created by another process (this handle came from
        :func:`open_message_queue` or ``exist_ok=True``), or a newer queue that
        has since taken the name, is never removed. The queue itself lives on
        until every descriptor on it is closed: this handle and any other open
        one keep working, but no process can open it by name any more. Also
        forgets the registry record. Idempotent; False once this handle is
        closed.
        """
        if not self.owned:
            return False
        self._owned = False
        ours = os.fstat(self._handle.fileno())
        removed = False
        if _registry.mqueue_identity(self._name) == (ours.st_dev, ours.st_ino):
            _unlink_name(self._name)
            removed = True
        _registry.unregister("mqueue", self._name)
        return removed

    def close(self) -> None:
        """Close this handle (idempotent); first unlink the queue if
        ``unlink_on_close``. Wakes this process's tasks waiting on the handle
        with ``ClosedResourceError``. Without ``unlink_on_close`` the queue
        stays, and so does its registry record."""
        if self._handle.closed:
            return
        try:
            if self.unlink_on_close:
                self.unlink()
        finally:
            self._mq = None
            self._handle.close()

    async def aclose(self) -> None:
        """Same as :meth:`close`; closes even when cancelled."""
        self.close()
        await checkpoint()

    def __repr__(self) -> str:
        fd = self._handle.fd
        state = "closed" if fd < 0 else f"fd={fd}" + (" owned" if self._owned else "")
        mode = ("r" if self._readable else "") + ("w" if self._writable else "")
        return (
            f"<MessageQueue {self._name!r} {state} {mode} "
            f"max_messages={self._max_messages} "
            f"max_message_size={self._max_message_size} "
            f"sent={self._sent} received={self._received}>"
        )


def _wrap(
    name: str,
    queue: _Queue,
    *,
    owned: bool,
    unlink_on_close: bool = False,
    readable: bool = True,
    writable: bool = True,
) -> MessageQueue:
    handle = FdHandle(queue.mqd, "message queue", queue.close)
    return MessageQueue(
        name,
        queue,
        handle,
        owned=owned,
        unlink_on_close=unlink_on_close,
        readable=readable,
        writable=writable,
    )


def _open(name: str, read: bool, write: bool) -> _Queue:
    try:
        queue: _Queue = posix_ipc.MessageQueue(
            name, posix_ipc.O_NONBLOCK, read=read, write=write
        )
    except Exception as exc:
        raise _open_error(exc, name) from exc
    return queue


def create_message_queue(
    name: str,
    *,
    max_messages: int,
    max_message_size: int,
    mode: int = 0o600,
    exist_ok: bool = False,
    unlink_on_close: bool = False,
) -> MessageQueue:
    """Create the POSIX message queue ``name`` and open it for sending and
    receiving.

    ``name`` is ``"/"`` and then 1 to 255 bytes without another ``"/"``. The
    queue holds up to ``max_messages`` messages of up to ``max_message_size``
    bytes. Its mode is ``mode`` (0600 by default) exactly, whatever the umask.
    Never blocks.

    The returned handle is *owned*: the creation is recorded in aipc's registry
    so that ``aipc clean`` can remove the queue if this process dies without
    unlinking it, and only this handle unlinks it (:meth:`MessageQueue.unlink`,
    or on close with ``unlink_on_close=True``). Closing the handle without
    unlinking leaves the queue, and its messages, in the kernel.

    With ``exist_ok=True`` an existing queue of that name is opened instead, if
    its ``max_messages`` and ``max_message_size`` are the ones asked for; that
    handle is not owned, writes no record and never unlinks anything.

    Raises:
        LimitExceededError: a kernel limit refuses the queue: ``max_messages``
            beyond ``/proc/sys/fs/mqueue/msg_max``, ``max_message_size`` beyond
            ``msgsize_max`` (or the hard ceilings 65536 and 16 MiB with
            CAP_SYS_RESOURCE), the queue's bytes beyond ``RLIMIT_MSGQUEUE``
            (alone: checked up front; with the user's other queues: when the
            kernel refuses), or ``queues_max`` queues in the namespace. The
            message names the limit and how to raise it.
        FileExistsError: the name exists and ``exist_ok`` is False.
        ValueError: a bad name, a size below 1, a mode beyond 0o777, or (with
            ``exist_ok``) an existing queue with other attributes.
        PermissionError: (with ``exist_ok``) another user's queue.
    """
    _check_name(name)
    _check_count("max_messages", max_messages)
    _check_count("max_message_size", max_message_size)
    check_mode(mode)
    _check_limits(max_messages, max_message_size)
    for _ in range(3):  # the name may come and go between create and open
        try:
            # created with at most 0600 (and the umask): never more open than
            # asked, even for an instant
            queue: _Queue = posix_ipc.MessageQueue(
                name,
                posix_ipc.O_CREX | posix_ipc.O_NONBLOCK,
                mode=mode & 0o600,
                max_messages=max_messages,
                max_message_size=max_message_size,
            )
        except posix_ipc.ExistentialError:
            if not exist_ok:
                raise FileExistsError(
                    errno.EEXIST,
                    "a POSIX message queue has this name (exist_ok=True opens it)",
                    name,
                ) from None
            try:
                queue = posix_ipc.MessageQueue(name, posix_ipc.O_NONBLOCK)
            except posix_ipc.ExistentialError:
                continue
            except Exception as exc:
                raise _open_error(exc, name) from exc
            attached = _wrap(name, queue, owned=False)
            if (attached.max_messages, attached.max_message_size) != (
                max_messages,
                max_message_size,
            ):
                attached.close()
                raise ValueError(
                    f"the message queue {name!r} exists with max_messages="
                    f"{attached.max_messages}, max_message_size="
                    f"{attached.max_message_size}, not the {max_messages} and "
                    f"{max_message_size} asked for; open it with "
                    "open_message_queue to take it as it is"
                ) from None
            return attached
        except Exception as exc:
            raise _create_error(exc, name, max_messages, max_message_size) from exc
        break
    else:
        raise FileExistsError(
            errno.EEXIST,
            "the name kept being created and removed by other processes",
            name,
        )
    mq = _wrap(name, queue, owned=True, unlink_on_close=unlink_on_close)
    try:
        fd = mq.fileno()
        # mq_open applied the umask; set the exact mode asked for
        os.fchmod(fd, mode)
        st = os.fstat(fd)
        _registry.register("mqueue", name, st.st_dev, st.st_ino)
    except BaseException:
        _unlink_name(name)
        mq.unlink_on_close = False
        mq.close()
        raise
    return mq


async def open_message_queue(
    name: str, *, read: bool = True, write: bool = True
) -> MessageQueue:
    """Open the existing POSIX message queue ``name``, for receiving
    (``read``), sending (``write``) or both.

    Opening never makes this process an owner: the handle never unlinks the
    queue, and closing it leaves the queue. Opening never waits for anything;
    it is a coroutine so that it is a checkpoint like every ``open_*``.

    Raises:
        FileNotFoundError: no queue has this name.
        PermissionError: the queue's mode does not let this user open it so.
        ValueError: a bad name, or neither ``read`` nor ``write``.

    **Cancellation:** a cancelled call opened nothing.
    """
    _check_name(name)
    if not (read or write):
        raise ValueError("at least one of read and write must be True")
    await checkpoint()
    queue = _open(name, bool(read), bool(write))
    return _wrap(name, queue, owned=False, readable=bool(read), writable=bool(write))
