"""Rewrite the measured parts of docs/model-card.md from what the commands wrote:

- the data table, from the recipe (tiles per class and release, train / held apart, mpp);
- the held-apart scores, from ``src/lpd/weights/lpd-crc-v1.card.json``
  (``python -m lpd.default_model``, ``--short``);
- the leave-one-release-out table, from ``benchmarks/results/loro-cpu-2core.md``
  (``lpd bench accuracy --leave-one-release-out``), when it exists.

Each part sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers; the prose
around them is kept. Run by ``make default-model``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from lpd.default_model import CARD_PATH, load_recipe

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "model-card.md"
LORO = ROOT / "benchmarks" / "results" / "loro-cpu-2core.md"


def data_table() -> str:
    recipe = load_recipe()
    train, held, mpps = recipe.tiles()
    rows = ["| release | µm/px | " + " | ".join(train.class_names) + " | OTHER |",
            "|---|---|" + "---|" * (len(train.class_names) + 1)]
    for release, spec in recipe.raw["releases"].items():
        cells = []
        for name in (*train.class_names, "OTHER"):
            n_train = sum(1 for p in train.paths.get(name, ()) if release in p.parts)
            n_held = sum(1 for p in held.paths.get(name, ()) if release in p.parts)
            cells.append(f"{n_train} + {n_held}" if n_train or n_held else "–")
        mpp = spec["mpp"] if isinstance(spec["mpp"], (int, float)) else \
            ", ".join(f"{v} ({k})" for k, v in spec["mpp"].items())
        rows.append(f"| {release} | {mpp} | " + " | ".join(cells) + " |")
    return ("Tiles per class: trained on + held apart (scored, never trained on).\n\n"
            + "\n".join(rows) + "\n")


def scores_table(card: dict) -> str:
    lines = ["| model | steps | predicted mIoU | oracle mIoU | one-class guess | IoU TUM / STR / "
             "LYM / NEC (predicted) | training time |",
             "|---|---|---|---|---|---|---|"]
    for key, label in (("shipped", "shipped (`lpd-crc-v1`)"), ("short", "short recipe")):
        if key not in card:
            continue
        c = card[key]
        h = c["held_apart"]
        iou = " / ".join("–" if v is None else f"{v:.2f}" for v in h["predicted"]["IoU"].values())
        lines.append(f"| {label} | {c['steps']} | {h['predicted']['mIoU']:.3f} | "
                     f"{h['oracle']['mIoU']:.3f} | {h['one_class_guess']['mIoU']:.3f} | {iou} | "
                     f"{c['train_seconds']} s, {c['threads']} threads |")
    return (f"Recipe id `{card['recipe']}`; 16 held-apart mosaics of 224 px, seed 2000000; "
            "one run each (CPU, deterministic evaluation).\n\n" + "\n".join(lines) + "\n")


def replace(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        sys.exit(f"{DOC}: no {name} markers")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main() -> int:
    text = DOC.read_text(encoding="utf-8")
    text = replace(text, "data", data_table())
    text = replace(text, "scores", scores_table(json.loads(CARD_PATH.read_text())))
    if LORO.is_file():
        text = replace(text, "loro", LORO.read_text(encoding="utf-8"))
    DOC.write_text(text, encoding="utf-8")
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
