"""System V message queues (``msgget``): typed messages between processes,
awaited through the blocking bridge (Linux only).

A SysV queue has no descriptor to poll, so a receive that finds nothing (or a
send that finds the queue full) waits in a worker thread under the bridge's
contract (:func:`aipc._core._bridge.run_interruptible`). Every operation first
tries without blocking (``IPC_NOWAIT``) in the task itself, so a message that
is already there is taken with no thread and no race.

The worker thread of a receive never takes a message with text: it waits in
``msgrcv`` with a text size of 0 and no ``MSG_NOERROR``, which the kernel
answers, once a matching message is there, with ``E2BIG`` and the message
left in the queue, in its place. The task then takes it with ``IPC_NOWAIT``,
with no yield in between. A cancelled receive therefore leaves the queue as
it was. Only a message without text fits in a size of 0 and is taken by the
wait itself (see :meth:`SysVMessageQueue.receive_message`).

Each message carries a *type*, a positive int chosen by the sender. A receive
picks by type: 0 takes the oldest message, ``t > 0`` the oldest of type ``t``,
``t < 0`` the oldest of the lowest type that is at most ``-t`` (a priority
order).
"""

from __future__ import annotations

import collections
import errno
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import sysv_ipc
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from ._core import _registry
from ._core._bridge import run_interruptible
from ._core._errors import LimitExceededError
from ._core._fd import checkpoint
from ._core._sys import msgrcv
from ._sysv import check_int, check_key, check_mode, interrupted, translate_error

__all__ = [
    "SysVMessageQueue",
    "SysVMessageQueueStatistics",
    "attach_sysv_message_queue",
    "create_sysv_message_queue",
]

_MSGMAX_PATH = "/proc/sys/kernel/msgmax"
_TYPE_MAX = 2**31 - 1  # sysv_ipc passes types as a C int


def _msgmax() -> int:
    with open(_MSGMAX_PATH) as f:
        return int(f.read())


@dataclass(frozen=True)
class SysVMessageQueueStatistics:
    """Counters of one queue handle (this process's view, no syscall).

    Attributes:
        sent: messages this handle queued (including a send cancelled at the
            instant it completed, see :meth:`SysVMessageQueue.send`).
        received: messages this handle returned.
        waits: waits in a worker thread (for room to send, or for a
            message; a receive that lost the message it waited for to another
            receiver waits again, and counts again).
        requeued: empty messages (no text) a cancelled receive had taken at
            the instant of the cancellation and put back; never a message with
            text (see :meth:`SysVMessageQueue.receive_message`).
    """

    sent: int
    received: int
    waits: int
    requeued: int


def _check_send_type(value: object) -> int:
    value = check_int("type", value)
    if not 1 <= value <= _TYPE_MAX:
        raise ValueError(f"type must be between 1 and {_TYPE_MAX}, got {value}")
    return value


def _check_filter(value: object) -> int:
    value = check_int("type", value)
    if not -_TYPE_MAX <= value <= _TYPE_MAX:
        raise ValueError(
            f"type must be between {-_TYPE_MAX} and {_TYPE_MAX}, got {value}"
        )
    return value


def _matches(mtype: int, wanted: int) -> bool:
    if wanted == 0:
        return True
    if wanted > 0:
        return mtype == wanted
    return mtype <= -wanted


def _removed_on_receive() -> anyio.EndOfStream:
    return anyio.EndOfStream()


def _removed_on_send() -> anyio.BrokenResourceError:
    return anyio.BrokenResourceError("the SysV message queue was removed")


def _gone(exc: BaseException) -> bool:
    # msgsnd on a removed id fails with EINVAL, which sysv_ipc reports as a
    # plain OSError (EIDRM, for a sender waiting when it went, as
    # ExistentialError); msgrcv reports both as ExistentialError
    return isinstance(exc, sysv_ipc.ExistentialError) or (
        isinstance(exc, OSError) and exc.errno == errno.EINVAL
    )


_Message = tuple[bytes, int]


def _wait_for_message(msqid: int, wanted: int) -> _Message | None:
    """Block (in a worker thread) until a message matching ``wanted`` is in the
    queue; leave it there and return None. A message without text fits in the
    size of 0 and is taken: it is returned.

    The kernel checks the size under the queue's lock, at the moment it would
    take the message (also when a sender hands a message straight to a waiting
    receiver: a receiver too small for it gets ``E2BIG`` and the message is
    queued or handed to the next receiver). ``MSG_COPY``, which copies without
    taking, cannot wait (it needs ``IPC_NOWAIT``), so this is the only way to
    wait for a message without taking it.
    """
    try:
        return msgrcv(msqid, 0, wanted, 0)
    except InterruptedError:
        raise  # the bridge's interrupt, or a stray signal: it decides
    except OSError as exc:
        if exc.errno == errno.E2BIG:
            return None  # a message with text is there, still in the queue
        if exc.errno in (errno.EIDRM, errno.EINVAL):
            raise _removed_on_receive() from None
        raise


class SysVMessageQueue(ObjectSendStream[bytes], ObjectReceiveStream[bytes]):
    """A System V message queue, as returned by
    :func:`create_sysv_message_queue` and :func:`attach_sysv_message_queue`.

    An anyio object stream of ``bytes`` in both directions: ``send(item)``
    queues a message of type 1 and ``receive()`` takes the oldest message, so
    it composes with anyio's stream utilities; the ``type=`` arguments add
    type filtering. ``async for message in queue`` receives until the queue is
    removed.

    The kernel object lives until :meth:`remove` (by the creator) or
    ``remove_on_close=True``; ``aclose()`` only ends this handle. Other
    processes attach by :attr:`key`. Messages are at most ``kernel.msgmax``
    bytes (:attr:`max_message_size`).
    """

    def __init__(
        self,
        queue: Any,
        max_message_size: int,
        *,
        owned: bool,
        remove_on_close: bool,
    ) -> None:
        self._q = queue
        self._owned = owned
        self.remove_on_close = remove_on_close
        self._max_message_size = max_message_size
        self._queue_bytes = int(queue.max_size)
        # empty messages a cancelled receive's wait took and could not put
        # back (the queue was full at that instant): served first, put back on
        # close
        self._held: collections.deque[_Message] = collections.deque()
        self._closed = False
        self._closing = False
        self._inflight = 0
        self._idle: anyio.Event | None = None
        self._scopes: set[anyio.CancelScope] = set()
        self._sent = 0
        self._received = 0
        self._waits = 0
        self._requeued = 0

    @property
    def key(self) -> int:
        """The key other processes attach with."""
        return int(self._q.key)

    @property
    def id(self) -> int:
        """The kernel's queue id (as in ``/proc/sysvipc/msg``)."""
        return int(self._q.id)

    @property
    def owned(self) -> bool:
        """Whether this handle created the queue and has not removed it."""
        return self._owned

    @property
    def closed(self) -> bool:
        """Whether this handle is closed."""
        return self._closed

    @property
    def max_message_size(self) -> int:
        """The largest message, in bytes (``kernel.msgmax`` when opened)."""
        return self._max_message_size

    @property
    def current_messages(self) -> int:
        """Messages in the queue now (``IPC_STAT``; stale when it returns)."""
        self._check_open()
        try:
            return int(self._q.current_messages)
        except sysv_ipc.ExistentialError:
            raise _removed_on_send() from None

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise anyio.ClosedResourceError

    # --- the bridge, shared by send and receive -----------------------------

    async def _bridged(self, call: Any, undo: Any) -> Any:
        self._waits += 1
        self._inflight += 1
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                return await run_interruptible(call, undo)
        finally:
            self._scopes.discard(scope)
            self._inflight -= 1
            if self._inflight == 0 and self._idle is not None:
                self._idle.set()
            if scope.cancelled_caught:
                raise anyio.ClosedResourceError  # aclose() ended the wait

    # --- sending --------------------------------------------------------------

    def _check_message(self, item: object) -> bytes:
        if not isinstance(item, bytes | bytearray | memoryview):
            raise TypeError(
                f"message must be a bytes-like object, not {type(item).__name__}"
            )
        data = bytes(item)
        if len(data) > self._max_message_size:
            raise LimitExceededError(
                "message size",
                len(data),
                self._max_message_size,
                "kernel.msgmax",
                "raise it with sysctl -w kernel.msgmax=N (then reopen the queue)",
            )
        if len(data) > self._queue_bytes:
            raise LimitExceededError(
                "message size",
                len(data),
                self._queue_bytes,
                "the queue's msg_qbytes (kernel.msgmnb when it was created)",
                "raise kernel.msgmnb with sysctl before creating the queue",
            )
        return data

    def send_nowait(self, item: bytes, *, type: int = 1) -> None:
        """Queue ``item`` with ``type`` (1 to 2**31 - 1) if there is room,
        else raise ``anyio.WouldBlock``.

        Raises ``anyio.BrokenResourceError`` if the queue was removed and
        :class:`~aipc.LimitExceededError` for a message larger than the queue
        or ``kernel.msgmax``.
        """
        self._check_open()
        mtype = _check_send_type(type)
        data = self._check_message(item)
        try:
            self._q.send(data, block=False, type=mtype)
        except sysv_ipc.BusyError:
            raise anyio.WouldBlock from None
        except (sysv_ipc.ExistentialError, OSError) as exc:
            if _gone(exc):
                raise _removed_on_send() from None
            raise
        self._sent += 1

    async def send(self, item: bytes, *, type: int = 1) -> None:
        """Queue ``item`` with ``type`` (1 to 2**31 - 1), waiting for room.

        Raises ``anyio.BrokenResourceError`` if the queue was removed (also
        while waiting), ``anyio.ClosedResourceError`` if this handle is closed,
        :class:`~aipc.LimitExceededError` for a message larger than the queue
        or ``kernel.msgmax``.

        **Cancellation:** a send that found room queued the message before any
        cancellation. A send waiting for room is interrupted before it queues
        the message, unless the kernel queued it at the very instant of the
        cancellation: the kernel cannot take a message back, so then it stays
        queued (``statistics().sent`` counts it) and the cancellation
        propagates all the same (``msgsnd`` cannot wait for room without
        queueing the message). Never half a message.
        """
        self._check_open()
        mtype = _check_send_type(type)
        data = self._check_message(item)
        await anyio.lowlevel.checkpoint_if_cancelled()
        try:
            self._q.send(data, block=False, type=mtype)
        except sysv_ipc.BusyError:
            pass
        except (sysv_ipc.ExistentialError, OSError) as exc:
            if _gone(exc):
                raise _removed_on_send() from None
            raise
        else:
            self._sent += 1
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return

        def call() -> None:
            try:
                self._q.send(data, block=True, type=mtype)
            except (sysv_ipc.ExistentialError, OSError) as exc:
                if _gone(exc):
                    raise _removed_on_send() from None
                raise
            except sysv_ipc.Error as exc:
                if interrupted(exc):
                    raise InterruptedError from None
                raise

        def sent_anyway(_: None) -> None:
            self._sent += 1

        await self._bridged(call, sent_anyway)
        self._sent += 1

    # --- receiving ------------------------------------------------------------

    def _take_held(self, wanted: int) -> tuple[bytes, int] | None:
        for message in self._held:
            if _matches(message[1], wanted):
                self._held.remove(message)
                return message
        return None

    def _try_receive(self, wanted: int) -> tuple[bytes, int] | None:
        held = self._take_held(wanted) if self._held else None
        if held is not None:
            return held
        try:
            data, mtype = self._q.receive(block=False, type=wanted)
        except sysv_ipc.BusyError:
            return None
        except sysv_ipc.ExistentialError:
            raise _removed_on_receive() from None
        return bytes(data), int(mtype)

    def _put_back(self, message: _Message | None) -> None:
        # the undo of a cancelled wait for a message: None, the wait took
        # nothing; else an empty message it took. The kernel has no "put back
        # at the head": it goes to the tail of the queue, see receive_message()
        if message is None:
            return
        self._requeued += 1
        try:
            self._q.send(message[0], block=False, type=message[1])
        except sysv_ipc.BusyError:
            self._held.append(message)  # full: kept, see receive_message()
        except (sysv_ipc.ExistentialError, OSError) as exc:
            if not _gone(exc):
                raise
            # removed: its messages went with it, and so does this one

    def receive_message_nowait(self, *, type: int = 0) -> tuple[bytes, int]:
        """Take a message that matches ``type`` (see the module docstring) and
        return it with its type, or raise ``anyio.WouldBlock``.

        Raises ``anyio.EndOfStream`` if the queue was removed.
        """
        self._check_open()
        wanted = _check_filter(type)
        message = self._try_receive(wanted)
        if message is None:
            raise anyio.WouldBlock
        self._received += 1
        return message

    def receive_nowait(self, *, type: int = 0) -> bytes:
        """Same as :meth:`receive_message_nowait`, without the type."""
        return self.receive_message_nowait(type=type)[0]

    async def receive_message(self, *, type: int = 0) -> tuple[bytes, int]:
        """Take a message that matches ``type``, waiting for one; return it
        with its type. ``type``: 0 for the oldest message, ``t > 0`` for the
        oldest of type ``t``, ``t < 0`` for the oldest of the lowest type at
        most ``-t``.

        Raises ``anyio.EndOfStream`` if the queue was removed (also while
        waiting) and ``anyio.ClosedResourceError`` if this handle is closed.

        **Cancellation:** a cancelled receive took nothing, and the queue is
        as it was: no message lost, none moved. A message that was already in
        the queue is taken in the task, before any cancellation can strike,
        and returned. A receive that has to wait waits in a worker thread that
        never takes a message with text (the kernel reports it there and
        leaves it in place); the task takes it once it runs again, with no
        yield in between, so a cancellation lands either before (the message
        stays, in its place) or after (it is returned). The one exception is
        an *empty* message (no text), which the wait takes itself: if the
        cancellation strikes at that very instant, it is put back at the tail
        of the queue (the kernel has no way to put it back at the head), after
        any matching message sent in between, and ``statistics().requeued``
        counts it; if the queue is full then, this handle keeps it, returns it
        to the next matching receive, or puts it back on ``aclose()``.
        """
        self._check_open()
        wanted = _check_filter(type)
        await anyio.lowlevel.checkpoint_if_cancelled()
        message = self._try_receive(wanted)
        if message is not None:
            self._received += 1
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return message
        msqid = self._q.id
        while True:
            self._check_open()  # aclose() may have begun since the last wait
            message = await self._bridged(
                partial(_wait_for_message, msqid, wanted), self._put_back
            )
            if message is None:
                # a matching message is in the queue: take it, with no await
                # between the wait's return and this (another receiver, here
                # or in another process, may have been quicker: wait again)
                message = self._try_receive(wanted)
            if message is not None:
                self._received += 1
                return message

    async def receive(self, *, type: int = 0) -> bytes:
        """Same as :meth:`receive_message`, without the type (the anyio
        ``ObjectReceiveStream`` method).

        **Cancellation:** as :meth:`receive_message`.
        """
        return (await self.receive_message(type=type))[0]

    # --- lifetime -------------------------------------------------------------

    def remove(self) -> bool:
        """Remove the queue and its messages from the kernel if this handle
        created it. Returns True if it was removed.

        Receivers, in every process, then get ``anyio.EndOfStream`` and
        senders ``anyio.BrokenResourceError``. Works on a closed handle too.
        Also forgets the registry record.
        """
        if not self._owned:
            return False
        self._owned = False
        self._held.clear()
        identity = (self.key & 0xFFFFFFFF, self.id)
        try:
            self._q.remove()
        except sysv_ipc.ExistentialError:
            return False
        finally:
            _registry.unregister(
                "sysv-message-queue", _registry.sysv_name(self.key), identity
            )
        return True

    async def aclose(self) -> None:
        """Close this handle (idempotent), even when cancelled.

        Tasks of this process waiting in ``send`` or ``receive`` on this handle
        get ``anyio.ClosedResourceError`` first (their worker threads are
        interrupted and have returned when this returns). A message kept by a
        cancelled receive is put back into the queue, waiting for room if the
        queue is full. The queue itself stays unless ``remove_on_close``.
        """
        if not self._closed:
            self._closing = True
            with anyio.CancelScope(shield=True):
                while self._inflight:
                    self._idle = anyio.Event()
                    for scope in self._scopes:
                        scope.cancel()
                    await self._idle.wait()
                if self.remove_on_close:
                    self.remove()
                while self._held:
                    data, mtype = self._held.popleft()
                    await self._put_back_waiting(data, mtype)
            self._closed = True
        await checkpoint()

    async def _put_back_waiting(self, data: bytes, mtype: int) -> None:
        def call() -> None:
            try:
                self._q.send(data, block=True, type=mtype)
            except (sysv_ipc.ExistentialError, OSError) as exc:
                if not _gone(exc):
                    raise
                return  # removed: nothing to put back into
            except sysv_ipc.Error as exc:
                if interrupted(exc):
                    raise InterruptedError from None
                raise

        await run_interruptible(call)

    def statistics(self) -> SysVMessageQueueStatistics:
        """Counters of this handle (no syscall)."""
        return SysVMessageQueueStatistics(
            self._sent, self._received, self._waits, self._requeued
        )

    def __repr__(self) -> str:
        owner = " owned" if self._owned else ""
        state = " closed" if self._closed else ""
        return (
            f"<SysVMessageQueue key={self._q.key:#x} id={self._q.id}{owner}{state} "
            f"sent={self._sent} received={self._received}>"
        )


def create_sysv_message_queue(
    key: int | None = None,
    *,
    mode: int = 0o600,
    exist_ok: bool = False,
    remove_on_close: bool = False,
) -> SysVMessageQueue:
    """Create a System V message queue, mode 0600 by default (SysV objects
    ignore the umask). Never blocks.

    ``key=None`` picks a fresh random key that no other queue has; hand
    :attr:`SysVMessageQueue.key` to the processes that should attach. With an
    explicit ``key`` and ``exist_ok=True`` an existing queue is attached to
    instead (not owned). The queue holds up to ``kernel.msgmnb`` bytes of
    messages; it is removed only by :meth:`SysVMessageQueue.remove` or
    ``remove_on_close=True``. The creation is recorded in aipc's registry, so
    that ``aipc clean`` can remove the queue if this process dies without
    removing it.

    Raises:
        FileExistsError: a queue with ``key`` exists and ``exist_ok`` is False.
        PermissionError: it exists and this user may not open it.
        OSError: the system limit on queues (``kernel.msgmni``) is reached.
        ValueError / TypeError: a bad key or mode.
    """
    if key is not None:
        key = check_key(key)
    mode = check_mode(mode)
    msgmax = _msgmax()
    try:
        queue = sysv_ipc.MessageQueue(
            key, sysv_ipc.IPC_CREX, mode=mode, max_message_size=msgmax
        )
    except sysv_ipc.ExistentialError as exc:
        assert key is not None  # a fresh key is retried by sysv_ipc
        if not exist_ok:
            raise translate_error(exc, key, "message queue", creating=True) from None
        return attach_sysv_message_queue(key)
    except sysv_ipc.Error as exc:
        raise translate_error(exc, key or 0, "message queue", creating=True) from None
    try:
        handle = SysVMessageQueue(
            queue, msgmax, owned=True, remove_on_close=remove_on_close
        )
        _registry.register(
            "sysv-message-queue",
            _registry.sysv_name(queue.key),
            queue.key & 0xFFFFFFFF,
            queue.id,
        )
    except BaseException:
        queue.remove()
        raise
    return handle


def attach_sysv_message_queue(key: int) -> SysVMessageQueue:
    """Open the existing System V message queue with ``key`` (never blocks).

    The handle is not owned: it never removes the queue. Raises
    ``FileNotFoundError`` if there is no such queue and ``PermissionError`` if
    this user may not open it.
    """
    key = check_key(key)
    try:
        msgmax = _msgmax()
        queue = sysv_ipc.MessageQueue(key, max_message_size=msgmax)
        return SysVMessageQueue(queue, msgmax, owned=False, remove_on_close=False)
    except sysv_ipc.Error as exc:
        raise translate_error(exc, key, "message queue", creating=False) from None
