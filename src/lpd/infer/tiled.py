"""Whole-slide tiled inference over any 2D RGB array-like (numpy, dask, zarr) or a Slide.

Definitions (docs/method.md, Definitions: "tiled inference blends before any per-image step"):
- Magnification: the output grid is the region at pyramid level ``level``, resized by
  ``resize = level_mpp / target_mpp`` (target: the checkpoint's microns per pixel unless
  overridden; no resize within 2 %). Without a level, the coarsest level at least as fine
  as the target is used. ``level=`` alone keeps that level's own resolution.
- Output tiles: the level's output grid is cut into tiles of ``input_size - 2 * halo``
  pixels, anchored at the slide's corner; a region's corner moves back to that grid (by
  less than a tile). The model input (window) of a tile is the tile plus the halo on every
  side, reading the slide's own pixels past the region, shifted inwards only at the slide
  border (the slide border is then a window border, as in a single pass); windows that
  coincide there are computed once. So a window's pixels, weights and per-tile step are
  the same whatever region is asked: two regions agree on every pixel whose window and
  neighbour windows both compute (a test checks it on CMU-1). Window starts are multiples
  of the coarsest fused stride (``halo`` and the input size must be multiples of it, e.g.
  16), so every window's class maps fall on one grid per scale. A slide smaller than one
  input is reflect-padded (and < 16 px past the far border when it is not a multiple of
  the stride).
- Blending: the blended quantity is ``patch.score_maps`` (raw class logit maps of the fused
  scales): each scale's maps are blended on their own grid with smooth separable weights
  (``_blend``), then upsampled bilinearly as ``score_maps`` does; for a region that fits in
  one window this is the single pass exactly, otherwise it differs only where the windows'
  maps differ (receptive field cut by the window edge), never by seams.
- Per-tile step: for each output tile, ``predicted_presence`` (or the given presence) and
  ``labels_from_scores`` run on the blended maps of its window (clipped to the slide);
  the tile keeps the central, output-tile part.
- Tissue: tiles with less than ``tissue_threshold`` tissue (``lpd.wsi.tissue``) are skipped:
  label 0, no forward pass, no part in the blending.
- Prototypes (optional): the deepest scale's per-prototype logit maps, central cells of
  each tile's own window (nearest cell, not blended: a heatmap for viewing).

``predict_tiled`` is a generator: it yields a ``TiledProgress`` per batch (with the tiles
finished in it, for painting) and returns a ``TiledResult``. Closing it (or dropping it)
stops the reader thread within one batch; a store then stays incomplete and a rerun with
``resume=True`` recomputes only unfinished chunks (plus the overlapping neighbour windows
their blending needs, so a resumed result equals an uninterrupted one).

The steps of a run (``TiledRun``, in ``_run``): check the settings and make the plan
(``plan_tiled``, or the one given); open the sink (memory or a store; ``_sink``); classify
the tiles and choose the windows (``_windows``); read windows in a background thread from
blocks decoded by a pool of threads (``_reader``, ``_blocks``); forward a batch
(``_forward``); blend it and finalise the windows whose neighbours are all in, as batched
tensor operations on the model's device (``_blend``); hand their tiles to the sink, whose
writer thread writes whole chunks; build the store's pyramid. The geometry of tiles,
windows, cells and chunks is ``lpd.tiling``."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np
import torch

from lpd.infer._plan import TilePlan, plan_tiled
from lpd.infer._run import (
    RunSettings,
    TiledProgress,
    TiledResult,
    TiledRun,
    default_read_threads,
)
from lpd.io.store import OutputStore
from lpd.model.lpd_model import LPDModel

__all__ = ["TilePlan", "TiledProgress", "TiledResult", "TiledRun", "RunSettings", "plan_tiled",
           "predict_tiled", "run_tiled", "default_read_threads"]


def run_tiled(gen: Generator[TiledProgress, None, TiledResult]) -> TiledResult:
    """Drive ``predict_tiled`` to the end and return its result."""
    from lpd.progress import drive

    return drive(gen)


def predict_tiled(
    model: LPDModel,
    image: object,
    *,
    region: Sequence[int] | None = None,
    level: int | None = None,
    target_mpp: float | None = None,
    mpp: float | None = None,
    batch_size: int = 8,
    halo: int = 32,
    device: str | torch.device | None = None,
    tissue_threshold: float | None = 0.05,
    protocol: str = "predicted",
    presence: Sequence[bool] | None = None,
    store: OutputStore | str | Path | None = None,
    chunk: int | None = None,
    prototypes: bool = False,
    resume: bool = True,
    keep_scores: bool = False,
    amp: bool = True,
    roi: Sequence[Sequence[float]] | np.ndarray | None = None,
    allow_resample: bool = False,
    plan: TilePlan | None = None,
    read_threads: int | None = None,
) -> Generator[TiledProgress, None, TiledResult]:
    """Segment ``region`` (x, y, w, h in level-0 px; None = all) of ``image`` (an (H, W, 3)
    uint8 array-like or a Slide); see the module docstring. ``mpp``: the image's level-0
    µm/px when it has none. ``tissue_threshold``: minimum tissue fraction of a tile (None =
    no detection). ``presence``: the classes present, applied to every tile instead of the
    model's own presence (``protocol="oracle"`` requires it). ``model`` is put in eval mode
    and moved to ``device`` (None: cuda > mps > cpu); autocast (bf16/fp16) on CUDA if
    ``amp``. ``store``: a path (created, or resumed when ``resume``) or an open store;
    None keeps the labels in memory (small regions); ``chunk``: its chunk size (a multiple
    of the tile; default about 512 px). ``keep_scores`` returns the blended score maps
    too (tests, small regions). ``roi``: a polygon, (N, 2) vertices (x, y) in
    level-0 px (e.g. a QuPath or napari annotation): pixels outside it get label 0 and
    tiles outside it are not computed (``region`` should be its bounding box).
    ``allow_resample``: resample by more than 8x, else refused (``plan_tiled``). ``plan``:
    one ``plan_tiled`` made with the same settings (not made again). ``read_threads``:
    threads decoding the slide (None: ``default_read_threads()``, the usable cores up to
    8); the labels do not depend on it."""
    settings = RunSettings(batch_size, tissue_threshold, protocol, presence, prototypes,
                           keep_scores, amp, read_threads)
    settings.check(model.config.num_classes)
    if plan is None:
        plan = plan_tiled(model, image, region=region, level=level, target_mpp=target_mpp,
                          mpp=mpp, halo=halo, allow_resample=allow_resample)
    run = TiledRun(model, plan, settings, store=store, chunk=chunk, resume=resume, roi=roi,
                   device=device)
    return (yield from run.steps())
