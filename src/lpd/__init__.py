"""LPD: learnable class prototypes with diversity regularization for weakly supervised
segmentation of H&E histopathology. The core library; it never imports a GUI toolkit.

The public face (what a script needs; everything else is infrastructure)::

    import lpd
    model = lpd.load_model("default")
    with lpd.segment(model, "slide.svs", region=(0, 0, 4096, 4096)) as seg:
        print(seg.areas())
        lpd.export(seg, "results/")

- ``load_model``: a checkpoint (or the shipped default model) on a device;
- ``open_slide``: a slide or image as a lazy pyramid with its microns per pixel;
- ``segment`` / ``segment_iter``: segment a slide (blocking / a generator of progress),
  giving a ``Segmentation`` (store, lazy label levels, mpp, class names, ``areas()``);
- ``export``: label TIFF, QuPath GeoJSON and area CSV of a segmentation or store (the
  GeoJSON's options as keywords: ``class_names``, ``object_type``, ``min_area_um2``,
  ``compress``);
- ``train`` / ``evaluate``: training and scoring with the command line's options as
  keyword arguments.

Names load on first use, so ``import lpd`` stays light (no torch)."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_model": "lpd.segmentation",
    "segment": "lpd.segmentation",
    "segment_iter": "lpd.segmentation",
    "Segmentation": "lpd.segmentation",
    "open_slide": "lpd.wsi.slide",
    "export": "lpd.io.formats",
    "train": "lpd.training",
    "evaluate": "lpd.evaluation",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'lpd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
