"""``lpd``: headless entry point. Each subcommand lives in its own module with
``register(subparsers)`` adding its parser and setting ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from lpd import __version__
from lpd.errors import LPDError

# module names under lpd.cli, in the order of the help text
SUBCOMMANDS = ("train", "evaluate", "predict", "export", "batch", "bench", "demo", "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpd",
        description="LPD weakly supervised tissue segmentation of H&E images (headless).",
    )
    parser.add_argument("--version", action="version", version=f"lpd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"lpd.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name != f"lpd.cli.{name}_cmd":
                raise
            continue  # not part of this build
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Before torch loads OpenMP: spinning workers collapse throughput when the two cores
    # are shared (measured: a training step 25 s -> 2.4 s under load; docs/architecture.md, Threads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    from lpd._processes import Terminated, guard_children

    try:
        # SIGTERM is handled as Ctrl-C, and no process the command started outlives it
        with guard_children():
            return int(args.func(args) or 0)
    except LPDError as exc:
        print(f"lpd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"lpd {args.command}: {'terminated' if terminated else 'interrupted'}",
              file=sys.stderr)
        return 143 if terminated else 130


if __name__ == "__main__":
    sys.exit(main())
