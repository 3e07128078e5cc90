"""Preprocessor: spec round trip, and apply → restore gives the original grid back on real data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from vol_transfer.errors import RecipeError
from vol_transfer.io.volumes import Volume, load_channels, load_volume, save_volume
from vol_transfer.preprocessing.pipeline import Preprocessor

FULL_SPEC = {
    "orientation": "RAS",
    "crop_foreground": 3,
    "intensity": [{"kind": "percentile_clip", "lower": 1, "upper": 99}, {"kind": "zscore", "mask": "nonzero"}],
    "spacing": [1.0, 0.5, 1.0],
    "min_size": [64, 64, 64],
}


def test_spec_round_trip_is_json():
    prep = Preprocessor.from_spec(FULL_SPEC)
    spec = json.loads(json.dumps(prep.to_spec()))
    assert spec == FULL_SPEC
    assert Preprocessor.from_spec(spec) == prep
    assert Preprocessor.from_spec({}).to_spec()["intensity"] == []


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"orientaton": "RAS"}, "unknown key"),
        ({"orientation": "RAR"}, "repeats an axis"),
        ({"spacing": [1, 1]}, "2 values"),
        ({"spacing": [1, 0, 1]}, "<= 0"),
        ({"crop_foreground": -1}, "margin"),
        ({"intensity": [{"kind": "zscore", "mask": "brain"}]}, "unknown foreground mask"),
        ({"intensity": [{"kind": "hu_window"}]}, "needs a 'window'"),
        ({"intensity": [{"kind": "hu_window", "window": "liver"}]}, "unknown HU window"),
        ({"intensity": [{"kind": "gamma"}]}, "unknown kind"),
        ({"intensity": [{"kind": "zscore", "nonzero": True}]}, "unknown option"),
    ],
)
def test_bad_specs_name_the_key(spec, match):
    with pytest.raises(RecipeError, match=match):
        Preprocessor.from_spec(spec)


def test_intensity_only_on_named_channels():
    volume = Volume(np.stack([np.full((2, 2, 2), 255.0), np.full((2, 2, 2), 255.0)]), np.eye(4))
    prep = Preprocessor.from_spec({"intensity": [{"kind": "scale_uint8", "channels": [1]}]})
    prepared, inverse = prep.apply(volume)
    assert prepared.array[0].max() == 255.0 and prepared.array[1].max() == 1.0
    assert inverse.steps == [] and prepared.array.dtype == np.float32


def _check_round_trip(image: Volume, label: Volume, spec: dict):
    prep = Preprocessor.from_spec(spec)
    prepared, prepared_label, inverse = prep.apply_with_label(image, label)
    assert prepared.axcodes == ("R", "A", "S")
    assert prepared.spatial_shape == prepared_label.spatial_shape == inverse.prepared_shape
    np.testing.assert_allclose(prepared.spacing, spec["spacing"], atol=1e-6)
    assert all(s >= m for s, m in zip(prepared.spatial_shape, spec["min_size"]))
    # every foreground label voxel sits at the same world position before and after
    original_fg = np.argwhere(label.array[0] > 0)[:: 97]
    for index in original_fg:
        world = label.affine @ np.append(index, 1.0)
        moved = np.rint(np.linalg.inv(prepared_label.affine) @ world)[:3].astype(int)
        assert prepared_label.array[(0, *moved)] == label.array[(0, *index)]
    restored = inverse.restore(prepared_label.array, order="nearest")
    assert restored.shape == label.array.shape
    np.testing.assert_array_equal(inverse.original_affine, image.affine)
    np.testing.assert_array_equal(restored, label.array)
    probabilities = inverse.restore(prepared.array[:1], order="linear")
    assert probabilities.shape == (1, *image.spatial_shape) and probabilities.dtype == np.float32
    return prepared_label, inverse


def test_round_trip_on_lps_brats(dataset, tmp_path):
    case = dataset("brats2015_flair_t1c") / "validation" / "brats_2013_pat0003_1"
    image = load_channels([case / "Flair_subtrMeanDivStd.nii.gz", case / "T1c_subtrMeanDivStd.nii.gz"])
    label = load_volume(case / "OTMultiClass.nii.gz")
    assert image.axcodes == ("L", "P", "S")
    spec = dict(FULL_SPEC, min_size=[150, 300, 150])
    prepared_label, inverse = _check_round_trip(image, label, spec)
    # a restored prediction saved with the original as reference keeps its LPS affine exactly
    out = save_volume(inverse.restore(prepared_label.array), tmp_path / "pred.nii.gz", reference=image, dtype=np.uint8)
    saved = nib.load(str(out))
    np.testing.assert_allclose(saved.affine, image.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), label.array[0])


def test_round_trip_on_ras_hippocampus(dataset):
    root = dataset("msd_hippocampus")
    image = load_volume(root / "imagesTr" / "hippocampus_004.nii.gz")
    label = load_volume(root / "labelsTr" / "hippocampus_004.nii.gz")
    assert image.axcodes == ("R", "A", "S")
    _check_round_trip(image, label, dict(FULL_SPEC, spacing=[0.5, 0.5, 0.5], min_size=[80, 110, 80]))
