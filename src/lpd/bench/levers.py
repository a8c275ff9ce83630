"""Levers of the default recipe that the leave-one-release-out sweep screens (issue:
accuracy across labs). Each lever is a change to the recipe's model or training
settings; ``recipe`` is the recipe itself. Levers that need new code (LAB-statistics stain
augmentation, grayscale/blur/JPEG/scale jitter, k-means-initialised prototypes, test-time
flips) are not here yet."""

from __future__ import annotations

from typing import Any

LEVERS: dict[str, dict[str, Any]] = {
    "recipe": {"note": "the shipped recipe (HED jitter sigma 0.05, bias 0.01)"},
    "hed_strong": {"train": {"hed_sigma": 0.15, "hed_bias": 0.05},
                   "note": "stronger HED jitter (sigma 0.15, bias 0.05)"},
    "no_stain_aug": {"train": {"stain_augment": False}, "note": "no stain augmentation"},
    "macenko": {"model": {"stain_normalisation": "macenko"},
                "note": "Macenko stain normalisation of every patch (train and test)"},
    "backbone_lr_0.1": {"train": {"lr": 5e-6, "head_lr_scale": 100.0},
                        "note": "backbone learning rate x 0.1 (head's unchanged)"},
    "no_div": {"train": {"div_weight": 0.0},
               "note": "no diversity loss ((c) against the recipe's (e))"},
    "steps_x2": {"train": {"steps": "x2"}, "note": "twice the steps"},
    "input_224": {"model": {"input_size": 224}, "note": "224 px input (the recipe's)"},
    "background_power_5": {"model": {"background_power": 5.0},
                           "note": "background channel (1 - max)^5 instead of ^10"},
}


def apply(lever: str, model: dict[str, Any], train: dict[str, Any]) -> tuple[dict, dict]:
    """The recipe's model and training settings with ``lever`` applied.

    Raises
    ------
    KeyError
        An unknown lever (the message lists the known ones).
    """
    if lever not in LEVERS:
        raise KeyError(f"unknown lever {lever!r}; known: {', '.join(LEVERS)}")
    spec = LEVERS[lever]
    model = {**model, **spec.get("model", {})}
    train = dict(train)
    for key, value in spec.get("train", {}).items():
        train[key] = train[key] * 2 if value == "x2" else value
        if key == "steps" and value == "x2":
            train["warmup_iters"] = train.get("warmup_iters", 0) * 2
    return model, train
