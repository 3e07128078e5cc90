from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vol_transfer.evaluation.metrics import binary_metrics, class_metrics, dice, dice_per_class, mean_dice, surface


def _box(shape, *slices) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[slices] = True
    return mask


def test_shifted_cubes_hand_computed():
    truth = _box((12, 12, 12), slice(2, 6), slice(2, 6), slice(2, 6))  # 4³ = 64 voxels
    pred = _box((12, 12, 12), slice(2, 6), slice(2, 6), slice(3, 7))  # shifted one voxel along z
    m = binary_metrics(pred, truth, (1.0, 1.0, 2.0))
    assert m["dice"] == pytest.approx(2 * 48 / 128)
    assert m["sensitivity"] == pytest.approx(48 / 64)
    assert m["precision"] == pytest.approx(48 / 64)
    assert m["volume_pred_ml"] == pytest.approx(64 * 2 / 1000)
    assert m["volume_difference_ml"] == 0.0
    # the farthest surface voxels are one z-step (2 mm) from the other surface
    assert m["hd95"] == pytest.approx(2.0)
    # surfaces: 56 voxels each. Per surface, the 16 voxels of the unshared end face are 2 mm from
    # the other surface, and the 2×2 centre of the shared end face is 1 mm (sideways) from the
    # other cube's side wall; all other surface voxels lie on the other surface.
    assert m["asd"] == pytest.approx((2 * (16 * 2.0 + 4 * 1.0)) / 112)


def test_identical_masks():
    mask = _box((8, 9, 10), slice(1, 5), slice(2, 7), slice(3, 4))
    m = binary_metrics(mask, mask, (0.5, 0.5, 3.0))
    assert (m["dice"], m["hd95"], m["asd"], m["sensitivity"], m["precision"]) == (1.0, 0.0, 0.0, 1.0, 1.0)


def test_empty_cases_are_explicit():
    empty = np.zeros((5, 5, 5), bool)
    cube = _box((5, 5, 5), slice(1, 3), slice(1, 3), slice(1, 3))
    both = binary_metrics(empty, empty, (1, 1, 1))  # nothing to score: NaN, left out of means (nnU-Net)
    assert all(math.isnan(both[m]) for m in ("dice", "hd95", "asd", "sensitivity", "precision"))
    assert both["volume_difference_ml"] == 0.0
    missed = binary_metrics(empty, cube, (1, 1, 1))
    assert missed["dice"] == 0.0 and math.isinf(missed["hd95"]) and math.isinf(missed["asd"])
    assert missed["sensitivity"] == 0.0 and math.isnan(missed["precision"])
    assert missed["volume_difference_ml"] == pytest.approx(-8 / 1000)
    false_alarm = binary_metrics(cube, empty, (1, 1, 1))
    assert false_alarm["dice"] == 0.0 and math.isinf(false_alarm["hd95"])
    assert false_alarm["precision"] == 0.0 and math.isnan(false_alarm["sensitivity"])


def test_surface_treats_image_border_as_background():
    full = np.ones((3, 3, 3), bool)
    assert surface(full).sum() == 26  # all but the centre


def test_class_metrics_groups_label_values():
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1:3, 1:3, 1:3] = 1
    truth[3:5, 3:5, 3:5] = 4
    pred = truth.copy()
    pred[3:5, 3:5, 3:5] = 2  # the enhancing part called edema
    result = class_metrics(pred, truth, {"core": [1, 3, 4], "whole": [1, 2, 3, 4]}, (1, 1, 1))
    assert result["core"]["dice"] == pytest.approx(2 * 8 / 24)
    assert result["whole"]["dice"] == 1.0
    with pytest.raises(ValueError):
        class_metrics(pred[:-1], truth, {"core": [1]}, (1, 1, 1))


def test_agrees_with_monai_on_irregular_masks():
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(0)
    truth = _box((30, 28, 20), slice(5, 20), slice(8, 25), slice(4, 15))
    pred = truth ^ (rng.random(truth.shape) < 0.05)
    pred[25:28, 2:4, 17:19] = True
    spacing = (0.8, 1.2, 2.5)

    def one_hot(mask):
        t = torch.from_numpy(mask.astype(np.float32))[None, None]
        return torch.cat([1 - t, t], 1)

    ours = binary_metrics(pred, truth, spacing)
    hd95 = compute_hausdorff_distance(one_hot(pred), one_hot(truth), percentile=95, spacing=spacing)
    asd = compute_average_surface_distance(one_hot(pred), one_hot(truth), symmetric=True, spacing=spacing)
    assert ours["hd95"] == pytest.approx(float(hd95[0, 0]), rel=1e-5)
    assert ours["asd"] == pytest.approx(float(asd[0, 0]), rel=1e-5)


def test_dice_per_class_hand_computed_and_nan_when_absent_from_both():
    prediction = np.array([0, 1, 1, 2, 2, 0])
    truth = np.array([0, 1, 0, 2, 2, 2])
    assert dice_per_class(prediction, truth, 4)[:2] == pytest.approx([2 / 3, 0.8])
    assert math.isnan(dice_per_class(prediction, truth, 4)[2])  # class 3 in neither
    assert dice_per_class(np.array([3, 0]), np.array([0, 0]), 4)[2] == 0.0  # a false positive on an empty truth
    with pytest.raises(ValueError):
        dice_per_class(prediction[:-1], truth, 3)


def test_mean_dice_leaves_nan_out():
    assert mean_dice([0.5, math.nan, 0.7]) == pytest.approx(0.6)
    assert math.isnan(mean_dice([math.nan, math.nan])) and math.isnan(mean_dice([]))


def test_dice_agrees_with_monai_where_the_truth_is_not_empty():
    from monai.metrics import compute_dice

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (12, 10, 8))
    prediction = np.where(rng.random(truth.shape) < 0.3, rng.integers(0, 3, truth.shape), truth)

    def one_hot(labels):
        return torch.from_numpy(np.stack([labels == k for k in range(3)]).astype(np.float32))[None]

    theirs = compute_dice(one_hot(prediction), one_hot(truth), include_background=False)[0].tolist()
    assert dice_per_class(prediction, truth, 3) == pytest.approx(theirs, rel=1e-6)
    empty = np.zeros_like(truth)
    assert math.isnan(dice(empty == 1, empty == 1))
