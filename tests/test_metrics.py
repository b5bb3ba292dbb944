"""Segmentation metrics against hand-computed confusion matrices."""

from __future__ import annotations

import math

import pytest
import torch

from stitch.tasks.metrics import ConfusionMatrix, metrics_from_confusion
from stitch.tasks.segmentation import soft_dice_loss


def test_confusion_matrix_counts_and_ignore_index() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(pred, target)
    # rows: target, columns: prediction; the ignored pixel (target 255, pred 2) is not counted
    expected = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    assert torch.equal(cm.matrix, expected)
    m = cm.compute()
    # class 0: tp 1, fp 2 (pred 0 where target 1 and 2), fn 1 -> iou 1/4, dice 2/5
    # class 1: tp 2, fp 1, fn 1 -> iou 2/4; class 2: tp 1, fp 0, fn 1 -> iou 1/2
    assert m["iou_per_class"] == pytest.approx([0.25, 0.5, 0.5])
    assert m["dice_per_class"] == pytest.approx([2 / 5, 4 / 6, 2 / 3])
    assert m["precision_per_class"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert m["recall_per_class"] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert m["miou"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert m["pixel_acc"] == pytest.approx(4 / 7)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == ([1, 2, 1], [2, 1, 0], [1, 1, 1], [3, 3, 5])
    # foreground = classes 1 and 2 merged: tp = 2+0+0+1 = 3, fp = pred fg where target 0 = 1, fn = 2
    assert m["fg_iou"] == pytest.approx(3 / 6)
    assert m["fg_dice"] == pytest.approx(6 / 9)


def test_absent_class_is_left_out_of_the_means_not_counted_as_zero() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 0]))
    m = cm.compute()
    assert math.isnan(m["iou_per_class"][2]) and math.isnan(m["dice_per_class"][2])
    assert m["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_predicting_an_absent_class_counts_against_it() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([2, 0]), torch.tensor([0, 0]))
    m = cm.compute()
    assert m["iou_per_class"][2] == 0.0 and m["precision_per_class"][2] == 0.0
    assert m["recall_per_class"][2] == 0.0  # predicted but absent from the target
    assert math.isnan(m["iou_per_class"][1])  # absent from both


def test_a_class_never_predicted_has_precision_zero_not_left_out() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1]))
    m = cm.compute()
    assert m["precision_per_class"] == [0.5, 0.0] and m["mprecision"] == 0.25


def test_accumulating_batches_equals_one_big_batch() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 4, (6, 8, 8), generator=g)
    p = torch.randint(0, 4, (6, 8, 8), generator=g)
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(p, t)
    for i in range(6):
        b.update(p[i], t[i])
    assert torch.equal(a.matrix, b.matrix)
    assert metrics_from_confusion(a.matrix) == metrics_from_confusion(b.matrix)


def test_labels_out_of_range_are_an_error() -> None:
    with pytest.raises(ValueError, match="outside 0..1"):
        ConfusionMatrix(2).update(torch.tensor([0, 1]), torch.tensor([0, 3]))


def test_soft_dice_is_zero_for_a_perfect_confident_prediction_and_ignores_pixels() -> None:
    target = torch.tensor([[[0, 1], [1, 255]]])
    logits = torch.full((1, 2, 2, 2), -20.0)
    logits[0, 0, 0, 0] = 20
    logits[0, 1, 0, 1] = logits[0, 1, 1, 0] = 20
    logits[0, 0, 1, 1] = 20  # an ignored pixel: whatever is predicted there does not count
    assert float(soft_dice_loss(logits, target, 255)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_dice_loss(-logits, target, 255)) == pytest.approx(
        0.75, abs=1e-4
    )  # (0+1)/(3+1) per class, eps 1
