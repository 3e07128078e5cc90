"""nnU-Net v2 raw layout → manifest (channel names, labels, splits_final.json folds), and nnU-Net
image folders as `infer` inputs without --channels, on real volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.export.conftest import HIPPOCAMPUS_PREPROCESSING, save_tiny_checkpoint
from vol_transfer.cli import main
from vol_transfer.errors import InputDataError
from vol_transfer.io.case import load_case
from vol_transfer.io.case_inputs import discover_cases
from vol_transfer.io.manifest import read_manifest
from vol_transfer.io.nnunet import scan_nnunet

pytestmark = pytest.mark.real_data

HIPPOCAMPUS = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_008",
               "hippocampus_011"]
TEST_CASES = ["hippocampus_014", "hippocampus_015"]
BRATS = ["Brats18_2013_11_1", "Brats18_CBICA_AME_1"]
BRATS_BOX = (slice(100, 140), slice(90, 130), slice(60, 90))
BRATS_CHANNELS = {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"}
BRATS_FILES = ("flair", "t1", "t1ce", "t2")


def _hippocampus_dataset(source: Path, folder: Path, folds: list[list[str]] | None) -> Path:
    """Dataset004_Hippocampus: symlinks named as nnU-Net names them, dataset.json, optional splits."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    for case in HIPPOCAMPUS:
        (folder / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}.nii.gz")
        (folder / "labelsTr" / f"{case}.nii.gz").symlink_to(source / "labelsTr" / f"{case}.nii.gz")
    for case in TEST_CASES:
        (folder / "imagesTs" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(HIPPOCAMPUS), "file_ending": ".nii.gz", "name": "Hippocampus"}))
    if folds is not None:
        splits = [{"train": [c for c in HIPPOCAMPUS if c not in val], "val": val} for val in folds]
        (folder / "splits_final.json").write_text(json.dumps(splits))
    return folder


def _brats_dataset(source: Path, folder: Path, channel_names: dict[str, str] | None = BRATS_CHANNELS) -> dict:
    """Dataset001_BraTS from cropped real BraTS 2018 cases: 4 channel files per case, imagesTs too."""
    originals = {}
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    for index, case in enumerate(BRATS):
        images = folder / ("imagesTr" if index == 0 else "imagesTs")
        originals[case] = {}
        for channel, modality in enumerate(BRATS_FILES):
            image = nib.load(source / case / f"{case}_{modality}.nii.gz").slicer[BRATS_BOX]
            nib.save(image, images / f"{case}_{channel:04d}.nii.gz")
            originals[case][modality] = np.asarray(image.dataobj)
        if index == 0:
            nib.save(nib.load(source / case / f"{case}_seg.nii.gz").slicer[BRATS_BOX], folder / "labelsTr" / f"{case}.nii.gz")
    if channel_names is not None:
        (folder / "dataset.json").write_text(json.dumps({
            "channel_names": channel_names, "file_ending": ".nii.gz", "numTraining": 1,
            "labels": {"background": 0, "whole tumour": [1, 2, 4], "tumour core": [1, 4], "enhancing": 4},
            "regions_class_order": [1, 2, 4]}))
    return originals


def test_hippocampus_dataset_round_trips_with_its_folds(dataset, tmp_path, capsys):
    source = dataset("msd_hippocampus")
    folds = [HIPPOCAMPUS[0:2], HIPPOCAMPUS[2:4], HIPPOCAMPUS[4:6]]
    folder = _hippocampus_dataset(source, tmp_path / "Dataset004_Hippocampus", folds)
    out = tmp_path / "d004.csv"
    assert main(["data", "manifest", "--layout", "nnunet", str(folder), "--out", str(out),
                 "--data-root", str(tmp_path)]) == 0
    assert main(["data", "check", str(out), "--data-root", str(tmp_path), "--no-progress"]) == 0
    assert "is valid" in capsys.readouterr().out
    manifest = read_manifest(out, data_root=tmp_path)
    assert manifest.channel_names == ("mri",) and manifest.label_values == (0, 1, 2)
    assert manifest.label_names == ("background", "Anterior", "Posterior")
    # nnU-Net's fold k validates on its 'val' cases: they are the manifest's fold k
    assert {s.subject_id: s.fold for s in manifest.subjects("train")} == \
        {case: k for k, val in enumerate(folds) for case in val}
    assert {s.subject_id for s in manifest.subjects("unlabelled")} == set(TEST_CASES)
    for subject in manifest.subjects():
        image, label = load_case(subject, ["mri"])
        expected = np.asarray(nib.load(source / "imagesTr" / f"{subject.subject_id}.nii.gz").dataobj, np.float32)
        np.testing.assert_array_equal(image.array[0], expected)
        if label is not None:
            truth = np.asarray(nib.load(source / "labelsTr" / f"{subject.subject_id}.nii.gz").dataobj)
            np.testing.assert_array_equal(label.array[0], truth)


def test_brats_dataset_names_channels_and_declares_region_labels(dataset, tmp_path):
    originals = _brats_dataset(dataset("brats2018_4mod"), tmp_path / "Dataset001_BraTS")
    draft = scan_nnunet(tmp_path / "Dataset001_BraTS")
    assert draft.channel_names == ["flair", "t1", "t1c", "t2"]
    assert draft.metadata == {"labels": "0,1,2,4"}  # regions: the union of values, no one-to-one names
    out = tmp_path / "d001.csv"
    assert main(["data", "manifest", "--layout", "nnunet", str(tmp_path / "Dataset001_BraTS"), "--out", str(out),
                 "--data-root", str(tmp_path), "--fractions", "1,0"]) == 0
    assert main(["data", "check", str(out), "--data-root", str(tmp_path), "--no-progress"]) == 0
    for subject in read_manifest(out, data_root=tmp_path).subjects():
        image, _ = load_case(subject, ["t2", "t1c"])
        np.testing.assert_array_equal(image.array[0], originals[subject.subject_id]["t2"])
        np.testing.assert_array_equal(image.array[1], originals[subject.subject_id]["t1ce"])


def test_broken_datasets_fail_in_one_line(dataset, tmp_path, capsys):
    folder = _hippocampus_dataset(dataset("msd_hippocampus"), tmp_path / "D4", [HIPPOCAMPUS[:3], HIPPOCAMPUS[2:]])
    with pytest.raises(InputDataError, match="validates case hippocampus_004 in 2 folds"):
        scan_nnunet(folder)
    (folder / "splits_final.json").unlink()
    (folder / "imagesTr" / "hippocampus_003_0001.nii.gz").symlink_to(folder / "imagesTr" / "hippocampus_003_0000.nii.gz")
    assert main(["data", "manifest", "--layout", "nnunet", str(folder), "--out", str(tmp_path / "m.csv")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "hippocampus_003_0001.nii.gz beyond the 1 channels" in error[0]
    (folder / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background"}}))
    with pytest.raises(InputDataError, match="use --layout msd"):
        scan_nnunet(folder)


def test_infer_takes_an_nnunet_image_folder_without_options(dataset, tmp_path):
    source = dataset("msd_hippocampus")
    folder = _hippocampus_dataset(source, tmp_path / "Dataset004_Hippocampus", None)
    checkpoint = save_tiny_checkpoint(tmp_path / "hippo.pt", ["image"], ["background", "anterior", "posterior"],
                                      HIPPOCAMPUS_PREPROCESSING)
    assert main(["infer", "--checkpoint", str(checkpoint), str(folder / "imagesTs"), "--out", str(tmp_path / "nn"),
                 "--no-progress"]) == 0
    originals = [str(source / "imagesTr" / f"{case}.nii.gz") for case in TEST_CASES]
    assert main(["infer", "--checkpoint", str(checkpoint), *originals, "--out", str(tmp_path / "direct"),
                 "--no-progress"]) == 0
    for case in TEST_CASES:  # named by the case, not case_0000; the same labels as the file given directly
        ours = np.asarray(nib.load(tmp_path / "nn" / f"{case}_seg.nii.gz").dataobj)
        np.testing.assert_array_equal(ours, np.asarray(nib.load(tmp_path / "direct" / f"{case}_seg.nii.gz").dataobj))


def test_multichannel_nnunet_folders_are_named_by_dataset_json_or_checkpoint_order(dataset, tmp_path):
    source = dataset("brats2018_4mod")
    _brats_dataset(source, tmp_path / "D1")
    # dataset.json above imagesTs names the four channels: a [t2, t1] model picks them by name
    (case,) = discover_cases([tmp_path / "D1" / "imagesTs"], ["t2", "t1"])
    assert case.name == BRATS[1] and case.channels["t2"].name == f"{BRATS[1]}_0003.nii.gz"
    assert case.channels["t1"].name == f"{BRATS[1]}_0001.nii.gz"
    # no dataset.json: channel i is the checkpoint's channel i (nnU-Net's convention)
    _brats_dataset(source, tmp_path / "D2", channel_names=None)
    (case,) = discover_cases([tmp_path / "D2" / "imagesTs"], ["flair", "t1", "t1c", "t2"])
    assert case.channels["t1c"].name == f"{BRATS[1]}_0002.nii.gz"
    # a folder whose files are not all <case>_XXXX is read as before (one case per file)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "hippocampus_001.nii.gz").symlink_to(dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz")
    (plain / "scan_0000.nii.gz").symlink_to(dataset("msd_hippocampus") / "imagesTr" / "hippocampus_003.nii.gz")
    assert sorted(c.name for c in discover_cases([plain], ["image"])) == ["hippocampus_001", "scan_0000"]
