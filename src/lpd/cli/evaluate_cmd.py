"""``lpd evaluate``: score a checkpoint on BCSS-WSSS masks or held-apart mosaics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lpd.config import PROTOCOLS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint (mIoU, mDice, FwIoU, per-class IoU)",
        description="Evaluate on a BCSS-WSSS split (img/ + mask/) or on held-apart mosaics "
        "of a tile folder. Background is ignored in the ground truth and excluded from "
        "the means, as published.",
    )
    p.add_argument("data", type=Path, help="BCSS-WSSS folder or tile folder")
    p.add_argument("--checkpoint", required=True,
                   help="a .safetensors checkpoint, or 'default' (the shipped default model)")
    p.add_argument("--protocol", choices=(*PROTOCOLS, "both"), default="both",
                   help="class presence from the model (predicted) or from the "
                   "ground-truth tags (oracle, the published protocol)")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--mosaics", type=int, default=64, help="mosaics for a tile folder")
    p.add_argument("--seed", type=int, default=2_000_000, help="mosaic stream seed")
    p.add_argument("--tile-mpp", type=float)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="also write the scores as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lpd._atomic import atomic_write_text
    from lpd.cli._progress import progress_bar
    from lpd.evaluation import evaluate, format_table
    from lpd.segmentation import load_model

    model = load_model(args.checkpoint, args.device)
    _warn_in_sample(args.checkpoint, args.data)
    with progress_bar(None, "evaluate", "batch") as bar:
        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = evaluate(model, args.data, protocol=args.protocol, split=args.split,
                          mosaics=args.mosaics, seed=args.seed, tile_mpp=args.tile_mpp,
                          batch_size=args.batch_size, on_progress=on_progress)
    print(format_table(result, model.config.class_names))
    if args.json:
        payload = {"checkpoint": str(args.checkpoint), "data": str(args.data), **result.as_dict()}
        atomic_write_text(args.json, json.dumps(payload, indent=1))
    return 0


def _warn_in_sample(checkpoint: str, data: Path) -> None:
    """The default model trained on most bundled tiles: scoring it on a bundled tile
    folder measures fit, not generalisation; say so (and where the honest figures are)."""
    import sys

    from lpd.data.sample import SAMPLE_ROOT

    if str(checkpoint).lower() != "default":
        return
    try:
        Path(data).resolve().relative_to((SAMPLE_ROOT / "tiles").resolve())
    except ValueError:
        return
    print("note: the default model trained on most tiles of this bundled folder (all but "
          "the held-apart ones its recipe lists): these scores measure fit, not "
          "generalisation. Its held-apart and leave-one-release-out scores: "
          "lpd info default, docs/model-card.md", file=sys.stderr)
