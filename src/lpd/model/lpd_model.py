"""The full model: backbone -> head -> per-scale maps, scores and CAMs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lpd.config import ModelConfig
from lpd.model.backbone import create_backbone
from lpd.model.head import BankHead, CAMHead, PrototypeHead


@dataclass
class LPDOutput:
    """Everything one forward pass gives, per scale (shallowest first).

    ``proto_maps[s]``: logit maps A_s (B, C*k, h, w), class-major channels;
    ``cos_maps[s]``: the cosines behind them (prototype head) or None (CAM head);
    ``proto_scores[s]``: global average pool of A_s (B, C*k);
    ``class_logits[s]``: class scores (B, C); ``cams[s]``: class maps (B, C, h, w) whose
    spatial mean is the class score; ``features[s]``: backbone features (B, D_s, h, w)."""

    proto_maps: list[torch.Tensor]
    cos_maps: list[torch.Tensor] | None
    proto_scores: list[torch.Tensor]
    class_logits: list[torch.Tensor]
    cams: list[torch.Tensor]
    features: list[torch.Tensor]


class LPDModel(nn.Module):
    def __init__(self, config: ModelConfig, pretrained: bool | str = False) -> None:
        super().__init__()
        self.config = config
        self.backbone = create_backbone(config.backbone, pretrained, config.output_stride)
        channels = list(self.backbone.feature_info.channels())
        self.channels = channels
        if config.head == "prototype":
            self.head: nn.Module = PrototypeHead(
                channels,
                config.num_classes,
                config.prototypes_per_class,
                config.prototype_dim,
                config.projection_hidden,
                config.init_temperature,
                config.freeze_prototypes,
            )
        elif config.head == "bank":
            self.head = BankHead(
                channels, config.num_classes, config.prototypes_per_class, config.init_temperature
            )
        elif config.head == "cam":
            self.head = CAMHead(channels, config.num_classes)
        else:
            raise ValueError(
                f"unknown head {config.head!r} (expected 'prototype', 'bank' or 'cam')"
            )

    @property
    def k(self) -> int:
        return self.head.k

    def forward(self, images: torch.Tensor) -> LPDOutput:
        """Every output of the model for a batch (B, 3, H, W), normalised.

        In eval mode with ``config.test_time_flips`` the batch also goes through the model
        flipped left-right, up-down and both; the four outputs are flipped back and
        averaged (test-time augmentation; four times the compute)."""
        if self.training or not self.config.test_time_flips:
            return self._forward(images)
        flips = ((), (3,), (2,), (2, 3))
        batch = torch.cat([images.flip(d) if d else images for d in flips])
        out = self._forward(batch)
        b = images.shape[0]

        def spatial(maps: list[torch.Tensor]) -> list[torch.Tensor]:
            return [torch.stack([m[i * b:(i + 1) * b].flip(d) if d else m[:b]
                                 for i, d in enumerate(flips)]).mean(0) for m in maps]

        def pooled(values: list[torch.Tensor]) -> list[torch.Tensor]:
            return [v.view(len(flips), b, *v.shape[1:]).mean(0) for v in values]

        return LPDOutput(spatial(out.proto_maps),
                         None if out.cos_maps is None else spatial(out.cos_maps),
                         pooled(out.proto_scores), pooled(out.class_logits),
                         spatial(out.cams), spatial(out.features))

    def _forward(self, images: torch.Tensor) -> LPDOutput:
        features = self.backbone(images)
        if isinstance(self.head, (PrototypeHead, BankHead)):
            cos_maps, temperatures = self.head(features)
            proto_maps = [t * c for t, c in zip(temperatures, cos_maps, strict=True)]
        else:
            cos_maps = None
            proto_maps = self.head(features)
        proto_scores = [m.mean(dim=(2, 3)) for m in proto_maps]
        class_logits, cams = [], []
        for maps, scores in zip(proto_maps, proto_scores, strict=True):
            weights = self._prototype_weights(scores)  # (B, C, k), sums to 1 over k
            b, _, h, w = maps.shape
            per_class = maps.view(b, self.config.num_classes, self.k, h, w)
            cams.append((per_class * weights[..., None, None]).sum(dim=2))
            class_logits.append((scores.view(b, -1, self.k) * weights).sum(dim=2))
        return LPDOutput(proto_maps, cos_maps, proto_scores, class_logits, cams, features)

    def _prototype_weights(self, scores: torch.Tensor) -> torch.Tensor:
        """Mean over a class's k prototypes in training; optionally the reference code's
        softmax-weighted mean at test time."""
        per_class = scores.view(scores.shape[0], -1, self.k)
        if self.config.class_score == "softmax" and not self.training:
            return per_class.softmax(dim=2).detach()
        return torch.full_like(per_class, 1.0 / self.k)

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Input mean/std: the config's, else the backbone's pretrained values."""
        if self.config.mean is not None and self.config.std is not None:
            return tuple(self.config.mean), tuple(self.config.std)
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        return mean, std


def create_model(
    backbone: str | None = None,
    *,
    pretrained: bool | str = False,
    config: ModelConfig | None = None,
    **overrides: object,
) -> LPDModel:
    """timm-style factory: ``create_model("resnet18", prototypes_per_class=5)``."""
    config = config or ModelConfig()
    if backbone is not None:
        overrides["backbone"] = backbone
    if overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    model = LPDModel(config, pretrained=pretrained)
    if config.mean is None or config.std is None:
        # Pin normalisation into the config so checkpoints carry it explicitly.
        mean, std = model.normalisation()
        config.mean, config.std = mean, std  # type: ignore[assignment]
    return model
