#!/usr/bin/env python
"""Accuracy benchmark and ablations (issue 5) as a script: the same code and options as
``lpd bench accuracy``, e.g.

    python benchmarks/accuracy.py --quick --json out/accuracy-quick.json
    python benchmarks/accuracy.py --json out/accuracy.json          # full: ~90 min, 2 cores
    python benchmarks/accuracy.py --device cuda --num-workers 8 --json out/accuracy.json
"""

from __future__ import annotations

import os
import sys

# Before torch is imported: idle OpenMP threads sleep instead of spinning, which keeps a
# fixed thread count from collapsing on a shared CPU (measured: 25 s -> 2.4 s per step).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from lpd.bench import accuracy_cli
    from lpd.errors import LPDError

    parser = argparse.ArgumentParser(prog="benchmarks/accuracy.py")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    accuracy_cli.register(sub)
    args = parser.parse_args(["accuracy", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except LPDError as exc:
        print(f"benchmarks/accuracy.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
