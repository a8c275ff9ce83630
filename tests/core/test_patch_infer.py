"""CAMs -> label maps: gating, background channel, restricted argmax, protocols."""

from __future__ import annotations

import pytest
import torch

from lpd.infer.patch import (
    labels_from_scores,
    predict_patches,
    predicted_presence,
    presence_logits,
)
from lpd.model import create_model


def _scores(maps: list[torch.Tensor]) -> torch.Tensor:
    """(C, H, W) maps used for all three fused scales -> (1, 3, C, H, W)."""
    stacked = torch.stack(maps)
    return stacked[None, None].repeat(1, 3, 1, 1, 1)


def test_argmax_restricted_to_present_classes() -> None:
    h = w = 4
    tum = torch.zeros(h, w)
    tum[:, :2] = 5
    nec = torch.full((h, w), 9.0)  # strongest everywhere, but not present
    scores = _scores([tum, torch.zeros(h, w), torch.zeros(h, w), nec])
    presence = torch.tensor([[True, False, False, False]])
    labels, fused = labels_from_scores(scores, presence)
    assert labels[0, :, :2].eq(1).all()
    assert labels[0, :, 2:].eq(0).all()  # background where TUM is weak, never NEC
    assert fused[0, 3].eq(0).all()


def test_present_class_with_no_positive_cam_does_not_paint_blocks() -> None:
    tum = torch.full((4, 4), -3.0)  # present but <= 0 everywhere
    strm = torch.zeros(4, 4)
    strm[:2] = 2.0
    scores = _scores([tum, strm, torch.zeros(4, 4), torch.zeros(4, 4)])
    presence = torch.tensor([[True, True, False, False]])
    labels, _ = labels_from_scores(scores, presence)
    assert not labels.eq(1).any()
    assert labels[0, :2].eq(2).all() and labels[0, 2:].eq(0).all()


def test_fusion_weights_and_background_power() -> None:
    m = torch.linspace(0, 1, 16).view(4, 4)
    scores = _scores([m, torch.zeros(4, 4), torch.zeros(4, 4), torch.zeros(4, 4)])
    presence = torch.tensor([[True, False, False, False]])
    labels, fused = labels_from_scores(scores, presence, background_power=1.0)
    torch.testing.assert_close(fused[0, 0], m)
    assert labels[0].flatten().tolist() == [0] * 8 + [1] * 8  # fg wins where m > 0.5


def test_predicted_presence_threshold_and_fallback() -> None:
    scores = torch.full((2, 3, 4, 2, 2), -1.0)
    scores[0, -1, 1] = 3.0  # sigmoid(3) > 0.5
    scores[0, -1, 0] = -3.0
    scores[1] = -5.0
    scores[1, -1, 2] = -1.0  # none above threshold: top one
    torch.testing.assert_close(presence_logits(scores)[0, 1], torch.tensor(3.0))
    present = predicted_presence(scores, 0.5)
    assert present[0].tolist() == [False, True, False, False]
    assert present[1].tolist() == [False, False, True, False]


def test_predict_patches_protocols(tiny_model) -> None:
    model = tiny_model
    x = torch.randn(2, 3, 96, 96)
    tags = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 1]])
    oracle = predict_patches(model, x, "oracle", tags)
    assert oracle.labels.shape == (2, 96, 96) and oracle.labels.dtype == torch.uint8
    assert set(oracle.labels[0].unique().tolist()) <= {0, 1}
    assert set(oracle.labels[1].unique().tolist()) <= {0, 3, 4}
    predicted = predict_patches(model, x, "predicted")
    assert predicted.presence.any(dim=1).all()
    with pytest.raises(ValueError, match="tags"):
        predict_patches(model, x, "oracle")


def test_predict_patches_runs_the_model_in_eval_mode_and_restores_its_mode() -> None:
    """A model straight from training (BatchNorm in batch-statistics mode) segments as it
    does after loading: the benchmarks once scored a fresh base model in training mode."""
    torch.manual_seed(0)
    model = create_model("resnet18", prototypes_per_class=2, input_size=64)
    x = torch.randn(4, 3, 64, 64)
    model.train()
    a = predict_patches(model, x, "oracle", torch.ones(4, 4))
    assert model.training  # restored
    model.eval()
    b = predict_patches(model, x, "oracle", torch.ones(4, 4))
    assert torch.equal(a.labels, b.labels) and torch.allclose(a.class_maps, b.class_maps)
