"""``lpd bench adapt --tiles DIR``: the Fine-tune widget's effect as a number (see
``lpd.bench.adapt``): table (markdown), JSON and a PNG curve."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(benches: argparse._SubParsersAction) -> None:
    from lpd.config import FINETUNE_BATCH as WIDGET_BATCH
    from lpd.config import FINETUNE_LR as WIDGET_LR
    from lpd.config import FINETUNE_STEPS as WIDGET_STEPS
    from lpd.config import FINETUNE_TRAINABLE as WIDGET_TRAINABLE

    p = benches.add_parser(
        "adapt",
        help="how much fine-tuning on N tagged regions of a lab's tiles helps on its other "
        "tiles (the Fine-tune widget's code path)",
        description="Starts from the default recipe trained without the release in --tiles "
        "(a bundled release is held out and trained here; another folder uses the shipped "
        "model), tags N mosaics of half its tiles, fine-tunes as the Fine-tune widget does, "
        "and scores the other half; also the share of pixels of untagged classes whose "
        "label changed. Writes FILE.json, FILE.md and FILE.png.",
    )
    p.add_argument("--tiles", type=Path, required=True, help="tile folder TUM/ STR/ LYM/ NEC/")
    p.add_argument("--json", type=Path, required=True, help="output JSON file")
    p.add_argument("--counts", default="0,8,32,128", help="tagged regions N (comma-separated)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=WIDGET_STEPS,
                   help=f"fine-tuning steps (default {WIDGET_STEPS}: the widget's)")
    p.add_argument("--batch-size", type=int, default=WIDGET_BATCH)
    p.add_argument("--lr", type=float, default=WIDGET_LR)
    p.add_argument("--eval-mosaics", type=int, default=32)
    p.add_argument("--trainable", choices=("all", "head"), default=WIDGET_TRAINABLE,
                   help=f"what fine-tuning trains (default {WIDGET_TRAINABLE}: the widget's)")
    p.add_argument("--base-checkpoint", type=Path,
                   help="keep the base model here: loaded if the file exists, else trained "
                   "and saved (runs of several settings share one base)")
    p.add_argument("--base-steps", type=int,
                   help="training steps of the base model (default: the recipe's)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lpd._atomic import atomic_write_text
    from lpd.bench.adapt import AdaptSettings, format_adapt, plot_adapt, run_adapt
    from lpd.errors import InputError
    from lpd.infer.device import resolve_device
    from lpd.progress import drive

    try:
        counts = tuple(int(v) for v in args.counts.split(","))
    except ValueError:
        raise InputError(None, f"--counts must be integers, got {args.counts!r}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = AdaptSettings(args.tiles, counts, args.seeds, args.steps, args.batch_size,
                             args.lr, args.eval_mosaics, str(resolve_device(args.device)),
                             args.base_steps, args.trainable, args.base_checkpoint)
    def show(e) -> None:
        if e.phase != "finetune" and e.phase != "base" or e.step % 20 == 0:
            what = f"N={e.n} seed {e.seed}" if e.phase != "base" else "base model"
            print(f"[{what}] {e.phase} {e.step}/{e.total}" if e.total else
                  f"[{what}] {e.phase}", flush=True)

    report = drive(run_adapt(settings), show)
    atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    table = format_adapt(report)
    atomic_write_text(args.json.with_suffix(".md"), table)
    plot_adapt(report, args.json.with_suffix(".png"))
    print(table)
    print(f"wrote {args.json} (.md, .png) in {report['seconds']} s")
    return 0
