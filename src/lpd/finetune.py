"""Fine-tuning a checkpoint on tagged regions (``lpd.data.tags``), in the viewer or a script.

``fine_tune`` is a generator over ``lpd.trainer.Trainer.steps()`` (the one training loop):
it yields a ``TrainProgress`` per step and returns a ``FineTuneResult``. The new checkpoint
is written atomically, under a new name, only at the end:

- the original checkpoint is never touched, and an existing file is never overwritten: a
  taken name becomes ``<name>-finetuned-N.safetensors`` (first free N);
- closing the generator (napari's Cancel) writes nothing: the last good checkpoint is the
  one fine-tuning started from;
- ``should_stop()`` returning True stops early and saves what was trained so far, marked
  ``"completed": false`` with ``"steps_done"`` in the checkpoint's metadata ``extra``."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lpd.config import (
    FINETUNE_TRAINABLE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRAINABLE,
    ModelConfig,
    TrainConfig,
)
from lpd.data.datasets import _Base
from lpd.data.sources import augment_policy, normalizer_for, training_sources
from lpd.data.tags import TagPatch, TagStore, tag_patches
from lpd.errors import InputError
from lpd.infer.device import resolve_device
from lpd.io.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from lpd.model.lpd_model import LPDModel
from lpd.trainer import Trainer, TrainProgress

SUFFIX = ".safetensors"


class TagDataset(_Base):
    """Patches of the tagged regions of one or more images, at the model's input size and
    magnification, with the regions' tags; augmented (flips / 90° rotations, HED jitter)
    like training data. Items are ``(image, tags, None)`` as ``BCSSTrainDataset``'s.

    ``stores``/``images``: one TagStore and its image (a Slide or array-like), or equal
    length sequences of them. ``mpp``: the images' level-0 µm/px where they have none."""

    def __init__(self, stores: TagStore | Sequence[TagStore], images: object,
                 config: ModelConfig, *, train: TrainConfig | None = None,
                 augment: bool = True, seed: int = 0, mpp: float | None = None) -> None:
        super().__init__(augment, config.mean or IMAGENET_MEAN, config.std or IMAGENET_STD,
                         0.0, 0.0, seed, normalizer_for(config),
                         augment_policy(train, augment))  # no RandStainNA template here
        if isinstance(stores, TagStore):
            stores, images = [stores], [images]
        images = list(images)  # type: ignore[call-overload]
        if len(images) != len(stores):
            raise InputError(None, f"{len(stores)} tag stores but {len(images)} images")
        self.patches: list[TagPatch] = []
        self.notes: list[str] = []
        for store, image in zip(stores, images, strict=True):
            plan = tag_patches(store, image, patch_size=config.input_size,
                               target_mpp=config.microns_per_pixel, mpp=mpp,
                               class_names=config.class_names)
            self.patches += plan.patches
            self.notes += [f"{store.image_path.name}: {n}" for n in plan.notes]
        if not self.patches:
            where = stores[0].sidecar if len(stores) == 1 else None
            raise InputError(where, "no tagged regions: draw rectangles (or pick grid cells) "
                             "and tick the classes present in them")

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        patch = self.patches[index]
        image, _ = self._prepare(index, patch.read(), None)
        return image, torch.tensor(patch.tags, dtype=torch.float32), None


class MixedDataset(Dataset):
    """Tagged patches mixed with an extra dataset: about ``extra_fraction`` of the items
    come from ``extra`` (a different draw of it every epoch), the rest are the tags."""

    def __init__(self, tags: Dataset, extra: Dataset, extra_fraction: float = 0.5,
                 seed: int = 0) -> None:
        if not 0 < extra_fraction < 1:
            raise ValueError(f"extra_fraction must be in (0, 1), got {extra_fraction}")
        self.tags, self.extra, self.seed, self.epoch = tags, extra, seed, 0
        self.n_tags = len(tags)  # type: ignore[arg-type]
        self.n_extra = max(1, round(self.n_tags * extra_fraction / (1 - extra_fraction)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for part in (self.tags, self.extra):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def __len__(self) -> int:
        return self.n_tags + self.n_extra

    def __getitem__(self, index: int) -> tuple:
        if index < self.n_tags:
            return self.tags[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.extra[int(rng.integers(len(self.extra)))]  # type: ignore[arg-type]


@dataclass
class FineTuneResult:
    checkpoint: Path | None  # the new checkpoint (None when nothing was saved)
    base_checkpoint: Path | None
    steps_done: int
    completed: bool
    patches: int
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def unique_checkpoint_path(path: str | Path) -> Path:
    """``path`` if it is free, else ``<stem>-finetuned-N.safetensors`` with the first free
    N (a stem already ending in ``-finetuned[-N]`` is not suffixed twice)."""
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    if not path.exists():
        return path
    root = re.sub(r"-finetuned(-\d+)?$", "", path.name[: -len(SUFFIX)])
    n = 1
    while (path.parent / f"{root}-finetuned-{n}{SUFFIX}").exists():
        n += 1
    return path.parent / f"{root}-finetuned-{n}{SUFFIX}"


def default_output_path(base: str | Path | None, folder: str | Path | None = None) -> Path:
    """Where a fine-tuned copy of ``base`` goes by default: ``<stem>-finetuned`` beside it
    (or in ``folder``), made unique; fine-tuning a fine-tuned model continues the series
    (``m-finetuned``, ``m-finetuned-1``, ...) instead of stacking suffixes."""
    stem = Path(base).name.removesuffix(SUFFIX) if base is not None else "lpd-model"
    stem = re.sub(r"-finetuned(-\d+)?$", "", stem)
    parent = Path(folder) if folder is not None else (
        Path(base).parent if base is not None else Path.cwd())
    return unique_checkpoint_path(parent / f"{stem}-finetuned{SUFFIX}")


def fine_tune(
    checkpoint: str | Path | LPDModel,
    stores: TagStore | Sequence[TagStore],
    images: object,
    *,
    steps: int = 100,
    batch_size: int = 8,
    lr: float = 5e-5,
    extra_data_folder: str | Path | None = None,
    out_path: str | Path | None = None,
    device: str | torch.device | None = "cpu",
    mpp: float | None = None,
    train: TrainConfig | None = None,
    should_stop: Callable[[], bool] | None = None,
    trainable: str = FINETUNE_TRAINABLE,
) -> Generator[TrainProgress, None, FineTuneResult]:
    """Fine-tune ``checkpoint`` (a path, or a model that is copied, never changed) on the
    tagged regions of ``stores``/``images`` (see ``TagDataset``), optionally half mixed
    with ``extra_data_folder`` (a BCSS-WSSS or tile folder). ``train``: base settings
    (loss weights, augmentation; default: no warm-up, so the diversity term keeps the
    prototypes apart from the first step); ``steps``, ``batch_size`` and ``lr`` override
    it. Saving and cancelling: see the module docstring. ``out_path``: default
    ``<checkpoint>-finetuned.safetensors`` beside the original. ``trainable``: ``"all"``
    parameters, or ``"head"`` only (the backbone's weights stay as they are)."""
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise InputError(None, f"steps and batch size must be >= 1 and lr > 0 (got {steps}, "
                         f"{batch_size}, {lr})")
    if trainable not in TRAINABLE:
        raise InputError(None, f"trainable must be one of {', '.join(TRAINABLE)}, not "
                         f"{trainable!r}")
    base_path = None if isinstance(checkpoint, LPDModel) else Path(checkpoint)
    dev = resolve_device(None if device is None else str(device))
    if base_path is not None:
        base_extra = read_checkpoint_metadata(base_path)[1]
        model = load_checkpoint(base_path, device=dev)
    else:
        base_extra, model = {}, copy.deepcopy(checkpoint).to(dev)
    config = dataclasses.replace(_config(train, steps, batch_size, lr),
                                 freeze_backbone=trainable == "head")
    mean, std = model.normalisation()  # the model's own input normalisation, always
    model_config = dataclasses.replace(model.config, mean=mean, std=std)
    data: Dataset = TagDataset(stores, images, model_config, train=config, seed=config.seed,
                               mpp=mpp)
    patches, notes = len(data), list(data.notes)  # type: ignore[attr-defined]
    if extra_data_folder is not None:
        extra = training_sources(extra_data_folder, model.config, config,
                                 mosaics=steps * batch_size).train
        _check_extra(extra, Path(extra_data_folder), model.config.input_size)
        data = MixedDataset(data, extra, 0.5, config.seed)
    target = Path(out_path) if out_path is not None else default_output_path(base_path)
    trainer = Trainer(model, config, data, None, None, dev)
    done, loop = 0, trainer.steps()
    for progress in loop:  # closing this generator stops here: nothing is saved
        done = progress.step
        yield progress
        if should_stop is not None and should_stop() and done < steps:
            break
    loop.close()
    completed = done >= steps
    single = [stores] if isinstance(stores, TagStore) else list(stores)
    extra_meta = {
        "finetuned_from": str(base_path) if base_path else None,
        "base_extra": base_extra, "completed": completed, "steps_done": done,
        "steps": steps, "batch_size": batch_size, "lr": lr, "trainable": trainable,
        "patches": patches,
        "tag_files": [s.sidecar.name for s in single],
        "extra_data": str(extra_data_folder) if extra_data_folder is not None else None,
    }
    final = unique_checkpoint_path(target)  # checked again now: never overwrite
    save_checkpoint(final, model, extra_meta)
    return FineTuneResult(final, base_path, done, completed, patches, trainer.history, notes)


def _config(base: TrainConfig | None, steps: int, batch_size: int, lr: float) -> TrainConfig:
    data = (base or TrainConfig(warmup_iters=0, val_every=0, checkpoint_every=0)).to_dict()
    data.update(steps=int(steps), batch_size=int(batch_size), lr=float(lr),
                val_every=0, checkpoint_every=0)
    return TrainConfig.from_dict(data)


def _check_extra(extra: Dataset | None, folder: Path, size: int) -> None:
    if extra is None or len(extra) == 0:  # type: ignore[arg-type]
        raise InputError(folder, "no training images in this folder")
    shape = tuple(extra[0][0].shape[-2:])
    if shape != (size, size):
        raise InputError(folder, f"training patches are {shape[0]}x{shape[1]} px; the model "
                         f"takes {size}x{size}")


def run_fine_tune(gen: Generator[TrainProgress, None, FineTuneResult],
                  on_progress: Callable[[TrainProgress], None] | None = None) -> FineTuneResult:
    """Drive ``fine_tune`` to the end (scripts, tests)."""
    from lpd.progress import drive

    return drive(gen, on_progress)
