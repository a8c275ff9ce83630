"""Checkpoints: one ``.safetensors`` file with the weights and, in its metadata, the JSON
model config (classes, colours, backbone, k, normalisation, input size, microns per pixel)
and the package version. Written atomically; loading never unpickles anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

import lpd
from lpd._atomic import atomic_write_bytes
from lpd.config import ModelConfig
from lpd.errors import CheckpointError
from lpd.model.lpd_model import LPDModel

FORMAT = "lpd-checkpoint"
FORMAT_VERSION = "1"
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


def save_checkpoint(
    path: str | Path, model: LPDModel, extra: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically (the old file stays until the new is whole).

    Parameters
    ----------
    path : str or Path
        The ``.safetensors`` file.
    model : LPDModel
        Its weights and config are written.
    extra : dict, optional
        JSON-able facts kept in the metadata (recipe, data, scores).
    dtype : torch.dtype, optional
        Store floating-point weights in this type (e.g. ``torch.float16`` for a shipped
        model: half the size; ``load_checkpoint`` casts back to the model's type).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lpd_version": lpd.__version__,
        "config": json.dumps(model.config.to_dict()),
        "extra": json.dumps(extra or {}),
    }
    # serialised here and written by lpd._atomic: safetensors' save_file makes its own
    # temp file, which a killed process would leave behind unnamed
    atomic_write_bytes(path, safetensors_bytes(state, metadata=metadata))
    return path


def read_checkpoint_metadata(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config and the ``extra`` dict of a checkpoint, without loading weights."""
    path = _check_file(Path(path))
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, "a safetensors file, but not an LPD checkpoint")
    try:
        config = ModelConfig.from_dict(json.loads(meta["config"]), str(path))
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(path, f"damaged checkpoint config ({exc})") from None
    return config, extra


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    expect_num_classes: int | None = None,
    expect_backbone: str | None = None,
) -> LPDModel:
    """Rebuild the model a checkpoint describes and load its weights (strictly)."""
    path = Path(path)
    config, _ = read_checkpoint_metadata(path)
    if expect_num_classes is not None and config.num_classes != expect_num_classes:
        raise CheckpointError(
            path, f"made for {config.num_classes} classes, {expect_num_classes} expected"
        )
    if expect_backbone is not None and config.backbone != expect_backbone:
        raise CheckpointError(
            path, f"made for backbone {config.backbone!r}, {expect_backbone!r} expected"
        )
    try:
        model = LPDModel(config, pretrained=False)
    except Exception as exc:
        raise CheckpointError(path, f"cannot build its model ({exc})") from None
    state = _read_tensors(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {_few(missing)}" if missing else "",
                f"unexpected {_few(unexpected)}" if unexpected else "",
                f"wrong shape {_few(wrong)}" if wrong else "",
            )
            if part
        )
        raise CheckpointError(path, f"weights do not fit its {config.backbone} model ({detail})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(path, f"contains NaN or Inf values in {_few(bad)}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def _check_file(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(path, "checkpoint not found")
    if not path.is_file():
        raise CheckpointError(path, "not a file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise CheckpointError(path, "empty file (0 bytes)")
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            path,
            "a pickled PyTorch file; only safetensors checkpoints are loaded, because "
            "unpickling can run code (nothing was run)",
        )
    return path


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"damaged or truncated weights ({exc})") from None


def _few(names: list[str], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


