"""Levers of the default recipe that the leave-one-release-out sweep screens (issue:
accuracy across labs). Each lever is a change to the recipe's model or training
settings, or (``data``) to what a class means; ``recipe`` is the recipe itself."""

from __future__ import annotations

from typing import Any

LEVERS: dict[str, dict[str, Any]] = {
    "recipe": {"note": "the shipped recipe (HED jitter sigma 0.05, bias 0.01)"},
    "hed_strong": {"train": {"hed_sigma": 0.15, "hed_bias": 0.05},
                   "note": "stronger HED jitter (sigma 0.15, bias 0.05)"},
    "no_stain_aug": {"train": {"stain_augment": False}, "note": "no stain augmentation"},
    "macenko": {"model": {"stain_normalisation": "macenko"},
                "note": "Macenko stain normalisation of every patch to the standard H&E "
                        "reference (train and test)"},
    "backbone_lr_0.1": {"train": {"lr": 5e-6, "head_lr_scale": 100.0},
                        "note": "backbone learning rate x 0.1 (head's unchanged)"},
    "no_div": {"train": {"div_weight": 0.0},
               "note": "no diversity loss ((c) against the recipe's (e))"},
    "steps_x2": {"train": {"steps": "x2"}, "note": "twice the steps"},
    "input_224": {"model": {"input_size": 224}, "note": "224 px input (the recipe's)"},
    "background_power_5": {"model": {"background_power": 5.0},
                           "note": "background channel (1 - max)^5 instead of ^10"},
    "randstainna": {"train": {"lab_jitter": 1.0},
                    "note": "RandStainNA LAB-statistics augmentation (template fitted to the "
                            "training tiles) on top of the HED jitter"},
    "quality_jitter": {"train": {"quality_jitter": 0.3},
                       "note": "blur (p 0.3, sigma 0.3-1.5 px), JPEG (p 0.3, quality 30-90), "
                               "grayscale (p 0.15)"},
    "scale_jitter": {"train": {"scale_jitter": 0.25},
                     "note": "zoom up to 1.25x either way around the training mpp"},
    "frozen_backbone": {"train": {"freeze_backbone": True},
                        "note": "backbone weights frozen (BatchNorm statistics adapt)"},
    "kmeans_init": {"train": {"prototype_init": "kmeans"},
                    "note": "prototypes start at k-means centroids of backbone features, "
                            "then learn"},
    "kmeans_bank": {"model": {"head": "bank"},
                    "note": "PBIP-style fixed k-means bank (only temperatures learn)"},
    "reinhard_to_training": {"model": {"stain_normalisation": "reinhard"},
                             "note": "Reinhard LAB normalisation of every patch to the "
                                     "training tiles' mean statistics (train and test)"},
    "tta_flips": {"model": {"test_time_flips": True},
                  "note": "test-time augmentation: mean over 4 flips"},
    "nec_as_other": {"data": {"NEC": "OTHER"},
                     "note": "NEC not a class: DEBRIS / DEB tiles become untagged OTHER "
                             "(mIoU over TUM, STR, LYM: not comparable to the others)"},
}


def relabelling(lever: str) -> dict[str, str]:
    """The class moves a lever (or combination) makes in the tile data (``{}`` for most)."""
    out: dict[str, str] = {}
    for name in parts(lever):
        out.update(LEVERS[name].get("data", {}))
    return out


def apply(lever: str, model: dict[str, Any], train: dict[str, Any]) -> tuple[dict, dict]:
    """The recipe's model and training settings with ``lever`` applied (a name of
    ``LEVERS``, or several joined by ``+``).

    Raises
    ------
    KeyError
        An unknown lever (the message lists the known ones).
    """
    model, train = dict(model), dict(train)
    for name in parts(lever):
        spec = LEVERS[name]
        model.update(spec.get("model", {}))
        for key, value in spec.get("train", {}).items():
            train[key] = train[key] * 2 if value == "x2" else value
            if key == "steps" and value == "x2":
                train["warmup_iters"] = train.get("warmup_iters", 0) * 2
    return model, train


def parts(lever: str) -> list[str]:
    """The levers of a combination ``"a+b"`` (applied left to right).

    Raises
    ------
    KeyError
        An unknown lever (the message lists the known ones).
    """
    names = [n.strip() for n in lever.split("+") if n.strip()]
    unknown = [n for n in names if n not in LEVERS]
    if unknown or not names:
        raise KeyError(f"unknown lever {lever!r}; known: {', '.join(LEVERS)} (combine "
                       "with +)")
    return names
