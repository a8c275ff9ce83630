"""Cheap tissue detection, so tiled inference can skip the glass around the tissue.

A pixel is tissue when its HSV saturation ``(max - min) / max`` reaches a threshold and it
is not near-black (scanner padding, out-of-slide areas). H&E tissue is pink/purple
(saturation 0.1-0.5); glass is grey-white (about 0.01-0.035 on the sample slides, 0.01-0.03 on
the synthetic slide). The threshold is Otsu's on a low-resolution view of the region,
clipped to ``[SATURATION_FLOOR, SATURATION_CEIL]``: the floor keeps glass out when the view
holds little glass, the ceiling keeps pale stroma in when Otsu splits the tissue itself
(it gives 0.25-0.27 on both sample slides, which would drop pale tissue). Without a
low-resolution view (a lazy array with no pyramid) the fixed ``DEFAULT_SATURATION`` is used.

A tile is skipped when less than ``min_fraction`` of its pixels are tissue. No morphology:
the decision is a per-tile fraction, which already averages out speckle."""

from __future__ import annotations

import numpy as np

SATURATION_FLOOR = 0.05
SATURATION_CEIL = 0.10
DEFAULT_SATURATION = 0.08
DARK_MAX = 30  # max(R, G, B) below this is black padding, not tissue
_BAND_ROWS = 512  # rows per band when scanning a low-resolution view


def saturation_u8(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0..255 (uint8), computed in integers to stay cheap."""
    rgb = np.asarray(rgb)
    mx = rgb.max(axis=-1).astype(np.uint16)
    mn = rgb.min(axis=-1).astype(np.uint16)
    sat = ((mx - mn) * 255 + mx // 2) // np.maximum(mx, 1)
    return sat.astype(np.uint8)


def tissue_mask(rgb: np.ndarray, threshold: float = DEFAULT_SATURATION) -> np.ndarray:
    """Boolean mask of tissue pixels of an RGB uint8 array (..., 3)."""
    rgb = np.asarray(rgb)
    level = int(np.ceil(threshold * 255))
    return (saturation_u8(rgb) >= level) & (rgb.max(axis=-1) >= DARK_MAX)


def tissue_fraction(rgb: np.ndarray, threshold: float = DEFAULT_SATURATION, step: int = 4) -> float:
    """Fraction of tissue pixels, on every ``step``-th pixel (cheap enough for a reader)."""
    sample = np.asarray(rgb)[::step, ::step]
    if sample.size == 0:
        return 0.0
    return float(tissue_mask(sample, threshold).mean())


def otsu_saturation(histogram: np.ndarray) -> float:
    """Otsu's threshold of a 256-bin saturation histogram, clipped to floor..ceil (0..1)."""
    hist = np.asarray(histogram, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return DEFAULT_SATURATION
    levels = np.arange(hist.size, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    t = (int(np.argmax(between)) + 1) / 255.0  # pixels >= t+1 are the upper class
    return float(np.clip(t, SATURATION_FLOOR, SATURATION_CEIL))


def tile_tissue_fractions(
    view: object,
    rows: np.ndarray,
    cols: np.ndarray,
    tile: int,
    grid: tuple[int, int],
    threshold: float | None = None,
) -> tuple[np.ndarray, float]:
    """Tissue fraction of every output tile from a low-resolution ``view`` (H, W, 3).

    ``rows``/``cols``: the output-pixel coordinate of each view row/column's centre (NaN or
    out-of-range values are ignored). Returns (fractions (ty, tx), with NaN for tiles no view
    pixel falls in, and the saturation threshold used: ``threshold``, or Otsu's on the
    view). The view is read in bands twice (histogram, then mask), so memory stays at one
    band."""
    ty, tx = grid
    rows = np.asarray(rows, dtype=np.float64)
    cols = np.asarray(cols, dtype=np.float64)
    tile_of_col = np.floor(cols / tile)
    col_ok = np.isfinite(tile_of_col) & (tile_of_col >= 0) & (tile_of_col < tx)
    col_index = np.where(col_ok, tile_of_col, 0).astype(np.int64)
    if threshold is None:
        hist = np.zeros(256, np.int64)
        for start in range(0, len(rows), _BAND_ROWS):
            band = _band(view, start, min(start + _BAND_ROWS, len(rows)))[:, col_ok]
            hist += _histogram(band)
        threshold = otsu_saturation(hist)
    tissue = np.zeros(ty * tx, np.int64)
    count = np.zeros(ty * tx, np.int64)
    for start in range(0, len(rows), _BAND_ROWS):
        stop = min(start + _BAND_ROWS, len(rows))
        tile_of_row = np.floor(rows[start:stop] / tile)
        row_ok = np.isfinite(tile_of_row) & (tile_of_row >= 0) & (tile_of_row < ty)
        if not row_ok.any():
            continue
        band = _band(view, start, stop)[row_ok][:, col_ok]
        mask = tissue_mask(band, threshold)
        flat = (tile_of_row[row_ok].astype(np.int64)[:, None] * tx + col_index[col_ok][None, :])
        tissue += np.bincount(flat.ravel(), weights=mask.ravel(), minlength=ty * tx).astype(
            np.int64
        )
        count += np.bincount(flat.ravel(), minlength=ty * tx)
    with np.errstate(divide="ignore", invalid="ignore"):
        fractions = np.where(count > 0, tissue / np.maximum(count, 1), np.nan)
    return fractions.reshape(ty, tx), threshold


def _histogram(rgb: np.ndarray) -> np.ndarray:
    """256-bin saturation histogram of the pixels that are not near-black."""
    bright = rgb.max(axis=-1) >= DARK_MAX
    return np.bincount(saturation_u8(rgb)[bright].ravel(), minlength=256)


def saturation_threshold(rgb: np.ndarray) -> float:
    """Otsu's saturation threshold (clipped, see the module docstring) of an RGB view."""
    return otsu_saturation(_histogram(np.asarray(rgb)[..., :3]))


def _band(view: object, start: int, stop: int) -> np.ndarray:
    part = view[start:stop]  # type: ignore[index]
    compute = getattr(part, "compute", None)
    if compute is not None:  # dask: read in this thread, not in dask's pool
        part = compute(scheduler="synchronous")
    return np.asarray(part)
