"""Declarative label remapping and its presets."""

from __future__ import annotations

import numpy as np
import pytest

from vol_transfer.errors import InputDataError, RecipeError
from vol_transfer.io.volumes import load_volume
from vol_transfer.preprocessing.labels import LABEL_PRESETS, remap_labels


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("brats_tc_2015", [0, 1, 0, 1, 1]),
        ("brats_tc_2017", [0, 1, 0, 0, 1]),
        ("hippocampus", [0, 1, 2, 0, 0]),
        ("hippocampus_merged", [0, 1, 1, 0, 0]),
    ],
)
def test_presets(preset, expected):
    assert remap_labels(np.array([0, 1, 2, 3, 4]), preset).tolist() == expected


def test_explicit_mapping_with_json_keys_and_float_labels():
    labels = np.array([[0.0, 3.0], [5.0, 1.0]], dtype=np.float32)
    out = remap_labels(labels, {"3": 2, "5": 1})
    assert out.tolist() == [[0, 2], [1, 0]] and out.dtype == np.uint8


def test_none_keeps_labels_and_input_untouched():
    labels = np.array([0, 2, 7])
    assert remap_labels(labels, None).tolist() == [0, 2, 7]
    remap_labels(labels, "hippocampus_merged")
    assert labels.tolist() == [0, 2, 7]


def test_errors():
    with pytest.raises(RecipeError, match="unknown label preset"):
        remap_labels(np.zeros(2), "brats_tc_2099")
    with pytest.raises(InputDataError, match="non-integer"):
        remap_labels(np.array([0.5]), {1: 1})
    with pytest.raises(RecipeError, match="not a mapping"):
        remap_labels(np.zeros(2), {"a": 1})


def test_preset_classes_cover_outputs():
    for preset in LABEL_PRESETS.values():
        assert max(preset.mapping.values()) == len(preset.classes) - 1


def test_brats_tumour_core_voxel_count_matches_readme(dataset):
    # README: tumour core {1,3,4} of pat0005 = 45266 voxels
    label = load_volume(dataset("brats2015_flair_t1c") / "train" / "brats_2013_pat0005_1" / "OTMultiClass.nii.gz")
    assert int(remap_labels(label.array, "brats_tc_2015").sum()) == 45266
