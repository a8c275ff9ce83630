"""Model shapes, the timm factory, and the offline ImageNet weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lpd.model import create_model, imagenet_classifier
from lpd.model.backbone import BackboneWeightsError, create_backbone


@pytest.mark.parametrize("k", [1, 3])
def test_prototype_model_shapes(k: int) -> None:
    model = create_model("resnet18", prototypes_per_class=k, prototype_dim=32).eval()
    out = model(torch.randn(2, 3, 224, 224))
    assert len(out.proto_maps) == 4
    # last four levels of resnet18 with output_stride 16: strides 4, 8, 16, 16
    assert [m.shape[-1] for m in out.proto_maps] == [56, 28, 14, 14]
    for maps, scores, logits, cam, cos in zip(
        out.proto_maps, out.proto_scores, out.class_logits, out.cams, out.cos_maps, strict=True
    ):
        assert maps.shape[:2] == (2, 4 * k)
        assert scores.shape == (2, 4 * k)
        assert logits.shape == (2, 4)
        assert cam.shape == (2, 4, *maps.shape[-2:])
        assert cos.abs().max() <= 1 + 1e-5
        # the class score is the spatial mean of the class map (mean over prototypes)
        torch.testing.assert_close(cam.mean(dim=(2, 3)), logits, atol=1e-4, rtol=1e-4)


def test_temperature_initialised_and_learnable() -> None:
    model = create_model("resnet18", prototypes_per_class=2, prototype_dim=16)
    temps = model.head.log_temperature.exp()
    torch.testing.assert_close(temps, torch.full_like(temps, 1 / 0.07))
    assert model.head.log_temperature.requires_grad


def test_softmax_class_score_option_only_at_test_time() -> None:
    model = create_model("resnet18", prototypes_per_class=3, class_score="softmax").eval()
    out = model(torch.randn(1, 3, 96, 96))
    scores = out.proto_scores[-1].view(1, 4, 3)
    expected = (scores.softmax(dim=2) * scores).sum(dim=2)
    torch.testing.assert_close(out.class_logits[-1], expected)


def test_cam_head_baseline() -> None:
    model = create_model("resnet18", head="cam").eval()
    out = model(torch.randn(1, 3, 128, 128))
    assert out.cos_maps is None and model.k == 1
    assert out.proto_maps[-1].shape[1] == 4


def test_any_backbone_without_output_stride() -> None:
    backbone = create_backbone("pvt_v2_b0", pretrained=False)
    assert len(backbone.feature_info.channels()) == 4


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a timm model"):
        create_model("no_such_net")


def test_hub_weights_fail_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneWeightsError, match="HF_HUB_OFFLINE"):
        create_backbone("resnet18", pretrained=True)


def test_offline_imagenet_weights_recognise_a_cat() -> None:
    from skimage import data

    model = imagenet_classifier("tf_efficientnet_lite0")
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor(model.pretrained_cfg["mean"])[:, None, None]
    std = torch.tensor(model.pretrained_cfg["std"])[:, None, None]
    with torch.inference_mode():
        top5 = model((img - mean) / std).topk(5).indices[0].tolist()
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cats & set(top5), top5


def test_pretrained_features_match_the_classifier() -> None:
    full = imagenet_classifier("tf_efficientnet_lite0")
    model = create_model(pretrained=True, prototypes_per_class=2)
    stem = model.backbone.state_dict()["conv_stem.weight"]
    assert torch.equal(stem, full.state_dict()["conv_stem.weight"])
    assert model.config.mean == (0.5, 0.5, 0.5)  # the backbone's own normalisation, pinned
    assert np.isfinite(stem.numpy()).all()
