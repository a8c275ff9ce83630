"""``lpd info CHECKPOINT``: what a checkpoint is — model, data, recipe, scores, scope."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="summary of a checkpoint (the default model's card, for 'default')",
        description="Print a checkpoint's model, training data, recipe and scores without "
        "loading its weights. 'default' is the shipped default model: its card figures "
        "(held-apart scores) are printed too; docs/model-card.md has the full card.",
    )
    p.add_argument("checkpoint", help="a .safetensors checkpoint, or 'default'")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lpd._userfile import read_json
    from lpd.default_model import CARD_PATH, default_checkpoint_path, load_recipe
    from lpd.io.checkpoint import read_checkpoint_metadata

    is_default = str(args.checkpoint).lower() == "default"
    path = default_checkpoint_path() if is_default else Path(args.checkpoint)
    config, extra = read_checkpoint_metadata(path)
    info = {"file": str(path), "bytes": path.stat().st_size, "config": config.to_dict(),
            "extra": extra}
    recipe = load_recipe()
    if extra.get("recipe") == recipe.id and CARD_PATH.is_file():
        info["card"] = read_json(CARD_PATH, "model card")
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(summary(info))
    return 0


def summary(info: dict) -> str:
    """Plain-text summary of ``run``'s information."""
    cfg, extra = info["config"], info["extra"]
    lines = [f"{extra.get('name') or Path(info['file']).stem}  ({info['file']}, "
             f"{info['bytes'] / 1e6:.1f} MB)"]
    if extra.get("scope"):
        lines.append(f"scope: {extra['scope']}; not a diagnostic device")
    mpp = cfg.get("microns_per_pixel")
    lines.append(f"model: {cfg['backbone']}, {cfg.get('prototypes_per_class')} prototypes per "
                 f"class, input {cfg['input_size']} px at "
                 f"{'unknown' if mpp is None else f'{mpp} µm/px'}; classes "
                 f"{', '.join(cfg['class_names'])}")
    if extra.get("data"):
        data = extra["data"]
        lines.append("data: " + (", ".join(data) if isinstance(data, dict) else str(data))
                     + (f"; {extra['held_apart']} tiles held apart" if "held_apart" in extra
                        else ""))
    if extra.get("recipe"):
        lines.append(f"recipe: {extra['recipe']}, {extra.get('steps', '?')} steps")
    card = info.get("card", {}).get("shipped")
    if card:
        held = card["held_apart"]
        row = "  ".join(f"{k} {v['mIoU']:.3f}" for k, v in held.items())
        lines.append(f"held-apart mIoU (16 mosaics): {row}")
        iou = held.get("predicted", {}).get("IoU", {})
        lines.append("IoU (predicted): " + "  ".join(
            f"{c} {'-' if v is None else f'{v:.2f}'}" for c, v in iou.items()))
    lines.append("card: docs/model-card.md")
    return "\n".join(lines)
