"""Training losses: multi-scale classification, prototype diversity, optional FG/BG
contrastive. Each takes an ``LPDOutput`` (or its parts) and returns a scalar tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def classification_loss(
    class_logits: Sequence[torch.Tensor], tags: torch.Tensor, weights: Sequence[float]
) -> torch.Tensor:
    """Sum over scales of w_s * BCE-with-logits(class scores, image-level tags)."""
    if len(weights) != len(class_logits):
        raise ValueError(f"{len(weights)} weights for {len(class_logits)} scales")
    total = class_logits[0].new_zeros(())
    for w, logits in zip(weights, class_logits, strict=True):
        if w:
            total = total + w * F.binary_cross_entropy_with_logits(logits.float(), tags.float())
    return total


def diversity_pseudo_mask(
    cams: torch.Tensor, tags: torch.Tensor, background_score: float
) -> torch.Tensor:
    """Pseudo-mask for the diversity loss: 0 background, 1..C classes.

    Argmax of the per-image min-max normalised class CAMs, restricted to the image's tagged
    classes, against a background channel at a fixed score (docs/method.md, Definitions)."""
    cams = cams.detach().float().relu()
    flat = cams.flatten(2)
    lo = flat.min(dim=2).values[..., None, None]
    hi = flat.max(dim=2).values[..., None, None]
    norm = (cams - lo) / (hi - lo).clamp_min(1e-6)
    norm = norm.masked_fill(tags[..., None, None] <= 0, -1.0)
    bg = torch.full_like(norm[:, :1], background_score)
    return torch.cat([bg, norm], dim=1).argmax(dim=1)


def jeffrey_similarity(v: torch.Tensor) -> torch.Tensor:
    """Mean over pairs i<j of exp(-(KL(v_i||v_j) + KL(v_j||v_i))) for rows of ``v`` (k, n),
    each a probability distribution; 1 for identical rows, -> 0 for disjoint ones."""
    k = v.shape[0]
    logv = v.clamp_min(1e-12).log()
    # KL(v_i||v_j) = sum v_i (log v_i - log v_j)
    cross = v @ logv.T  # [i, j] = sum_u v_i log v_j
    self_term = cross.diagonal()
    kl = self_term[:, None] - cross  # [i, j] = KL(v_i || v_j)
    sym = kl + kl.T
    iu = torch.triu_indices(k, k, offset=1, device=v.device)
    return torch.exp(-sym[iu[0], iu[1]]).mean()


def diversity_loss(
    cos_map: torch.Tensor,
    pseudo_mask: torch.Tensor,
    num_classes: int,
    k: int,
    tau: float = 10.0,
    mode: str = "correct",
) -> torch.Tensor:
    """L_div: Jeffrey's similarity between the k prototypes' activation distributions
    ``v_k = softmax_{u in Omega_c}(tau * cos(F(u), p_k))`` inside each present class region,
    averaged over present classes, then over images that have one.

    ``cos_map``: (B, C*k, h, w) cosines at the deepest scale (the learned logit temperature
    is not involved, so this loss cannot shrink it). ``pseudo_mask``: (B, h, w) with 0 for
    background and 1..C for classes.
    ``mode="released"`` reproduces the reference code: region ``mask == c`` (off by one, so
    the background is regularised as class 0 and NEC never) and a double softmax without
    temperature."""
    if mode not in ("correct", "released"):
        raise ValueError(f"unknown diversity mode {mode!r}")
    if k < 2:
        return cos_map.new_zeros(())
    b = cos_map.shape[0]
    per_image = []
    for i in range(b):
        sims = []
        flat_cos = cos_map[i].float().flatten(1)  # (C*k, n)
        flat_mask = pseudo_mask[i].flatten()
        for c in range(num_classes):
            region = flat_mask == (c if mode == "released" else c + 1)
            if int(region.sum()) < 2:
                continue
            logits = flat_cos[c * k : (c + 1) * k][:, region]
            if mode == "released":
                v = logits.softmax(dim=1).softmax(dim=1)
            else:
                v = (tau * logits).softmax(dim=1)
            sims.append(jeffrey_similarity(v))
        if sims:
            per_image.append(torch.stack(sims).mean())
    if not per_image:
        return cos_map.new_zeros(())
    return torch.stack(per_image).mean()


class ContrastiveLoss(nn.Module):
    """Optional FG/BG InfoNCE (L_sim): each tagged class's mean prototype should be closer
    to a frozen encoder's embedding of the CAM-masked foreground crop than to the
    background crops of the batch. The encoder is frozen; a linear map brings prototypes
    into its space."""

    def __init__(self, encoder: nn.Module, prototype_dim: int, temperature: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        embed_dim = int(getattr(encoder, "num_features", 0)) or _probe_dim(encoder)
        self.to_embedding = nn.Linear(prototype_dim, embed_dim)
        self.temperature = temperature

    def train(self, mode: bool = True) -> ContrastiveLoss:
        super().train(mode)
        self.encoder.eval()  # frozen: BN statistics never move
        return self

    def forward(
        self,
        images: torch.Tensor,
        cams: torch.Tensor,
        tags: torch.Tensor,
        prototypes: torch.Tensor,
        k: int,
    ) -> torch.Tensor:
        cams = cams.detach().float().relu()
        cams = cams / cams.flatten(2).max(dim=2).values[..., None, None].clamp_min(1e-6)
        cams = F.interpolate(cams, size=images.shape[-2:], mode="bilinear", align_corners=False)
        idx_b, idx_c = torch.nonzero(tags > 0, as_tuple=True)
        if idx_b.numel() == 0:
            return images.new_zeros(())
        masks = cams[idx_b, idx_c][:, None]
        with torch.no_grad():
            fg = F.normalize(self.encoder(images[idx_b] * masks), dim=1)
            bg = F.normalize(self.encoder(images[idx_b] * (1 - masks)), dim=1)
        class_protos = prototypes.view(-1, k, prototypes.shape[-1]).mean(dim=1)
        q = F.normalize(self.to_embedding(class_protos[idx_c]), dim=1)
        pos = (q * fg).sum(dim=1, keepdim=True)
        neg = q @ bg.T
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def _probe_dim(encoder: nn.Module) -> int:
    with torch.no_grad():
        return int(encoder(torch.zeros(1, 3, 64, 64)).shape[1])
