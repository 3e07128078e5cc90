"""The segmentation task's cases: loaded by channel name through the one case loader."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vol_transfer.errors import InputDataError
from vol_transfer.io.manifest import read_manifest
from vol_transfer.preprocessing.pipeline import Preprocessor
from vol_transfer.recipes import from_dict
from vol_transfer.training.segmentation_config import SegmentationConfig
from vol_transfer.training.segmentation_data import load_cases

SHAPE = (6, 5, 4)


def _dataset(root: Path, header: str, cells: str) -> Path:
    """Channels whose voxels equal their index (flair 0, t1 1, t1ce 2, t2 3), one 4-D file of all four, a label."""
    for value, name in enumerate(("flair", "t1", "t1ce", "t2")):
        nib.save(nib.Nifti1Image(np.full(SHAPE, float(value), np.float32), np.eye(4)), str(root / f"{name}.nii.gz"))
    four = np.stack([np.full(SHAPE, float(v), np.float32) for v in range(4)], axis=-1)
    nib.save(nib.Nifti1Image(four, np.eye(4)), str(root / "four.nii.gz"))
    label = np.zeros(SHAPE, np.uint8)
    label[1:3, 1:3, 1:3] = 4
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "seg.nii.gz"))
    manifest = root / "m.csv"
    manifest.write_text(f"# labels: 0,1,2,4\n{header}\na,train,{cells},seg.nii.gz\n")
    return manifest


def _load(manifest: Path, channels: list[str] | None):
    data = {"manifest": str(manifest), "data_root": str(manifest.parent), "label_mapping": "brats_tc_2017"}
    if channels is not None:
        data["channels"] = channels
    config = from_dict(SegmentationConfig, {"data": data})
    return load_cases(config, "train", None, read_manifest(manifest, manifest.parent),
                      Preprocessor.from_spec({"intensity": []}))


def test_cases_carry_the_channels_asked_for_by_name_or_alias(tmp_path):
    manifest = _dataset(tmp_path, "subject_id,split,t2,t1c,flair,t1,label", "t2.nii.gz,t1ce.nii.gz,flair.nii.gz,t1.nii.gz")
    (case,) = _load(manifest, ["t1", "t2", "t1ce"])  # t1ce: the manifest calls it t1c
    assert case.channels == ("t1", "t2", "t1ce")
    assert [float(c.max()) for c in case.image] == [1.0, 3.0, 2.0]
    assert case.label.dtype == np.int16 and set(np.unique(case.label)) == {0, 1}  # {1, 4} → tumour core
    (every,) = _load(manifest, None)
    assert every.channels == ("t2", "t1c", "flair", "t1")
    with pytest.raises(InputDataError, match="has no channel 'pd'.*data.channels"):
        _load(manifest, ["t1", "pd"])


def test_a_4d_file_gives_image_k_or_its_declared_names(tmp_path):
    manifest = _dataset(tmp_path, "subject_id,split,image,label", "four.nii.gz")
    (case,) = _load(manifest, None)
    assert case.channels == ("image_0", "image_1", "image_2", "image_3") and case.image.shape == (4, *SHAPE)
    manifest.write_text("# volumes: image=flair,t1,t1c,t2\n" + manifest.read_text())
    (case,) = _load(manifest, ["t2", "t1"])
    assert case.channels == ("t2", "t1") and [float(c.max()) for c in case.image] == [3.0, 1.0]
