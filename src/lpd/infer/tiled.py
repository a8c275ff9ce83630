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
- Tissue: tiles with less than ``tissue_threshold`` tissue (``tissue.py``) are skipped:
  label 0, no forward pass, no part in the blending.
- Prototypes (optional): the deepest scale's per-prototype logit maps, central cells of
  each tile's own window (nearest cell, not blended: a heatmap for viewing).

``predict_tiled`` is a generator: it yields a ``TiledProgress`` per batch (with the tiles
finished in it, for painting) and returns a ``TiledResult``. Closing it (or dropping it)
stops the reader thread within one batch; a store then stays incomplete and a rerun with
``resume=True`` recomputes only unfinished chunks (plus the overlapping neighbour windows
their blending needs, so a resumed result equals an uninterrupted one)."""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lpd.errors import InputError
from lpd.infer._blend import ScoreBlender
from lpd.infer._forward import autocast, forward_maps
from lpd.infer._plan import TilePlan, plan_tiled, tissue_fractions
from lpd.infer._reader import WindowReader
from lpd.infer._roi import inside, roi_polygon, tiles_touching
from lpd.infer._sink import (
    drop_resume_state,
    load_resume_state,
    open_sink,
    save_resume_state,
    tile_cells,
    window_cells,
)
from lpd.infer.device import resolve_device
from lpd.infer.patch import FUSED_SCALES
from lpd.infer.tissue import DEFAULT_SATURATION
from lpd.io.store import OutputStore
from lpd.model.lpd_model import LPDModel

__all__ = ["TilePlan", "TiledProgress", "TiledResult", "plan_tiled", "predict_tiled", "run_tiled"]


@dataclass
class TiledProgress:
    """Yielded once per batch. ``tiles``: (y, x, labels) of the output tiles finished in
    this batch, in output pixels of the region (background-skipped tiles not included)."""

    done: int
    total: int
    tiles_skipped: int
    forward_passes: int
    elapsed: float
    stage: str = "tiles"  # "tiles", then "pyramid" while a store's pyramid is built
    tiles: list[tuple[int, int, np.ndarray]] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class TiledResult:
    plan: TilePlan
    store: OutputStore | None  # the store, when one was given
    labels: np.ndarray | None  # (H, W) uint8 when no store was given
    prototypes: np.ndarray | None  # (P, h, w) float16 when asked and no store was given
    scores: np.ndarray | None  # (S, C, H, W) blended score maps when keep_scores
    forward_passes: int
    tiles_skipped: int
    elapsed: float
    reused_passes: int = 0  # passes of the store's earlier runs not made again

    @property
    def full_passes(self) -> int:
        """Passes the whole result took, over this run and the store's earlier ones."""
        return self.forward_passes + self.reused_passes


def run_tiled(gen: Generator[TiledProgress, None, TiledResult]) -> TiledResult:
    """Drive ``predict_tiled`` to the end and return its result."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


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
) -> Generator[TiledProgress, None, TiledResult]:
    """Segment ``region`` (x, y, w, h in level-0 px; None = all) of ``image`` (an (H, W, 3)
    uint8 array-like or a Slide); see the module docstring. ``mpp``: the image's level-0
    µm/px when it has none. ``tissue_threshold``: minimum tissue fraction of a tile (None =
    no detection). ``presence``: the classes present, applied to every tile instead of the
    model's own presence (``protocol="oracle"`` requires it). ``model`` is put in eval mode
    and moved to ``device`` (None: cuda > mps > cpu); autocast (bf16/fp16) on CUDA if ``amp``. ``store``: a path (created, or resumed when ``resume``) or an open store;
    None keeps the labels in memory (small regions); ``chunk``: its chunk size (a multiple
    of the tile; default about 512 px). ``keep_scores`` returns the blended
    score maps too (tests, small regions). ``roi``: a polygon, (N, 2) vertices (x, y) in
    level-0 px (e.g. a QuPath or napari annotation): pixels outside it get label 0 and
    tiles outside it are not computed (``region`` should be its bounding box).
    ``allow_resample``: resample by more than 8x, else refused (``plan_tiled``). ``plan``:
    one ``plan_tiled`` made with the same settings (not made again)."""
    if batch_size < 1:
        raise InputError(None, f"batch_size must be >= 1, got {batch_size}")
    if protocol not in ("predicted", "oracle"):
        raise InputError(None, f"unknown protocol {protocol!r} (predicted or oracle)")
    if protocol == "oracle" and presence is None:
        raise InputError(None, "the oracle protocol needs the classes present (presence=...)")
    cfg = model.config
    if presence is not None and len(presence) != cfg.num_classes:
        raise InputError(None, f"presence needs {cfg.num_classes} values (one per class), "
                         f"got {len(presence)}")
    if plan is None:
        plan = plan_tiled(model, image, region=region, level=level, target_mpp=target_mpp,
                          mpp=mpp, halo=halo, allow_resample=allow_resample)
    dev = resolve_device(None if device is None else str(device))
    gy, gx = plan.axis_grids()
    ty, tx = gy.count, gx.count
    wy, wx = len(gy.starts), len(gx.starts)
    p_count = cfg.num_classes * model.k
    p_stride = plan.strides[-1]
    polygon = roi_polygon(roi, plan)
    settings = {"tissue_threshold": tissue_threshold, "protocol": protocol,
                "presence": None if presence is None else [bool(v) for v in presence]}
    if polygon is not None:
        settings["roi"] = [[round(float(x), 3), round(float(y), 3)] for x, y in roi]
    sink = open_sink(store, model, plan, prototypes, p_count, p_stride, resume, settings,
                     chunk)
    on_disk = isinstance(sink, OutputStore)
    scores_out = (np.zeros((len(FUSED_SCALES), cfg.num_classes, *plan.shape), np.float32)
                  if keep_scores else None)
    t0 = time.perf_counter()
    # tiles: todo (not in a finished chunk), background (known now, or found by the reader)
    needed = sink.needed_tiles((ty, tx))  # tiles not in a finished chunk
    todo = needed.copy()
    fractions, saturation = None, DEFAULT_SATURATION
    if tissue_threshold is not None:
        fractions, saturation = tissue_fractions(plan, (gy, gx))
    background = np.zeros((ty, tx), bool)
    if fractions is not None:  # NaN (no view pixel in the tile): computed, to be safe
        background = np.nan_to_num(fractions, nan=1.0) < tissue_threshold
    wanted = np.ones((ty, tx), bool)  # tiles inside the roi (all without one)
    outside = None
    if polygon is not None:  # tiles outside the polygon: label 0 at once, never finalised
        wanted = tiles_touching(polygon, gy, gx)  # (their windows still feed the
        outside = ~wanted & todo  # blending of the tiles inside: same labels as without)
        todo &= ~outside
    lazy = tissue_threshold is not None and fractions is None
    twy, twx = np.array(gy.tile_windows), np.array(gx.tile_windows)
    # windows to finalise: those holding a tile to compute; needed: those and their
    # neighbours (blending), minus windows whose tiles are all known background
    finalise_w = np.zeros((wy, wx), bool)
    ii, jj = np.nonzero(todo & ~background)
    finalise_w[twy[ii], twx[jj]] = True
    all_bg = np.ones((wy, wx), bool)
    ii, jj = np.nonzero(~background)
    all_bg[twy[ii], twx[jj]] = False
    margin = max(plan.strides)
    nb_y = [gy.neighbours(r, margin) for r in range(wy)]
    nb_x = [gx.neighbours(c, margin) for c in range(wx)]
    candidates = np.flatnonzero((_dilate(finalise_w, nb_y, nb_x) & ~all_bg).ravel())
    # windows all of whose tiles a finished chunk holds: computed before, for sure
    settled = np.ones((wy, wx), bool)
    ii, jj = np.nonzero(needed)
    settled[twy[ii], twx[jj]] = False
    prior = sink.passes if on_disk else 0  # the store's earlier runs'
    recomputed = [0]
    stats = {"done": int((~todo).sum()), "skipped": 0, "passes": 0}

    def put(i: int, j: int, labels: np.ndarray | None, protos: np.ndarray | None) -> None:
        sink.put_tile(i, j, labels, protos)
        todo[i, j] = False
        stats["done"] += 1
        stats["skipped"] += labels is None

    for i, j in zip(*np.nonzero(todo & background), strict=True):
        put(int(i), int(j), None, None)
    if outside is not None:
        for i, j in zip(*np.nonzero(outside), strict=True):
            sink.put_tile(int(i), int(j), None, None)  # counted as done above
    blender = ScoreBlender(
        gy, gx, plan.strides, [plan.input_size // s for s in plan.strides], cfg.num_classes,
        dev, cfg.fusion_weights, cfg.background_power, cfg.presence_threshold,
        None if presence is None else torch.as_tensor(list(presence), dtype=torch.bool),
        keep_scores,
    )
    cells: dict[tuple[int, int], np.ndarray] = {}  # prototype cells of computed windows
    if on_disk:  # a resume: what the interrupted run computed is not computed again
        again = load_resume_state(sink, blender, cells)
        if again:
            candidates = candidates[~np.isin(candidates, [r * wx + c for r, c in again])]
    pending = {r: [int(c) for c in np.flatnonzero(finalise_w[r])] for r in range(wy)}
    pending = {r: cs for r, cs in pending.items() if cs}
    hi_y = [rng[-1] for rng in nb_y]
    hi_x = [rng[-1] for rng in nb_x]

    def finalise_ready(pointer: float) -> list[tuple[int, int, np.ndarray]]:
        ready = []
        for r in sorted(pending):
            if hi_y[r] * wx >= pointer:
                break
            cs = pending[r]
            while cs and hi_y[r] * wx + hi_x[cs[0]] < pointer:
                ready.append((r, cs.pop(0)))
            if not cs:
                del pending[r]
        painted = []
        done = blender.finalise([w for w in ready if w in blender.computed])
        for win in done:
            protos = cells.get((win.r, win.c))  # kept with the band (a resume's)
            for i in gy.window_tiles[win.r]:
                for j in gx.window_tiles[win.c]:
                    if not todo[i, j]:
                        continue
                    if background[i, j]:
                        put(i, j, None, None)
                        continue
                    (y0, y1), (x0, x1) = gy.tile_span(i), gx.tile_span(j)
                    labels = win.labels[y0 - win.y0 : y1 - win.y0, x0 - win.x0 : x1 - win.x0]
                    if polygon is not None:
                        labels = inside(polygon, (y0, y1), (x0, x1)) * labels
                    put(i, j, labels, tile_cells(protos, gy, gx, i, j, win, p_stride))
                    painted.append((y0, x0, labels))
                    if scores_out is not None and win.scores is not None:
                        scores_out[..., y0:y1, x0:x1] = win.scores[
                            ..., y0 - win.y0 : y1 - win.y0, x0 - win.x0 : x1 - win.x0]
        for r, c in ready:  # windows found to be background: their tiles are label 0
            if (r, c) not in blender.computed:
                for i in gy.window_tiles[r]:
                    for j in gx.window_tiles[c]:
                        if todo[i, j]:
                            put(i, j, None, None)
        if pending:
            first = min(nb_y[min(pending)][0], kept_row())
            blender.release_before(first)
            for key in [k for k in cells if k[0] < first]:
                del cells[key]
        return painted

    def kept_row() -> int:
        """First window row a resume could still need: the neighbours of the earliest
        chunk row not yet finished (kept in the band, so an interruption loses nothing
        that a finished chunk holds)."""
        if not on_disk:
            return wy
        open_rows = np.flatnonzero(~sink.finished().all(axis=1))
        if not len(open_rows):
            return wy
        tile_row = min(int(open_rows[0]) * (sink.chunk // sink.tile), ty - 1)
        return nb_y[gy.tile_windows[tile_row]][0]

    def window_box(index: int) -> tuple[int, int, int, int]:
        r, c = divmod(index, wx)
        return (gy.starts[r], gy.starts[r] + gy.size, gx.starts[c], gx.starts[c] + gx.size)

    def tile_boxes(index: int) -> list[tuple[int, int, int, int]]:
        r, c = divmod(index, wx)
        return [(*gy.tile_extent(i), *gx.tile_extent(j))
                for i in gy.window_tiles[r] for j in gx.window_tiles[c]]

    reader = WindowReader(
        plan.source(), _segments(candidates, wx, batch_size), window_box, tile_boxes,
        lambda index: lazy, batch_size, tissue_threshold or 0.0, saturation,
    )
    from lpd.data.sources import normalizer_for

    normalizer = normalizer_for(model.config)  # the stain normalisation it trained with
    mean, std = model.normalisation()
    shift = torch.tensor(mean, device=dev).view(1, 3, 1, 1) * 255.0
    div = torch.tensor(std, device=dev).view(1, 3, 1, 1) * 255.0
    was_training = model.training
    model.eval()
    model.to(dev)
    resolved = 0
    sub = [batch_size, 0]  # images per forward call, halved yet; halved once on OOM
    try:
        reader.start()
        for batch in reader.batches():
            items = [it for it in batch if it.pixels is not None]
            for it in batch:
                if it.tiles_background is not None:
                    r, c = divmod(it.index, wx)
                    tiles = [(i, j) for i in gy.window_tiles[r] for j in gx.window_tiles[c]]
                    for (i, j), bg in zip(tiles, it.tiles_background, strict=True):
                        background[i, j] = bg
            if items:
                pixels = [it.pixels if normalizer is None else normalizer.transform(it.pixels)
                          for it in items]
                x = torch.from_numpy(np.stack(pixels)).to(dev)
                x = (x.permute(0, 3, 1, 2).float() - shift) / div
                with torch.inference_mode(), autocast(dev, amp):
                    cams, protos = forward_maps(model, x, prototypes, sub)
                with torch.inference_mode():
                    for b, it in enumerate(items):
                        r, c = divmod(it.index, wx)
                        recomputed[0] += bool(settled[r, c])
                        blender.add(r, c, [m[b] for m in cams])
                        if protos is not None and finalise_w[r, c]:
                            cells[(r, c)] = window_cells(protos[b], gy, gx, r, c, p_stride)
                stats["passes"] += len(items)
            resolved += len(batch)
            pointer = candidates[resolved] if resolved < len(candidates) else math.inf
            with torch.inference_mode():
                painted = finalise_ready(pointer)
            yield TiledProgress(stats["done"], ty * tx, stats["skipped"], stats["passes"],
                                time.perf_counter() - t0, "tiles", painted)
        with torch.inference_mode():
            painted = finalise_ready(math.inf)
        if pending or todo.any():
            raise RuntimeError("tiled inference left tiles unfinished")
        yield TiledProgress(stats["done"], ty * tx, stats["skipped"], stats["passes"],
                            time.perf_counter() - t0, "tiles", painted)
        if on_disk and not sink.complete:
            for _ in sink.build_pyramid():
                yield TiledProgress(stats["done"], ty * tx, stats["skipped"], stats["passes"],
                                    time.perf_counter() - t0, "pyramid")
            sink.mark_complete()
            drop_resume_state(sink)
    finally:
        reader.close()
        model.train(was_training)
        if on_disk:
            sink.record_passes(prior + stats["passes"] - recomputed[0])
        if on_disk and not sink.complete and blender.computed:
            save_resume_state(sink, blender, cells)  # stopped: keep what was computed
    return TiledResult(
        plan, sink if on_disk else None, None if on_disk else sink.labels,
        None if on_disk else sink.prototypes, scores_out, stats["passes"], stats["skipped"],
        time.perf_counter() - t0, max(0, prior - recomputed[0]),
    )


def _dilate(mask: np.ndarray, nb_y: list[range], nb_x: list[range]) -> np.ndarray:
    """Windows overlapping any True window of ``mask`` (overlap is symmetric, so this is a
    dilation by each window's neighbour range), via a summed-area table."""
    sat = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    lo_y = np.array([r[0] for r in nb_y])
    hi_y = np.array([r[-1] + 1 for r in nb_y])
    lo_x = np.array([r[0] for r in nb_x])
    hi_x = np.array([r[-1] + 1 for r in nb_x])
    total = (sat[hi_y][:, hi_x] - sat[lo_y][:, hi_x] - sat[hi_y][:, lo_x] + sat[lo_y][:, lo_x])
    return total > 0


def _segments(candidates: np.ndarray, tx: int, size: int):
    """Runs of adjacent candidate windows in one grid row, at most ``size`` long."""
    run: list[int] = []
    for index in candidates.tolist():
        if run and (index != run[-1] + 1 or index // tx != run[-1] // tx or len(run) == size):
            yield run
            run = []
        run.append(index)
    if run:
        yield run
