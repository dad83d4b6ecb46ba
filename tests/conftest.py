"""Shared fixtures: the three backends, and leak checks that fail a test which
leaves fds, FIFOs or registry records behind."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
import uvloop

# A private registry for the whole run, so that the suite neither reads nor
# writes the user's, and so that leftovers are ours to see.
_STATE = tempfile.mkdtemp(prefix="aipc-test-state-")
os.environ["AIPC_STATE_DIR"] = _STATE

BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


#: The signals tests send and receive (STYLE.md: SIGUSR1/2 and realtime only).
TEST_SIGNALS = {
    signal.SIGUSR1,
    signal.SIGUSR2,
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Block the test signals in the main thread before any thread starts, and
    start each backend once before any test.

    Blocking first is what docs/signals.md recommends to programs: every thread
    started afterwards (trio's and anyio's worker threads, which outlive the
    tests that start them) inherits the block, so the kernel never hands a test
    signal to a thread, and every one reaches the signalfd with its sender
    info. The fallback for threads that do not block a signal has its own
    tests, with a thread that unblocks it.

    Starting the backends once means that the descriptors a loop library opens
    once per process (uvloop keeps a pipe) are not taken for leaks.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, TEST_SIGNALS)

    async def nothing() -> None:
        pass

    for param in BACKENDS:
        name, options = param.values[0]  # type: ignore[misc]
        anyio.run(nothing, backend=name, backend_options=options)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the run's private registry (each test checked it was left empty)."""
    shutil.rmtree(_STATE, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Every async test runs on asyncio, asyncio+uvloop and trio."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def backend_id(anyio_backend: tuple[str, dict[str, object]]) -> str:
    """ "asyncio", "uvloop" or "trio": what a child process should run on."""
    return "uvloop" if anyio_backend[1] else anyio_backend[0]


def _open_fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the fd of the listdir itself
    return out


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves open fds or aipc registry records behind."""
    before = _open_fds()
    records_before = set(os.listdir(_STATE))
    yield
    after = _open_fds()
    records = set(os.listdir(_STATE)) - records_before
    if after != before or records:
        # objects in reference cycles close their fds (and warn, if they were
        # never closed) only when collected: collect, then look again. Most
        # tests leave nothing, and a full collection per test would cost
        # about 30 ms each.
        gc.collect()
        after = _open_fds()
        records = set(os.listdir(_STATE)) - records_before
    leaked = {fd: target for fd, target in after.items() if before.get(fd) != target}
    assert not leaked, f"test leaked file descriptors: {leaked}"
    assert not records, f"test left aipc registry records: {records}"


@pytest.fixture
def fifo_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for FIFOs; the test fails if it leaves a FIFO in it."""
    yield tmp_path
    left = [p.name for p in tmp_path.iterdir() if stat.S_ISFIFO(p.lstat().st_mode)]
    assert not left, f"test left FIFOs behind: {left}"


# --- semaphores and SysV message queues --------------------------------------
#
# Other test runs may share the machine's SysV ids and /dev/shm (SysV objects
# are per IPC namespace, not per process), so the leak check below only counts
# objects this run made: POSIX semaphore names that carry this pid, and SysV
# keys in a range tagged with it. Tests take their names and keys from the
# fixtures below.

_SYSV_KEY_TAG = 0x40000000 | (os.getpid() & 0x3FFF) << 16
_sysv_key_counter = 0


def _sysv_keys(kind: str) -> set[int]:
    """Keys of the SysV objects (``kind`` "sem" or "msg") tagged by this run."""
    keys = set()
    with open(f"/proc/sysvipc/{kind}") as f:
        next(f)  # header
        for line in f:
            key = int(line.split()[0])
            if key & ~0xFFFF == _SYSV_KEY_TAG:
                keys.add(key)
    return keys


def _posix_semaphores() -> set[str]:
    """This run's POSIX semaphores and shared memory segments in /dev/shm."""
    markers = (f"sem.aipc-test-{os.getpid()}-", f"aipc-test-{os.getpid()}-")
    return {name for name in os.listdir("/dev/shm") if name.startswith(markers)}


@pytest.fixture(autouse=True)
def no_ipc_leaks() -> Iterator[None]:
    """Fail the test if it leaves a POSIX named semaphore, a shared memory
    segment, or a SysV semaphore or message queue of this run behind."""
    before = (_sysv_keys("sem"), _sysv_keys("msg"), _posix_semaphores())
    yield
    sems, queues, names = (
        _sysv_keys("sem") - before[0],
        _sysv_keys("msg") - before[1],
        _posix_semaphores() - before[2],
    )
    assert not sems, f"test left SysV semaphores behind: keys {sorted(sems)}"
    assert not queues, f"test left SysV message queues behind: keys {sorted(queues)}"
    assert not names, f"test left /dev/shm objects behind: {sorted(names)}"


@pytest.fixture
def shm_name() -> Callable[[], str]:
    """A function returning a fresh shared memory name of this run (see
    no_ipc_leaks)."""
    counter = iter(range(1_000_000))

    def fresh() -> str:
        return f"/aipc-test-{os.getpid()}-shm-{next(counter)}-{os.urandom(3).hex()}"

    return fresh


@pytest.fixture
def posix_sem_name(request: pytest.FixtureRequest) -> str:
    """A POSIX semaphore name unique to this run and test (see no_ipc_leaks)."""
    return f"/aipc-test-{os.getpid()}-{abs(hash(request.node.nodeid)):x}"


@pytest.fixture
def sysv_key() -> Callable[[], int]:
    """A function returning a fresh SysV key of this run (see no_ipc_leaks)."""

    def fresh() -> int:
        global _sysv_key_counter
        _sysv_key_counter = (_sysv_key_counter + 1) & 0xFFFF
        return _SYSV_KEY_TAG | _sysv_key_counter

    return fresh


# --- POSIX message queues ------------------------------------------------------
#
# The mqueue namespace is shared by every process in the IPC namespace, and
# /dev/mqueue is often not mounted. The check lists the namespace through a
# private, detached mount of the mqueue filesystem (fsopen + fsmount: no mount
# point anywhere, gone when its descriptor closes; needs CAP_SYS_ADMIN), opened
# here once for the run; without one it probes the names `mq_name` gave out.
# Either way it counts only this run's names, which carry its pid.

MQ_PREFIX = f"aipc-test-{os.getpid()}-mq-"
_mq_names: list[str] = []


def _mqueue_listing() -> int | None:
    """A descriptor on a detached mount of this IPC namespace's mqueue fs."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    # fsopen, fsconfig, fsmount: the same numbers on every architecture
    fs = libc.syscall(430, b"mqueue", 1)  # FSOPEN_CLOEXEC
    if fs < 0:
        return None
    try:
        if libc.syscall(431, fs, 6, None, None, 0) < 0:  # FSCONFIG_CMD_CREATE
            return None
        mount = libc.syscall(432, fs, 1, 0)  # FSMOUNT_CLOEXEC
        return mount if mount >= 0 else None
    finally:
        os.close(fs)


_MQ_LISTING = _mqueue_listing()


def _our_mqueues() -> set[str]:
    """This run's queues that exist now."""
    if _MQ_LISTING is not None:
        return {
            "/" + entry
            for entry in os.listdir(f"/proc/self/fd/{_MQ_LISTING}")
            if entry.startswith(MQ_PREFIX)
        }
    from aipc._core import _registry

    return {name for name in _mq_names if _registry.mqueue_identity(name)}


@pytest.fixture(autouse=True)
def no_mqueue_leaks() -> Iterator[None]:
    """Fail the test if it leaves a POSIX message queue of this run behind;
    remove it (and its registry record) first, so that the next test starts
    clean."""
    before = _our_mqueues()
    yield
    left = sorted(_our_mqueues() - before)
    if left:
        import posix_ipc

        from aipc._core import _registry

        for name in left:
            posix_ipc.unlink_message_queue(name)
            _registry.unregister("mqueue", name)
    assert not left, f"test left POSIX message queues behind: {left}"


@pytest.fixture
def mq_name() -> Callable[[], str]:
    """A function returning a fresh POSIX message queue name of this run (with
    its pid and a counter; see no_mqueue_leaks)."""

    def fresh() -> str:
        name = f"/{MQ_PREFIX}{len(_mq_names)}"
        _mq_names.append(name)
        return name

    return fresh
