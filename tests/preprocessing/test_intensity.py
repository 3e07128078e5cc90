"""Intensity normalisation: checked against MONAI's transforms and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import NormalizeIntensity, ScaleIntensityRange

from vol_transfer.errors import RecipeError
from vol_transfer.io.volumes import load_volume
from vol_transfer.preprocessing.intensity import (
    border_background,
    HU_WINDOWS,
    foreground_mask,
    hu_window,
    percentile_clip,
    scale_by_max,
    scale_uint8,
    zscore,
)

torch.set_num_threads(2)


def test_zscore_over_nonzero_mask_matches_monai():
    rng = np.random.default_rng(0)
    array = rng.normal(50, 10, size=(8, 9, 10)).astype(np.float32)
    array[:2] = 0
    ours = zscore(array, foreground_mask(array, "nonzero"))
    monai = NormalizeIntensity(nonzero=True)(torch.from_numpy(array)).numpy()
    np.testing.assert_allclose(ours, monai, atol=1e-4)
    assert np.all(ours[:2] == 0)
    inside = ours[array != 0]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-4


def test_zscore_without_mask_and_constant_input():
    array = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(zscore(array), (array - 2.5) / array.std(), rtol=1e-6)
    assert np.all(zscore(np.full((3, 3), 7.0)) == 0)


def test_zscore_threshold_mask():
    array = np.array([0.0, 0.5, 10.0, 20.0])
    mask = foreground_mask(array, "threshold", threshold=1.0)
    result = zscore(array, mask)
    assert result[0] == 0 and result[1] == 0
    assert result[2] == pytest.approx(-1.0) and result[3] == pytest.approx(1.0)


def test_percentile_clip_bounds():
    array = np.arange(1001, dtype=np.float32)
    clipped = percentile_clip(array, 1, 99)
    assert clipped.min() == pytest.approx(10) and clipped.max() == pytest.approx(990)
    with pytest.raises(RecipeError):
        percentile_clip(array, 60, 40)


@pytest.mark.parametrize("name", sorted(HU_WINDOWS))
def test_hu_window_presets_match_monai(name):
    low, high = HU_WINDOWS[name]
    hu = np.linspace(-2000, 3000, 501, dtype=np.float32)
    expected = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(torch.from_numpy(hu)).numpy()
    np.testing.assert_allclose(hu_window(hu, name), expected, atol=1e-6)


def test_genesis_window_is_minus1000_to_1400():
    assert HU_WINDOWS["genesis"] == (-1000.0, 1400.0)
    assert hu_window(np.array([-1000.0, 200.0, 1400.0]), "genesis").tolist() == [0.0, 0.5, 1.0]


def test_hu_window_rejects_unknown_and_empty():
    with pytest.raises(RecipeError, match="unknown HU window"):
        hu_window(np.zeros(3), "liver")
    with pytest.raises(RecipeError, match="empty"):
        hu_window(np.zeros(3), (100, 100))


def test_scale_by_max_whole_and_per_slice():
    array = np.stack([np.full((2, 2), 2.0), np.full((2, 2), 8.0), np.zeros((2, 2))])
    assert scale_by_max(array).max() == 1.0 and scale_by_max(array)[0, 0, 0] == 0.25
    per_slice = scale_by_max(array, slice_axis=0)
    assert per_slice[0].max() == 1.0 and per_slice[1].max() == 1.0 and per_slice[2].max() == 0.0


def test_scale_uint8():
    assert scale_uint8(np.array([0, 255], dtype=np.uint8)).tolist() == [0.0, 1.0]


def test_zscore_real_hippocampus_and_ct_window(dataset):
    image = load_volume(dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz").array[0]
    normalised = zscore(image, foreground_mask(image))
    assert abs(float(normalised[image != 0].mean())) < 1e-4
    ct = load_volume(dataset("ct_abdomen_totalsegmentator") / "example_ct_sm.nii.gz").array[0]
    lung = hu_window(ct, "lung")
    low, high = HU_WINDOWS["lung"]
    assert lung.dtype == np.float32 and lung.max() == 1.0  # bone is above the lung window
    assert lung.min() == pytest.approx((ct.min() - low) / (high - low))  # air (-1100 HU) is inside it


def test_foreground_mask_finds_the_brain_of_pre_normalised_brats(dataset):
    # BRATS 2015 here was z-scored before release: its background is a constant -3.16, not 0
    case = dataset("brats2015_flair_t1c") / "validation" / "brats_2013_pat0003_1"
    flair = load_volume(case / "Flair_subtrMeanDivStd.nii.gz").array[0]
    brain = load_volume(case / "brainmask.nii.gz").array[0] > 0
    assert border_background(flair) == pytest.approx(-3.1607306)
    assert foreground_mask(flair, "nonzero").all()  # "nonzero" would treat the air as tissue
    mask = foreground_mask(flair, "foreground")
    assert (mask & brain).sum() / brain.sum() > 0.95 and (mask & ~brain).sum() / mask.sum() < 0.05
    normalised = zscore(flair, mask)
    assert (normalised[~mask] == 0).all() and abs(float(normalised[mask].mean())) < 1e-4
