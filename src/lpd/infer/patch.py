"""From model outputs to label maps (docs/method.md, Inference on a patch).

Two steps, kept apart so tiled inference can blend between them:
1. ``score_maps``: the raw class logit maps of the fused scales, upsampled to the input
   size: (B, S, C, H, W). Nothing per-image has happened yet, so overlapping tiles blend.
2. ``labels_from_scores``: per image (or per model-sized tile of a slide) ReLU, per-class
   min-max, presence gating, weighted fusion, background channel ``(1 - max)^p`` and an
   argmax restricted to the classes judged present. Labels: 0 background, 1..C classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lpd.model.lpd_model import LPDModel, LPDOutput

FUSED_SCALES = (1, 2, 3)  # the last three of the four levels (cam2, cam3, cam4)


def score_maps(output: LPDOutput, size: tuple[int, int]) -> torch.Tensor:
    """Class logit maps of the fused scales upsampled to ``size``: (B, S, C, H, W), float32."""
    maps = [
        F.interpolate(output.cams[s].float(), size=size, mode="bilinear", align_corners=False)
        for s in FUSED_SCALES
    ]
    return torch.stack(maps, dim=1)


def presence_logits(scores: torch.Tensor) -> torch.Tensor:
    """Class scores (B, C) from score maps: the spatial mean of the deepest scale's map,
    i.e. the model's image-level class score, also for a tile cut out of a blended map."""
    return scores[:, -1].mean(dim=(-2, -1))


def predicted_presence(scores: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Classes judged present (B, C) bool: sigmoid(score) >= threshold, else the top one."""
    logits = presence_logits(scores)
    present = logits.sigmoid() >= threshold
    top = F.one_hot(logits.argmax(dim=1), logits.shape[1]).bool()
    none = ~present.any(dim=1, keepdim=True)
    return present | (none & top)


def labels_from_scores(
    scores: torch.Tensor,
    presence: torch.Tensor,
    fusion_weights: Sequence[float] = (0.3, 0.3, 0.4),
    background_power: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label map (B, H, W) uint8 and the fused, gated class maps (B, C, H, W) in [0, 1]."""
    presence = presence.bool()
    cams = scores.float().relu()
    flat = cams.flatten(3)
    lo = flat.min(dim=3).values[..., None, None]
    hi = flat.max(dim=3).values[..., None, None]
    cams = (cams - lo) / (hi - lo).clamp_min(1e-6)
    cams = cams * presence[:, None, :, None, None]
    weights = torch.tensor(fusion_weights, dtype=cams.dtype, device=cams.device)
    fused = (cams * weights[None, :, None, None, None]).sum(dim=1) / weights.sum()
    background = (1 - fused.max(dim=1, keepdim=True).values).clamp_min(0) ** background_power
    candidates = fused.masked_fill(~presence[..., None, None], -1.0)
    labels = torch.cat([background, candidates], dim=1).argmax(dim=1)
    return labels.to(torch.uint8), fused


@dataclass
class PatchPrediction:
    labels: torch.Tensor  # (B, H, W) uint8, 0 background, 1..C classes
    class_maps: torch.Tensor  # (B, C, H, W) fused gated maps in [0, 1]
    presence: torch.Tensor  # (B, C) bool
    class_probabilities: torch.Tensor  # (B, C) sigmoid of the class scores
    output: LPDOutput


def predict_patches(
    model: LPDModel,
    images: torch.Tensor,
    protocol: str = "predicted",
    tags: torch.Tensor | None = None,
) -> PatchPrediction:
    """Segment a batch of normalised patches (B, 3, H, W).

    ``protocol="predicted"`` gates classes by the model's own presence (what a user has);
    ``"oracle"`` by the given image tags (the published protocol). The model runs in eval
    mode whatever its mode (BatchNorm running statistics, test-time flips); its mode is
    restored afterwards."""
    cfg = model.config
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            output = model(images)
    finally:
        model.train(was_training)
    with torch.inference_mode():
        scores = score_maps(output, tuple(images.shape[-2:]))
        if protocol == "oracle":
            if tags is None:
                raise ValueError("the oracle protocol needs image tags")
            presence = tags.to(scores.device) > 0
        elif protocol == "predicted":
            presence = predicted_presence(scores, cfg.presence_threshold)
        else:
            raise ValueError(f"unknown protocol {protocol!r} (predicted or oracle)")
        labels, fused = labels_from_scores(
            scores, presence, cfg.fusion_weights, cfg.background_power
        )
        probs = presence_logits(scores).sigmoid()
    return PatchPrediction(labels, fused, presence, probs, output)
