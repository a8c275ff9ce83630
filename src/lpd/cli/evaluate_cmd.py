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
    from torch.utils.data import DataLoader

    from lpd._atomic import atomic_write_text
    from lpd.cli._progress import progress_bar
    from lpd.data.bcss import check_eval_masks
    from lpd.data.datasets import BCSSEvalDataset
    from lpd.data.sources import evaluation_dataset
    from lpd.default_model import resolve_default
    from lpd.evaluate import evaluate, format_table
    from lpd.infer.device import resolve_device
    from lpd.io.checkpoint import load_checkpoint

    device = resolve_device(args.device)
    model = load_checkpoint(resolve_default(args.checkpoint), device)
    _warn_in_sample(args.checkpoint, args.data)
    dataset = evaluation_dataset(args.data, model.config, args.split, args.mosaics,
                                 args.seed, args.tile_mpp)
    if isinstance(dataset, BCSSEvalDataset):  # unusable masks: one clear line, before scoring
        check_eval_masks(dataset.items)
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    loader = DataLoader(dataset, batch_size=args.batch_size)
    with progress_bar(len(loader), "evaluate", "batch") as bar:
        result = evaluate(model, loader, device, protocols, on_batch=lambda _: bar.update(1),
                          require_labels=True, source=args.data)
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
