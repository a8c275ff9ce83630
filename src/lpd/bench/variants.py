"""The configurations the accuracy benchmark compares (issue 5): the ablation (a)-(e), the
k sweep of (e), the stain-augmentation pairs and a few investigations of cross-release
generalisation. Each differs from the shared settings only by the overrides listed here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    group: str  # "ablation", "k_sweep", "stain", "investigation"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    bank: str | None = None  # None, "fixed" (BankHead) or "projected" (frozen P + MLPs)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "group": self.group, "model": dict(self.model),
                "train": dict(self.train), "bank": self.bank}


NO_DIV = {"div_weight": 0.0}
NO_STAIN = {"stain_augment": False}

_ALL = [
    Variant("a_cam", "(a) CAM baseline", "ablation", {"head": "cam"}, NO_DIV),
    Variant("b_bank", "(b) fixed k-means bank (PBIP-style)", "ablation",
            {"head": "bank"}, NO_DIV, bank="fixed"),
    Variant("c_proto", "(c) learnable, no diversity", "ablation", {}, NO_DIV),
    Variant("d_div_released", "(d) learnable + diversity as released", "ablation",
            {}, {"div_mode": "released"}),
    Variant("e_div", "(e) learnable + diversity (correct)", "ablation",
            {}, {"div_mode": "correct"}),
    *(Variant(f"e_k{k}", f"(e) k={k}", "k_sweep", {"prototypes_per_class": k},
              {"div_mode": "correct"}) for k in (1, 3, 5)),
    Variant("a_cam_nostain", "(a) CAM, no stain aug.", "stain", {"head": "cam"},
            {**NO_DIV, **NO_STAIN}),
    Variant("b_bank_nostain", "(b) bank, no stain aug.", "stain", {"head": "bank"},
            {**NO_DIV, **NO_STAIN}, bank="fixed"),
    Variant("c_proto_nostain", "(c) learnable, no stain aug.", "stain", {},
            {**NO_DIV, **NO_STAIN}),
    Variant("d_div_released_nostain", "(d) released div., no stain aug.", "stain", {},
            {"div_mode": "released", **NO_STAIN}),
    Variant("e_div_nostain", "(e) correct div., no stain aug.", "stain", {},
            {"div_mode": "correct", **NO_STAIN}),
    # PBIP's own code keeps the k-means bank fixed but learns per-scale projection MLPs.
    Variant("b_bank_proj", "(b') frozen k-means bank + learnable projections", "investigation",
            {"freeze_prototypes": True}, NO_DIV, bank="projected"),
    Variant("e_macenko", "(e) + Macenko normalisation (train and test)", "investigation",
            {"stain_normalisation": "macenko"}, {"div_mode": "correct"}),
    Variant("e_hed_strong", "(e) + stronger HED jitter (sigma 0.1, bias 0.03)",
            "investigation", {}, {"div_mode": "correct", "hed_sigma": 0.1, "hed_bias": 0.03}),
    Variant("e_lr2e-4", "(e) with lr 2e-4", "investigation", {},
            {"div_mode": "correct", "lr": 2e-4}),
    Variant("e_div_w2", "(e) with diversity weight 2.0 (default 0.5)", "investigation", {},
            {"div_mode": "correct", "div_weight": 2.0}),
    Variant("e_div_tau30", "(e) with diversity temperature 30 (default 10)", "investigation",
            {}, {"div_mode": "correct", "div_tau": 30.0}),
    Variant("c_proto_macenko", "(c) + Macenko normalisation", "investigation",
            {"stain_normalisation": "macenko"}, NO_DIV),
    Variant("a_cam_macenko", "(a) + Macenko normalisation", "investigation",
            {"head": "cam", "stain_normalisation": "macenko"}, NO_DIV),
]
VARIANTS: dict[str, Variant] = {v.name: v for v in _ALL}

ABLATION = ("a_cam", "b_bank", "c_proto", "d_div_released", "e_div")
K_SWEEP = ("e_k1", "e_k3", "e_k5")  # k = 10 is e_div itself
STAIN = ("a_cam_nostain", "e_div_nostain")
DEFAULT_CONFIGS = (*ABLATION, *K_SWEEP, *STAIN)
QUICK_CONFIGS = ("a_cam", "b_bank", "c_proto", "e_div")
INVESTIGATION = ("e_macenko", "e_hed_strong", "e_lr2e-4", "b_bank_proj", "e_div_w2",
                 "e_div_tau30")
BASELINE = "a_cam"
# pairs (with, without) stain augmentation for the stain table
STAIN_PAIRS = {"a_cam": "a_cam_nostain", "b_bank": "b_bank_nostain", "c_proto": "c_proto_nostain",
               "d_div_released": "d_div_released_nostain", "e_div": "e_div_nostain"}


def resolve(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Config names from a comma-separated string or a list; "default", "quick", "ablation",
    "k", "stain", "all-stain", "investigation" and "all" expand to their groups."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    groups = {
        "default": DEFAULT_CONFIGS, "quick": QUICK_CONFIGS, "ablation": ABLATION,
        "k": K_SWEEP, "stain": STAIN, "all-stain": tuple(STAIN_PAIRS.values()),
        "investigation": INVESTIGATION, "all": tuple(VARIANTS),
    }
    out: list[str] = []
    for name in names:
        expanded = groups.get(name, (name,))
        for n in expanded:
            if n not in VARIANTS:
                known = ", ".join([*groups, *VARIANTS])
                raise ValueError(f"unknown benchmark configuration {n!r} (known: {known})")
            if n not in out:
                out.append(n)
    if not out:
        raise ValueError("no benchmark configuration selected")
    return tuple(out)
