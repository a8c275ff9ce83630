"""``lpd bench <benchmark> ...``: each benchmark is a module with ``register(subparsers)``
that adds its own parser and sets ``func(args) -> int``, as the top-level subcommands do.

To add one (e.g. ``throughput``), add its module to ``BENCHMARKS``; a module that is not
part of this build is skipped."""

from __future__ import annotations

import argparse
import importlib

# benchmark name -> module providing register(subparsers), in the order of the help text
BENCHMARKS: dict[str, str] = {
    "accuracy": "lpd.bench.accuracy_cli",
    "throughput": "lpd.bench.throughput_cli",
    "adapt": "lpd.bench.adapt_cli",
    "batch": "lpd.bench.batch_scale",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks (accuracy of the method and its ablations, throughput)",
        description="Reproducible benchmarks; each writes JSON (and a table) you can compare "
        "between versions and machines.",
    )
    benches = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for module_name in BENCHMARKS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not part of this build
        module.register(benches)
