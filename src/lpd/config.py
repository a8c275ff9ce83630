"""Plain, JSON-serialisable settings of a model and of its training.

``ModelConfig`` travels inside every checkpoint (so a checkpoint says what it is); the
``TrainConfig`` is what ``lpd train`` reads from a JSON file and flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpd.classes import CLASS_COLOURS, CLASS_NAMES, default_colours, readable_colours
from lpd.errors import InputError

#: Class presence from the model ("predicted") or the ground-truth tags ("oracle", the
#: published protocol). Kept here, free of torch, so `lpd --help` stays fast.
PROTOCOLS = ("predicted", "oracle")
#: The Fine-tune widget's defaults (steps, batch, learning rate, what trains), set from
#: ``lpd bench adapt`` on nct at N = 32 tagged regions (3 seeds): the head only (prototypes,
#: their projections, temperatures; backbone weights fixed) for 100 steps gained +0.137 ±
#: 0.038 oracle mIoU against +0.124 ± 0.038 for all parameters, at a fraction of the
#: compute per step; 300 head-only steps (about the two minutes of the first measurement)
#: gained less (+0.103 ± 0.026); on kather2016 all parameters gained +0.060 ± 0.016 against
#: +0.039 ± 0.018 (within noise both ways). benchmarks/results/adapt-settings.md.
FINETUNE_STEPS, FINETUNE_BATCH, FINETUNE_LR = 100, 8, 5e-5
FINETUNE_TRAINABLE = "head"
TRAINABLE = ("all", "head")

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    """What defines a model: enough to rebuild it and to use it correctly."""

    backbone: str = DEFAULT_BACKBONE
    # "prototype" (LPD), "cam" (global-pooling classifier baseline) or "bank" (fixed
    # per-scale k-means prototypes, the PBIP-style ablation: lpd.model.prototype_bank)
    head: str = "prototype"
    class_names: tuple[str, ...] = CLASS_NAMES
    class_colours: tuple[tuple[int, int, int], ...] = tuple(CLASS_COLOURS[c] for c in CLASS_NAMES)
    prototypes_per_class: int = 10
    prototype_dim: int = 256
    projection_hidden: int = 256
    init_temperature: float = 1 / 0.07
    output_stride: int | None = 16  # used where timm supports it
    # test-time class score from per-prototype scores: "mean" or "softmax" (reference code)
    class_score: str = "mean"
    freeze_prototypes: bool = False  # the PBIP-style fixed bank (k-means initialised)
    input_size: int = 224
    mean: tuple[float, float, float] | None = None  # None: the backbone's own (timm) values
    std: tuple[float, float, float] | None = None
    microns_per_pixel: float | None = None  # magnification of the training data
    # inference: fusion weights of the last three scales, background exponent, presence
    fusion_weights: tuple[float, float, float] = (0.3, 0.3, 0.4)
    background_power: float = 10.0
    # sigmoid(class score) >= this -> present. 0.3, not 0.5: measured with the accuracy
    # benchmark (H100, 600 steps, 2 seeds) it raised predicted-protocol mIoU on held-apart
    # kather2016 mosaics 0.895 -> 0.926 and on nct 0.279 -> 0.304 (CAM: 0.835 -> 0.877).
    presence_threshold: float = 0.3
    # None, "macenko" (standard H&E reference) or "reinhard" (to stain_reference: LAB
    # means then standard deviations of the training tiles), on every patch, train and test
    stain_normalisation: str | None = None
    stain_reference: tuple[float, ...] | None = None
    test_time_flips: bool = False  # average over 4 flips at inference (4x compute)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> ModelConfig:
        config: ModelConfig = _from_dict(cls, data, source)
        if (isinstance(config.class_names, tuple) and isinstance(config.class_colours, tuple)
                and len(config.class_colours) != len(config.class_names)):
            # other classes than the defaults' (create_model(class_names=...)): a colour each
            config.class_colours = default_colours(config.class_names)  # type: ignore[assignment]
        # checkpoints written before NEC's colour changed (the shipped lpd-crc-v1 among
        # them) carry its near-black, unreadable on napari's canvas: show the current one
        if isinstance(config.class_names, tuple) and isinstance(config.class_colours, tuple):
            config.class_colours = readable_colours(  # type: ignore[assignment]
                config.class_names, config.class_colours)
        return config


@dataclass
class TrainConfig:
    """One-stage training schedule (docs/method.md, Training)."""

    steps: int = 600
    batch_size: int = 10
    lr: float = 5e-5
    head_lr_scale: float = 10.0  # prototypes/projections learn faster than the backbone
    weight_decay: float = 1e-3
    poly_power: float = 0.9
    warmup_iters: int = 100  # classification loss only before this step
    cls_weights: tuple[float, float, float, float] = (0.0, 0.1, 1.0, 1.0)
    div_weight: float = 0.5  # lambda_div; 0 switches the diversity loss off
    div_mode: str = "correct"  # "correct" or "released" (reference code's behaviour)
    div_tau: float = 10.0  # temperature inside softmax_u(div_tau * cos)
    div_background_score: float = 0.3  # fixed background score of the pseudo-mask
    sim_weight: float = 0.0  # optional FG/BG contrastive loss, off by default
    sim_encoder: str = DEFAULT_BACKBONE
    stain_augment: bool = True
    hed_sigma: float = 0.05
    hed_bias: float = 0.01
    # RandStainNA (LAB-statistics) augmentation: spread multiplier of the template draw,
    # 0 = off; template fitted to the training tiles (lpd.data.augment_policy)
    lab_jitter: float = 0.0
    quality_jitter: float = 0.0  # probability of blur / JPEG (grayscale half of it); 0 = off
    scale_jitter: float = 0.0  # zoom up to (1 + this) either way around the mpp; 0 = off
    freeze_backbone: bool = False  # train the head only
    prototype_init: str = "random"  # "random" or "kmeans" (of backbone features of tiles)
    seed: int = 0
    amp: bool = True  # mixed precision, used on CUDA only
    val_every: int = 0  # steps; 0 = only at the end
    checkpoint_every: int = 0  # steps; 0 = only at the end
    num_workers: int = 0
    threads: int | None = None  # torch intra-op threads on CPU; None = torch's default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> TrainConfig:
        return _from_dict(cls, data, source)


@dataclass
class RunConfig:
    """A config file for ``lpd train``: ``{"model": {...}, "train": {...}}``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        from lpd._userfile import read_json

        path = Path(path)
        if not path.is_file():
            raise InputError(path, "config file not found")
        data = read_json(path, "config file")  # BOM, UTF-16, CRLF tolerated
        if not isinstance(data, dict) or set(data) - {"model", "train"}:
            raise InputError(path, 'expected a JSON object with "model" and/or "train" keys')
        return cls(
            model=ModelConfig.from_dict(data.get("model", {}), str(path)),
            train=TrainConfig.from_dict(data.get("train", {}), str(path)),
        )


def _from_dict(cls: type, data: dict[str, Any], source: str | None) -> Any:
    if not isinstance(data, dict):
        raise InputError(source, f"{cls.__name__} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(source, f"unknown {cls.__name__} setting(s): {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        kwargs[name] = _tupleize(value) if isinstance(default, tuple) or name.endswith(("_colours", "mean", "std")) else value
    return cls(**kwargs)


def _tupleize(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupleize(v) for v in value)
    return value
