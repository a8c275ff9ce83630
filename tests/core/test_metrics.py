"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from lpd.metrics import ConfusionMatrix, one_class_guess


def test_perfect_prediction() -> None:
    truth = np.array([[1, 2], [3, 4]])
    cm = ConfusionMatrix(4)
    cm.update(truth, truth)
    s = cm.scores()
    assert s.miou == 1 and s.mdice == 1 and s.fwiou == 1


def test_hand_computed_case() -> None:
    # ground truth: 4 TUM, 2 STR, 2 background (ignored)
    truth = np.array([1, 1, 1, 1, 2, 2, 0, 0])
    pred = np.array([1, 1, 1, 2, 2, 0, 3, 1])
    cm = ConfusionMatrix(4)
    cm.update(pred, truth)
    s = cm.scores()
    # TUM: tp 3, fn 1 (predicted STR), fp 0 (the TUM on background is ignored)
    assert s.iou[0] == pytest.approx(3 / 4)
    assert s.dice[0] == pytest.approx(6 / 7)
    # STR: tp 1, fn 1 (predicted background), fp 1 (a TUM pixel)
    assert s.iou[1] == pytest.approx(1 / 3)
    assert s.dice[1] == pytest.approx(2 / 4)
    # LYM, NEC: never in truth nor predicted on tissue -> undefined, left out of the means
    assert np.isnan(s.iou[2]) and np.isnan(s.iou[3])
    assert s.miou == pytest.approx((3 / 4 + 1 / 3) / 2)
    assert s.mdice == pytest.approx((6 / 7 + 1 / 2) / 2)
    assert s.fwiou == pytest.approx(4 / 6 * 3 / 4 + 2 / 6 * 1 / 3)


def test_class_predicted_but_absent_counts_zero() -> None:
    truth = np.array([1, 1])
    pred = np.array([1, 4])
    cm = ConfusionMatrix(4)
    cm.update(pred, truth)
    s = cm.scores()
    assert s.iou[3] == 0  # NEC predicted on TUM: a false positive, IoU 0
    assert s.miou == pytest.approx((0.5 + 0) / 2)


def test_accumulates_over_updates() -> None:
    a, b = ConfusionMatrix(), ConfusionMatrix()
    t1, p1 = np.array([1, 2, 3]), np.array([1, 2, 2])
    t2, p2 = np.array([4, 4]), np.array([4, 1])
    a.update(p1, t1)
    a.update(p2, t2)
    b.update(np.concatenate([p1, p2]), np.concatenate([t1, t2]))
    assert np.array_equal(a.matrix, b.matrix)


def test_one_class_guess() -> None:
    truth = np.array([[0, 2, 2], [1, 2, 0]])
    assert (one_class_guess(truth) == 2).all()
    assert (one_class_guess(np.zeros((2, 2), int)) == 0).all()
