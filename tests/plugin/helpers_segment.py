"""Shared set-up of the plugin's GUI tests (plain functions; each test module wraps them in
fixtures): a tiny checkpoint, a small real H&E image, waiting for a worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lpd.io.checkpoint import save_checkpoint
from lpd.model import create_model
from napari_lpd._sample_data import cmu_region_array


def tiny_checkpoint(folder: Path, microns_per_pixel: float | None = None,
                    seed: int = 0) -> Path:
    """resnet18, 2 prototypes per class, 64 px input: fast on CPU, untrained (random)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = create_model("resnet18", prototypes_per_class=2, input_size=64,
                         microns_per_pixel=microns_per_pixel)
    return save_checkpoint(folder / "tiny.safetensors", model)


def small_he(size: tuple[int, int] = (192, 256)) -> np.ndarray:
    """A real H&E crop (CMU-1), ``size`` (H, W)."""
    full = cmu_region_array(crop=512)
    return np.ascontiguousarray(full[100 : 100 + size[0], 100 : 100 + size[1]])


def wait_for(qtbot, handle, timeout: int = 60_000) -> None:
    """Wait until a RunHandle's worker has finished (signals delivered)."""
    qtbot.waitUntil(lambda: not handle.running, timeout=timeout)
    qtbot.wait(50)  # queued finished/returned signals
