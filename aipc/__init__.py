"""aipc: every Linux IPC mechanism as an awaitable stream or event.

The same objects work under ``asyncio.run``, ``uvloop.run`` and ``trio.run``
(everything is built on anyio). Linux only.
"""

from __future__ import annotations

import sys

if sys.platform != "linux":  # pragma: no cover
    raise ImportError(
        f"aipc supports Linux only (this is {sys.platform}): it is built on pipe2, "
        "eventfd, signalfd, pidfd and other Linux system calls"
    )

from ._channels import (
    DEFAULT_CHANNEL_MAX_SIZE,
    Channel,
    ChannelListener,
    ChannelReceiver,
    ChannelSender,
    ChannelStatistics,
    FrameError,
    FrameTooLargeError,
    TruncatedFrameError,
    connect_tcp_channel,
    create_channel,
    create_channel_listener,
    open_tcp_channel_listener,
)
from ._codecs import (
    Codec,
    JsonCodec,
    MessageDecodeError,
    MsgpackCodec,
    PickleCodec,
    RawCodec,
)
from ._core._errors import AipcError, EventFdOverflowError, LimitExceededError
from ._core._registry import NamedObject, clean, list_objects
from ._core._stream import StreamStatistics
from ._eventfd import EVENTFD_MAX, EventFd, EventFdStatistics
from ._fdpass import SCM_MAX_FD, FdTruncatedError, ReceivedFd, ReceivedMessage
from ._fifos import (
    Fifo,
    FifoReceiveStream,
    FifoSendStream,
    NotAFifoError,
    create_fifo,
    open_fifo_receiver,
    open_fifo_sender,
)
from ._handoff import inherit
from ._locks import FileLock, LockStatistics, RangeLock
from ._mqueue import (
    MQ_PRIORITY_MAX,
    MessageQueue,
    MessageQueueAttributes,
    MessageQueueStatistics,
    create_message_queue,
    open_message_queue,
)
from ._pipes import (
    PIPE_BUF,
    PipeReceiveStream,
    PipeSendStream,
    create_pipe,
    pipe_max_size,
)
from ._process import Process, open_process
from ._ring import (
    DEFAULT_RING_CAPACITY,
    RingByteReceiveStream,
    RingByteSendStream,
    RingLease,
    RingLoan,
    RingReceiver,
    RingSender,
    RingStatistics,
    RingStream,
    create_byte_ring,
    create_ring,
    create_ring_stream_pair,
)
from ._ring_rendezvous import RingListener, connect_ring, create_ring_listener
from ._semaphores import (
    PosixSemaphore,
    SemaphoreStatistics,
    SysVSemaphore,
    attach_posix_semaphore,
    attach_sysv_semaphore,
    create_posix_semaphore,
    create_sysv_semaphore,
)
from ._shm import (
    SharedMemory,
    SharedMemoryStatistics,
    attach_shared_memory,
    create_shared_memory,
)
from ._signals import (
    SIGNAL_VALUE_MAX,
    SIGNAL_VALUE_MIN,
    SignalInfo,
    SignalReceiver,
    SignalReceiverStatistics,
    open_signal_receiver,
    send_signal,
)
from ._sockets import (
    DEFAULT_MAX_MESSAGE_SIZE,
    SO_PEERPIDFD,
    UNIX_PATH_MAX,
    AddressInUseError,
    ConnectedUnixDatagramSocket,
    PeerCredentials,
    UnixDatagramSocket,
    UnixListener,
    UnixListenerStatistics,
    UnixSeqpacketStream,
    UnixSocketAttribute,
    UnixSocketStatistics,
    UnixStream,
    connect_unix_seqpacket,
    connect_unix_stream,
    create_connected_unix_datagram_socket,
    create_unix_datagram_socket,
    create_unix_listener,
    create_unix_socket_pair,
    listeners_from_systemd,
)
from ._sysv_mqueue import (
    SysVMessageQueue,
    SysVMessageQueueStatistics,
    attach_sysv_message_queue,
    create_sysv_message_queue,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CHANNEL_MAX_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_RING_CAPACITY",
    "EVENTFD_MAX",
    "MQ_PRIORITY_MAX",
    "PIPE_BUF",
    "SCM_MAX_FD",
    "SIGNAL_VALUE_MAX",
    "SIGNAL_VALUE_MIN",
    "SO_PEERPIDFD",
    "UNIX_PATH_MAX",
    "AddressInUseError",
    "AipcError",
    "Channel",
    "ChannelListener",
    "ChannelReceiver",
    "ChannelSender",
    "ChannelStatistics",
    "Codec",
    "ConnectedUnixDatagramSocket",
    "EventFd",
    "EventFdOverflowError",
    "EventFdStatistics",
    "FdTruncatedError",
    "Fifo",
    "FifoReceiveStream",
    "FifoSendStream",
    "FileLock",
    "FrameError",
    "FrameTooLargeError",
    "JsonCodec",
    "LimitExceededError",
    "LockStatistics",
    "MessageDecodeError",
    "MessageQueue",
    "MessageQueueAttributes",
    "MessageQueueStatistics",
    "MsgpackCodec",
    "NamedObject",
    "NotAFifoError",
    "PeerCredentials",
    "PickleCodec",
    "PipeReceiveStream",
    "PipeSendStream",
    "PosixSemaphore",
    "Process",
    "RangeLock",
    "RawCodec",
    "ReceivedFd",
    "ReceivedMessage",
    "RingByteReceiveStream",
    "RingByteSendStream",
    "RingLease",
    "RingLoan",
    "RingListener",
    "RingReceiver",
    "RingSender",
    "RingStatistics",
    "RingStream",
    "SemaphoreStatistics",
    "SharedMemory",
    "SharedMemoryStatistics",
    "SignalInfo",
    "SignalReceiver",
    "SignalReceiverStatistics",
    "StreamStatistics",
    "SysVMessageQueue",
    "SysVMessageQueueStatistics",
    "SysVSemaphore",
    "TruncatedFrameError",
    "UnixDatagramSocket",
    "UnixListener",
    "UnixListenerStatistics",
    "UnixSeqpacketStream",
    "UnixSocketAttribute",
    "UnixSocketStatistics",
    "UnixStream",
    "attach_posix_semaphore",
    "attach_shared_memory",
    "attach_sysv_message_queue",
    "attach_sysv_semaphore",
    "clean",
    "connect_ring",
    "connect_tcp_channel",
    "connect_unix_seqpacket",
    "connect_unix_stream",
    "create_byte_ring",
    "create_channel",
    "create_channel_listener",
    "create_connected_unix_datagram_socket",
    "create_fifo",
    "create_message_queue",
    "create_pipe",
    "create_posix_semaphore",
    "create_ring",
    "create_ring_listener",
    "create_ring_stream_pair",
    "create_shared_memory",
    "create_sysv_message_queue",
    "create_sysv_semaphore",
    "create_unix_datagram_socket",
    "create_unix_listener",
    "create_unix_socket_pair",
    "inherit",
    "list_objects",
    "listeners_from_systemd",
    "open_fifo_receiver",
    "open_fifo_sender",
    "open_message_queue",
    "open_process",
    "open_signal_receiver",
    "open_tcp_channel_listener",
    "pipe_max_size",
    "send_signal",
]
