"""The ``aipc bench`` table, notes and JSON file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from aipc import _ring
from aipc._core import _fd

from ._plan import (
    CHUNKS,
    KIB,
    MECHANISMS,
    MSG_SIZE,
    NO_REFERENCE,
    RAISED_CAPACITY,
    Config,
    Placement,
)

if TYPE_CHECKING:
    from ._runner import Outcome

__all__ = ["Row", "build_rows", "format_table", "machine_info", "write_json"]

_ORDER = {m.key: i for i, m in enumerate(MECHANISMS)}
_BY_KEY = {m.key: m for m in MECHANISMS}
_BACKEND_ORDER = {"asyncio": 0, "uvloop": 1, "trio": 2, "blocking": 3}
_JSON_FORMAT = 1


@dataclass
class Row:
    """One line of the table: a mechanism, on a loop, in a placement."""

    mechanism: str
    label: str
    aipc: bool
    backend: str
    placement: str
    variant: str
    rtt: dict[str, Any] | None = None
    throughput: dict[int, dict[str, Any]] = field(default_factory=dict)
    msgs: dict[str, Any] | None = None
    reference: str | None = None
    vs_reference: dict[str, float | None] = field(default_factory=dict)
    failed: bool = False

    @property
    def title(self) -> str:
        if self.variant == "capacity":
            return f"{self.label} (1 MiB capacity)"
        return self.label

    def gbps(self, chunk: int) -> float | None:
        t = self.throughput.get(chunk)
        return None if t is None else float(t["gbps"])

    def rtt_median(self) -> float | None:
        return None if self.rtt is None else float(self.rtt["median_us"])

    def msgs_rate(self) -> float | None:
        return None if self.msgs is None else float(self.msgs["per_s"])


def build_rows(
    outcomes: list[Outcome], placements: list[Placement], reference: dict[str, str]
) -> list[Row]:
    """One row per (mechanism, variant, backend, placement), in table order."""
    rows: dict[tuple[str, str, str, str], Row] = {}
    rtt: dict[tuple[str, str, str, str], list[list[int]]] = {}
    tput: dict[tuple[str, str, str, str, int], list[dict[str, Any]]] = {}
    msgs: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for outcome in outcomes:
        group = outcome.group
        for info in group.infos:
            key = (info.mechanism.key, info.variant, info.backend, info.placement)
            row = rows.get(key)
            if row is None:
                row = rows[key] = Row(
                    info.mechanism.key,
                    info.mechanism.label,
                    info.mechanism.aipc,
                    info.backend,
                    info.placement,
                    info.variant,
                )
            result = outcome.results.get(info.id)
            if result is None:
                row.failed = True
            elif info.metric == "rtt":
                rtt.setdefault(key, []).append(result["samples_ns"])
            elif info.metric == "msgs":
                msgs.setdefault(key, []).append(result)
            else:
                tput.setdefault((*key, info.chunk), []).append(result)
    for key, rounds in rtt.items():
        rows[key].rtt = _rtt_stats(rounds)
    for (*k, chunk), results in tput.items():
        rows[k[0], k[1], k[2], k[3]].throughput[chunk] = _tput_stats(results)
    for key, results in msgs.items():
        rows[key].msgs = _msgs_stats(results)
    for row in rows.values():
        # a mechanism may name its own peer (aipc signal: anyio's receiver on
        # the same backend); the others compare with the loop's pipe streams
        peer = _BY_KEY[row.mechanism].reference or reference.get(row.backend)
        if not row.aipc or peer is None or peer == NO_REFERENCE:
            continue
        # a peer without a loop (iceoryx2) has one row for every backend
        peer_mech = _BY_KEY.get(peer)
        backend = row.backend
        if peer_mech is not None and peer_mech.loop == "blocking":
            backend = "blocking"
        ref = rows.get((peer, row.variant, backend, row.placement))
        if ref is None:
            ref = rows.get((peer, "", backend, row.placement))
        if ref is None:
            continue
        row.reference = ref.title
        row.vs_reference = {
            "rtt": _ratio(row.rtt_median(), ref.rtt_median()),
            **{_chunk_name(c): _ratio(row.gbps(c), ref.gbps(c)) for c in CHUNKS},
            "msgs": _ratio(row.msgs_rate(), ref.msgs_rate()),
        }
    place_order = {p.name: i for i, p in enumerate(placements)}
    return sorted(
        rows.values(),
        key=lambda r: (
            place_order.get(r.placement, 99),
            not r.aipc,
            _BACKEND_ORDER.get(r.backend, 9) if r.aipc else 0,
            _ORDER[r.mechanism],
            _BACKEND_ORDER.get(r.backend, 9),
            r.variant,
        ),
    )


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _rtt_stats(rounds: list[list[int]]) -> dict[str, Any]:
    """Latency statistics over the samples of all rounds, in µs."""
    s = sorted(x for r in rounds for x in r)
    n = len(s)
    p99 = s[max(0, -(-99 * n // 100) - 1)]
    return {
        "n": n,
        "median_us": _median([float(x) for x in s]) / 1000,
        "p99_us": p99 / 1000,
        "mean_us": sum(s) / n / 1000,
        "min_us": s[0] / 1000,
        "max_us": s[-1] / 1000,
        "round_medians_us": [_median([float(x) for x in r]) / 1000 for r in rounds],
    }


def _tput_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput over the repetitions of all rounds; bytes per ns is GB/s."""
    rates = [r["bytes"] / t for r in results for t in r["times_ns"]]
    caps = sorted({r["capacity"] for r in results if r.get("capacity") is not None})
    return {
        "gbps": _median(rates),
        "gbps_best": max(rates),
        "gbps_all": rates,
        "bytes_per_rep": results[0]["bytes"],
        "reps": len(rates),
        "capacity": caps[0] if len(caps) == 1 else caps or None,
    }


def _msgs_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Messages per second over the repetitions of all rounds."""
    rates = [r["messages"] * 1e9 / t for r in results for t in r["times_ns"]]
    return {
        "per_s": _median(rates),
        "per_s_best": max(rates),
        "per_s_all": rates,
        "size": MSG_SIZE,
        "messages_per_rep": results[0]["messages"],
        "reps": len(rates),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _chunk_name(chunk: int) -> str:
    return f"{chunk // KIB}KiB" if chunk < 1024 * KIB else f"{chunk // (1024 * KIB)}MiB"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rate(value: float | None) -> str:
    """Messages per second, short: 812, 85.3k, 1.21M."""
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def outcome_notes(outcomes: list[Outcome]) -> list[str]:
    """Failures, capacities not granted and loop checks, one line each."""
    notes: list[str] = []
    for o in outcomes:
        mech, backend = o.group.mechanism, o.group.backend
        name = f"{mech.label} [{backend}]"
        if o.error:
            notes.append(f"FAILED {name}: {o.error.splitlines()[0]}")
        for cap in o.caps:
            if cap.get("error"):
                notes.append(
                    f"{name}: capacity {cap['size']} refused ({cap['error']}); "
                    f"measured with {cap.get('granted')} bytes"
                )
        hello = o.hello
        if not hello:
            continue
        loop = str(hello.get("loop", ""))
        if backend == "uvloop" and not loop.startswith("uvloop"):
            notes.append(f"WARNING {name}: ran on {loop}, not uvloop")
        if backend == "asyncio" and loop.startswith("uvloop"):
            notes.append(f"WARNING {name}: ran on uvloop, not plain asyncio")
        generic = hello.get("generic_wait")
        if generic is not None and generic != bool(mech.env):
            notes.append(
                f"WARNING {name}: AIPC_GENERIC_WAIT is {'on' if generic else 'off'}"
            )
    return notes


def format_table(
    rows: list[Row],
    machine: dict[str, Any],
    notes: list[str],
    seconds: float,
    args: argparse.Namespace,
) -> str:
    """The table printed on stdout, with its legend and notes."""
    head = [
        "mechanism",
        "backend",
        "placement",
        "rtt median µs",
        "rtt p99 µs",
        "64KiB GB/s",
        "1MiB GB/s",
        f"{MSG_SIZE}B msgs/s",
        "vs loop peer rtt/64K/1M/msgs",
    ]
    body: list[list[str]] = []
    for r in rows:
        ratio = "-"
        if r.vs_reference:
            ratio = " / ".join(
                _num(r.vs_reference.get(k), 2) for k in ("rtt", "64KiB", "1MiB", "msgs")
            )
        rtt_med = r.rtt_median()
        p99 = None if r.rtt is None else float(r.rtt["p99_us"])
        cells = [
            r.title,
            r.backend,
            r.placement,
            _num(rtt_med, 1),
            _num(p99, 1),
            _num(r.gbps(CHUNKS[0]), 2),
            _num(r.gbps(CHUNKS[1]), 2),
            _rate(r.msgs_rate()),
            ratio,
        ]
        if r.failed:
            if rtt_med is None and not r.throughput and r.msgs is None:
                cells[3:] = ["failed", "", "", "", "", ""]
            else:
                cells[0] += " [incomplete]"
        if r.variant == "capacity":
            cells[3] = cells[4] = cells[7] = ""
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    right = {3, 4, 5, 6, 7}

    def line(cells: list[str]) -> str:
        return " | ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [
        f"aipc bench: {machine['nproc']} CPUs, Linux {machine['kernel']}, "
        f"Python {machine['python']}, aipc {machine['packages'].get('aipc', '?')}"
        + _helper_note(machine)
        + (" (--quick: not a measurement)" if args.quick else ""),
        "",
        line(head),
        "-+-".join("-" * w for w in widths),
    ]
    previous = None
    for r, cells in zip(rows, body, strict=True):
        if previous is not None and r.placement != previous:
            out.append("-+-".join("-" * w for w in widths))
        previous = r.placement
        out.append(line(cells))
    out += [
        "",
        "rtt: 8-byte ping-pong (driver sends, peer echoes), per round trip; "
        "signal rows: one signal each way;",
        "  hand-off rows (locks, semaphore): release() in one process to the "
        "other's waiting acquire() returning,",
        "  half of a ping-pong's round trip. Object rows (channels, *objects*): "
        f"one {MSG_SIZE}-byte msgpack object each way.",
        "GB/s: one-way, 10^9 bytes/s, chunks of 64 KiB / 1 MiB, timed from the "
        "first send to the peer's acknowledgement",
        "  (median of repetitions).",
        f"msgs/s: {MSG_SIZE}-byte messages, one way, sent back to back, timed the "
        "same way. Byte streams (aipc, pipes,",
        "  asyncio, trio) keep no message boundaries: their peer counts bytes, "
        "reading whatever has arrived;",
        "  seqpacket sockets, aipc POSIX mqueue and rings, multiprocessing, "
        "faster_fifo, pyzmq and iceoryx2 deliver",
        "  one message per receive call; object rows send a dict whose msgpack "
        f"encoding is {MSG_SIZE} bytes, and receive",
        "  and decode each one.",
        f"Each row: {machine['rounds']} round(s) per placement, interleaved with the "
        "other rows' rounds; statistics over all of them.",
        "vs loop peer: aipc ÷ the same loop's own pipe streams in the same "
        "placement (asyncio pipe streams for",
        "  asyncio, uvloop pipe streams for uvloop, trio FdStream for trio); "
        "rtt: < 1 is faster, GB/s, msgs/s: > 1 is faster.",
        "  aipc signal ÷ anyio signal receiver, aipc POSIX mqueue ÷ aipc pipe, "
        "aipc FileLock ÷ filelock (asyncio),",
        "  aipc UNIX stream and seqpacket ÷ anyio's, aipc channels ÷ pyzmq objects "
        "(zmq.asyncio; asyncio, uvloop),",
        "  each on the same backend and placement; the semaphore row has no ratio.",
        "  aipc ring rows ÷ iceoryx2 (blocking, busy poll or in place: see each "
        "row's note) in the same placement.",
        f"(1 MiB capacity): F_SETPIPE_SZ {RAISED_CAPACITY} on the data pipe; "
        "other pipe rows use the default 64 KiB.",
        "CPUs (driver, peer): "
        + ", ".join(
            f"{p['name']} {p['driver_cpu']},{p['peer_cpu']}"
            for p in machine["placements"]
        )
        + f"; load average at start: {machine['loadavg']}.",
    ]
    used = {r.mechanism for r in rows}
    for m in MECHANISMS:
        if m.key in used and m.note:
            note = m.note
            if m.round_every > 1 and machine["rounds"] > 1:
                measured = len(range(0, machine["rounds"], m.round_every))
                note += f"; measured in {measured} of the {machine['rounds']} rounds"
            if m.divisor > 1:
                note += f", 1/{m.divisor} of the iterations per round"
            out.append(f"{m.label}: {note}")
    if notes:
        out.append("")
        out += [f"note: {n}" for n in notes]
    out += ["", f"total run time: {seconds:.1f} s"]
    return "\n".join(out)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _helper_note(machine: dict[str, Any]) -> str:
    helper = machine.get("compiled_helper")
    if helper is None:  # a JSON file from before the helper
        return ""
    core = machine.get("compiled_core")
    if core is None:  # a JSON file from before the second helper
        return " with its compiled ring helper" if helper else " (pure Python rings)"
    if helper and core:
        return " with its compiled ring helper and checkpoint decision"
    if not helper and not core:
        return " (pure Python rings and checkpoint decision)"
    if helper:
        return " with its compiled ring helper (Python checkpoint decision)"
    return " (pure Python rings; compiled checkpoint decision)"


def machine_info(placements: list[Placement], rounds: int) -> dict[str, Any]:
    """What the numbers depend on: CPUs, kernel, Python, package versions."""
    return {
        "rounds": rounds,
        "nproc": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        # aipc/_ringc.c, built at install when a compiler was there; the
        # children inherit AIPC_PURE_PYTHON, so they run what this one does
        "compiled_helper": _ring._ringc is not None,
        # aipc/_core/_corec.c, the same way
        "compiled_core": _fd._corec is not None,
        "packages": {
            name: v
            for name in (
                "aipc",
                "anyio",
                "sniffio",
                "trio",
                "uvloop",
                "pyzmq",
                "faster-fifo",
                "filelock",
                "msgspec",
                "iceoryx2",
            )
            if (v := _version(name)) is not None
        },
        "pipe_max_size": _read_int("/proc/sys/fs/pipe-max-size"),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "placements": [dataclasses.asdict(p) for p in placements],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(
    path: str,
    rows: list[Row],
    outcomes: list[Outcome],
    machine: dict[str, Any],
    notes: list[str],
    seconds: float,
    args: argparse.Namespace,
    config: Config,
) -> None:
    """Write every result, the machine and the run's settings to ``path``."""
    data = {
        "format": _JSON_FORMAT,
        "machine": machine,
        "args": {
            "backend": args.backend,
            "mechanism": args.mechanism,
            "placement": args.placement,
            "quick": args.quick,
        },
        "config": {
            "rtt_warmup": config.rtt_warmup,
            "rtt_count": config.rtt_count,
            "tput_bytes": {_chunk_name(c): n for c, n in config.tput_bytes.items()},
            "tput_reps": config.tput_reps,
            "msgs_count": config.msgs_count,
            "msgs_reps": config.msgs_reps,
            "msg_size": MSG_SIZE,
            "rounds": config.rounds,
        },
        "seconds": seconds,
        "rows": [
            {
                "mechanism": r.mechanism,
                "label": r.title,
                "aipc": r.aipc,
                "backend": r.backend,
                "placement": r.placement,
                "variant": r.variant,
                "failed": r.failed,
                "rtt": r.rtt,
                "throughput": {
                    _chunk_name(c): t for c, t in sorted(r.throughput.items())
                },
                "msgs": r.msgs,
                "reference": r.reference,
                "vs_reference": r.vs_reference,
            }
            for r in rows
        ],
        "groups": [
            {
                "mechanism": o.group.mechanism.key,
                "backend": o.group.backend,
                "loop": o.hello.get("loop"),
                "generic_wait": o.hello.get("generic_wait"),
                "capacity_changes": o.caps,
                "error": o.error or None,
                "seconds": o.seconds,
            }
            for o in outcomes
        ],
        "notes": notes,
    }
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
