"""Inference-only settings swept on a trained model: the background exponent of the
``(1 - max)^p`` channel and the presence threshold of the predicted protocol. One forward
pass per batch; every setting reuses its score maps (docs/method.md, Definitions: these are choices to be
measured, not retrained)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from lpd.infer.patch import labels_from_scores, predicted_presence, score_maps
from lpd.metrics import ConfusionMatrix
from lpd.model.lpd_model import LPDModel

BACKGROUND_POWERS = (1.0, 3.0, 10.0, 30.0, 1000.0)  # 1000: practically no background channel
PRESENCE_THRESHOLDS = (0.3, 0.5, 0.7)


def setting_key(power: float, threshold: float | None = None) -> str:
    key = f"bg_power={power:g}"
    return key if threshold is None else f"{key},presence={threshold:g}"


def sweep_inference(
    model: LPDModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    device: str | torch.device = "cpu",
    powers: Sequence[float] = BACKGROUND_POWERS,
    thresholds: Sequence[float] = PRESENCE_THRESHOLDS,
) -> dict[str, dict[str, float]]:
    """mIoU per setting: ``{"predicted": {"bg_power=10,presence=0.5": ...}, "oracle":
    {"bg_power=10": ...}, "confusion": {...}}`` (the oracle protocol has no threshold);
    ``confusion``: pixel confusion matrices of both protocols at the model's own settings
    (which class the errors go to)."""
    model.eval()
    cfg = model.config
    weights = cfg.fusion_weights
    confusion = {name: ConfusionMatrix(cfg.num_classes) for name in ("predicted", "oracle")}
    pred = {(p, t): ConfusionMatrix(model.config.num_classes) for p in powers for t in thresholds}
    oracle = {p: ConfusionMatrix(model.config.num_classes) for p in powers}
    with torch.inference_mode():
        for images, tags, masks in batches:
            images = images.to(device)
            scores = score_maps(model(images), tuple(images.shape[-2:]))
            truth = masks.numpy()
            presences = {t: predicted_presence(scores, t) for t in thresholds}
            own = {"predicted": predicted_presence(scores, cfg.presence_threshold),
                   "oracle": tags.to(scores.device) > 0}
            for name, presence in own.items():  # at the model's own settings
                labels, _ = labels_from_scores(scores, presence, weights, cfg.background_power)
                confusion[name].update(labels.cpu().numpy(), truth)
            for p in powers:
                labels, _ = labels_from_scores(scores, tags.to(scores.device) > 0, weights, p)
                oracle[p].update(labels.cpu().numpy(), truth)
                for t in thresholds:
                    labels, _ = labels_from_scores(scores, presences[t], weights, p)
                    pred[(p, t)].update(labels.cpu().numpy(), truth)
    return {
        "predicted": {setting_key(p, t): m.scores().miou for (p, t), m in pred.items()},
        "oracle": {setting_key(p): m.scores().miou for p, m in oracle.items()},
        # rows: ground truth 0 (ignored), 1..C; columns: prediction 0 (background), 1..C
        "confusion": {name: m.matrix.tolist() for name, m in confusion.items()},
    }
