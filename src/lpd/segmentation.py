"""Segment a slide: the one code path of the job (``lpd.segment`` and friends).

``segment_iter`` (a generator: progress per tile batch, the ``Segmentation`` as its return
value) is what ``lpd predict``, ``lpd batch``, the demo, fine-tune's re-segmentation and the
Segment widget all run; ``segment`` drives it to the end for scripts. Steps:

1. the model: an ``LPDModel``, a checkpoint path, or ``"default"`` (``load_model``);
2. the image: a path (opened here with ``lpd.open_slide`` and closed at the end), a
   ``Slide`` or an (H, W, 3) uint8 array-like;
3. the plan (level, magnification, output grid; ``plan_tiled``, re-exported here with
   ``TilePlan``: code outside ``lpd.infer`` reaches tiled inference through this module);
4. the store: ``out`` (resumed when it holds the same prediction, else ``StoreMismatch``
   unless ``resume=False``), or a temporary one the ``Segmentation`` owns;
5. the tiles (``predict_tiled``); closing the generator stops within one batch, finished
   chunks stay in ``out`` for a resume."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lpd.errors import InputError
from lpd.infer.tiled import TiledProgress, TiledResult, TilePlan, plan_tiled, predict_tiled
from lpd.io.roi import as_roi
from lpd.io.store import OutputStore
from lpd.model.lpd_model import LPDModel
from lpd.progress import drive

__all__ = ["Segmentation", "TilePlan", "TiledProgress", "TiledResult", "halo_for", "load_model",
           "plan_tiled", "read_labels", "segment", "segment_iter"]


def load_model(checkpoint: str | Path | LPDModel = "default", device: str = "auto",
               on_progress: Callable[[Any], None] | None = None) -> LPDModel:
    """A model, in eval mode, on ``device``.

    Parameters
    ----------
    checkpoint : str or Path or LPDModel
        A ``.safetensors`` checkpoint, or ``"default"``: the shipped default model
        (``lpd info default`` describes it). A model is returned as it is (moved).
    device : str
        ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    on_progress : callable, optional
        Progress of training the default model where its weights are missing (a stripped
        install); never called otherwise.

    Returns
    -------
    LPDModel

    Raises
    ------
    InputError
        A missing, unreadable or unsafe checkpoint (``CheckpointError``), or a bad device.
    """
    from lpd.infer.device import resolve_device
    from lpd.io.checkpoint import load_checkpoint

    dev = resolve_device(device)
    if isinstance(checkpoint, LPDModel):
        return checkpoint.to(dev).eval()
    if str(checkpoint).lower() == "default":
        from lpd.default_model import default_checkpoint

        checkpoint = default_checkpoint(on_progress=on_progress, device=str(dev))
    return load_checkpoint(Path(checkpoint), device=dev)


def halo_for(model: LPDModel) -> int:
    """The halo (px of context around each output tile) a model gets when none is given:
    32, or 16 for inputs under 128 px, where it must stay below a quarter of the input."""
    return 32 if model.config.input_size >= 128 else 16


@dataclass
class Segmentation:
    """The result of ``segment``: a prediction store and what it was made from.

    Attributes
    ----------
    store : OutputStore
        Labels pyramid (uint8, 0 background, 1..C classes) and optional prototype maps.
    plan : TilePlan
        Level, magnification, region and grid of the run.
    result : TiledResult
        Forward passes, skipped tiles, time.
    owns_store : bool
        The store is temporary (``out=None``) and is deleted by ``close``.
    name : str
        What exports are called: the slide's file stem (with ``_x.._y.._w.._h..`` for a
        region), else the store's name.
    """

    store: OutputStore
    plan: TilePlan
    result: TiledResult
    owns_store: bool = False
    name: str = "segmentation"

    @property
    def mpp(self) -> float | None:
        """Microns per pixel of the labels' level 0 (None when the slide has none)."""
        return self.store.mpp

    @property
    def class_names(self) -> list[str]:
        return list(self.store.class_names)

    def labels(self, level: int = 0):
        """The label image of a pyramid level, lazily (a zarr array (H, W) uint8; index it
        or ``numpy.asarray`` it to read)."""
        return self.store.level(level)

    def areas(self) -> dict[str, float]:
        """Area per class: µm² when the microns per pixel are known, else pixels.

        Returns
        -------
        dict
            Class name -> area (background not included).
        """
        from lpd.io.export import class_areas

        rows = class_areas(self.store, allow_incomplete=True)[1:]
        key = "area_um2" if self.mpp else "pixels"
        return {r["class"]: float(r[key]) for r in rows}

    def close(self) -> None:
        """Delete the store when it is a temporary one; a store given as ``out`` stays."""
        if self.owns_store:
            shutil.rmtree(Path(self.store.path).parent, ignore_errors=True)
            self.owns_store = False

    def __enter__(self) -> Segmentation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def segment_iter(
    model: LPDModel | str | Path,
    image: Any,
    *,
    region: Sequence[int] | None = None,
    level: int | None = None,
    target_mpp: float | None = None,
    mpp: float | None = None,
    out: str | Path | None = None,
    prototypes: bool = False,
    device: str = "auto",
    resume: bool = True,
    roi: Any = None,
    batch_size: int = 8,
    halo: int | None = None,
    tissue_threshold: float | None = 0.05,
    allow_resample: bool = False,
    plan: TilePlan | None = None,
) -> Generator[TiledProgress, None, Segmentation]:
    """Segment ``image`` (see the module docstring), yielding progress per tile batch.

    Parameters
    ----------
    model : LPDModel or str or Path
        The model, a checkpoint, or ``"default"``.
    image : str or Path or Slide or array-like
        A slide file, an open ``Slide``, or an (H, W, 3) uint8 array.
    region : (x, y, w, h), optional
        Level-0 pixels; default the whole image.
    level : int, optional
        Pyramid level to read; default the one closest to the model's magnification.
    target_mpp : float, optional
        Work at this magnification instead of the model's (µm/px).
    mpp : float, optional
        The image's level-0 µm/px: overrides a file's when ``image`` is a path, else used
        where the image has none.
    out : str or Path, optional
        The store (``.zarr``), kept; default a temporary one, deleted by
        ``Segmentation.close``.
    prototypes : bool
        Also store per-prototype activation maps (float16).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    resume : bool
        Continue ``out`` when it holds the same unfinished prediction; False replaces it.
    roi : (N, 2) array-like or shapely geometry or Roi, optional
        Polygon (x, y) in level-0 px, or (Multi)Polygons with holes (e.g. QuPath
        annotations: ``lpd.io.roi.Roi``): nothing labelled outside it.
    batch_size : int
        Windows per forward pass.
    halo : int, optional
        Context px around each output tile; default ``halo_for(model)``.
    tissue_threshold : float or None
        Minimum tissue fraction of a tile to compute it (None: every tile).
    allow_resample : bool
        Resample the level by more than 8x either way (usually a wrong µm/px).
    plan : TilePlan, optional
        A plan already made with the same settings (not computed again).

    Returns
    -------
    Segmentation
        As the generator's return value (``StopIteration.value``).

    Raises
    ------
    InputError
        Bad file, region, level, magnification; ``StoreMismatch`` when ``out`` holds
        another prediction and ``resume`` is True.
    """
    from lpd.wsi.slide import open_slide

    net = load_model(model, device) if not isinstance(model, LPDModel) else model
    halo = halo_for(net) if halo is None else int(halo)
    slide = open_slide(image, mpp=mpp) if isinstance(image, (str, Path)) else None
    owned = out is None
    target = Path(tempfile.mkdtemp(prefix="lpd-segment-")) / "labels.zarr" if owned \
        else Path(out)
    try:
        source = slide if slide is not None else image
        given_mpp = None if slide is not None else mpp
        options = dict(region=region, level=level, target_mpp=target_mpp, mpp=given_mpp,
                       halo=halo, allow_resample=allow_resample)
        if plan is None:
            plan = plan_tiled(net, source, **options)  # type: ignore[arg-type]
        result = yield from predict_tiled(
            net, source, **options, batch_size=batch_size, device=device if device != "auto"
            else None, tissue_threshold=tissue_threshold, store=target,
            prototypes=prototypes, resume=resume and not owned, roi=as_roi(roi), plan=plan)
    except BaseException:
        if owned:
            shutil.rmtree(target.parent, ignore_errors=True)
        raise
    finally:
        if slide is not None:
            slide.close()
    if result.store is None:  # never: a store was given
        raise InputError(target, "no store was written")
    return Segmentation(result.store, result.plan, result, owns_store=owned,
                        name=_name(image, region, target))


def _name(image: Any, region: Sequence[int] | None, store: Path) -> str:
    """Export name: the slide's stem (plus the region), else the store's."""
    path = image if isinstance(image, (str, Path)) else getattr(image, "path", None)
    if path is None:
        return store.name.removesuffix(".zarr")
    stem = Path(path).stem
    if region is not None:
        x, y, w, h = (int(v) for v in region)
        stem += f"_x{x}_y{y}_w{w}_h{h}"
    return stem


def segment(model: LPDModel | str | Path, image: Any, *,
            on_progress: Callable[[TiledProgress], None] | None = None,
            should_stop: Callable[[], bool] | None = None, **options: Any) -> Segmentation:
    """Segment ``image`` and return the ``Segmentation`` (blocking).

    Takes ``segment_iter``'s parameters, plus:

    Parameters
    ----------
    on_progress : callable, optional
        Called with each ``TiledProgress`` (``done`` / ``total`` tiles).
    should_stop : callable, optional
        Asked after each batch; True stops the run (``lpd.errors.Cancelled``), keeping the
        finished chunks of ``out`` for a resume.

    Returns
    -------
    Segmentation
        Use it as a context manager (or call ``close``) to delete a temporary store.

    Examples
    --------
    >>> import lpd
    >>> seg = lpd.segment("default", "slide.svs", region=(0, 0, 2048, 2048))  # doctest: +SKIP
    >>> seg.areas()  # doctest: +SKIP
    {'TUM': 5.1e5, 'STR': 1.9e5, 'LYM': 2.2e4, 'NEC': 0.0}
    """
    return drive(segment_iter(model, image, **options), on_progress, should_stop)


def read_labels(segmentation: Segmentation, level: int = 0) -> np.ndarray:
    """A pyramid level's labels as a numpy array (H, W) uint8 (small stores only)."""
    return np.asarray(segmentation.labels(level)[...])
