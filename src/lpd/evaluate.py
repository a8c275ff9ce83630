"""Evaluation of a model on labelled patches under both presence protocols."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from lpd.config import PROTOCOLS  # re-exported (defined torch-free, for the CLI)
from lpd.errors import InputError
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
    require_labels: bool = False,
    source: str | os.PathLike[str] | None = None,
) -> Evaluation:
    """Score ``model`` over labelled patches.

    Parameters
    ----------
    model : LPDModel
        The model to score.
    batches : iterable of (images, tags, masks)
        Label masks use 0 = background (ignored), 1..C the classes.
    device : torch.device or str
        Where the model runs.
    protocols : tuple of str
        Presence protocols to score (``lpd.config.PROTOCOLS``).
    on_batch : callable, optional
        Called with each batch's index once it is scored.
    require_labels : bool
        Refuse ground truth without a single labelled pixel (``lpd evaluate``); False
        (training's validation, which skips a NaN score) returns NaN scores instead.
    source : str or PathLike, optional
        The data (folder or masks) named when it holds no labelled pixel.

    Returns
    -------
    Evaluation
        Per protocol scores, plus the one-class-guess baseline.

    Raises
    ------
    InputError
        With ``require_labels``, when no mask holds a single labelled (tissue) pixel:
        every score would be undefined (NaN), which is not a result.
    """
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
    if require_labels and not guess.matrix[1:].any():
        raise InputError(source, f"no labelled pixel in the ground truth of {n} patch(es): "
                         "every mask is background, so nothing can be scored")
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
