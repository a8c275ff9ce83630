"""A contact sheet of the bundled tile releases: one row per class, each release's tiles
side by side at the same physical scale (the recipe's 0.5 µm/px), so what a class looks
like in each lab can be compared by eye (e.g. Kather 2016 DEBRIS vs NCT DEB for NEC).

    python scripts/release_tiles_sheet.py [OUT.png]   # default benchmarks/results/release-tiles.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lpd.data.images import read_rgb
from lpd.data.sample import SAMPLE_ROOT
from lpd.default_model import load_recipe

SIDE = 112  # px per tile on the sheet (a 56 µm field at 0.5 µm/px)
PER_RELEASE = 3
CLASSES = ("TUM", "STR", "LYM", "NEC", "OTHER")


def main(out: Path) -> Path:
    recipe = load_recipe()
    train, held, mpps = recipe.tiles(SAMPLE_ROOT)
    releases = list(recipe.raw["releases"])
    target = recipe.run().model.microns_per_pixel or 0.5
    label_w, head_h = 60, 18
    width = label_w + len(releases) * (PER_RELEASE * (SIDE + 2) + 10)
    sheet = Image.new("RGB", (width, head_h + len(CLASSES) * (SIDE + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, release in enumerate(releases):
        x0 = label_w + r * (PER_RELEASE * (SIDE + 2) + 10)
        draw.text((x0, 2), release, fill="black")
        for c, name in enumerate(CLASSES):
            paths = sorted(p for folder in (train, held) for p in folder.paths.get(name, ())
                           if p.relative_to(folder.root).parts[0] == release)[:PER_RELEASE]
            y0 = head_h + c * (SIDE + 4)
            if r == 0:
                draw.text((4, y0 + SIDE // 2), name, fill="black")
            for i, path in enumerate(paths):
                rgb = read_rgb(path)
                field = max(1, round(SIDE * target / mpps[path]))  # same µm on every tile
                crop = rgb[:field, :field]
                tile = Image.fromarray(np.ascontiguousarray(crop)).resize((SIDE, SIDE))
                sheet.paste(tile, (x0 + i * (SIDE + 2), y0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(
        "benchmarks/results/release-tiles.png")
    print(main(target))
