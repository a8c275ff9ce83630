"""``lpd demo --out DIR``: the demo's results as files (no display needed)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="segment the bundled real slide region and nct mosaics; write pictures",
        description="Segments the bundled CMU-1 H&E region and held-apart mosaics of real "
        "nct tiles with the default model (trained on the bundled kather2016 tiles the "
        "first time, then cached) or --checkpoint, and writes PNG overlays, label images "
        "and a summary to --out.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--checkpoint", type=Path, help="use this model instead of the default")
    p.add_argument("--device", default="auto")
    p.add_argument("--mosaics", type=int, default=8, help="held-apart nct mosaics to score")
    p.add_argument("--region", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="segment only this window of the slide (pixels)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lpd.cli._progress import StagedProgress
    from lpd.demo import compute_demo, write_demo

    labels = {"default model": "training the default model (first run only)",
              "slide": "segmenting the slide", "mosaics": "scoring nct mosaics"}
    with StagedProgress(labels) as progress:
        result = compute_demo(args.checkpoint, args.device, args.mosaics, progress,
                              region=args.region)
    files = write_demo(result, args.out)
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    print(f"wrote {len(files)} files to {args.out} in {result.timings['total']:.0f} s")
    return 0
