"""Run ``aipc bench`` several times and print the median of every row.

Usage::

    python benchmarks/repeat.py [-n RUNS] [--json OUT] [--keep DIR] [BENCH ARGS...]

Every argument it does not know is passed to ``aipc bench`` (for example
``--backend all`` or ``--mechanism pipe,asyncio-pipe``). Each run writes its
own ``--json`` file; the table printed at the end holds, per row, the median
over the runs of each number, and the spread (max - min) / median of the RTT
median, which says how far one run can be trusted on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

Key = tuple[str, str, str]  # (label, backend, placement)


def _run_once(path: str, bench_args: list[str], index: int, runs: int) -> None:
    print(f"run {index + 1}/{runs}: aipc bench {' '.join(bench_args)}", file=sys.stderr)
    cmd = [sys.executable, "-m", "aipc", "bench", "--json", path, *bench_args]
    # The bench's own progress goes to our stderr; its table is not needed.
    status = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False).returncode
    if status not in (0, 1):  # 1: some row failed, the others are still good
        raise SystemExit(f"aipc bench exited with status {status}")


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _collect(files: list[str]) -> tuple[list[Key], dict[Key, list[dict[str, Any]]]]:
    order: list[Key] = []
    rows: dict[Key, list[dict[str, Any]]] = {}
    for path in files:
        with open(path) as f:
            data = json.load(f)
        for row in data["rows"]:
            key = (row["label"], row["backend"], row["placement"])
            if key not in rows:
                order.append(key)
                rows[key] = []
            rows[key].append(row)
    return order, rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def rtt(field: str) -> list[float | None]:
        return [r["rtt"][field] if r["rtt"] else None for r in rows]

    def tput(chunk: str) -> list[float | None]:
        return [
            r["throughput"][chunk]["gbps"] if chunk in r["throughput"] else None
            for r in rows
        ]

    def msgs() -> list[float | None]:
        return [r["msgs"]["per_s"] if r.get("msgs") else None for r in rows]

    def ratio(name: str) -> list[float | None]:
        return [r["vs_reference"].get(name) for r in rows]

    medians = [m for m in rtt("median_us") if m is not None]
    spread = None
    if len(medians) > 1:
        spread = (max(medians) - min(medians)) / statistics.median(medians)
    return {
        "runs": len(rows),
        "rtt_median_us": _median(rtt("median_us")),
        "rtt_p99_us": _median(rtt("p99_us")),
        "rtt_median_spread": spread,
        "64KiB_gbps": _median(tput("64KiB")),
        "1MiB_gbps": _median(tput("1MiB")),
        "msgs_per_s": _median(msgs()),
        "vs_reference": {
            k: _median(ratio(k)) for k in ("rtt", "64KiB", "1MiB", "msgs")
        },
    }


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"


def _table(order: list[Key], summaries: dict[Key, dict[str, Any]]) -> str:
    head = [
        "mechanism",
        "backend",
        "placement",
        "runs",
        "rtt median µs",
        "spread",
        "rtt p99 µs",
        "64KiB GB/s",
        "1MiB GB/s",
        "64B msgs/s",
        "vs loop peer rtt/64K/1M/msgs",
    ]
    body = []
    for key in order:
        s = summaries[key]
        ratios = s["vs_reference"]
        spread = s["rtt_median_spread"]
        body.append(
            [
                key[0],
                key[1],
                key[2],
                str(s["runs"]),
                _fmt(s["rtt_median_us"], 1),
                "-" if spread is None else f"{spread:.0%}",
                _fmt(s["rtt_p99_us"], 1),
                _fmt(s["64KiB_gbps"], 2),
                _fmt(s["1MiB_gbps"], 2),
                _rate(s["msgs_per_s"]),
                " / ".join(_fmt(ratios[k], 2) for k in ("rtt", "64KiB", "1MiB", "msgs"))
                if any(v is not None for v in ratios.values())
                else "-",
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    right = set(range(3, 10))

    def line(cells: list[str]) -> str:
        return " | ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join(
        [line(head), "-+-".join("-" * w for w in widths), *(line(b) for b in body)]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run 'aipc bench --json' several times and print per-row medians."
    )
    parser.add_argument("-n", "--runs", type=int, default=5, help="how many runs (5)")
    parser.add_argument("--json", metavar="OUT", help="write the medians to OUT")
    parser.add_argument(
        "--keep", metavar="DIR", help="keep each run's JSON file in DIR"
    )
    args, bench_args = parser.parse_known_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aipc-repeat-") as tmp:
        where = args.keep or tmp
        os.makedirs(where, exist_ok=True)
        files = [os.path.join(where, f"run-{i + 1}.json") for i in range(args.runs)]
        for i, path in enumerate(files):
            _run_once(path, bench_args, i, args.runs)
        order, rows = _collect(files)
        with open(files[0]) as f:
            machine = json.load(f)["machine"]
    summaries = {key: _summary(rows[key]) for key in order}
    print(
        f"median of {args.runs} runs of 'aipc bench {' '.join(bench_args)}' on "
        f"{machine['nproc']} CPUs, Linux {machine['kernel']}, "
        f"Python {machine['python']}"
        + {True: ", compiled ring helper", False: ", pure Python rings"}.get(
            machine.get("compiled_helper"), ""
        )
        + {True: ", compiled checkpoint decision", False: ""}.get(
            machine.get("compiled_core"), ""
        )
        + "\n"
    )
    print(_table(order, summaries))
    print(
        "\nspread: (max - min) / median of the per-run RTT medians; "
        f"total time {time.perf_counter() - started:.0f} s"
    )
    if args.json:
        out = {
            "runs": args.runs,
            "bench_args": bench_args,
            "machine": machine,
            "rows": [
                {"label": k[0], "backend": k[1], "placement": k[2], **summaries[k]}
                for k in order
            ],
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
