"""Optimizer state for resuming training, without pickle: tensors in safetensors, the
rest (param groups, step, scalars) as JSON in its metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from lpd._atomic import atomic_write_bytes
from lpd.errors import CheckpointError


def save_train_state(path: str | Path, optimizer: torch.optim.Optimizer, info: dict) -> None:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, param_state in state["state"].items():
        for name, value in param_state.items():
            key = f"{idx}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    meta = {
        "param_groups": json.dumps(state["param_groups"]),
        "scalars": json.dumps(scalars),
        "info": json.dumps(info),
    }
    # serialised here and written by lpd._atomic: safetensors' save_file makes its own
    # temp file, which a killed process would leave behind unnamed
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=meta))


def load_train_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Load into ``optimizer``; returns the ``info`` dict saved with it."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        groups = json.loads(meta["param_groups"])
        scalars = json.loads(meta["scalars"])
        info = json.loads(meta["info"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"unreadable training state ({exc})") from None
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *scalars.items()]:
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(path, f"training state does not fit this model ({exc})") from None
    return info
