"""Losses, including the diversity loss and its released (buggy) mode on hand-built cases."""

from __future__ import annotations

import torch

from lpd.losses import (
    classification_loss,
    diversity_loss,
    diversity_pseudo_mask,
    jeffrey_similarity,
)


def _cos_map_from(prototypes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    f = torch.nn.functional.normalize(features, dim=1)
    p = torch.nn.functional.normalize(prototypes, dim=1)
    return torch.einsum("bdhw,pd->bphw", f, p)


def test_classification_loss_weights_scales() -> None:
    tags = torch.tensor([[1.0, 0, 1, 0]])
    perfect = torch.tensor([[20.0, -20, 20, -20]])
    wrong = -perfect
    assert classification_loss([wrong, perfect], tags, (0.0, 1.0)) < 1e-6
    assert classification_loss([wrong, perfect], tags, (1.0, 0.0)) > 10


def test_jeffrey_similarity_extremes() -> None:
    same = torch.full((3, 10), 0.1)
    assert torch.isclose(jeffrey_similarity(same), torch.tensor(1.0))
    disjoint = torch.eye(3, 10) * 0.98 + 0.002
    assert jeffrey_similarity(disjoint / disjoint.sum(1, keepdim=True)) < 0.01


def test_identical_prototypes_near_one_separated_much_lower() -> None:
    torch.manual_seed(0)
    features = torch.randn(1, 8, 6, 6)
    mask = torch.ones(1, 6, 6, dtype=torch.long)  # everything class 0 (label 1)
    base = torch.randn(1, 8)
    identical = base.repeat(4 * 3, 1)
    loss_same = diversity_loss(_cos_map_from(identical, features), mask, 4, 3, tau=10)
    separated = torch.randn(12, 8) * 5
    loss_sep = diversity_loss(_cos_map_from(separated, features), mask, 4, 3, tau=10)
    assert loss_same > 0.999
    assert loss_sep < 0.5 * loss_same


def test_prototypes_receive_gradient() -> None:
    torch.manual_seed(1)
    features = torch.randn(2, 8, 5, 5)
    protos = torch.randn(8, 8, requires_grad=True)
    mask = torch.randint(0, 5, (2, 5, 5))
    loss = diversity_loss(_cos_map_from(protos, features), mask, 4, 2, tau=10)
    loss.backward()
    assert protos.grad is not None and protos.grad.abs().sum() > 0


def _region_probe(mode: str) -> set[int]:
    """Which classes' prototypes get gradient when each class owns a quarter of the map."""
    features = torch.randn(1, 8, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, :2, :2], mask[0, :2, 2:], mask[0, 2:, :2], mask[0, 2:, 2:] = 1, 2, 3, 4
    used = set()
    for c in range(4):
        protos = torch.randn(8, 8, requires_grad=True)
        loss = diversity_loss(_cos_map_from(protos, features), mask, 4, 2, tau=10, mode=mode)
        if loss.requires_grad:
            loss.backward()
            if protos.grad[2 * c : 2 * c + 2].abs().sum() > 0:
                used.add(c)
    return used


def test_correct_mode_uses_every_present_class_region_including_nec() -> None:
    torch.manual_seed(2)
    assert _region_probe("correct") == {0, 1, 2, 3}


def test_released_mode_is_off_by_one_and_never_sees_nec() -> None:
    torch.manual_seed(2)
    # class index c is compared with mask value c: TUM (c=0) gets the background, NEC none
    assert _region_probe("released") == {1, 2, 3}
    features = torch.randn(1, 8, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.long)  # all background
    protos = torch.randn(8, 8)
    cos = _cos_map_from(protos, features)
    assert diversity_loss(cos, mask, 4, 2, mode="correct") == 0
    assert diversity_loss(cos, mask, 4, 2, mode="released") > 0  # TUM on the background


def test_released_mode_double_softmax_is_nearly_flat() -> None:
    torch.manual_seed(3)
    features = torch.randn(1, 8, 10, 10)
    mask = torch.full((1, 10, 10), 1, dtype=torch.long)  # TUM everywhere (label 1)
    protos = torch.randn(8, 8) * 3
    cos = _cos_map_from(protos, features)
    # released mode regions: mask == c, so put TUM's region at value 0 for it
    released = diversity_loss(cos, mask - 1, 4, 2, mode="released")
    expected_v = cos[0, :2].flatten(1).softmax(1).softmax(1)
    assert torch.isclose(released, jeffrey_similarity(expected_v))
    assert released > 0.999  # double softmax: near-uniform distributions, flat loss
    sharp = diversity_loss(cos, mask, 4, 2, tau=10, mode="correct")
    assert sharp < 0.99


def test_pseudo_mask_restricted_to_tags_with_background() -> None:
    cams = torch.zeros(1, 4, 2, 2)
    cams[0, 0] = torch.tensor([[5.0, 0], [0, 0]])
    cams[0, 3] = torch.tensor([[0.0, 5], [1, 0]])
    tags = torch.tensor([[1.0, 0, 0, 0]])  # NEC not tagged: its CAM must not win
    mask = diversity_pseudo_mask(cams, tags, background_score=0.3)
    assert mask.tolist() == [[[1, 0], [0, 0]]]
