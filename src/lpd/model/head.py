"""Heads over the backbone's feature levels.

``PrototypeHead`` is LPD's: one learnable bank ``P`` of C*k prototypes (class-major rows),
a small MLP per scale projecting P to that scale's width, a learnable temperature per scale
and cosine logit maps ``A_s = tau_s * cos(F_s, proj_s(P))``.
``BankHead`` is the PBIP-style fixed bank: per-scale prototypes set once (k-means
centroids, ``lpd.model.prototype_bank``) and never trained; only the temperatures learn.
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
        return cosine_maps(features, self.projected()), self.log_temperature.exp()


def cosine_maps(features: list[torch.Tensor], prototypes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per scale, cos(F_s(u), p) for every prototype row p: (B, P, h, w)."""
    maps = []
    for feat, protos in zip(features, prototypes, strict=True):
        f = F.normalize(feat.float(), dim=1)
        p = F.normalize(protos.float(), dim=1)
        maps.append(torch.einsum("bdhw,pd->bphw", f, p))
    return maps


class BankHead(nn.Module):
    """A fixed prototype bank: one (C*k, D_s) buffer per scale, class-major rows, used
    directly (no projection) and never trained; learnable temperature per scale.

    Buffers, not parameters: no optimizer or DDP reducer sees them, and checkpoints carry
    them. Random until ``set_bank`` installs the centroids."""

    def __init__(
        self,
        channels: list[int],
        num_classes: int,
        prototypes_per_class: int,
        init_temperature: float = 1 / 0.07,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.k = prototypes_per_class
        self.num_scales = len(channels)
        for s, c in enumerate(channels):
            self.register_buffer(f"bank{s}", torch.randn(num_classes * self.k, c))
        self.log_temperature = nn.Parameter(
            torch.full((len(channels),), math.log(init_temperature))
        )

    def projected(self) -> list[torch.Tensor]:
        """The per-scale prototypes: (C*k, D_s)."""
        return [getattr(self, f"bank{s}") for s in range(self.num_scales)]

    @property
    def prototypes(self) -> torch.Tensor:
        """The deepest scale's bank (what code reading ``head.prototypes`` can show)."""
        return self.projected()[-1]

    @torch.no_grad()
    def set_bank(self, banks: list[torch.Tensor]) -> None:
        """Install per-scale prototypes (e.g. k-means centroids); shapes must match."""
        if len(banks) != self.num_scales:
            raise ValueError(f"{len(banks)} banks for {self.num_scales} scales")
        for s, bank in enumerate(banks):
            target = getattr(self, f"bank{s}")
            if tuple(bank.shape) != tuple(target.shape):
                raise ValueError(f"scale {s}: bank {tuple(bank.shape)}, expected "
                                 f"{tuple(target.shape)}")
            target.copy_(bank.to(target))

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        return cosine_maps(features, self.projected()), self.log_temperature.exp()


class CAMHead(nn.Module):
    """Global-pooling classifier per scale; its logit maps are the classic CAMs."""

    def __init__(self, channels: list[int], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.k = 1
        self.classifiers = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [clf(feat.float()) for clf, feat in zip(self.classifiers, features, strict=True)]
