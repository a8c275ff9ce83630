"""The per-tile label step of tiled inference, as few passes over the maps as the
arithmetic allows.

``labels_from_scores`` (``lpd.infer.patch``) normalises each fused scale's class map to
[0, 1] by its window-wide min and max, weights and sums the scales, gates absent classes
and compares the best class with a background score. Folded (``fusion_terms``), per pixel::

    fused_c = sum_s scale_sc * relu(x_sc) + offset_c      (s in order: ((x0 + x1) + x2))
    best    = max_c fused_c
    label   = first argmax_c + 1  if best > (1 - max(best, 0)) ** p  else 0

``ScoreBlender`` streams the scales: each upsampled scale is added into one (B, C, h, w)
sum as soon as it is made (``add_scale``), while it is still in the cache, instead of
keeping all S x C planes and passing over them again. The products, the order of the
additions and every rounding are those of the earlier formulation (a test checks it bit
for bit); only the number of passes over memory and the temporary tensors went."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def fusion_terms(lo: torch.Tensor, hi: torch.Tensor, presence: torch.Tensor,
                 fusion_weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` (B, S, C) and ``offset`` (B, C) of the folded fusion.

    Parameters
    ----------
    lo, hi : torch.Tensor
        (B, S, C) the window-wide min and max of each scale's raw class map.
    presence : torch.Tensor
        (B, C) bool, the classes present.
    fusion_weights : sequence of float
        One weight per fused scale (``ModelConfig.fusion_weights``).

    Returns
    -------
    tuple of torch.Tensor
        ``scale = w_s / sum(w) / max(relu(hi) - relu(lo), 1e-6)``, 0 for absent classes,
        and ``offset = -sum_s scale * relu(lo)``, -1 for absent classes (their candidate
        value in ``labels_from_scores``).
    """
    presence = presence.bool()
    weights = torch.tensor(fusion_weights, dtype=lo.dtype, device=lo.device)
    scale = weights[None, :, None] / weights.sum() / (hi.relu() - lo.relu()).clamp_min(1e-6)
    scale = scale * presence[:, None, :]  # (B, S, C)
    offset = -(scale * lo.relu()).sum(dim=1)  # (B, C)
    return scale, offset.masked_fill(~presence, -1.0)


def add_scale(fused: torch.Tensor, plane: torch.Tensor, scale: torch.Tensor, first: bool
              ) -> None:
    """Add one scale's term ``scale * relu(plane)`` into ``fused`` (both (B, C, h, w));
    ``plane`` is overwritten. ``first``: ``fused`` is ``plane`` itself (the first scale)."""
    plane.relu_().mul_(scale[..., None, None])
    if not first:
        fused.add_(plane)


def labels_of_fused(fused: torch.Tensor, offset: torch.Tensor, background_power: float,
                    best: torch.Tensor | None = None) -> torch.Tensor:
    """The labels (B, h, w) uint8 of the fused sums (B, C, h, w) (``offset`` (B, C) is added
    in place): 0 where the best class does not beat the background
    ``(1 - max(best, 0)) ** p``, else the first best class + 1 (what ``max(dim=1)``
    returns; NaN maps give 0). ``best``: a (B, h, w) float32 tensor to reuse, or None.

    On the CPU the comparisons run in numpy (torch's comparisons into bool run 5-10x
    slower there), and the background is computed only when some ``best`` lies in
    ``background_band``'s band (or above 1): elsewhere the comparison's outcome is known.
    On a GPU, float32 tensor operations (no value is read back)."""
    fused.add_(offset[..., None, None])
    best = torch.amax(fused, dim=1, out=best)
    if fused.device.type == "cpu":
        return torch.from_numpy(_labels_numpy(fused.numpy(), best, background_power))
    background = best.clamp_min(0).neg_().add_(1).pow_(background_power)  # (1 - b) ** p
    return _labels_torch(fused, best, background)


def _labels_torch(fused: torch.Tensor, best: torch.Tensor, background: torch.Tensor
                  ) -> torch.Tensor:
    """``labels_of_fused`` in float32 tensor operations (the GPU's way); ``background`` is
    overwritten."""
    keep = torch.gt(best, background, out=background)
    count = fused.shape[1]
    first = torch.eq(fused[:, 0], best, out=torch.empty_like(best)).mul_(count)
    equal = torch.empty_like(best)
    for c in range(1, count):  # max_c (count - c) [fused_c == best]: the first best class
        torch.maximum(first, torch.eq(fused[:, c], best, out=equal).mul_(count - c), out=first)
    return first.neg_().add_(count + 1).mul_(keep).to(torch.uint8)


def _labels_numpy(fused: np.ndarray, best_t: torch.Tensor, power: float) -> np.ndarray:
    """``labels_of_fused`` on the CPU: ``fused`` (B, C, h, w) float32, ``best_t`` its max
    over classes (a tensor, for torch's power when it is needed)."""
    best = best_t.numpy()
    keep = np.empty(best.shape, bool)
    band = background_band(power)
    if band is None or _needs_background(best, band):
        background = best_t.clamp_min(0).neg_().add_(1).pow_(power)  # (1 - b) ** p, torch's
        np.greater(best, background.numpy(), out=keep)
    else:  # outside the band: best > background iff best > the band's centre
        np.greater(best, np.float32(band[0]), out=keep)
    count = fused.shape[1]
    equal, step = np.empty(best.shape, bool), np.empty(best.shape, np.uint8)
    first = np.multiply(np.equal(fused[:, 0], best, out=equal), np.uint8(count))
    for c in range(1, count):  # max_c (count - c) [fused_c == best]: the first best class
        np.maximum(first, np.multiply(np.equal(fused[:, c], best, out=equal),
                                      np.uint8(count - c), out=step), out=first)
    np.subtract(np.uint8(count + 1), first, out=first)
    return np.multiply(first, keep, out=first)


def _needs_background(best: np.ndarray, band: tuple[float, float, float]) -> bool:
    """Whether some ``best`` lies within ``band``'s [low, high] or above 1 (NaN does not:
    it gives label 0 both ways)."""
    inside = np.greater_equal(best, np.float32(band[1]))
    inside &= np.less_equal(best, np.float32(band[2]))
    return bool(inside.any() or np.greater(best, np.float32(1.0)).any())


_BANDS: dict[float, tuple[float, float, float] | None] = {}


def background_band(power: float) -> tuple[float, float, float] | None:
    """(centre, low, high), float32 values, of a band [low, high] of ``best`` outside which
    ``best > (1 - max(best, 0)) ** power`` in float32 has a known outcome: False below it,
    True above it up to 1 (there: ``best > centre``); None when there is no such band
    (power <= 0 or not finite).

    ``h(b) = b - (1 - b) ** p`` increases on [0, 1] with one root ``t`` (bisection in
    float64). The float32 background is ``(1 - b) ** p`` within a relative error of
    ``(|p| + 8) 2**-23`` (``1 - b`` rounded: ``p`` half-ulps; ``pow``: at most 1 ulp, Sleef
    u10 or the C library, doubled for margin); the band's half-width is widened until
    that error cannot change the comparison at either edge (checked in float64)."""
    if power in _BANDS:
        return _BANDS[power]
    band = None
    if math.isfinite(power) and power > 0:
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mid - (1 - mid) ** power < 0 else (lo, mid)
        t, rel = (lo + hi) / 2, (abs(power) + 8) * 2.0**-23
        delta = rel * max(t, 1e-30)
        for _ in range(60):
            below, above = t - delta, t + delta
            if (below < 0 or (1 - below) ** power * (1 - rel) > below) and \
                    (1 - above) ** power * (1 + rel) < above:
                break
            delta *= 2
        else:
            delta = math.inf
        centre, low, high = (np.float32(v) for v in (t, t - delta, t + delta))
        if float(low) > t - delta:  # rounded outwards: the band holds [t - delta, t + delta]
            low = np.nextafter(low, np.float32(-np.inf))
        if float(high) < t + delta:
            high = np.nextafter(high, np.float32(np.inf))
        if math.isfinite(delta) and 0 <= low < centre < high <= 1:
            band = (float(centre), float(low), float(high))
    _BANDS[power] = band
    return band


def labels_on_part(
    part: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    presence: torch.Tensor,
    fusion_weights: Sequence[float],
    background_power: float,
) -> torch.Tensor:
    """``labels_from_scores`` on part of a window, given the window's per-(scale, class)
    min ``lo`` and max ``hi`` (B, S, C) of the raw scores. ``part`` (B, S, C, h, w) is
    overwritten. Same arithmetic as ``labels_from_scores``, folded (agrees to float
    rounding; a test checks it); bit for bit what ``ScoreBlender`` computes."""
    scale, offset = fusion_terms(lo, hi, presence, fusion_weights)
    fused = part[:, 0]
    for k in range(part.shape[1]):
        add_scale(fused, part[:, k], scale[:, k], k == 0)
    return labels_of_fused(fused, offset, background_power)
