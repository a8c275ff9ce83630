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

The steps of a run (``TiledRun``): check the settings and make the plan (``plan_tiled``,
or the one given); open the sink (memory or a store; ``_sink``); classify the tiles and
choose the windows (``_windows``); read windows in a background thread (``_reader``);
forward a batch (``_forward``); blend it and finalise the windows whose neighbours are all
in (``_blend``); hand their tiles to the sink, which writes whole chunks; build the store's
pyramid. The geometry of tiles, windows, cells and chunks is ``lpd.tiling``."""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lpd.errors import InputError
from lpd.infer._blend import ScoreBlender, WindowLabels
from lpd.infer._forward import ModelInput, autocast, forward_maps
from lpd.infer._plan import TilePlan, plan_tiled, tissue_fractions
from lpd.infer._reader import WindowItem, WindowReader
from lpd.infer._roi import inside, roi_polygon, tiles_touching
from lpd.infer._sink import (
    drop_resume_state,
    load_resume_state,
    open_sink,
    save_resume_state,
    tile_cells,
    window_cells,
)
from lpd.infer._windows import FinaliseOrder, TileStates, choose_windows, segments, tile_states
from lpd.infer.device import resolve_device
from lpd.infer.patch import FUSED_SCALES
from lpd.io.store import OutputStore
from lpd.model.lpd_model import LPDModel
from lpd.tiling import tiles_per_chunk
from lpd.wsi.tissue import DEFAULT_SATURATION

__all__ = ["TilePlan", "TiledProgress", "TiledResult", "TiledRun", "RunSettings", "plan_tiled",
           "predict_tiled", "run_tiled"]

Painted = list[tuple[int, int, np.ndarray]]  # (y, x, labels) of finished tiles


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
    tiles: Painted = field(default_factory=list)

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
    one ``plan_tiled`` made with the same settings (not made again)."""
    settings = RunSettings(batch_size, tissue_threshold, protocol, presence, prototypes,
                           keep_scores, amp)
    settings.check(model.config.num_classes)
    if plan is None:
        plan = plan_tiled(model, image, region=region, level=level, target_mpp=target_mpp,
                          mpp=mpp, halo=halo, allow_resample=allow_resample)
    run = TiledRun(model, plan, settings, store=store, chunk=chunk, resume=resume, roi=roi,
                   device=device)
    return (yield from run.steps())


@dataclass(frozen=True)
class RunSettings:
    """The settings of ``predict_tiled`` that shape its labels (kept in a store's
    fingerprint: tissue threshold, protocol, presence) and how it runs."""

    batch_size: int = 8
    tissue_threshold: float | None = 0.05
    protocol: str = "predicted"
    presence: Sequence[bool] | None = None
    prototypes: bool = False
    keep_scores: bool = False
    amp: bool = True

    def check(self, num_classes: int) -> None:
        """Raise an ``InputError`` for a bad batch size, protocol or presence."""
        if self.batch_size < 1:
            raise InputError(None, f"batch_size must be >= 1, got {self.batch_size}")
        if self.protocol not in ("predicted", "oracle"):
            raise InputError(None, f"unknown protocol {self.protocol!r} (predicted or oracle)")
        if self.protocol == "oracle" and self.presence is None:
            raise InputError(None, "the oracle protocol needs the classes present (presence=...)")
        if self.presence is not None and len(self.presence) != num_classes:
            raise InputError(None, f"presence needs {num_classes} values (one per class), "
                             f"got {len(self.presence)}")

    def fingerprint(self, roi: Sequence[Sequence[float]] | np.ndarray | None) -> dict:
        """The settings part of a store's fingerprint (a rerun resumes only when equal)."""
        presence = self.presence
        out: dict = {"tissue_threshold": self.tissue_threshold, "protocol": self.protocol,
                     "presence": None if presence is None else [bool(v) for v in presence]}
        if roi is not None:
            out["roi"] = [[round(float(x), 3), round(float(y), 3)] for x, y in roi]
        return out


class TiledRun:
    """One run of ``predict_tiled`` over a plan; ``steps()`` is its generator.

    Made (inside the generator, so nothing happens before the first ``next``): the
    device, the sink (memory or a store, created or resumed), the tiles to compute and the
    windows to run (``_windows``), the blender (with a resumed store's band). Then
    ``steps`` reads, forwards, blends and finalises batch by batch, and finishes the
    store; its ``finally`` stops the reader and saves what a resume needs."""

    def __init__(self, model: LPDModel, plan: TilePlan, settings: RunSettings, *,
                 store: OutputStore | str | Path | None = None, chunk: int | None = None,
                 resume: bool = True, roi: Sequence[Sequence[float]] | np.ndarray | None = None,
                 device: str | torch.device | None = None) -> None:
        cfg = model.config
        self.model, self.plan, self.settings = model, plan, settings
        self.device = resolve_device(None if device is None else str(device))
        self.grid = plan.tile_grid()
        self.p_stride = plan.strides[-1]  # px per cell of the prototype maps
        self.polygon = roi_polygon(roi, plan)
        self.sink = open_sink(store, model, plan, settings.prototypes, cfg.num_classes * model.k,
                              self.p_stride, resume, settings.fingerprint(roi), chunk)
        self.on_disk = isinstance(self.sink, OutputStore)
        self.scores = (np.zeros((len(FUSED_SCALES), cfg.num_classes, *plan.shape), np.float32)
                       if settings.keep_scores else None)
        self.t0 = time.perf_counter()
        self.tiles, self.saturation, self.lazy = self._classify_tiles()
        self.windows = choose_windows(self.grid, self.tiles, max(plan.strides))
        self.prior = self.sink.passes if self.on_disk else 0  # the store's earlier runs'
        self.recomputed = 0  # windows run again that an earlier run had computed
        self.done, self.skipped, self.passes = int((~self.tiles.todo).sum()), 0, 0
        self._put_known_tiles()
        self.blender = self._blender()
        self.cells: dict[tuple[int, int], np.ndarray] = {}  # prototype cells of windows
        self.to_run = self._restore(self.windows.to_run)
        self.order = FinaliseOrder(self.windows)
        self.sub = [settings.batch_size, 0]  # images per forward call, halved yet

    # ---- set-up ---------------------------------------------------------------------
    def _classify_tiles(self) -> tuple[TileStates, float, bool]:
        """The tiles' states, the tissue saturation threshold, and whether the reader
        judges tissue on the windows' pixels (no low-resolution view)."""
        threshold = self.settings.tissue_threshold
        fractions, saturation = None, DEFAULT_SATURATION
        needed = self.sink.needed_tiles(self.grid.tiles)
        if threshold is not None:
            fractions, saturation = tissue_fractions(self.plan, (self.grid.y, self.grid.x))
        wanted = (None if self.polygon is None
                  else tiles_touching(self.polygon, self.grid.y, self.grid.x))
        tiles = tile_states(needed, fractions, threshold, wanted)
        return tiles, saturation, threshold is not None and fractions is None

    def _put_known_tiles(self) -> None:
        """Label 0 at once for known background tiles and tiles outside the roi."""
        for i, j in zip(*np.nonzero(self.tiles.todo & self.tiles.background), strict=True):
            self._put(int(i), int(j), None, None)
        if self.tiles.outside is not None:
            for i, j in zip(*np.nonzero(self.tiles.outside), strict=True):
                self.sink.put_tile(int(i), int(j), None, None)  # counted as done already

    def _blender(self) -> ScoreBlender:
        cfg, plan, presence = self.model.config, self.plan, self.settings.presence
        return ScoreBlender(
            self.grid.y, self.grid.x, plan.strides, [plan.input_size // s for s in plan.strides],
            cfg.num_classes, self.device, cfg.fusion_weights, cfg.background_power,
            cfg.presence_threshold,
            None if presence is None else torch.as_tensor(list(presence), dtype=torch.bool),
            self.settings.keep_scores,
        )

    def _restore(self, run: np.ndarray) -> np.ndarray:
        """A resume: the interrupted run's band back in the blender; its windows are not
        run again. Returns the windows to run."""
        if self.on_disk:
            again = load_resume_state(self.sink, self.blender, self.cells)
            if again:
                run = run[~np.isin(run, [self.grid.index(r, c) for r, c in again])]
        return run

    # ---- the run ----------------------------------------------------------------------
    def steps(self) -> Generator[TiledProgress, None, TiledResult]:
        """Read, forward, blend and finalise batch by batch; then finish the store."""
        bs = self.settings.batch_size
        reader = WindowReader(
            self.plan.source(), segments(self.to_run, self.grid.windows[1], bs),
            self.grid.window_box, self.grid.tile_boxes, lambda index: self.lazy, bs,
            self.settings.tissue_threshold or 0.0, self.saturation,
        )
        model_input = ModelInput(self.model, self.device)
        was_training = self.model.training
        self.model.eval()
        self.model.to(self.device)
        try:
            reader.start()
            yield from self._batches(reader, model_input)
            yield from self._complete_store()
        finally:
            self._stop(reader, was_training)
        return self._result()

    def _batches(self, reader: WindowReader, model_input: ModelInput
                 ) -> Generator[TiledProgress, None, None]:
        resolved = 0  # windows read (computed or found to be background)
        for batch in reader.batches():
            self._note_background(batch)
            items = [it for it in batch if it.pixels is not None]
            if items:
                self._forward(items, model_input)
            resolved += len(batch)
            pointer = self.to_run[resolved] if resolved < len(self.to_run) else math.inf
            yield self._progress(self._finalise_ready(pointer))
        painted = self._finalise_ready(math.inf)
        if self.order or self.tiles.todo.any():
            raise RuntimeError("tiled inference left tiles unfinished")
        yield self._progress(painted)

    def _note_background(self, batch: list[WindowItem]) -> None:
        """Tiles the reader judged on their pixels (no low-resolution view)."""
        for it in batch:
            if it.tiles_background is not None:
                tiles = self.grid.window_tiles(*self.grid.window(it.index))
                for (i, j), bg in zip(tiles, it.tiles_background, strict=True):
                    self.tiles.background[i, j] = bg

    def _forward(self, items: list[WindowItem], model_input: ModelInput) -> None:
        """Forward a batch of windows and add their class maps to the blender (and keep
        the prototype cells of windows to finalise)."""
        x = model_input([it.pixels for it in items])
        with torch.inference_mode(), autocast(self.device, self.settings.amp):
            cams, protos = forward_maps(self.model, x, self.settings.prototypes, self.sub)
        with torch.inference_mode():
            for b, it in enumerate(items):
                r, c = self.grid.window(it.index)
                self.recomputed += bool(self.windows.settled[r, c])
                self.blender.add(r, c, [m[b] for m in cams])
                if protos is not None and self.windows.finalise[r, c]:
                    self.cells[(r, c)] = window_cells(protos[b], self.grid.y, self.grid.x, r, c,
                                                      self.p_stride)
        self.passes += len(items)

    def _finalise_ready(self, pointer: float) -> Painted:
        """Finalise the windows whose neighbours are all in (every window before
        ``pointer`` was read), hand their tiles over, release the band behind them."""
        painted: Painted = []
        with torch.inference_mode():
            ready = self.order.pop_ready(pointer)
            for win in self.blender.finalise([w for w in ready if w in self.blender.computed]):
                painted += self._finish_window(win)
            for r, c in ready:  # windows found to be background: their tiles are label 0
                if (r, c) not in self.blender.computed:
                    for i, j in self.grid.window_tiles(r, c):
                        if self.tiles.todo[i, j]:
                            self._put(i, j, None, None)
            if self.order:
                self._release()
        return painted

    def _finish_window(self, win: WindowLabels) -> Painted:
        """Hand the tiles to do of a finalised window to the sink (the labels of its own
        tile, cut to the roi; its prototype cells; its scores when kept)."""
        gy, gx = self.grid.y, self.grid.x
        protos = self.cells.get((win.r, win.c))  # kept with the band (a resume's)
        painted: Painted = []
        for i, j in self.grid.window_tiles(win.r, win.c):
            if not self.tiles.todo[i, j]:
                continue
            if self.tiles.background[i, j]:
                self._put(i, j, None, None)
                continue
            (y0, y1), (x0, x1) = gy.tile_span(i), gx.tile_span(j)
            own = (..., slice(y0 - win.y0, y1 - win.y0), slice(x0 - win.x0, x1 - win.x0))
            labels = win.labels[own]
            if self.polygon is not None:
                labels = inside(self.polygon, (y0, y1), (x0, x1)) * labels
            self._put(i, j, labels, tile_cells(protos, gy, gx, i, j, win, self.p_stride))
            painted.append((y0, x0, labels))
            if self.scores is not None and win.scores is not None:
                self.scores[..., y0:y1, x0:x1] = win.scores[own]
        return painted

    def _put(self, i: int, j: int, labels: np.ndarray | None, protos: np.ndarray | None) -> None:
        """Hand tile (i, j) to the sink (labels None: label 0, a skipped tile)."""
        self.sink.put_tile(i, j, labels, protos)
        self.tiles.todo[i, j] = False
        self.done += 1
        self.skipped += labels is None

    def _release(self) -> None:
        """Forget the band rows (and prototype cells) no window still to finalise, nor a
        resume of an unfinished chunk, needs."""
        first = min(self.windows.neighbours_y[self.order.first_row()][0], self._kept_row())
        self.blender.release_before(first)
        for key in [k for k in self.cells if k[0] < first]:
            del self.cells[key]

    def _kept_row(self) -> int:
        """First window row a resume could still need: the neighbours of the earliest
        chunk row not yet finished (kept in the band, so an interruption loses nothing
        that a finished chunk holds)."""
        rows = self.grid.windows[0]
        if not self.on_disk:
            return rows
        open_rows = np.flatnonzero(~self.sink.finished().all(axis=1))
        if not len(open_rows):
            return rows
        per_chunk = tiles_per_chunk(self.sink.chunk, self.sink.tile)
        tile_row = min(int(open_rows[0]) * per_chunk, self.grid.tiles[0] - 1)
        return self.windows.neighbours_y[self.grid.y.tile_windows[tile_row]][0]

    # ---- the end ----------------------------------------------------------------------
    def _complete_store(self) -> Generator[TiledProgress, None, None]:
        """Build a store's pyramid (a progress per row of chunks), then mark it complete."""
        if self.on_disk and not self.sink.complete:
            for _ in self.sink.build_pyramid():
                yield self._progress([], "pyramid")
            self.sink.mark_complete()
            drop_resume_state(self.sink)

    def _stop(self, reader: WindowReader, was_training: bool) -> None:
        """Stop the reader thread, restore the model's mode, record the passes made, and
        keep what was computed when the store is not complete (a resume reuses it)."""
        reader.close()
        self.model.train(was_training)
        if self.on_disk:
            self.sink.record_passes(self.prior + self.passes - self.recomputed)
        if self.on_disk and not self.sink.complete and self.blender.computed:
            save_resume_state(self.sink, self.blender, self.cells)

    def _progress(self, painted: Painted, stage: str = "tiles") -> TiledProgress:
        ty, tx = self.grid.tiles
        return TiledProgress(self.done, ty * tx, self.skipped, self.passes,
                             time.perf_counter() - self.t0, stage, painted)

    def _result(self) -> TiledResult:
        sink, on_disk = self.sink, self.on_disk
        return TiledResult(
            self.plan, sink if on_disk else None, None if on_disk else sink.labels,
            None if on_disk else sink.prototypes, self.scores, self.passes, self.skipped,
            time.perf_counter() - self.t0, max(0, self.prior - self.recomputed),
        )
