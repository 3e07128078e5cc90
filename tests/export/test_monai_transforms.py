"""Each preprocessing step as MONAI transforms gives what our Preprocessor gives, on real volumes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.export.conftest import BRATS_CASES
from vol_transfer.errors import RecipeError
from vol_transfer.export.monai_transforms import build_monai_preprocessing, monai_preprocessing
from vol_transfer.io.case import load_image
from vol_transfer.preprocessing.pipeline import Preprocessor

pytestmark = pytest.mark.real_data

# (spec, what MONAI must give): "exact" — identical values; a float — max |Δ| relative to the maximum
HIPPOCAMPUS_SPECS = [
    ({"orientation": "LPI", "crop_foreground": 3, "min_size": [40, 60, 40]}, "exact"),
    ({"intensity": [{"kind": "zscore", "mask": "nonzero"}]}, 1e-6),
    ({"intensity": [{"kind": "zscore", "mask": "all"}]}, 1e-6),
    ({"intensity": [{"kind": "zscore", "mask": "foreground"}]}, 1e-6),
    ({"intensity": [{"kind": "zscore", "mask": "threshold", "threshold": 50.0}]}, 1e-6),
    ({"intensity": [{"kind": "percentile_clip", "lower": 1.0, "upper": 99.0}]}, 1e-6),
    ({"intensity": [{"kind": "hu_window", "window": [0, 300]}]}, 1e-6),
    ({"intensity": [{"kind": "scale_uint8"}]}, 1e-6),
    ({"intensity": [{"kind": "scale_by_max"}]}, 1e-6),
]


def _compare(files, channels, spec, expected):
    prep = Preprocessor.from_spec(spec)
    ours, _ = prep.apply(load_image(dict(zip(channels, files))))
    theirs = build_monai_preprocessing(monai_preprocessing(prep, len(channels)))(
        {"image": files[0] if len(files) == 1 else [str(f) for f in files]})["image"]
    assert tuple(theirs.shape) == ours.array.shape
    np.testing.assert_allclose(theirs.affine.numpy(), ours.affine, atol=1e-5)
    difference = np.abs(theirs.numpy() - ours.array).max()
    if expected == "exact":
        assert difference == 0
    else:
        assert difference <= expected * np.abs(ours.array).max()
    return ours


@pytest.mark.parametrize("spec,expected", HIPPOCAMPUS_SPECS, ids=lambda v: str(v)[:60] if isinstance(v, dict) else "")
def test_each_step_on_a_hippocampus_volume(spec, expected, dataset):
    image = dataset("msd_hippocampus") / "imagesTr" / "hippocampus_003.nii.gz"
    ours = _compare([image], ["image"], spec, expected)
    if "min_size" in spec:  # the pad made it bigger than the crop
        assert ours.array.shape[1:] == (40, 60, 40)


def test_brats_recipe_and_a_channel_subset_on_two_channels(brats_crops):
    case = BRATS_CASES[0]
    files = [brats_crops / case / f"{case}_{kind}.nii.gz" for kind in ("t1", "t2")]
    spec = {"orientation": "RAS", "crop_foreground": 4,
            "intensity": [{"kind": "percentile_clip", "channels": [1]}, {"kind": "zscore", "mask": "foreground"}]}
    # clipped values are not whole numbers: MONAI's float32 statistics then differ more (≈7e-6 measured)
    ours = _compare(files, ["t1", "t2"], spec, 2e-5)
    assert ours.array.shape[1:] != (80, 80, 60)  # the crop removed air, the LPS files came out RAS
    assert ours.axcodes == ("R", "A", "S")


def test_spacing_agrees_on_the_shared_voxels_only(dataset):
    image = dataset("msd_hippocampus") / "imagesTr" / "hippocampus_003.nii.gz"
    prep = Preprocessor.from_spec({"spacing": [0.7, 0.7, 0.7]})
    translation = monai_preprocessing(prep, 1)
    assert any("spacing" in note for note in translation.notes)
    ours, _ = prep.apply(load_image({"image": image}))
    theirs = build_monai_preprocessing(translation)({"image": str(image)})["image"].numpy()
    sizes = [abs(a - b) for a, b in zip(theirs.shape[1:], ours.array.shape[1:])]
    assert max(sizes) <= 1  # the grids differ by at most one voxel at an axis' far end …
    common = tuple(slice(0, min(a, b)) for a, b in zip(theirs.shape, ours.array.shape))
    # … and agree where they overlap (same first voxel centre, both trilinear)
    assert np.abs(theirs[common] - ours.array[common]).max() <= 1e-6 * np.abs(ours.array).max()


def test_a_two_d_step_is_refused_with_the_fix():
    prep = Preprocessor.from_spec({"intensity": [{"kind": "scale_by_max", "slice_axis": 2}]})
    with pytest.raises(RecipeError, match="torchscript or onnx"):
        monai_preprocessing(prep, 1)
