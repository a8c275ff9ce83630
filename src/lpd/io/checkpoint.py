"""Checkpoints: one ``.safetensors`` file with the weights and, in its metadata, the JSON
model config (classes, colours, backbone, k, normalisation, input size, microns per pixel)
and the package version. Written atomically; loading never unpickles anything."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

import lpd
from lpd._atomic import atomic_write_bytes
from lpd._userfile import loads
from lpd.config import ModelConfig
from lpd.errors import CheckpointError, InputError
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
    """The model config and the ``extra`` dict of a checkpoint, without loading weights.

    The JSON in the metadata is read tolerantly (a byte-order mark is ignored) and the
    config is checked field by field against ``ModelConfig``'s types, so a hand-edited or
    foreign checkpoint is refused here, naming the file, not later with a crash.

    Parameters
    ----------
    path : str or Path
        The ``.safetensors`` file.

    Returns
    -------
    ModelConfig
        The model it holds.
    dict
        The ``extra`` facts kept with it (``{}`` when there are none).

    Raises
    ------
    CheckpointError
        Naming the file: missing, pickled, not safetensors, not an LPD checkpoint, or
        with a config that is not JSON, holds unknown settings or values of the wrong type.
    """
    path = _check_file(Path(path))
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, "a safetensors file, but not an LPD checkpoint")
    if "config" not in meta:
        raise CheckpointError(path, "damaged checkpoint: no model config in its metadata")
    try:
        raw = loads(meta["config"], path, "checkpoint's model config")
        extra = loads(meta.get("extra") or "{}", path, "checkpoint's extra metadata")
        if not isinstance(extra, dict):
            raise InputError(path, "the checkpoint's extra metadata is not a JSON object")
        config = ModelConfig.from_dict(raw, str(path))
        check_config(config, path)
    except InputError as exc:  # one line, whatever names the metadata holds
        problem = exc.problem.replace("\r", "\\r").replace("\n", "\\n")
        raise CheckpointError(path, f"damaged checkpoint config: {problem}") from None
    except (KeyError, TypeError, ValueError) as exc:  # what ModelConfig itself may raise
        raise CheckpointError(path, f"damaged checkpoint config ({exc!r})") from None
    return config, extra


def check_config(config: ModelConfig, path: str | Path | None = None) -> None:
    """Check every field of a model config against its declared type.

    Whole numbers must be positive, floats finite, tuples of the declared length; class
    names distinct, colours RGB (0..255).

    Parameters
    ----------
    config : ModelConfig
        The config, e.g. as ``ModelConfig.from_dict`` made it from a file.
    path : str or Path, optional
        The file it came from, named in the error.

    Raises
    ------
    InputError
        Naming ``path`` and the first field that does not fit.
    """
    hints = typing.get_type_hints(ModelConfig)
    for f in dataclasses.fields(ModelConfig):
        value = getattr(config, f.name)
        # a whole-number setting is a count or a size: positive
        if not _fits(value, hints[f.name]) or (type(value) is int and value <= 0):
            raise InputError(path, f"setting {f.name}={value!r} is not a {hints[f.name]} "
                             "(whole numbers positive, numbers finite)")
    names, colours = config.class_names, config.class_colours
    if not names or len(set(names)) != len(names):
        raise InputError(path, f"class_names {list(names)} must be distinct, at least one")
    # not their count: create_model(class_names=...) keeps the default four colours
    if not all(0 <= v <= 255 for c in colours for v in c):
        raise InputError(path, "class_colours must be RGB colours (0..255)")
    if config.microns_per_pixel is not None and config.microns_per_pixel <= 0:
        raise InputError(path, f"microns_per_pixel {config.microns_per_pixel} must be positive")


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the type ``hint`` (ModelConfig's: plain types, optionals and
    tuples); bool is not a number here. Types this does not know are accepted."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if hint is str:
        return isinstance(value, str)
    return True


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
        head = fh.read(9)
        size = os.fstat(fh.fileno()).st_size
    if not head:
        raise CheckpointError(path, "empty file (0 bytes)")
    # a safetensors header (u64 length, then JSON) may begin like a pickle: a header of
    # 640, 896, 1152 or 1408 bytes starts b"\x80\x02".. b"\x80\x05"
    header = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    safetensors_like = head[8:9] == b"{" and 0 < header <= size - 8
    if head.startswith(_PICKLE_MAGIC) and not safetensors_like:
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


