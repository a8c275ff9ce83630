"""The segment widget's background job (no Qt here): resolve the checkpoint (training the
default model only where its shipped weights are missing), plan, run
``lpd.segmentation.segment_iter`` (the one path of the job) into a zarr store, count class
areas. A generator of ``JobEvent``s, run by ``napari_lpd._workers.run_in_worker``.

Output: always a zarr ``OutputStore`` under ``<lpd cache>/runs/`` (memory stays bounded
whatever the slide size; small results are loaded into memory for display afterwards).
A store whose run was cancelled is kept there: running again with the same image file,
region, checkpoint and options resumes from its finished chunks."""

from __future__ import annotations

import math
import shutil
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpd.default_model import cache_dir, default_checkpoint_path, is_cached, train_default_model
from lpd.errors import InputError, StoreMismatch
from lpd.io.checkpoint import load_checkpoint, read_checkpoint_metadata
from lpd.io.export import class_areas
from lpd.io.store import OutputStore
from lpd.progress import relay
from lpd.segmentation import TilePlan, halo_for, plan_tiled, segment_iter
from napari_lpd._layers import IN_MEMORY_MAX

MAX_STORES = 8  # finished or cancelled runs kept in the cache (oldest removed first)
# px a side of the live preview: each repaint re-slices, colours and uploads it whole, so
# its cost grows with its pixels (2048² is a quarter of the 4096² probe in
# docs/architecture.md, Threads and responsiveness)
PREVIEW_MAX = 4096


class Preview:
    """The live preview: the output grid sampled every ``factor`` px."""

    def __init__(self, shape: tuple[int, int], max_side: int = PREVIEW_MAX) -> None:
        self.factor = max(1, math.ceil(max(shape) / max_side))
        f = self.factor
        self.data = np.zeros((math.ceil(shape[0] / f), math.ceil(shape[1] / f)), np.uint8)

    def paint(self, y: int, x: int, labels: np.ndarray) -> tuple[int, int, int, int]:
        """A tile's ``labels`` (h, w) at output-grid pixel (``y``, ``x``) into the preview.
        Returns the preview box painted, (y0, y1, x0, x1) (empty when the tile holds no
        sampled pixel)."""
        f = self.factor
        if f == 1:
            self.data[y : y + labels.shape[0], x : x + labels.shape[1]] = labels
            return y, y + labels.shape[0], x, x + labels.shape[1]
        o = f // 2  # sample the middle pixel of each f x f block
        py, px = math.ceil((y - o) / f), math.ceil((x - o) / f)
        sub = labels[py * f + o - y :: f, px * f + o - x :: f]
        self.data[py : py + sub.shape[0], px : px + sub.shape[1]] = sub
        return py, py + sub.shape[0], px, px + sub.shape[1]


@dataclass
class JobEvent:
    """What the worker yields. ``stage``: "training", "plan" (a new output grid: start a
    fresh preview), "tiles" (finished tiles to paint), "pyramid", "areas"."""

    stage: str
    done: int = 0
    total: int = 1
    text: str = ""
    tiles: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    plan: TilePlan | None = None


@dataclass
class SegmentRequest:
    image: Any  # a slide path (opened here), an array-like or an object with .levels
    mpp: float | None
    region: tuple[int, int, int, int] | None  # (x, y, w, h) level-0 px; None = all
    checkpoint: Path | None  # None: the default model
    device: str
    prototypes: bool
    store: Path
    resume: bool
    roi: Any = None  # (N, 2) polygon vertices (x, y), level-0 px: nothing labelled outside
    mpp_assumed: bool = False  # ``mpp`` is the assumed value, not the slide's
    allow_resample: bool = False  # resample a level more than 8x (plan_tiled refuses else)


@dataclass
class SegmentOutcome:
    store: OutputStore
    plan: TilePlan
    counts: np.ndarray  # pixels per label 0..C
    k: int
    checkpoint: Path
    forward_passes: int
    elapsed: float
    labels: np.ndarray | None = None  # level 0, read here when small (IN_MEMORY_MAX)
    full_passes: int = 0  # passes a run from scratch makes (reused: the difference)
    mpp_assumed: bool = False


def runs_dir() -> Path:
    return cache_dir() / "runs"


def prune_runs(keep: set[Path], limit: int = MAX_STORES) -> None:
    """Remove the oldest run stores beyond ``limit`` (never those in ``keep``)."""
    folder = runs_dir()
    if not folder.is_dir():
        return
    stores = sorted((p for p in folder.glob("*.zarr") if OutputStore.is_store(p)),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in stores[limit:]:
        if old.resolve() not in {k.resolve() for k in keep}:
            shutil.rmtree(old, ignore_errors=True)


def segment_job(req: SegmentRequest) -> Generator[JobEvent, None, SegmentOutcome]:
    """The whole job; closing the generator stops it within one batch or training step."""
    checkpoint = req.checkpoint
    if checkpoint is None:
        checkpoint = default_checkpoint_path()
        if not is_cached():
            checkpoint = yield from _train_default(req.device)
    model = load_checkpoint(checkpoint, device="cpu")
    image = req.image
    slide = None
    if isinstance(image, Path):
        from lpd.wsi.slide import open_slide

        slide = image = open_slide(image)
    try:
        # a slide's own mpp, unless it has none: then the user's value or the assumed one
        mpp = req.mpp if slide is None or slide.mpp is None else None
        plan = plan_tiled(model, image, region=req.region, mpp=mpp, halo=halo_for(model),
                          allow_resample=req.allow_resample)
        req.store.parent.mkdir(parents=True, exist_ok=True)
        resume = req.resume and OutputStore.is_store(req.store)
        yield JobEvent("plan", 0, _tiles(plan), _plan_text(plan), plan=plan)
        if resume:
            yield from _prefill(req.store, plan)
        kwargs = dict(region=req.region, mpp=mpp, device=req.device, out=req.store,
                      prototypes=req.prototypes, roi=req.roi, plan=plan)
        try:
            result = yield from _predict(model, image, resume=resume, **kwargs)
        except StoreMismatch:  # the cached store holds another run: start it afresh
            yield JobEvent("plan", 0, _tiles(plan), _plan_text(plan), plan=plan)
            result = yield from _predict(model, image, resume=False, **kwargs)
    finally:
        if slide is not None:
            slide.close()
    store = result.store
    yield JobEvent("areas", 0, 1, "Measuring class areas")
    counts = np.array([row["pixels"] for row in class_areas(store)], np.int64)
    h, w = store.shape
    labels = np.asarray(store.labels[...]) if h * w <= IN_MEMORY_MAX else None
    return SegmentOutcome(store, plan, counts, model.k, Path(checkpoint),
                          result.forward_passes, result.elapsed, labels, result.full_passes,
                          req.mpp_assumed)


def _tiles(plan: TilePlan) -> int:
    return plan.grid[0] * plan.grid[1]


def _plan_text(plan: TilePlan) -> str:
    h, w = plan.shape
    mpp = f" at {plan.mpp:.3g} µm/px" if plan.mpp else ""
    notes = f" ({'; '.join(plan.notes)})" if plan.notes else ""
    return f"Segmenting {w}×{h} px{mpp}, level {plan.level}{notes}"


def _predict(model, image, resume: bool, **kwargs):
    """``lpd.segmentation.segment_iter``, its progress as ``JobEvent``s."""
    # closing this job closes the tiles' generator (its reader thread stops)
    seg = yield from relay(segment_iter(model, image, resume=resume, **kwargs), _tile_event)
    return seg.result


def _tile_event(p: Any) -> JobEvent:
    if p.stage == "pyramid":
        return JobEvent("pyramid", 0, 1, "Building the label pyramid")
    skipped = f", {p.tiles_skipped} background" if p.tiles_skipped else ""
    return JobEvent("tiles", p.done, p.total, f"Tiles {p.done}/{p.total}{skipped}",
                    tiles=p.tiles)


def _prefill(path: Path, plan: TilePlan) -> Generator[JobEvent, None, None]:
    """Finished chunks of a resumed store, painted first so the preview is not holey."""
    try:
        store = OutputStore.open(path)
    except InputError:
        return
    if tuple(store.shape) != tuple(plan.shape):
        return
    c = store.chunk
    for ci, cj in zip(*np.nonzero(store.finished()), strict=True):
        y, x = int(ci) * c, int(cj) * c
        block = np.asarray(store.labels[y : y + c, x : x + c])
        yield JobEvent("tiles", 0, _tiles(plan), "Resuming: finished chunks", tiles=[(y, x, block)])


def _train_default(device: str) -> Generator[JobEvent, None, Path]:
    def event(p: Any) -> JobEvent:
        eta = f", about {p.eta / 60:.0f} min left" if p.eta >= 60 else f", {p.eta:.0f} s left"
        return JobEvent("training", p.step, p.total,
                        f"Training the default model (its weights are missing): step "
                        f"{p.step}/{p.total}, loss {p.loss:.3f}{eta}")

    # a cancelled training writes no checkpoint (closing this job closes it)
    return Path((yield from relay(train_default_model(device=device), event)))


def default_name() -> str:
    """The default model's name (its checkpoint's metadata), for result layer names."""
    path = default_checkpoint_path()
    try:
        return str(read_checkpoint_metadata(path)[1].get("name") or path.stem)
    except InputError:
        return "default model"


def done_text(outcome: SegmentOutcome) -> str:
    """The status line of a finished run: size, magnification, and the passes made or
    reused (a rerun of identical settings reuses its finished result: it says so)."""
    store = outcome.store
    h, w = store.shape
    mpp = "µm/px unknown" if not store.mpp else f"{store.mpp:.3g} µm/px" + (
        " (assumed)" if outcome.mpp_assumed else "")
    made = outcome.forward_passes
    reused = max(0, outcome.full_passes - made)
    if made == 0 and reused:
        return (f"Done: {w}×{h} px at {mpp}: the finished result of an identical run was "
                f"reused ({reused} of {outcome.full_passes} model passes reused, none made).")
    rate = made / outcome.elapsed if outcome.elapsed > 0 else 0.0
    again = f"; reused {reused} of {outcome.full_passes} passes" if reused else ""
    return (f"Done: {w}×{h} px at {mpp}, {made} model passes in {outcome.elapsed:.1f} s "
            f"({rate:.1f} tiles/s){again}.")


def describe_stage(event: JobEvent) -> str:
    """The progress bar's text for the stage of ``event``."""
    return {"training": "Training the default LPD model", "plan": "LPD segmentation",
            "tiles": "LPD segmentation", "pyramid": "LPD: label pyramid",
            "areas": "LPD: class areas"}.get(event.stage, "LPD")
