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

from ._core._errors import AipcError, EventFdOverflowError, LimitExceededError
from ._core._registry import NamedObject, clean, list_objects
from ._core._stream import StreamStatistics
from ._eventfd import EVENTFD_MAX, EventFd, EventFdStatistics
from ._fifos import (
    Fifo,
    FifoReceiveStream,
    FifoSendStream,
    NotAFifoError,
    create_fifo,
    open_fifo_receiver,
    open_fifo_sender,
)
from ._pipes import (
    PIPE_BUF,
    PipeReceiveStream,
    PipeSendStream,
    create_pipe,
    pipe_max_size,
)

__version__ = "0.1.0"

__all__ = [
    "EVENTFD_MAX",
    "PIPE_BUF",
    "AipcError",
    "EventFd",
    "EventFdOverflowError",
    "EventFdStatistics",
    "Fifo",
    "FifoReceiveStream",
    "FifoSendStream",
    "LimitExceededError",
    "NamedObject",
    "NotAFifoError",
    "PipeReceiveStream",
    "PipeSendStream",
    "StreamStatistics",
    "clean",
    "create_fifo",
    "create_pipe",
    "list_objects",
    "open_fifo_receiver",
    "open_fifo_sender",
    "pipe_max_size",
]
