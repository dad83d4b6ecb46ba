"""Wake-ups with an aipc EventFd, within a process and across processes (trio).

1. Counter mode, in one process: several ``set()`` calls before the waiter
   runs coalesce, and one ``wait()`` takes their sum.
2. Semaphore mode, across processes: the parent passes the eventfd to a child
   with ``pass_fds``; the child rebuilds it with ``EventFd.from_fd`` and sets it
   once per job done; each ``wait()`` in the parent takes exactly one unit.

An eventfd carries a count, not data, and has no notion of a peer: if the child
died, a ``wait()`` would wait forever, so every wait on the child sits inside
``trio.fail_after``.

Run it with ``python examples/eventfd_wakeup.py``; it prints
``counter mode: one wait took 6`` and ``parent woke 5 times``.
"""

from __future__ import annotations

import sys

import anyio
import trio

import aipc

JOBS = 5


async def counter_mode() -> None:
    async with aipc.EventFd() as efd:
        for _ in range(3):
            efd.set(2)  # never blocks
        # the three additions were summed by the kernel; wait() takes it all
        taken = await efd.wait()
        print(f"counter mode: one wait took {taken}")


async def child(fd: int) -> None:
    # Rebuild the same kernel counter; we now own this fd and close it on exit.
    # semaphore= must match how the parent created it.
    async with aipc.EventFd.from_fd(fd, semaphore=True) as efd:
        for _ in range(JOBS):
            await trio.sleep(0.01)  # "work"
            efd.set()


async def semaphore_mode() -> None:
    async with aipc.EventFd(semaphore=True) as efd:
        process = await anyio.open_process(
            [sys.executable, __file__, "child", str(efd.fileno())],
            pass_fds=[efd.fileno()],
            stdin=None,
            stdout=None,
            stderr=None,
        )
        try:
            woke = 0
            with trio.fail_after(10):
                for _ in range(JOBS):
                    woke += await efd.wait()  # 1 per wait in semaphore mode
                returncode = await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.aclose()  # reaps the child
    if returncode != 0:
        raise SystemExit(f"child exited with {returncode}")
    print(f"parent woke {woke} times")


async def parent() -> None:
    await counter_mode()
    await semaphore_mode()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        trio.run(child, int(sys.argv[2]))
    else:
        trio.run(parent)


if __name__ == "__main__":
    main()
