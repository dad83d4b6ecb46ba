"""The ``aipc`` command: a smoke run of ``aipc bench`` and the registry commands.

These run the command in a subprocess (it starts its own event loops and
processes), so they are plain tests, not one per backend; ``--backend all``
covers the three backends inside the bench.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aipc import _ring
from aipc._core import _fd

from ._helpers import PROJECT_ROOT

ENV = dict(os.environ, PYTHONPATH=PROJECT_ROOT)


def _aipc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "aipc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        check=False,
    )


def _bench(
    *args: str, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], int]:
    """``aipc bench ARGS`` and the pid of the bench process (its named objects
    carry it)."""
    cmd = [sys.executable, "-W", "error", "-m", "aipc", "bench", *args]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), proc.pid


def _bench_leftovers(pid: int) -> list[str]:
    """The message queues and POSIX semaphores of the bench ``pid`` that still
    exist (the bench names them /aipc-bench-PID-GROUP-ab and -ba)."""
    import posix_ipc

    left = [
        name
        for name in os.listdir("/dev/shm")
        if name.startswith(f"sem.aipc-bench-{pid}-")
    ]
    for group in range(64):  # more than the groups of any run
        for way in ("ab", "ba"):
            name = f"/aipc-bench-{pid}-{group}-{way}"
            try:
                posix_ipc.MessageQueue(name).close()
            except posix_ipc.ExistentialError:
                continue
            left.append(name)
    return left


@pytest.mark.timeout(150)
def test_bench_quick_measures_every_mechanism_on_every_backend(
    tmp_path: Path,
) -> None:
    # about 40 processes per backend start at once: on a loaded machine the
    # quick run takes longer than the default per-test timeout
    out = tmp_path / "bench.json"
    result, pid = _bench("--quick", "--backend", "all", "--json", str(out), timeout=140)
    assert result.returncode == 0, result.stderr
    assert "aipc pipe" in result.stdout
    assert "total run time" in result.stdout
    report = json.loads(out.read_text())
    rows = report["rows"]
    # the header and the file say whether the rings ran compiled
    helper = _ring._ringc is not None
    assert report["machine"]["compiled_helper"] is helper
    assert ("compiled ring helper" in result.stdout) is helper
    core = _fd._corec is not None
    assert report["machine"]["compiled_core"] is core
    assert ("checkpoint decision" in result.stdout) is True
    # the bench pins its two processes to two CPUs for cross-core rows, and
    # skips those (with a note) where only one CPU is available
    placements: tuple[str, ...] = ("cross-core", "same-core")
    if len(os.sched_getaffinity(0)) < 2:
        placements = ("same-core",)
    aipc_rows = {
        (r["mechanism"], r["backend"], r["placement"])
        for r in rows
        if r["aipc"] and not r["failed"] and r.get("rtt")
    }
    for mechanism in (
        "pipe",
        "fifo",
        "eventfd",
        "signal",
        "mqueue",
        "lock",
        "semaphore",
        "unix",
        "seqpacket",
        "channel",
        "channel-pipe",
        "ring",
        "ring-spin",
    ):
        for backend in ("asyncio", "uvloop", "trio"):
            for placement in placements:
                assert (mechanism, backend, placement) in aipc_rows
    for row in rows:
        if row.get("rtt"):
            assert row["rtt"]["median_us"] > 0
    # the msgs/s column: 64-byte messages streamed one way, on every backend
    assert "64B msgs/s" in result.stdout
    pipe_rows = [r for r in rows if r["mechanism"] == "pipe" and not r["variant"]]
    assert {(r["backend"], r["placement"]) for r in pipe_rows} == {
        (b, p) for b in ("asyncio", "uvloop", "trio") for p in placements
    }
    for row in pipe_rows:
        assert row["msgs"]["per_s"] > 0
        assert row["vs_reference"]["msgs"] > 0
    # the message-queue peers: rtt and msgs/s, no throughput
    peers = ["mp-queue"] + [
        key
        for key, module in (("faster-fifo", "faster_fifo"), ("zmq", "zmq"))
        if importlib.util.find_spec(module) is not None
    ]
    for key in peers:
        peer_rows = [r for r in rows if r["mechanism"] == key]
        assert len(peer_rows) == len(placements), key  # one per placement
        for row in peer_rows:
            assert not row["failed"], key
            assert row["rtt"]["median_us"] > 0
            assert row["msgs"]["per_s"] > 0
            assert row["throughput"] == {}
    # the signal round trip: its peer is anyio's receiver on the same backend
    # (one row per backend and placement), the ratio compares the two
    anyio_rows = {
        (r["backend"], r["placement"]): r
        for r in rows
        if r["mechanism"] == "anyio-signal"
    }
    assert set(anyio_rows) == {
        (b, p) for b in ("asyncio", "uvloop", "trio") for p in placements
    }
    for row in anyio_rows.values():
        assert not row["failed"]
        assert row["rtt"]["median_us"] > 0
        assert not row["aipc"]
    signal_rows = [r for r in rows if r["mechanism"] == "signal"]
    assert len(signal_rows) == 3 * len(placements)
    for row in signal_rows:
        assert not row["failed"]
        assert row["reference"] == "anyio signal receiver"
        assert row["vs_reference"]["rtt"] > 0
        assert row["throughput"] == {}
        assert row["msgs"] is None
    # the POSIX message queue: rtt and msgs/s, both compared with aipc pipe
    # on the same backend and placement
    mq_rows = [r for r in rows if r["mechanism"] == "mqueue"]
    assert len(mq_rows) == 3 * len(placements)
    for row in mq_rows:
        assert row["reference"] == "aipc pipe"
        assert row["vs_reference"]["rtt"] > 0
        assert row["vs_reference"]["msgs"] > 0
        assert row["throughput"] == {}
    # the hand-off rows: rtt only; the lock compares with filelock on asyncio,
    # the semaphore with nothing
    has_filelock = importlib.util.find_spec("filelock") is not None
    for row in rows:
        if row["mechanism"] in ("lock", "semaphore"):
            assert row["throughput"] == {}
            assert row["msgs"] is None
        if row["mechanism"] == "semaphore" or (
            row["mechanism"] == "lock"
            and (row["backend"] != "asyncio" or not has_filelock)
        ):
            assert row["reference"] is None, row
        elif row["mechanism"] == "lock":
            assert row["reference"] == "filelock AsyncFileLock hand-off"
            assert row["vs_reference"]["rtt"] > 0
    if has_filelock:
        filelock_rows = [r for r in rows if r["mechanism"] == "filelock"]
        assert {(r["backend"], r["placement"]) for r in filelock_rows} == {
            ("asyncio", p) for p in placements
        }
        assert all(not r["failed"] and r["rtt"]["median_us"] > 0 for r in filelock_rows)
    # UNIX sockets: aipc's beside anyio's on the same backend and placement;
    # a seqpacket message cannot be 1 MiB, so its rows have the 64 KiB column
    # only
    for key, peer in (("unix", "anyio-unix"), ("seqpacket", "anyio-seqpacket")):
        chunks = ["64KiB", "1MiB"] if key == "unix" else ["64KiB"]
        peer_rows = [r for r in rows if r["mechanism"] == peer]
        assert {(r["backend"], r["placement"]) for r in peer_rows} == {
            (b, p) for b in ("asyncio", "uvloop", "trio") for p in placements
        }
        for row in [r for r in rows if r["mechanism"] == key] + peer_rows:
            assert not row["failed"], row
            assert sorted(row["throughput"]) == sorted(chunks), row
            assert row["msgs"]["per_s"] > 0
            if row["aipc"]:
                assert row["reference"] == peer_rows[0]["label"]
                for name in ("rtt", *chunks, "msgs"):
                    assert row["vs_reference"][name] > 0, (row, name)
    # object channels: rtt and msgs/s of 64-byte msgpack objects, beside
    # pyzmq with zmq.asyncio (asyncio and uvloop: none on trio), pyzmq's sync
    # API and multiprocessing.Pipe
    has_zmq = importlib.util.find_spec("zmq") is not None
    for row in rows:
        if row["mechanism"] in ("channel", "channel-pipe"):
            assert row["throughput"] == {}
            assert row["msgs"]["per_s"] > 0
            if row["backend"] == "trio" or not has_zmq:
                assert row["reference"] is None, row
            else:
                assert row["reference"] == "pyzmq PAIR ipc:// objects (zmq.asyncio)"
                assert row["vs_reference"]["msgs"] > 0
    object_peers = {"mp-obj": {"blocking"}}
    if has_zmq:
        object_peers.update(
            {"zmq-obj": {"blocking"}, "zmq-asyncio": {"asyncio", "uvloop"}}
        )
    for key, backends in object_peers.items():
        peer_rows = [r for r in rows if r["mechanism"] == key]
        assert {(r["backend"], r["placement"]) for r in peer_rows} == {
            (b, p) for b in backends for p in placements
        }, key
        for row in peer_rows:
            assert not row["failed"], key
            assert row["rtt"]["median_us"] > 0
            assert row["msgs"]["per_s"] > 0
    _check_ring_rows(rows, placements, ("asyncio", "uvloop", "trio"))
    # the bench removed its FIFOs, queues, semaphores and their registry records
    listing = _aipc("objects")
    assert listing.returncode == 0, listing.stderr
    assert "fifo" not in listing.stdout
    assert "aipc-bench" not in listing.stdout
    assert _bench_leftovers(pid) == []


_HAS_ICEORYX2 = importlib.util.find_spec("iceoryx2") is not None

#: The keys of the shared-memory ring rows and of their iceoryx2 peers.
_RING_KEYS = "ring,ring-spin,ring-batched,ring-zero-copy,ring-zero-copy-spin"
_ICEORYX2_KEYS = "iceoryx2,iceoryx2-blocking,iceoryx2-zero-copy"


def _iceoryx2_files() -> set[str]:
    """What iceoryx2 keeps on the machine: its shared memory in /dev/shm and
    its state directory."""
    found = {n for n in os.listdir("/dev/shm") if n.startswith("iox2_")}
    if os.path.exists("/tmp/iceoryx2"):
        found.add("/tmp/iceoryx2")
    return found


def _check_ring_rows(
    rows: list[dict[str, Any]], placements: tuple[str, ...], backends: tuple[str, ...]
) -> None:
    """The ring rows: what each measures, and its ratio against the iceoryx2
    row named in its note (if iceoryx2 is installed)."""
    columns = {
        "ring": ("rtt", ["64KiB", "1MiB"], True, "iceoryx2 (blocking)"),
        "ring-spin": ("rtt", [], False, "iceoryx2 (busy poll)"),
        "ring-batched": (None, [], True, "iceoryx2 (busy poll)"),
        "ring-zero-copy": (None, ["1MiB"], False, "iceoryx2 (in place)"),
        "ring-zero-copy-spin": (None, ["1MiB"], False, "iceoryx2 (in place)"),
    }
    for key, (rtt, chunks, msgs, peer) in columns.items():
        ring_rows = [r for r in rows if r["mechanism"] == key]
        assert {(r["backend"], r["placement"]) for r in ring_rows} == {
            (b, p) for b in backends for p in placements
        }, key
        for row in ring_rows:
            assert not row["failed"], row
            assert (row["rtt"] is not None) == bool(rtt), row
            assert sorted(row["throughput"]) == sorted(chunks), row
            assert (row["msgs"] is not None) == msgs, row
            if not _HAS_ICEORYX2:
                assert row["reference"] is None, row
                continue
            assert row["reference"] == peer, row
            for name in ((rtt,) if rtt else ()) + tuple(chunks):
                if name != "64KiB":  # the iceoryx2 rows have no 64 KiB column
                    assert row["vs_reference"][name] > 0, (row, name)
            if msgs:
                assert row["vs_reference"]["msgs"] > 0, row
    if not _HAS_ICEORYX2:
        return
    for key, has_rtt, has_msgs in (
        ("iceoryx2", True, True),
        ("iceoryx2-blocking", True, True),
        ("iceoryx2-zero-copy", False, False),
    ):
        peer_rows = [r for r in rows if r["mechanism"] == key]
        assert {(r["backend"], r["placement"]) for r in peer_rows} == {
            ("blocking", p) for p in placements
        }, key
        for row in peer_rows:
            assert not row["failed"], row
            assert not row["aipc"]
            assert (row["rtt"] is not None) == has_rtt, row
            assert (row["msgs"] is not None) == has_msgs, row
            assert row["throughput"]["1MiB"]["gbps"] > 0, row
    # a ratio compares equal transfers: the in-place rows move 8 times the
    # bytes of a copying row per repetition (ZERO_COPY_SCALE), and their
    # peer row as much
    per_rep = {
        (r["label"], r["placement"]): r["throughput"]["1MiB"]["bytes_per_rep"]
        for r in rows
        if r["throughput"] and "1MiB" in r["throughput"]
    }
    for row in rows:
        if row["mechanism"] in columns and "1MiB" in (row["throughput"] or {}):
            mine = per_rep[(row["label"], row["placement"])]
            assert per_rep[(row["reference"], row["placement"])] == mine, row
            copying = per_rep[("aipc ring", row["placement"])]
            scale = 8 if "zero-copy" in row["mechanism"] else 1
            assert mine == scale * copying, row


@pytest.mark.timeout(120)
def test_bench_ring_rows_beside_iceoryx2_leave_nothing_behind(
    tmp_path: Path,
) -> None:
    before = _iceoryx2_files()
    out = tmp_path / "bench.json"
    result, _ = _bench(
        "--quick",
        *("--mechanism", f"{_RING_KEYS},{_ICEORYX2_KEYS},pipe"),
        *("--json", str(out)),
        timeout=110,
    )
    assert result.returncode == 0, result.stderr
    for label in ("aipc ring (spin)", "aipc ring (batched)", "aipc ring (zero-copy)"):
        assert label in result.stdout
    if _HAS_ICEORYX2:
        assert "iceoryx2 (busy poll)" in result.stdout
        assert "iceoryx2 (blocking)" in result.stdout
    else:
        assert "iceoryx2 (busy poll) skipped: iceoryx2 not installed" in result.stdout
    assert "burns CPU" in result.stdout  # the spinning row says what it costs
    placements: tuple[str, ...] = ("cross-core", "same-core")
    if len(os.sched_getaffinity(0)) < 2:
        placements = ("same-core",)
    _check_ring_rows(json.loads(out.read_text())["rows"], placements, ("asyncio",))
    # rings are anonymous memfds; iceoryx2's services, nodes and global files
    # are gone with the run
    assert _iceoryx2_files() == before


def _sigint_as_a_terminal_sends_it() -> None:
    # A shell without job control starts background commands with SIGINT
    # ignored, and a Python started so keeps ignoring it: run that way (as a
    # CI job may be), the bench never saw the test's Ctrl-C and ran to its
    # end. The bench itself rightly keeps an ignored SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_bench(
    mechanisms: str,
    while_measuring: Callable[[], None] = lambda: None,
    sig: int = signal.SIGINT,
) -> tuple[int, int, str]:
    """Run ``aipc bench`` on ``mechanisms`` (same-core), call
    ``while_measuring`` once every group is up, then send it ``sig``
    (Ctrl-C's by default): (pid, exit status, stdout)."""
    cmd = [sys.executable, "-W", "error", "-m", "aipc", "bench"]
    cmd += ["--mechanism", mechanisms, "--placement", "same-core"]
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=_sigint_as_a_terminal_sends_it,
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # measuring: every group is up
            if line.startswith("[2/"):
                break
        # Held where it is until the signal is pending, so that the run
        # cannot reach its end (4 s) first on a loaded machine; the signal
        # is handled as soon as it continues.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            while_measuring()
            proc.send_signal(sig)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=30)
    return proc.pid, proc.returncode, out


@pytest.mark.skipif(not _HAS_ICEORYX2, reason="iceoryx2 is not installed")
def test_bench_interrupted_removes_what_iceoryx2_left() -> None:
    # Ctrl-C while the iceoryx2 rows run: their children are killed and leave
    # dead nodes behind, which the bench removes
    before = _iceoryx2_files()

    def services_exist() -> None:
        assert _iceoryx2_files() != before

    _, status, out = _interrupt_bench(_ICEORYX2_KEYS, services_exist)
    assert status == 130, out
    assert _iceoryx2_files() == before


@pytest.mark.parametrize(
    ("sig", "expected"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
)
def test_bench_interrupted_removes_its_queues_and_semaphores(
    sig: int, expected: int
) -> None:
    # Ctrl-C or SIGTERM in the middle of the run: the rows fail, their named
    # objects go (a SIGTERM used to end the process before its clean-up)
    pid, status, out = _interrupt_bench("mqueue,semaphore,fifo", sig=sig)
    assert status == expected, out
    assert _bench_leftovers(pid) == []
    listing = _aipc("objects")
    assert "aipc-bench" not in listing.stdout


# exec keeps the signal mask: the bench runs with the four signals of its
# signal rows blocked, as under a parent that has an aipc receiver open
_BLOCKED_EXEC = """
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGUSR2,
                                          signal.SIGRTMIN + 1, signal.SIGRTMIN + 2])
os.execv(sys.executable, [sys.executable, "-W", "error", "-m", "aipc", *sys.argv[1:]])
"""


def test_bench_signal_rows_ignore_an_inherited_signal_mask() -> None:
    # a child that kept the mask would never run anyio's handler: its row would
    # fail after the block timeout (30 s with --quick)
    result = subprocess.run(
        [
            *(sys.executable, "-c", _BLOCKED_EXEC, "bench", "--quick"),
            *("--mechanism", "signal,anyio-signal", "--placement", "same-core"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout
    assert "anyio signal receiver" in result.stdout


@pytest.mark.parametrize("args", [["objects"], ["clean", "--dry-run"], ["clean"]])
def test_registry_commands_run(args: list[str]) -> None:
    result = _aipc(*args)
    assert result.returncode == 0, result.stderr


def test_bench_rejects_an_unknown_backend() -> None:
    result = _aipc("bench", "--backend", "nope")
    assert result.returncode == 2
    assert "invalid choice: 'nope'" in result.stderr
