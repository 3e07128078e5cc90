"""The demo's synthetic data: right labels, geometry and manifest."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np

from vol_transfer.io.manifest import read_manifest, validate_manifest
from vol_transfer.demo.synthetic import hippocampus_case, lesion_case, tumour_case, write_dataset


def test_hippocampus_case_has_both_parts_on_each_side() -> None:
    image, label = hippocampus_case(np.random.default_rng(3))
    assert image.shape == (1, *label.shape) and image.dtype == np.float32
    assert set(np.unique(label)) == {0, 1, 2}
    left, right = label[: label.shape[0] // 2], label[label.shape[0] // 2 :]
    assert {1, 2} <= set(np.unique(left)) and {1, 2} <= set(np.unique(right))
    # the structures are brighter than the surrounding brain on average
    assert image[0][label > 0].mean() > image[0][(label == 0) & (image[0] > 0.3)].mean()


def test_tumour_case_follows_brats_labels_and_flair_shows_oedema() -> None:
    image, label = tumour_case(np.random.default_rng(5))
    assert image.shape == (2, *label.shape)
    assert set(np.unique(label)) == {0, 1, 2, 4}
    flair = image[0]
    assert flair[label == 2].mean() > flair[(label == 0) & (flair > 0.3)].mean()


def test_lesion_case_has_a_bright_rim_around_a_dark_centre_and_varies_in_place() -> None:
    rng = np.random.default_rng(4)
    image, label = lesion_case(rng)
    assert image.shape == (1, *label.shape) and set(np.unique(label)) == {0, 1, 2}
    brain = image[0][(label == 0) & (image[0] > 0.3)].mean()
    assert image[0][label == 1].mean() > brain > image[0][label == 2].mean()
    centres = [np.argwhere(lesion_case(rng)[1] > 0).mean(axis=0) for _ in range(3)]
    assert max(np.abs(a - b).max() for a in centres for b in centres) > 3  # not one fixed place


def test_write_dataset_writes_manifest_and_readable_nifti(tmp_path) -> None:
    manifest = write_dataset(tmp_path, "tumour", count=5, seed=1)
    rows = list(csv.DictReader(line for line in open(manifest) if not line.startswith("#")))
    assert [r["split"] for r in rows] == ["train", "train", "train", "validation", "test"]
    first = rows[0]
    flair = nib.load(tmp_path / first["flair"])
    label = nib.load(tmp_path / first["label"])
    assert flair.shape == label.shape and np.allclose(flair.affine, label.affine)
    assert nib.aff2axcodes(flair.affine) == ("L", "P", "S")
    loaded = read_manifest(manifest, data_root=tmp_path)
    assert validate_manifest(loaded, deep=True).ok
    assert loaded.channel_names == ["flair", "t1c"] or tuple(loaded.channel_names) == ("flair", "t1c")
