"""Every aipc byte stream against the conformance suites, on every backend.

Two suites: our anyio-native one (``tests/_conformance.py``), check by check,
and trio's own ``trio.testing.check_one_way_stream`` through
``tests/_trio_adapter.py``. Stream kinds: a pipe with the default capacity, a
pipe lowered to one page, a pipe raised to 1 MiB (a capacity larger than most
single sends and receives), and a FIFO.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
import trio
from anyio.abc import ByteReceiveStream, ByteSendStream

import aipc

from . import _conformance, _trio_adapter

pytestmark = pytest.mark.anyio

Maker = Callable[[], Awaitable[tuple[ByteSendStream, ByteReceiveStream]]]

SMALL_CAPACITY = 4096
LARGE_CAPACITY = 1 << 20


def _clog(s: aipc.PipeSendStream) -> None:
    """Fill the kernel buffer completely with b"x".

    Writes are larger than PIPE_BUF: a write of at most PIPE_BUF bytes is all or
    nothing, so it would fail with EAGAIN while a page is still free, and the
    pipe would not be full (trio's make_clogged_pipe does the same)."""
    chunk = b"x" * (2 * aipc.PIPE_BUF)
    fd = s.fileno()
    try:
        while True:
            os.write(fd, chunk)
    except BlockingIOError:
        pass


def _pipe_makers(capacity: int | None) -> tuple[Maker, Maker]:
    async def make() -> tuple[ByteSendStream, ByteReceiveStream]:
        r, s = aipc.create_pipe(capacity)
        if capacity is not None:
            assert s.capacity == capacity
        return s, r

    async def make_clogged() -> tuple[ByteSendStream, ByteReceiveStream]:
        s, r = await make()
        _clog(s)  # type: ignore[arg-type]
        return s, r

    return make, make_clogged


def _fifo_makers(directory: Path) -> tuple[Maker, Maker]:
    names = itertools.count()

    async def make() -> tuple[ByteSendStream, ByteReceiveStream]:
        fifo = aipc.create_fifo(directory / f"conformance-{next(names)}")
        try:
            r = await aipc.open_fifo_receiver(fifo.path)
            try:
                s = await aipc.open_fifo_sender(fifo.path)
            except BaseException:
                await anyio.aclose_forcefully(r)
                raise
        finally:
            # the node is not needed once both ends are open
            assert fifo.unlink()
        return s, r

    async def make_clogged() -> tuple[ByteSendStream, ByteReceiveStream]:
        s, r = await make()
        _clog(s)  # type: ignore[arg-type]
        return s, r

    return make, make_clogged


KINDS = ["pipe", "pipe-4KiB", "pipe-1MiB", "fifo"]


@pytest.fixture(params=KINDS)
def makers(request: pytest.FixtureRequest) -> tuple[Maker, Maker]:
    """(stream_maker, clogged_stream_maker) for one kind of aipc byte stream."""
    kind = request.param
    if kind == "pipe":
        return _pipe_makers(None)
    if kind == "pipe-4KiB":
        return _pipe_makers(SMALL_CAPACITY)
    if kind == "pipe-1MiB":
        if aipc.pipe_max_size() < LARGE_CAPACITY:
            pytest.skip(f"fs.pipe-max-size is below {LARGE_CAPACITY}")
        return _pipe_makers(LARGE_CAPACITY)
    assert kind == "fifo"
    return _fifo_makers(request.getfixturevalue("fifo_dir"))


@pytest.mark.parametrize("check", list(_conformance.CHECKS))
async def test_conformance(check: str, makers: tuple[Maker, Maker]) -> None:
    await _conformance.run_check(check, *makers)


async def test_check_one_way_stream_runs_every_check() -> None:
    """The exported entry point, on the default pipe."""
    await _conformance.check_one_way_stream(*_pipe_makers(None))


async def test_trio_checker(makers: tuple[Maker, Maker]) -> None:
    await _trio_adapter.check_one_way_stream_with_trio(*makers)


async def test_trio_adapter_forwards_cancellation() -> None:
    """A receive that trio cancels while it waits is cancelled where the stream
    lives (on asyncio, on the loop): the stream is not left busy, and the bytes
    sent afterwards go to the next receive."""
    r, s = aipc.create_pipe()
    async with r, s:

        async def scenario(caller: _trio_adapter._Caller) -> None:
            send = _trio_adapter.TrioSendStream(s, caller)
            recv = _trio_adapter.TrioReceiveStream(r, caller)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(recv.receive_some, 10)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            # the loop-side receive has finished: a new one is not busy
            await send.send_all(b"after")
            assert await recv.receive_some(10) == b"after"

        await _trio_adapter.run_in_trio(scenario)
