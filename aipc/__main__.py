"""The ``aipc`` command: ``aipc bench``, ``aipc objects``, ``aipc clean``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aipc`` console script and ``python -m aipc``."""
    parser = argparse.ArgumentParser(prog="aipc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser(
        "bench",
        help="measure every mechanism beside its peers",
        description="Round-trip latency and throughput of each aipc mechanism "
        "between two real processes, beside the peers measured in the same run.",
    )
    if "bench" in (sys.argv[1:] if argv is None else argv):
        from ._bench import add_arguments

        add_arguments(bench)
    sub.add_parser("objects", help="list named kernel objects aipc created")
    clean = sub.add_parser(
        "clean", help="remove named objects whose creating process is dead"
    )
    clean.add_argument("--dry-run", action="store_true", help="only list them")
    args = parser.parse_args(argv)

    if args.command == "bench":
        from ._bench import run

        return run(args)
    from ._core import _registry

    if args.command == "objects":
        for obj in _registry.list_objects():
            owner = "alive" if obj.owner_alive else "dead"
            present = "present" if obj.exists() else "gone"
            print(f"{obj.kind}\t{obj.name}\tpid={obj.pid} ({owner})\t{present}")
        return 0
    for obj in _registry.clean(dry_run=args.dry_run):
        print(f"{'would remove' if args.dry_run else 'removed'} {obj.kind} {obj.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
