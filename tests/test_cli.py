"""The ``aipc`` command: a smoke run of ``aipc bench`` and the registry commands.

These run the command in a subprocess (it starts its own event loops and
processes), so they are plain tests, not one per backend; ``--backend all``
covers the three backends inside the bench.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_bench_quick_measures_every_mechanism_on_every_backend(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bench.json"
    result = _aipc("bench", "--quick", "--backend", "all", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "aipc pipe" in result.stdout
    assert "total run time" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    # the bench pins its two processes to two CPUs for cross-core rows, and
    # skips those (with a note) where only one CPU is available
    placements = ("cross-core", "same-core")
    if len(os.sched_getaffinity(0)) < 2:
        placements = ("same-core",)
    aipc_rows = {
        (r["mechanism"], r["backend"], r["placement"])
        for r in rows
        if r["aipc"] and not r["failed"] and r.get("rtt")
    }
    for mechanism in ("pipe", "fifo", "eventfd", "signal"):
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
    # the bench removed its FIFOs and their registry records
    listing = _aipc("objects")
    assert listing.returncode == 0, listing.stderr
    assert "fifo" not in listing.stdout


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
