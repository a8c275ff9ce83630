"""torch Datasets over mosaics and BCSS-WSSS. The only module of ``lpd.data`` that imports
torch.

Every item is ``(image, tags, mask)``: image float32 3xHxW normalised with mean/std,
tags float32 [C], mask int64 HxW labels (0 background / ignored, 1..C) or None where the
data has no masks (BCSS training images). Use ``collate`` as the DataLoader's
``collate_fn``: torch's default one cannot batch None.

Augmentation randomness is a function of (seed, epoch, index), so results do not depend
on the number of DataLoader workers; call ``set_epoch`` to vary it between epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lpd.config import IMAGENET_MEAN, IMAGENET_STD
from lpd.data.augment import MacenkoNormalizer
from lpd.data.augment_policy import AugmentSpec
from lpd.data.bcss import EvalItem, TrainItem, read_eval_pair
from lpd.data.mosaic import MosaicGenerator
from lpd.errors import InputError
from lpd.wsi.images import read_rgb

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
Triple = tuple[float, float, float]


def to_tensor(rgb: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 RGB HxWx3 -> float32 3xHxW, ``(rgb / 255 - mean) / std``.

    Computed in numpy: small torch elementwise ops in the loading process can hit OpenMP
    thread contention (measured 0.5 ms -> 50 ms per 224 patch on a busy 2-core machine)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected a uint8 RGB image HxWx3, got {rgb.dtype} {rgb.shape}")
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    offset = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
    chw = np.transpose(rgb, (2, 0, 1)).astype(np.float32, order="C")  # fresh, contiguous
    chw *= scale[:, None, None]
    chw += offset[:, None, None]
    return torch.from_numpy(chw)


def mask_to_tensor(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))


def tags_from_labels(labels: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """Tags (float32 [C]) of the classes that have at least one pixel in a label map."""
    present = np.bincount(labels.ravel(), minlength=num_classes + 1)[1 : num_classes + 1]
    return (present > 0).astype(np.float32)


def collate(batch: Sequence[Item]) -> Item:
    """Stack a list of items; the mask batch is None unless every item has a mask."""
    images = torch.stack([b[0] for b in batch])
    tags = torch.stack([b[1] for b in batch])
    masks = [b[2] for b in batch]
    if any(m is None for m in masks):
        return images, tags, None
    return images, tags, torch.stack(masks)  # type: ignore[arg-type]


class _Base(Dataset):
    def __init__(self, augment: bool, mean: Sequence[float], std: Sequence[float],
                 hed_sigma: float, hed_bias: float, seed: int,
                 normalizer: MacenkoNormalizer | None,
                 policy: AugmentSpec | None = None) -> None:
        self.augment = bool(augment)
        self.mean: Triple = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.std: Triple = tuple(float(v) for v in std)  # type: ignore[assignment]
        self.hed_sigma, self.hed_bias = float(hed_sigma), float(hed_bias)
        self.seed = int(seed)
        self.epoch = 0
        self.normalizer = normalizer
        # the whole policy when given; else flips + HED jitter of hed_sigma / hed_bias
        self.policy = policy or AugmentSpec(True, self.hed_sigma, self.hed_bias)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _prepare(self, index: int, rgb: np.ndarray, labels: np.ndarray | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.normalizer is not None:
            rgb = self.normalizer.transform(rgb)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            rgb, labels = self.policy.apply(rgb, labels, rng)
        return (to_tensor(rgb, self.mean, self.std),
                None if labels is None else mask_to_tensor(labels))


class MosaicDataset(_Base):
    """``length`` mosaics ``generator[0..length-1]`` (fixed content; augmentation varies
    with the epoch). Masks are the mosaics' exact labels."""

    def __init__(self, generator: MosaicGenerator, length: int, augment: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 hed_sigma: float = 0.05, hed_bias: float = 0.05, seed: int = 0,
                 normalizer: MacenkoNormalizer | None = None,
                 policy: AugmentSpec | None = None) -> None:
        super().__init__(augment, mean, std, hed_sigma, hed_bias, seed, normalizer, policy)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.generator = generator
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Item:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rgb, labels, tags = self.generator[index]
        image, mask = self._prepare(index, rgb, labels)
        return image, torch.from_numpy(tags.astype(np.float32)), mask


class BCSSTrainDataset(_Base):
    """BCSS-WSSS training images with their file-name tags; no masks (mask is None)."""

    def __init__(self, items: Sequence[TrainItem], augment: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 hed_sigma: float = 0.05, hed_bias: float = 0.05, seed: int = 0,
                 normalizer: MacenkoNormalizer | None = None,
                 size: int | None = None, policy: AugmentSpec | None = None) -> None:
        super().__init__(augment, mean, std, hed_sigma, hed_bias, seed, normalizer, policy)
        self.items = list(items)
        self.size = size  # when given, images of another size are refused (clear error)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        path, tags = self.items[index]
        rgb = read_rgb(path)
        _check_size(path, rgb, self.size)
        image, _ = self._prepare(index, rgb, None)
        return image, torch.as_tensor(np.asarray(tags, np.float32)), None


class BCSSEvalDataset(_Base):
    """BCSS-WSSS val/test images with masks (labels 0 background, 1..4); the tags are
    the classes present in the mask (the oracle labels of the published protocol)."""

    def __init__(self, items: Sequence[EvalItem], mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD,
                 normalizer: MacenkoNormalizer | None = None, num_classes: int = 4,
                 size: int | None = None) -> None:
        super().__init__(False, mean, std, 0.0, 0.0, 0, normalizer)
        self.items = list(items)
        self.num_classes = int(num_classes)
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        image_path, mask_path = self.items[index]
        rgb, labels = read_eval_pair(image_path, mask_path)
        _check_size(image_path, rgb, self.size)
        image, mask = self._prepare(index, rgb, labels)
        tags = torch.from_numpy(tags_from_labels(labels, self.num_classes))
        return image, tags, mask


def _check_size(path: Path, rgb: np.ndarray, size: int | None) -> None:
    if size is not None and rgb.shape[:2] != (size, size):
        raise InputError(path, f"image is {rgb.shape[0]}x{rgb.shape[1]} px; this dataset "
                         f"expects {size}x{size}")
