"""POSIX named and SysV semaphores: tokens across processes, cancellation that
neither loses nor leaks a token, crash safety, errors."""

from __future__ import annotations

import os
import signal
import stat
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
import sysv_ipc

import aipc
from aipc._core._bridge import INTERRUPT_SIGNAL

from ._helpers import child_process, read_line

pytestmark = pytest.mark.anyio

Semaphore = aipc.PosixSemaphore | aipc.SysVSemaphore
Factory = Callable[[int], Semaphore]


@pytest.fixture(params=["posix", "sysv"])
async def make(
    request: pytest.FixtureRequest, posix_sem_name: str, sysv_key: Callable[[], int]
) -> AsyncIterator[Factory]:
    """A factory of owned semaphores of each kind, removed after the test."""
    made: list[Semaphore] = []

    def factory(initial_value: int) -> Semaphore:
        sem: Semaphore
        if request.param == "posix":
            sem = aipc.create_posix_semaphore(
                f"{posix_sem_name}-{len(made)}",
                initial_value=initial_value,
                unlink_on_close=True,
            )
        else:
            sem = aipc.create_sysv_semaphore(
                sysv_key(), initial_value=initial_value, remove_on_close=True
            )
        made.append(sem)
        return sem

    try:
        yield factory
    finally:
        for sem in made:
            await sem.aclose()


def _ident(sem: Semaphore) -> tuple[str, str]:
    """What a child needs to attach: the kind and the name or key."""
    if isinstance(sem, aipc.PosixSemaphore):
        return "posix", sem.name
    return "sysv", str(sem.key)


_ATTACH = """
import os, sys, anyio, aipc
from tests._helpers import run_backend
kind, ident = sys.argv[1:3]
def attach():
    if kind == "posix":
        return aipc.attach_posix_semaphore(ident)
    return aipc.attach_sysv_semaphore(int(ident))
"""


async def test_tokens_and_statistics(make: Factory) -> None:
    sem = make(2)
    assert sem.value == 2
    async with sem:
        assert sem.value == 1
        sem.acquire_nowait()
        assert sem.value == 0
        with pytest.raises(anyio.WouldBlock):
            sem.acquire_nowait()
        sem.release()
    assert sem.value == 2
    stats = sem.statistics()
    assert (stats.acquires, stats.releases, stats.waits, stats.cancelled) == (
        2,
        2,
        0,
        0,
    )
    assert "value=2" in repr(sem)
    assert "owned" in repr(sem)


async def test_acquire_sleeps_until_released(make: Factory) -> None:
    sem = make(0)
    got: list[int] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                await sem.acquire()
                got.append(1)

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            sem.release()
    assert got == [1]
    assert sem.value == 0
    assert sem.statistics().waits == 1


async def test_cancelled_acquire_keeps_no_token_and_no_thread(make: Factory) -> None:
    sem = make(0)
    limiter = anyio.to_thread.current_default_thread_limiter()
    before = limiter.borrowed_tokens
    for _ in range(3):
        with anyio.move_on_after(0.02) as scope:
            await sem.acquire()
        assert scope.cancelled_caught
    assert limiter.borrowed_tokens == before  # every worker thread came back
    assert sem.value == 0
    assert sem.statistics().cancelled == 3
    # the next acquirer gets the next token at once: nothing waits for it
    got = anyio.Event()
    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                await sem.acquire()
                got.set()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            sem.release()
            await got.wait()
    assert sem.value == 0


def _interrupt_worker_threads() -> None:
    """Send the bridge's signal to every thread but this one, as a stray
    signal would: a worker blocked in the kernel gets EINTR."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.ident is not None:
            signal.pthread_kill(thread.ident, INTERRUPT_SIGNAL)


async def test_a_stray_interrupt_does_not_end_the_wait(make: Factory) -> None:
    # EINTR without a cancellation: the worker must tell it apart from a real
    # error (sysv_ipc and posix_ipc each report it their own way) and wait on
    sem = make(0)
    got = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                await sem.acquire()
                got.set()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            for _ in range(10):
                _interrupt_worker_threads()
                await anyio.sleep(0.005)
            assert not got.is_set()
            sem.release()
            await got.wait()
    assert sem.value == 0


async def test_cancel_racing_a_release_conserves_the_token(make: Factory) -> None:
    # release() and cancel together: either the wait was interrupted before it
    # took the token, or it took it and the bridge gave it back. Either way the
    # token is in the semaphore afterwards, exactly once.
    sem = make(0)
    for _ in range(10):
        taken: list[int] = []
        scope = anyio.CancelScope()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def waiter(
                    scope: anyio.CancelScope = scope, taken: list[int] = taken
                ) -> None:
                    with scope:
                        await sem.acquire()
                        taken.append(1)

                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                sem.release()
                scope.cancel()
        assert sem.value + len(taken) == 1
        if not taken:
            sem.acquire_nowait()
    assert sem.value == 0


async def test_aclose_ends_a_waiting_acquire(make: Factory) -> None:
    sem = make(0)
    limiter = anyio.to_thread.current_default_thread_limiter()
    before = limiter.borrowed_tokens
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await sem.acquire()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(anyio.BusyResourceError):
                sem.close()
            await sem.aclose()
    assert limiter.borrowed_tokens == before
    assert sem.closed
    with pytest.raises(anyio.ClosedResourceError):
        sem.release()
    with pytest.raises(anyio.ClosedResourceError):
        await sem.acquire()
    await sem.aclose()  # idempotent
    assert "closed" in repr(sem)


_CROWD = (
    _ATTACH
    + """
path, rounds, backend = sys.argv[3:]
async def main():
    sem = attach()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        print("ready", flush=True)
        for _ in range(int(rounds)):
            async with sem:
                os.write(fd, b"+")  # one byte with O_APPEND: atomic, in order
                await anyio.sleep(0.001)
                os.write(fd, b"-")
    finally:
        os.close(fd)
        await sem.aclose()
    print("done", flush=True)
run_backend(main, backend)
"""
)


async def test_three_tokens_never_admit_a_fourth_of_eight_processes(
    make: Factory, backend_id: str, tmp_path: Path
) -> None:
    # Each child appends "+" once it holds a token and "-" before it gives it
    # back, so the file's order is a real order of those moments: the running
    # count is an upper bound of the holders at each moment.
    sem = make(0)
    log = tmp_path / "log"
    log.write_bytes(b"")
    rounds = 10
    async with AsyncExitStack() as stack:
        children = [
            await stack.enter_async_context(
                child_process(
                    _CROWD, args=[*_ident(sem), str(log), str(rounds), backend_id]
                )
            )
            for _ in range(8)
        ]
        for _, stdout in children:
            # eight interpreters starting on two cores: generous under load
            assert await read_line(stdout, timeout=30) == b"ready"
        for _ in range(3):  # open the gate: everyone queues for three tokens
            sem.release()
        for proc, stdout in children:
            assert await read_line(stdout, timeout=30) == b"done"
            with anyio.fail_after(10):
                assert await proc.wait() == 0
    data = log.read_bytes()
    assert data.count(b"+") == data.count(b"-") == 8 * rounds
    holders = most = 0
    for byte in data:
        holders += 1 if byte == ord("+") else -1
        most = max(most, holders)
    assert 1 <= most <= 3
    assert holders == 0
    assert sem.value == 3


_HOLDER = (
    _ATTACH
    + """
async def main():
    sem = attach()
    await sem.acquire()
    print("held", flush=True)
    await anyio.sleep_forever()
run_backend(main, sys.argv[3])
"""
)


async def test_sysv_undo_gives_back_the_token_of_a_killed_holder(
    sysv_key: Callable[[], int], backend_id: str
) -> None:
    async with AsyncExitStack() as stack:
        sem = aipc.create_sysv_semaphore(sysv_key(), remove_on_close=True)
        stack.push_async_callback(sem.aclose)
        assert sem.undo
        async with child_process(_HOLDER, args=["sysv", str(sem.key), backend_id]) as (
            proc,
            stdout,
        ):
            assert await read_line(stdout) == b"held"
            with pytest.raises(anyio.WouldBlock):
                sem.acquire_nowait()
            got = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    await sem.acquire()
                    got.set()

                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                proc.kill()
                with anyio.fail_after(1):
                    await got.wait()
        sem.release()
        assert sem.value == 1


async def test_posix_token_of_a_killed_holder_is_lost(
    posix_sem_name: str, backend_id: str
) -> None:
    # documented: POSIX semaphores have no undo; the kernel keeps the count
    sem = aipc.create_posix_semaphore(posix_sem_name, unlink_on_close=True)
    try:
        async with child_process(_HOLDER, args=["posix", sem.name, backend_id]) as (
            proc,
            stdout,
        ):
            assert await read_line(stdout) == b"held"
            proc.kill()
            with anyio.fail_after(10):
                await proc.wait()
        with pytest.raises(anyio.WouldBlock):
            sem.acquire_nowait()
        assert sem.value == 0
    finally:
        await sem.aclose()


async def test_sysv_removed_while_waiting(sysv_key: Callable[[], int]) -> None:
    sem = aipc.create_sysv_semaphore(sysv_key(), initial_value=0)
    other = aipc.attach_sysv_semaphore(sem.key)
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def waiter() -> None:
                    with pytest.raises(
                        anyio.BrokenResourceError, match="semaphore was removed"
                    ):
                        await other.acquire()

                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert not other.remove()  # attached: never removes
                assert sem.remove()
        assert not sem.remove()
        with pytest.raises(anyio.BrokenResourceError):
            other.release()
        assert "removed" in repr(other)
    finally:
        await other.aclose()
        await sem.aclose()


async def test_sysv_fresh_key_and_mode() -> None:
    sem = aipc.create_sysv_semaphore(initial_value=3, remove_on_close=True)
    try:
        assert sem.owned
        assert sem.key != sysv_ipc.IPC_PRIVATE
        other = aipc.attach_sysv_semaphore(sem.key, undo=False)
        assert (other.id, other.value, other.undo, other.owned) == (
            sem.id,
            3,
            False,
            False,
        )
        await other.aclose()
        assert sysv_ipc.Semaphore(sem.key).mode & 0o777 == 0o600
    finally:
        await sem.aclose()
    with pytest.raises(FileNotFoundError):
        aipc.attach_sysv_semaphore(sem.key)


async def test_sysv_exist_ok(sysv_key: Callable[[], int]) -> None:
    key = sysv_key()
    sem = aipc.create_sysv_semaphore(key, initial_value=2, mode=0o640)
    try:
        assert sysv_ipc.Semaphore(key).mode & 0o777 == 0o640
        with pytest.raises(FileExistsError):
            aipc.create_sysv_semaphore(key)
        again = aipc.create_sysv_semaphore(key, initial_value=5, exist_ok=True)
        assert (again.owned, again.value) == (False, 2)
        await again.aclose()
    finally:
        assert sem.remove()
        await sem.aclose()


async def test_posix_mode_is_exact_whatever_the_umask(posix_sem_name: str) -> None:
    old = os.umask(0o277)
    try:
        sem = aipc.create_posix_semaphore(posix_sem_name, mode=0o660)
    finally:
        os.umask(old)
    try:
        st = os.stat(f"/dev/shm/sem.{posix_sem_name[1:]}")
        assert stat.S_IMODE(st.st_mode) == 0o660
    finally:
        assert sem.unlink()
        await sem.aclose()


async def test_posix_names_are_owned_by_their_creator(posix_sem_name: str) -> None:
    sem = aipc.create_posix_semaphore(posix_sem_name, initial_value=4)
    try:
        with pytest.raises(FileExistsError):
            aipc.create_posix_semaphore(posix_sem_name)
        other = aipc.create_posix_semaphore(posix_sem_name, exist_ok=True)
        attached = aipc.attach_posix_semaphore(posix_sem_name)
        assert (other.owned, attached.owned, attached.value) == (False, False, 4)
        assert not other.unlink()
        await other.aclose()
        attached.acquire_nowait()
        assert sem.value == 3
        assert sem.unlink()
        assert not sem.unlink()
        # the unlinked semaphore still works for the handles that have it
        attached.release()
        assert sem.value == 4
        await attached.aclose()
        with pytest.raises(FileNotFoundError):
            aipc.attach_posix_semaphore(posix_sem_name)
    finally:
        await sem.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        sem.unlink()


async def test_posix_unlink_spares_a_newer_semaphore(posix_sem_name: str) -> None:
    import posix_ipc

    sem = aipc.create_posix_semaphore(posix_sem_name)
    try:
        posix_ipc.unlink_semaphore(posix_sem_name)
        newer = aipc.create_posix_semaphore(posix_sem_name, unlink_on_close=True)
        assert not sem.unlink()  # the name is someone else's now
        await newer.aclose()
        with pytest.raises(FileNotFoundError):
            aipc.attach_posix_semaphore(posix_sem_name)
    finally:
        await sem.aclose()


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"name": "noslash"}, ValueError, "name must be '/' followed by"),
        ({"name": "/"}, ValueError, "name must be '/' followed by"),
        ({"name": "/a/b"}, ValueError, "name must be '/' followed by"),
        ({"name": "/a\0"}, ValueError, "name must be '/' followed by"),
        ({"name": "/" + "x" * 252}, ValueError, "name must be at most 252 bytes"),
        ({"name": b"/x"}, TypeError, "name must be a str, not bytes"),
        ({"initial_value": -1}, ValueError, "initial_value must be between 0 and"),
        ({"initial_value": 2**31}, ValueError, r"\(SEM_VALUE_MAX\)"),
        ({"initial_value": 1.0}, TypeError, "initial_value must be an int, not float"),
        ({"mode": 0o1777}, ValueError, "mode must be a permission mask within 0o777"),
        ({"mode": "600"}, TypeError, "mode must be an int, not str"),
    ],
)
def test_posix_bad_arguments(
    kwargs: dict[str, object], exc: type[Exception], message: str
) -> None:
    args = {"name": "/aipc-test-never-created", **kwargs}
    with pytest.raises(exc, match=message):
        aipc.create_posix_semaphore(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"key": 0}, ValueError, "key must be a non-zero 32-bit int"),
        ({"key": 2**31}, ValueError, "key must be a non-zero 32-bit int"),
        ({"key": "1"}, TypeError, "key must be an int, not str"),
        ({"initial_value": 32768}, ValueError, r"between 0 and 32767 \(SEMVMX\)"),
        ({"mode": -1}, ValueError, "mode must be a permission mask within 0o777"),
        ({"mode": 0o400}, ValueError, "mode must let the owner write"),
    ],
)
def test_sysv_bad_arguments(
    kwargs: dict[str, object], exc: type[Exception], message: str
) -> None:
    with pytest.raises(exc, match=message):
        aipc.create_sysv_semaphore(**kwargs)  # type: ignore[arg-type]


def test_attach_missing() -> None:
    with pytest.raises(FileNotFoundError):
        aipc.attach_posix_semaphore("/aipc-test-never-created")
    with pytest.raises(ValueError, match="IPC_PRIVATE"):
        aipc.attach_sysv_semaphore(0)


# --- the registry -------------------------------------------------------------


def _records(kind: str, name: str) -> list[aipc.NamedObject]:
    return [o for o in aipc.list_objects() if (o.kind, o.name) == (kind, name)]


async def test_posix_creation_is_recorded_attaching_is_not(posix_sem_name: str) -> None:
    sem = aipc.create_posix_semaphore(posix_sem_name)
    try:
        [record] = _records("posix-semaphore", posix_sem_name)
        st = os.lstat(f"/dev/shm/sem.{posix_sem_name[1:]}")
        assert (record.dev, record.inode) == (st.st_dev, st.st_ino)
        assert (record.pid, record.owner_alive, record.exists()) == (
            os.getpid(),
            True,
            True,
        )
        # attaching, by either road, records nothing and changes no record
        other = aipc.create_posix_semaphore(posix_sem_name, exist_ok=True)
        attached = aipc.attach_posix_semaphore(posix_sem_name)
        await other.aclose()
        await attached.aclose()
        assert _records("posix-semaphore", posix_sem_name) == [record]
        assert sem.unlink()
        assert not _records("posix-semaphore", posix_sem_name)
        assert not record.exists()
    finally:
        await sem.aclose()
    # unlink_on_close forgets the record too
    sem = aipc.create_posix_semaphore(posix_sem_name, unlink_on_close=True)
    assert _records("posix-semaphore", posix_sem_name)
    await sem.aclose()
    assert not _records("posix-semaphore", posix_sem_name)


async def test_posix_unlink_keeps_a_newer_semaphores_record(
    posix_sem_name: str,
) -> None:
    import posix_ipc

    sem = aipc.create_posix_semaphore(posix_sem_name)
    try:
        posix_ipc.unlink_semaphore(posix_sem_name)
        newer = aipc.create_posix_semaphore(posix_sem_name, unlink_on_close=True)
        try:
            [record] = _records("posix-semaphore", posix_sem_name)
            assert not sem.unlink()
            assert _records("posix-semaphore", posix_sem_name) == [record]
            assert record.exists()
        finally:
            await newer.aclose()
        assert not _records("posix-semaphore", posix_sem_name)
    finally:
        await sem.aclose()


async def test_sysv_creation_is_recorded_attaching_is_not(
    sysv_key: Callable[[], int],
) -> None:
    key = sysv_key()
    name = f"{key:#010x}"
    sem = aipc.create_sysv_semaphore(key)
    try:
        [record] = _records("sysv-semaphore", name)
        assert (record.dev, record.inode, record.pid) == (key, sem.id, os.getpid())
        assert record.owner_alive
        assert record.exists()
        other = aipc.create_sysv_semaphore(key, exist_ok=True)
        attached = aipc.attach_sysv_semaphore(key)
        await other.aclose()
        await attached.aclose()
        assert _records("sysv-semaphore", name) == [record]
        assert sem.remove()
        assert not _records("sysv-semaphore", name)
        assert not record.exists()
    finally:
        await sem.aclose()
    # remove_on_close forgets the record too; so does a fresh key
    sem = aipc.create_sysv_semaphore(remove_on_close=True)
    assert [o.inode for o in _records("sysv-semaphore", f"{sem.key:#010x}")] == [sem.id]
    await sem.aclose()
    assert not _records("sysv-semaphore", f"{sem.key:#010x}")


_CREATE_AND_EXIT = """
import sys, aipc
kind, ident = sys.argv[1:3]
if kind == "posix":
    sem = aipc.create_posix_semaphore(ident)
else:
    sem = aipc.create_sysv_semaphore(int(ident))
sem.close()  # and exits without unlinking or removing: a crash, to aipc
"""


def _exists(kind: str, ident: str) -> bool:
    try:
        sem = (
            aipc.attach_posix_semaphore(ident)
            if kind == "posix"
            else aipc.attach_sysv_semaphore(int(ident))
        )
    except FileNotFoundError:
        return False
    sem.close()
    return True


@pytest.mark.parametrize("kind", ["posix", "sysv"])
async def test_clean_removes_a_dead_owners_semaphore_only(
    kind: str, posix_sem_name: str, sysv_key: Callable[[], int]
) -> None:
    dead, live = (
        (f"{posix_sem_name}-dead", f"{posix_sem_name}-live")
        if kind == "posix"
        else (str(sysv_key()), str(sysv_key()))
    )
    record_kind = f"{kind}-semaphore"

    def record_name(ident: str) -> str:
        return ident if kind == "posix" else f"{int(ident):#010x}"

    async with child_process(_CREATE_AND_EXIT, args=[kind, dead]) as (proc, _):
        with anyio.fail_after(10):
            assert await proc.wait() == 0
    mine = (
        aipc.create_posix_semaphore(live)
        if kind == "posix"
        else aipc.create_sysv_semaphore(int(live))
    )
    try:
        [record] = _records(record_kind, record_name(dead))
        assert record.pid == proc.pid
        assert not record.owner_alive
        assert record.exists()
        assert aipc.clean(dry_run=True) == [record]
        assert _exists(kind, dead)
        assert aipc.clean() == [record]
        assert not _exists(kind, dead)
        assert not _records(record_kind, record_name(dead))
        # the live owner's semaphore and record are left alone
        assert _exists(kind, live)
        assert [o.pid for o in _records(record_kind, record_name(live))] == [
            os.getpid()
        ]
    finally:
        if isinstance(mine, aipc.PosixSemaphore):
            assert mine.unlink()
        else:
            assert mine.remove()
        await mine.aclose()


@pytest.mark.parametrize("kind", ["posix", "sysv"])
async def test_clean_spares_a_newer_semaphore_under_the_name(
    kind: str, posix_sem_name: str, sysv_key: Callable[[], int]
) -> None:
    import posix_ipc

    ident = posix_sem_name if kind == "posix" else str(sysv_key())
    async with child_process(_CREATE_AND_EXIT, args=[kind, ident]) as (proc, _):
        with anyio.fail_after(10):
            assert await proc.wait() == 0
    [record] = [o for o in aipc.list_objects() if o.pid == proc.pid]
    # someone else's semaphore under the name or key now (a new inode or id)
    newer: object
    if kind == "posix":
        posix_ipc.unlink_semaphore(ident)
        newer = posix_ipc.Semaphore(ident, posix_ipc.O_CREX)
    else:
        sysv_ipc.remove_semaphore(record.inode)
        newer = sysv_ipc.Semaphore(int(ident), sysv_ipc.IPC_CREX)
    try:
        assert not record.exists()
        assert aipc.clean() == []
        assert not aipc.list_objects()  # the stale record went
        assert _exists(kind, ident)
    finally:
        if isinstance(newer, posix_ipc.Semaphore):
            newer.unlink()
            newer.close()
        else:
            assert isinstance(newer, sysv_ipc.Semaphore)
            newer.remove()
