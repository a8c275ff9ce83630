"""Does a view agree with the whole image? Segments the bundled CMU-1 region whole and as a
few off-grid regions (like the plugin's "Current view") with the default model, and prints,
per region, the share of its pixels whose label equals the whole-image label: all pixels,
tissue pixels (either run non-background), and pixels labelled by a window lying inside
the region (those must agree exactly).

    python benchmarks/region_agreement.py [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lpd.data.sample import CMU_SLIDE
from lpd.default_model import default_checkpoint_path
from lpd.infer.tiled import plan_tiled, predict_tiled, run_tiled
from lpd.io.checkpoint import load_checkpoint
from lpd.wsi.slide import open_slide

REGIONS = [(637, 1101, 700, 620), (905, 1413, 655, 590), (1237, 401, 600, 500),
           (101, 1837, 900, 700)]


def inner_mask(plan, box, whole) -> np.ndarray:
    """Pixels of ``plan``'s grid labelled by a window wholly inside ``box`` (x, y, w, h)."""
    gy, gx = whole.axis_grids()
    x, y, w, h = box
    mask = np.zeros(whole.full, bool)
    for i in range(gy.count):
        sy = gy.starts[gy.tile_windows[i]]
        if sy < y or sy + gy.size > y + h:
            continue
        for j in range(gx.count):
            sx = gx.starts[gx.tile_windows[j]]
            if sx >= x and sx + gx.size <= x + w:
                (a, b), (c, d) = gy.tile_span(i), gx.tile_span(j)
                mask[a:b, c:d] = True
    (py, px), (hh, ww) = plan.phase, plan.shape
    return mask[py : py + hh, px : px + ww]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(default_checkpoint_path())
    slide = open_slide(CMU_SLIDE)
    full = run_tiled(predict_tiled(model, slide, device="cpu"))
    whole_plan = plan_tiled(model, slide)
    print(f"default model {default_checkpoint_path().name}, CMU-1 {whole_plan.full} px, "
          f"{args.threads} torch threads")
    print("region (x, y, w, h)        all px   tissue px   inner-window px (share)")
    for box in REGIONS:
        part = run_tiled(predict_tiled(model, slide, region=box, device="cpu"))
        (py, px), (h, w) = part.plan.phase, part.plan.shape
        ref = full.labels[py : py + h, px : px + w]
        x, y, bw, bh = box  # only the pixels of the requested box
        sel = np.zeros((h, w), bool)
        sel[y - py : y - py + bh, x - px : x - px + bw] = True
        same = part.labels == ref
        tissue = sel & ((part.labels > 0) | (ref > 0))
        inner = inner_mask(part.plan, box, whole_plan) & sel
        print(f"{str(box):26s} {same[sel].mean():7.3f} {same[tissue].mean():10.3f} "
              f"{same[inner].mean():10.3f} ({inner.sum() / sel.sum():.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
