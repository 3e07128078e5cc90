"""Decathlon dataset.json (training/test lists, modality names, 4-D images) → manifest, on real volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vol_transfer.cli import main
from vol_transfer.errors import InputDataError
from vol_transfer.io.case import load_case
from vol_transfer.io.decathlon import scan_decathlon
from vol_transfer.io.manifest import read_manifest

pytestmark = pytest.mark.real_data

HIPPOCAMPUS = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]
BRATS = ["Brats18_2013_11_1", "Brats18_CBICA_AME_1"]
BRATS_BOX = (slice(100, 140), slice(90, 130), slice(60, 90))
TASK01_MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}  # the official Task01 names
TASK01_FILES = ("flair", "t1", "t1ce", "t2")


def _hippocampus_task(source: Path, task: Path) -> Path:
    """Task04 as distributed: symlinks to the shared cases, a dataset.json, and the archives' junk."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    for case in HIPPOCAMPUS:
        for sub in ("imagesTr", "labelsTr"):
            (task / sub / f"{case}.nii.gz").symlink_to(source / sub / f"{case}.nii.gz")
    (task / "imagesTs" / "hippocampus_008.nii.gz").symlink_to(source / "imagesTr" / "hippocampus_008.nii.gz")
    (task / "imagesTr" / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (task / "imagesTr" / "hippocampus_017.nii.gz").symlink_to(source / "imagesTr" / "hippocampus_017.nii.gz")
    (task / "dataset.json").write_text(json.dumps({
        "name": "Hippocampus", "description": "Left and right hippocampus segmentation", "tensorImageSize": "3D",
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": len(HIPPOCAMPUS), "numTest": 1,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in HIPPOCAMPUS],
        "test": ["./imagesTs/hippocampus_008.nii.gz"]}))
    return task


def test_hippocampus_task_round_trips_through_a_manifest(dataset, tmp_path, capsys):
    source = dataset("msd_hippocampus")
    task = _hippocampus_task(source, tmp_path / "Task04_Hippocampus")
    out = tmp_path / "task04.csv"
    assert main(["data", "manifest", "--layout", "msd", str(task), "--out", str(out), "--data-root", str(tmp_path),
                 "--fractions", "0.5,0.5"]) == 0
    text = out.read_text()
    # the cases are dataset.json's: not the ._ file, not hippocampus_017 (in imagesTr but not listed)
    assert "hippocampus_017" not in text and "._" not in text
    assert "# dataset: Hippocampus" in text and "# labels: 0,1,2" in text
    assert "# label_names: background,Anterior,Posterior" in text
    assert main(["data", "check", str(out), "--data-root", str(tmp_path), "--no-progress"]) == 0
    assert "is valid" in capsys.readouterr().out
    manifest = read_manifest(out, data_root=tmp_path)
    assert {s.subject_id for s in manifest.subjects("unlabelled")} == {"hippocampus_008"}
    for subject in manifest.subjects():
        image, label = load_case(subject, ["image"])
        expected = np.asarray(nib.load(source / "imagesTr" / f"{subject.subject_id}.nii.gz").dataobj, np.float32)
        np.testing.assert_array_equal(image.array[0], expected)
        if subject.split != "unlabelled":
            truth = np.asarray(nib.load(source / "labelsTr" / f"{subject.subject_id}.nii.gz").dataobj)
            np.testing.assert_array_equal(label.array[0], truth)


def test_a_four_d_multimodal_task_names_its_volumes(dataset, tmp_path):
    """Task01 layout from real BraTS 2018 volumes: one 4-D image per case, modality names → channels."""
    source = dataset("brats2018_4mod")
    task = tmp_path / "Task01_BrainTumour"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    originals = {}
    for case in BRATS:
        images = [nib.load(source / case / f"{case}_{m}.nii.gz").slicer[BRATS_BOX] for m in TASK01_FILES]
        originals[case] = {m: np.asarray(i.dataobj) for m, i in zip(TASK01_FILES, images)}
        stacked = np.stack([originals[case][m] for m in TASK01_FILES], axis=-1)
        nib.save(nib.Nifti1Image(stacked, images[0].affine), task / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.load(source / case / f"{case}_seg.nii.gz").slicer[BRATS_BOX], task / "labelsTr" / f"{case}.nii.gz")
    (task / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "tensorImageSize": "4D", "modality": TASK01_MODALITIES,
        "labels": {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"}, "numTraining": 2,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in BRATS]}))
    out = tmp_path / "task01.csv"
    assert main(["data", "manifest", "--layout", "msd", str(task), "--out", str(out), "--data-root", str(tmp_path),
                 "--fractions", "0.5,0.5"]) == 0
    assert "# volumes: image=flair,t1,t1c,t2" in out.read_text()
    assert main(["data", "check", str(out), "--data-root", str(tmp_path), "--no-progress"]) == 0
    for subject in read_manifest(out, data_root=tmp_path).subjects():
        image, label = load_case(subject, ["t1c", "flair"])  # by name, any order
        assert image.channel_names == ("t1c", "flair")
        np.testing.assert_array_equal(image.array[0], originals[subject.subject_id]["t1ce"])
        np.testing.assert_array_equal(image.array[1], originals[subject.subject_id]["flair"])
        assert set(np.unique(label.array)) <= {0, 1, 2, 4}


def test_listed_files_must_exist_and_fit_the_modalities(dataset, tmp_path, capsys):
    task = _hippocampus_task(dataset("msd_hippocampus"), tmp_path / "Task04")
    content = json.loads((task / "dataset.json").read_text())
    content["training"][1]["label"] = "./labelsTr/missing.nii.gz"
    (task / "dataset.json").write_text(json.dumps(content))
    assert main(["data", "manifest", "--layout", "msd", str(task), "--out", str(tmp_path / "m.csv")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "dataset.json" in error[0] and "training[1].label" in error[0]
    content["training"][1]["label"] = "./labelsTr/hippocampus_003.nii.gz"
    content["modality"] = TASK01_MODALITIES  # four modalities, but 3-D images
    (task / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(InputDataError, match="holds 1 volume.* names 4 modalities"):
        scan_decathlon(task)


def test_without_a_training_list_the_folder_is_listed(dataset, tmp_path):
    task = _hippocampus_task(dataset("msd_hippocampus"), tmp_path / "Task04")
    (task / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "a", "2": "p"}}))
    draft = scan_decathlon(task)
    # the listing finds hippocampus_017 too (it has no label: skipped with a note)
    assert any("hippocampus_017" in note for note in draft.notes)
    assert {r.subject_id for r in draft.rows if r.split is None} == set(HIPPOCAMPUS)
