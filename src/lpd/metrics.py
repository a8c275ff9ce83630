"""Segmentation metrics over the tissue classes (docs/method.md, Definitions).

Ground truth 0 (background, OTHER tissue) is ignored; predicting background (0) on a tissue
pixel is an error for that class. Means are over the C tissue classes with a defined IoU."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lpd.classes import CLASS_NAMES


class ConfusionMatrix:
    """Rows: ground truth 0..C; columns: prediction 0..C (0 background)."""

    def __init__(self, num_classes: int = len(CLASS_NAMES)) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        prediction = np.asarray(prediction).astype(np.int64).ravel()
        truth = np.asarray(truth).astype(np.int64).ravel()
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ")
        n = self.num_classes + 1
        keep = (truth > 0) & (truth < n) & (prediction >= 0) & (prediction < n)
        self.matrix += np.bincount(
            truth[keep] * n + prediction[keep], minlength=n * n
        ).reshape(n, n)

    def scores(self) -> SegmentationScores:
        m = self.matrix[1:, :]  # ground-truth tissue rows
        tp = np.diag(self.matrix)[1:].astype(float)
        fn = m.sum(axis=1) - tp  # includes predicted background
        fp = self.matrix[1:, 1:].sum(axis=0) - tp  # only tissue ground truth counts
        union = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            dice = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        support = m.sum(axis=1).astype(float)
        freq = support / support.sum() if support.sum() else np.zeros_like(support)
        valid = ~np.isnan(iou)
        return SegmentationScores(
            iou=iou,
            dice=dice,
            miou=float(np.mean(iou[valid])) if valid.any() else float("nan"),
            mdice=float(np.mean(dice[valid])) if valid.any() else float("nan"),
            fwiou=float(np.nansum(freq * np.nan_to_num(iou))),
            support=support.astype(np.int64),
        )


@dataclass
class SegmentationScores:
    iou: np.ndarray
    dice: np.ndarray
    miou: float
    mdice: float
    fwiou: float
    support: np.ndarray

    def as_dict(self, class_names: tuple[str, ...] = CLASS_NAMES) -> dict:
        return {
            "mIoU": self.miou,
            "mDice": self.mdice,
            "FwIoU": self.fwiou,
            "IoU": {n: _num(v) for n, v in zip(class_names, self.iou, strict=True)},
            "Dice": {n: _num(v) for n, v in zip(class_names, self.dice, strict=True)},
            "pixels": {n: int(v) for n, v in zip(class_names, self.support, strict=True)},
        }


def _num(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def one_class_guess(truth: np.ndarray) -> np.ndarray:
    """The trivial baseline: paint the whole patch with its most frequent tissue class
    (what an oracle patch classifier would give), 0 where the patch has no tissue."""
    tissue = truth[truth > 0]
    if tissue.size == 0:
        return np.zeros_like(truth)
    return np.full_like(truth, np.bincount(tissue).argmax())
