"""Helpers shared by the tests: child processes that speak through aipc objects."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

import aipc

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a strict child Python running ``code``."""
    command = [sys.executable, "-W", "error", "-c", textwrap.dedent(code), *args]
    return command, dict(os.environ, PYTHONPATH=PROJECT_ROOT)


@asynccontextmanager
async def child_process(
    code: str, *, pass_fds: Sequence[int] = (), args: Sequence[str] = ()
) -> AsyncIterator[tuple[Process, BufferedByteReceiveStream]]:
    """Run ``code`` in ``sys.executable -c``; yield it and its buffered stdout.

    The child is killed and reaped on exit, whatever happens in the body.
    """
    command, env = _python(code, args)
    proc = await anyio.open_process(
        command,
        pass_fds=pass_fds,
        env=env,
        stdin=None,
        stderr=None,
    )
    try:
        assert proc.stdout is not None
        yield proc, BufferedByteReceiveStream(proc.stdout)
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            await proc.aclose()


@asynccontextmanager
async def aipc_child(
    code: str,
    *,
    args: Sequence[str] = (),
    handoff: Mapping[str, object] | None = None,
    stdin: int | None = None,
) -> AsyncIterator[tuple[aipc.Process, BufferedByteReceiveStream]]:
    """:func:`child_process` through ``aipc.open_process`` (with ``handoff``):
    yield the aipc Process and its buffered stdout; killed and closed on exit."""
    command, env = _python(code, args)
    proc = await aipc.open_process(
        command,
        handoff=handoff,
        env=env,
        stdin=stdin,
        stderr=None,
    )
    try:
        assert proc.stdout is not None
        yield proc, BufferedByteReceiveStream(proc.stdout)
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                with suppress(ProcessLookupError):
                    proc.kill()
            await proc.aclose()


def run_backend(main: Callable[[], Awaitable[object]], backend_id: str) -> None:
    """Run ``main`` on "asyncio", "uvloop" or "trio" (for child processes)."""
    if backend_id == "uvloop":
        import uvloop

        options = {"loop_factory": uvloop.new_event_loop}
        anyio.run(main, backend="asyncio", backend_options=options)
    else:
        anyio.run(main, backend=backend_id)


async def read_line(stdout: BufferedByteReceiveStream, timeout: float = 10) -> bytes:
    """The child's next stdout line without its newline (a handshake), within
    ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        return await stdout.receive_until(b"\n", 65536)
