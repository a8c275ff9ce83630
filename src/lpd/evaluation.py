"""Evaluate a model: the one code path of the job (``lpd evaluate`` and ``lpd.evaluate``).

``score`` scores a model over batches of labelled patches under both presence protocols
(published: oracle, the image tags; ours too: predicted, the model's own presence);
``evaluate`` is the job: a checkpoint and a data folder (a BCSS-WSSS split, or held-apart
mosaics of a tile folder) in, an ``Evaluation`` out."""

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


def score(
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


def evaluate(
    checkpoint: str | os.PathLike[str] | LPDModel,
    data: str | os.PathLike[str],
    *,
    protocol: str = "both",
    split: str = "test",
    mosaics: int = 64,
    seed: int | None = None,
    tile_mpp: float | None = None,
    batch_size: int = 8,
    device: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score a checkpoint on a data folder (the ``lpd evaluate`` options as keywords).

    Parameters
    ----------
    checkpoint : str or PathLike or LPDModel
        A ``.safetensors`` checkpoint, ``"default"`` (the shipped model) or a model.
    data : str or PathLike
        A BCSS-WSSS folder (``split``/img and ``split``/mask) or a tile folder.
    protocol : str
        ``"predicted"``, ``"oracle"`` or ``"both"``.
    split : str
        ``"test"`` or ``"val"`` (BCSS-WSSS).
    mosaics : int
        Held-apart mosaics of a tile folder.
    seed : int, optional
        The mosaics' stream (default the held-apart seed).
    tile_mpp : float, optional
        Microns per pixel of the tiles.
    batch_size : int
        Patches per forward pass.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    on_progress : callable, optional
        ``on_progress(batches_done, batches_total)``.

    Returns
    -------
    Evaluation
        Per protocol the scores (mIoU, mDice, FwIoU, per-class IoU), and the one-class
        guess.

    Raises
    ------
    InputError
        Unreadable data, masks outside 0..4, or no labelled pixel at all.
    """
    from torch.utils.data import DataLoader

    from lpd.data.bcss import check_eval_masks
    from lpd.data.datasets import BCSSEvalDataset
    from lpd.data.sources import HELD_APART_SEED, evaluation_dataset
    from lpd.segmentation import load_model

    if protocol not in (*PROTOCOLS, "both"):
        raise InputError(None, f"unknown protocol {protocol!r} (predicted, oracle or both)")
    model = load_model(checkpoint, device)
    dataset = evaluation_dataset(data, model.config, split, mosaics,
                                 HELD_APART_SEED if seed is None else seed, tile_mpp)
    if isinstance(dataset, BCSSEvalDataset):  # unusable masks: one clear line, before scoring
        check_eval_masks(dataset.items)
    protocols = PROTOCOLS if protocol == "both" else (protocol,)
    loader = DataLoader(dataset, batch_size=batch_size)
    total = len(loader)
    dev = next(model.parameters()).device
    return score(model, loader, dev, protocols,
                 on_batch=None if on_progress is None else lambda i: on_progress(i + 1, total),
                 require_labels=True, source=data)
