"""Heads over the backbone's feature levels.

``PrototypeHead`` is LPD's: one learnable bank ``P`` of C*k prototypes (class-major rows),
a small MLP per scale projecting P to that scale's width, a learnable temperature per scale
and cosine logit maps ``A_s = tau_s * cos(F_s, proj_s(P))``.
``CAMHead`` is the plain CAM baseline: a 1x1 classifier per scale (k = 1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PrototypeHead(nn.Module):
    def __init__(
        self,
        channels: list[int],
        num_classes: int,
        prototypes_per_class: int,
        prototype_dim: int = 256,
        projection_hidden: int = 256,
        init_temperature: float = 1 / 0.07,
        freeze_prototypes: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.k = prototypes_per_class
        self.prototypes = nn.Parameter(torch.randn(num_classes * self.k, prototype_dim))
        self.prototypes.requires_grad_(not freeze_prototypes)
        self.projections = nn.ModuleList(
            nn.Sequential(
                nn.Linear(prototype_dim, projection_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(projection_hidden, c),
            )
            for c in channels
        )
        # log-parameterised so it stays positive
        self.log_temperature = nn.Parameter(
            torch.full((len(channels),), math.log(init_temperature))
        )

    def projected(self) -> list[torch.Tensor]:
        """``proj_s(P)`` for every scale: (C*k, D_s)."""
        return [proj(self.prototypes) for proj in self.projections]

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Cosine maps per scale (B, C*k, h, w) and the temperatures (S,)."""
        cos_maps = []
        for feat, protos in zip(features, self.projected(), strict=True):
            f = F.normalize(feat.float(), dim=1)
            p = F.normalize(protos.float(), dim=1)
            cos_maps.append(torch.einsum("bdhw,pd->bphw", f, p))
        return cos_maps, self.log_temperature.exp()


class CAMHead(nn.Module):
    """Global-pooling classifier per scale; its logit maps are the classic CAMs."""

    def __init__(self, channels: list[int], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.k = 1
        self.classifiers = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [clf(feat.float()) for clf, feat in zip(self.classifiers, features, strict=True)]
