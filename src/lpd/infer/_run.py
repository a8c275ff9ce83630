"""One run of tiled inference over a plan (``TiledRun``), its settings and what it yields.

``lpd.infer.tiled.predict_tiled`` makes the plan and a ``TiledRun``, whose ``steps()`` is
the generator: the reader thread (``_reader``) assembles batches of windows from blocks
read by its decoding threads; each batch is forwarded (``_forward``), its class maps added
to the blender (``_blend``), the windows whose neighbours are all in are finalised as one
batch of tensor operations on the model's device (uint8 labels come back), and their tiles
go to the sink (``_sink``; a store is written by its own thread). See
``lpd.infer.tiled`` for the definitions and ``docs/throughput.md`` for what it costs."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lpd.errors import InputError
from lpd.infer._blend import ScoreBlender, WindowLabels
from lpd.infer._forward import ModelInput, autocast, forward_maps
from lpd.infer._plan import TilePlan, tissue_fractions
from lpd.infer._reader import WindowBatch, WindowReader
from lpd.infer._roi import inside, roi_key, roi_polygon, tiles_touching
from lpd.infer._sink import (
    StoreWriter,
    drop_resume_state,
    load_resume_state,
    open_sink,
    save_resume_state,
    tile_cells,
    window_cells,
)
from lpd.infer._windows import FinaliseOrder, TileStates, choose_windows, tile_states
from lpd.infer.device import resolve_device
from lpd.infer.patch import FUSED_SCALES
from lpd.io.store import OutputStore
from lpd.model.lpd_model import LPDModel
from lpd.tiling import tiles_per_chunk
from lpd.wsi.tissue import DEFAULT_SATURATION

Painted = list[tuple[int, int, np.ndarray]]  # (y, x, labels) of finished tiles
MAX_READ_THREADS = 8


def default_read_threads() -> int:
    """Decoding threads of the reader: the usable cores, at most ``MAX_READ_THREADS`` (they
    wait while the model computes; JPEG decoding releases the GIL)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_READ_THREADS, cores))


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


@dataclass(frozen=True)
class RunSettings:
    """The settings of ``predict_tiled`` that shape its labels (kept in a store's
    fingerprint: tissue threshold, protocol, presence) and how it runs (batch size,
    prototypes, scores kept, autocast, decoding threads: None = ``default_read_threads``)."""

    batch_size: int = 8
    tissue_threshold: float | None = 0.05
    protocol: str = "predicted"
    presence: Sequence[bool] | None = None
    prototypes: bool = False
    keep_scores: bool = False
    amp: bool = True
    read_threads: int | None = None

    def check(self, num_classes: int) -> None:
        """Raise an ``InputError`` for a bad batch size, protocol, presence or threads."""
        if self.batch_size < 1:
            raise InputError(None, f"batch_size must be >= 1, got {self.batch_size}")
        if self.read_threads is not None and self.read_threads < 1:
            raise InputError(None, f"read_threads must be >= 1, got {self.read_threads}")
        if self.protocol not in ("predicted", "oracle"):
            raise InputError(None, f"unknown protocol {self.protocol!r} (predicted or oracle)")
        if self.protocol == "oracle" and self.presence is None:
            raise InputError(None, "the oracle protocol needs the classes present (presence=...)")
        if self.presence is not None and len(self.presence) != num_classes:
            raise InputError(None, f"presence needs {num_classes} values (one per class), "
                             f"got {len(self.presence)}")

    def fingerprint(self, roi: object | None) -> dict:
        """The settings part of a store's fingerprint (a rerun resumes only when equal)."""
        presence = self.presence
        out: dict = {"tissue_threshold": self.tissue_threshold, "protocol": self.protocol,
                     "presence": None if presence is None else [bool(v) for v in presence]}
        if roi is not None:
            out["roi"] = roi_key(roi)
        return out


class TiledRun:
    """One run of ``predict_tiled`` over a plan; ``steps()`` is its generator.

    Made (inside the generator, so nothing happens before the first ``next``): the
    device, the sink (memory or a store, created or resumed), the tiles to compute and the
    windows to run (``_windows``), the blender (with a resumed store's band). Then
    ``steps`` reads, forwards, blends and finalises batch by batch, and finishes the
    store; its ``finally`` stops the reader and the writer and saves what a resume needs."""

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
        self.writer: StoreWriter | None = None  # started with the steps
        self._handover: list[tuple] = []  # tiles for the writer, handed over per step
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

    def _reader(self) -> WindowReader:
        bs, cuda = self.settings.batch_size, self.device.type == "cuda"
        return WindowReader(
            self.plan.source(), self.to_run, self.grid.window_box, self.grid.tile_boxes,
            lambda index: self.lazy, bs, self.settings.tissue_threshold or 0.0,
            self.saturation, threads=self.settings.read_threads or default_read_threads(),
            phase=self.plan.phase, pin_memory=cuda, ahead=2 if cuda else 1,
        )

    # ---- the run ----------------------------------------------------------------------
    def steps(self) -> Generator[TiledProgress, None, TiledResult]:
        """Read, forward, blend and finalise batch by batch; then finish the store."""
        reader = self._reader()
        model_input = ModelInput(self.model, self.device)
        was_training = self.model.training
        self.model.eval()
        self.model.to(self.device)
        if self.on_disk:
            self.writer = StoreWriter(self.sink)
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
            if batch.pixels.shape[0]:
                self._forward(batch, model_input)
            resolved += len(batch.items)
            pointer = self.to_run[resolved] if resolved < len(self.to_run) else math.inf
            yield self._progress(self._finalise_ready(pointer))
        painted = self._finalise_ready(math.inf)
        if self.order or self.tiles.todo.any():
            raise RuntimeError("tiled inference left tiles unfinished")
        if self.writer is not None:
            self.writer.flush()  # the last "tiles" event: every tile is in the store
        yield self._progress(painted)

    def _note_background(self, batch: WindowBatch) -> None:
        """Tiles the reader judged on their pixels (no low-resolution view)."""
        for it in batch.items:
            if it.tiles_background is not None:
                tiles = self.grid.window_tiles(*self.grid.window(it.index))
                for (i, j), bg in zip(tiles, it.tiles_background, strict=True):
                    self.tiles.background[i, j] = bg

    def _forward(self, batch: WindowBatch, model_input: ModelInput) -> None:
        """Forward a batch of windows and add their class maps to the blender (and keep
        the prototype cells of windows to finalise)."""
        x = model_input(batch.pixels)
        with torch.inference_mode(), autocast(self.device, self.settings.amp):
            cams, protos = forward_maps(self.model, x, self.settings.prototypes, self.sub)
        windows = [self.grid.window(it.index) for it in batch.items if it.computed]
        with torch.inference_mode():
            self.blender.add_batch(windows, cams)
            if protos is not None:
                protos = protos.to(torch.float16).cpu()  # one copy back per batch
        for b, (r, c) in enumerate(windows):
            self.recomputed += bool(self.windows.settled[r, c])
            if protos is not None and self.windows.finalise[r, c]:
                self.cells[(r, c)] = window_cells(protos[b], self.grid.y, self.grid.x, r, c,
                                                  self.p_stride)
        self.passes += len(windows)

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
            if self.writer is not None and self._handover:  # one hand-over per step
                self.writer.put_tiles(self._handover)
                self._handover = []
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
        """Hand tile (i, j) to the sink (labels None: label 0, a skipped tile); to the
        store's writer at the end of the step (``_finalise_ready``)."""
        if self.writer is not None:
            self._handover.append((i, j, labels, protos))
        else:
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
        finished = (self.writer or self.sink).finished()  # the writer's may lag: keeps more
        open_rows = np.flatnonzero(~finished.all(axis=1))
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
        """Stop the reader thread, write the tiles handed over, restore the model's mode,
        record the passes made, and keep what was computed when the store is not complete
        (a resume reuses it)."""
        reader.close()
        try:
            if self.writer is not None:
                self.writer.close(self._handover)  # (with the tiles of a step cut short)
        finally:
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
