"""``lpd demo --out DIR``: the demo's results as files (no display needed)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="score the default model's held-apart mosaics, segment the bundled slide "
        "region; write pictures",
        description="Scores the shipped default model (or --checkpoint) on mosaics of the "
        "held-apart tiles of its recipe (never trained on; exact masks; next to the "
        "one-class-per-patch guess), segments the bundled CMU-1 H&E region (skin: the "
        "summary says what to expect there), and writes PNG overlays, label images and a "
        "summary to --out.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--checkpoint", help="a checkpoint to use instead of the default model "
                   "('default': the shipped default model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--mosaics", type=int,
                   help="held-apart mosaics to score (default: the recipe's 16, as on the "
                   "model card)")
    p.add_argument("--region", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="segment only this window of the slide (pixels)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lpd.cli._progress import StagedProgress
    from lpd.demo import compute_demo, write_demo

    labels = {"default model": "training the default model (its weights are missing)",
              "mosaics": "scoring held-apart mosaics", "slide": "segmenting the slide"}
    with StagedProgress(labels) as progress:
        checkpoint = None if str(args.checkpoint).lower() in ("none", "default") else \
            Path(args.checkpoint)
        result = compute_demo(checkpoint, args.device, args.mosaics, progress,
                              region=args.region)
    t0 = time.perf_counter()
    files = write_demo(result, args.out)
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    print(f"wrote {len(files)} files to {args.out}: computed in "
          f"{result.timings['total']:.0f} s, written in {time.perf_counter() - t0:.0f} s")
    return 0
