"""Preprocessor: spec round trip, and apply → restore gives the original grid back on real data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from vol_transfer.errors import RecipeError
from vol_transfer.io.case import load_image
from vol_transfer.io.volumes import Volume, load_volume, save_volume
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
    assert spec["intensity"][0] == {"kind": "percentile_clip", "lower": 1, "upper": 99, "channels": None}
    assert spec["intensity"][1] == {"kind": "zscore", "mask": "nonzero", "threshold": 0.0, "channels": None}
    assert {k: v for k, v in spec.items() if k != "intensity"} == {k: v for k, v in FULL_SPEC.items() if k != "intensity"}
    assert Preprocessor.from_spec(spec) == prep
    assert Preprocessor.from_spec({}).to_spec()["intensity"] == []


# what checkpoints written before the typed intensity steps hold (Preprocessor.to_spec of that code)
OLD_CHECKPOINT_SPECS = [
    {"orientation": "RAS", "crop_foreground": None, "intensity": [{"kind": "zscore", "mask": "foreground"}],
     "spacing": None, "min_size": None},
    {"orientation": "RAS", "crop_foreground": 4,
     "intensity": [{"kind": "percentile_clip", "lower": 0.5, "upper": 99.5}, {"kind": "zscore", "mask": "nonzero"},
                   {"kind": "hu_window", "window": [-1000, 400], "channels": [1]}, {"kind": "scale_by_max"},
                   {"kind": "scale_uint8", "channels": [0]}],
     "spacing": [1, 1, 1.5], "min_size": [32, 32, 32]},
]


@pytest.mark.parametrize("spec", OLD_CHECKPOINT_SPECS)
def test_specs_stored_by_older_checkpoints_still_load_and_normalise_the_same(spec):
    from vol_transfer.preprocessing import intensity

    prep = Preprocessor.from_spec(spec)
    assert Preprocessor.from_spec(json.loads(json.dumps(prep.to_spec()))) == prep
    rng = np.random.default_rng(0)
    array = rng.normal(size=(2, 6, 5, 4)).astype(np.float32) * 100
    expected = array.copy()
    functions = {
        "zscore": lambda a, s: intensity.zscore(a, intensity.foreground_mask(a, s.get("mask", "nonzero"))),
        "percentile_clip": lambda a, s: intensity.percentile_clip(a, s["lower"], s["upper"]),
        "hu_window": lambda a, s: intensity.hu_window(a, s["window"]),
        "scale_by_max": lambda a, s: intensity.scale_by_max(a, s.get("slice_axis")),
        "scale_uint8": lambda a, s: intensity.scale_uint8(a),
    }
    for step in spec["intensity"]:
        for c in step.get("channels", range(2)):
            expected[c] = functions[step["kind"]](expected[c], step)
    np.testing.assert_array_equal(prep.normalise(array), expected)


@pytest.mark.parametrize(
    "spec, key, match",
    [
        ({"orientaton": "RAS"}, "preprocessing.orientaton", "did you mean 'orientation'"),
        ({"orientation": "RAR"}, "preprocessing.orientation", "repeats an axis"),
        ({"spacing": [1, 1]}, "preprocessing.spacing", "expected 3 values, got 2"),
        ({"spacing": [1, 0, 1]}, "preprocessing.spacing", "out of range"),
        ({"crop_foreground": -1}, "preprocessing.crop_foreground", "out of range"),
        ({"intensity": [{"kind": "zscore", "mask": "brain"}]}, "preprocessing.intensity[0].mask", "'brain' is not allowed"),
        ({"intensity": [{"kind": "hu_window"}]}, "preprocessing.intensity[0].window", "required key is missing"),
        ({"intensity": [{"kind": "hu_window", "window": "liver"}]}, "preprocessing.intensity[0].window", "unknown HU window"),
        ({"intensity": [{"kind": "hu_window", "window": [400, -1000]}]}, "preprocessing.intensity[0].window", "empty"),
        ({"intensity": [{"kind": "gamma"}]}, "preprocessing.intensity[0].kind", "'gamma' is not allowed"),
        ({"intensity": [{"kind": "zscor"}]}, "preprocessing.intensity[0].kind", "did you mean 'zscore'"),
        ({"intensity": [{"mask": "nonzero"}]}, "preprocessing.intensity[0].kind", "required key is missing"),
        ({"intensity": [{"kind": "zscore", "nonzero": True}]}, "preprocessing.intensity[0].nonzero", "unknown key"),
        ({"intensity": [{"kind": "zscore", "window": "lung"}]}, "preprocessing.intensity[0].window",
         "belongs to kind 'hu_window'"),
        ({"intensity": [{"kind": "percentile_clip", "lower": 99, "upper": 1}]}, "preprocessing.intensity[0].upper",
         "not above"),
        ({"intensity": [{"kind": "scale_uint8", "channels": [-1]}]}, "preprocessing.intensity[0].channels", "out of range"),
    ],
)
def test_bad_specs_name_the_key(spec, key, match):
    with pytest.raises(RecipeError, match=match) as info:
        Preprocessor.from_spec(spec)
    assert info.value.where == key and "\n" not in info.value.message


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
    image = load_image({"flair": case / "Flair_subtrMeanDivStd.nii.gz", "t1c": case / "T1c_subtrMeanDivStd.nii.gz"})
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
