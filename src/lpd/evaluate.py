"""Evaluation of a model on labelled patches under both presence protocols."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from lpd.config import PROTOCOLS  # re-exported (defined torch-free, for the CLI)
from lpd.infer.patch import predict_patches
from lpd.metrics import ConfusionMatrix, SegmentationScores, one_class_guess
from lpd.model.lpd_model import LPDModel


@dataclass
class Evaluation:
    scores: dict[str, SegmentationScores]  # protocol -> scores, plus "one_class_guess"
    patches: int

    def as_dict(self) -> dict:
        out = {name: s.as_dict() for name, s in self.scores.items()}
        out["patches"] = self.patches
        return out


def evaluate(
    model: LPDModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    device: torch.device | str = "cpu",
    protocols: tuple[str, ...] = PROTOCOLS,
    on_batch: Callable[[int], None] | None = None,
) -> Evaluation:
    """Score ``model`` over batches of (images, tags, label masks); masks use 0 = ignore."""
    model.eval()
    num_classes = model.config.num_classes
    matrices = {p: ConfusionMatrix(num_classes) for p in protocols}
    guess = ConfusionMatrix(num_classes)
    n = 0
    for i, (images, tags, masks) in enumerate(batches):
        images = images.to(device)
        truth = masks.cpu().numpy()
        for protocol in protocols:
            pred = predict_patches(model, images, protocol, tags)
            matrices[protocol].update(pred.labels.cpu().numpy(), truth)
        for t in truth:
            guess.update(one_class_guess(t), t)
        n += len(images)
        if on_batch is not None:
            on_batch(i)
    scores = {p: m.scores() for p, m in matrices.items()}
    scores["one_class_guess"] = guess.scores()
    return Evaluation(scores, n)


def format_table(evaluation: Evaluation, class_names: tuple[str, ...]) -> str:
    """A plain-text table: one row per protocol, mIoU / mDice / FwIoU and per-class IoU."""
    head = ["protocol", "mIoU", "mDice", "FwIoU", *[f"IoU {c}" for c in class_names]]
    rows = [head]
    for name, s in evaluation.scores.items():
        rows.append(
            [name, *(f"{v:.4f}" for v in (s.miou, s.mdice, s.fwiou)), *(_fmt(v) for v in s.iou)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _fmt(v: float) -> str:
    return "-" if np.isnan(v) else f"{v:.4f}"
