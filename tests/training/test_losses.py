"""Losses and learning-rate schedules: exact values on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vol_transfer.training.losses import build_loss
from vol_transfer.training.schedules import LRSchedule


def _logits_for(label: torch.Tensor, classes: int, scale: float = 20.0) -> torch.Tensor:
    return F.one_hot(label, classes).movedim(-1, 1).float() * scale


def test_dice_is_zero_for_a_perfect_prediction_and_high_for_a_wrong_one():
    label = torch.randint(0, 3, (2, 6, 6, 6))
    loss = build_loss("dice", 3)
    assert float(loss(_logits_for(label, 3), label)) == pytest.approx(0.0, abs=1e-4)
    wrong = (label + 1) % 3
    assert float(loss(_logits_for(wrong, 3), label)) > 0.99


def test_cross_entropy_matches_torch_without_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4)
    label = torch.randint(0, 3, (2, 4, 4, 4))
    weights = [0.2, 1.0, 3.0]
    ours = build_loss("ce", 3, class_weights=weights)(logits, label)
    reference = F.cross_entropy(logits, label, weight=torch.tensor(weights))
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)


@pytest.mark.parametrize("kind", ["dice", "ce", "dice_ce"])
def test_padded_voxels_are_ignored(kind):
    torch.manual_seed(1)
    logits = torch.randn(1, 2, 6, 6, 6)
    label = torch.randint(0, 2, (1, 6, 6, 6))
    label[..., 4:] = -1  # padding
    loss = build_loss(kind, 2)
    before = loss(logits, label)
    changed = logits.clone()
    changed[..., 4:] = torch.randn(1, 2, 6, 6, 2) * 100
    assert float(loss(changed, label)) == pytest.approx(float(before), rel=1e-6)
    valid = label >= 0
    assert float(loss(logits, label.clamp_min(0), valid)) == pytest.approx(float(before), rel=1e-6)


def test_class_weights_weight_the_dice_terms():
    label = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    label[0, :2] = 1
    label[0, 2:, :1] = 2
    prediction = label.clone()
    prediction[label == 2] = 0  # class 2 entirely missed, class 1 perfect
    logits = _logits_for(prediction, 3)
    only_1 = build_loss("dice", 3, class_weights=[1, 1, 0])(logits, label)
    only_2 = build_loss("dice", 3, class_weights=[1, 0, 1])(logits, label)
    assert float(only_1) == pytest.approx(0.0, abs=1e-4)
    assert float(only_2) == pytest.approx(1.0, abs=1e-3)


def test_loss_is_float32_under_bf16_autocast():
    logits = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    label = torch.randint(0, 2, (1, 4, 4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = build_loss("dice_ce", 2)(logits.bfloat16(), label)
    assert value.dtype == torch.float32
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    "schedule, expected",
    [
        (LRSchedule("constant", 100), {0: 1.0, 50: 1.0, 99: 1.0}),
        (LRSchedule("constant", 100, warmup_iterations=4), {0: 0.25, 3: 1.0, 50: 1.0}),
        (LRSchedule("poly", 101, power=1.0), {0: 1.0, 50: 0.5, 100: 0.0}),
        (LRSchedule("cosine", 101, min_factor=0.1), {0: 1.0, 50: 0.55, 100: 0.1}),
        (LRSchedule("step", 100, milestones=(10, 20), gamma=0.5), {9: 1.0, 10: 0.5, 25: 0.25}),
        (LRSchedule("step", 100, step_size=30, gamma=0.1), {29: 1.0, 30: 0.1, 60: 0.01}),
    ],
)
def test_schedule_factors(schedule, expected):
    for iteration, factor in expected.items():
        assert schedule.factor(iteration) == pytest.approx(factor, abs=1e-9), iteration


def test_schedule_scales_every_group_from_its_own_base():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 1e-4}])
    schedule = LRSchedule("cosine", 11)
    schedule.apply(optimizer, 5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4, 5e-5])
    schedule.apply(optimizer, 0)  # a pure function of the iteration: going back restores the rate
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-4])
    assert math.isclose(schedule.factor(10), 0.0, abs_tol=1e-12)
