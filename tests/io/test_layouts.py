"""Manifest writers for msd | brats | folders layouts and the seeded patient-level split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vol_transfer.errors import InputDataError, OutputExistsError
from vol_transfer.io.layouts import (
    DraftRow,
    ManifestDraft,
    assign_splits,
    brats_modality,
    format_manifest,
    parse_fractions,
    patient_from_file_name,
    scan_layout,
    write_manifest,
)
from vol_transfer.io.manifest import read_manifest, validate_manifest


@pytest.mark.parametrize(
    "name, patient",
    [
        ("person1234_bacteria_3000.jpeg", "person1234"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("NORMAL2-IM-0395-0001-0001.jpeg", "NORMAL2-IM-0395"),
        ("scan_17.png", "scan_17"),
    ],
)
def test_patient_from_file_name(name, patient):
    assert patient_from_file_name(name) == patient


@pytest.mark.parametrize(
    "name, modality, rest",
    [
        ("Flair_subtrMeanDivStd.nii.gz", "flair", "subtrMeanDivStd"),
        ("T1c_subtrMeanDivStd.nii.gz", "t1c", "subtrMeanDivStd"),
        ("OTMultiClass.nii.gz", "label", ""),
        ("brainmask.nii.gz", "skip", ""),
        ("BraTS-GLI-00001-000-t2f.nii.gz", "flair", "BraTS-GLI-00001-000"),
        ("BraTS-GLI-00001-000-t1n.nii.gz", "t1", "BraTS-GLI-00001-000"),
        ("BraTS20_Training_001_t1ce.nii.gz", "t1c", "BraTS20_Training_001"),
        ("BraTS20_Training_001_seg.nii.gz", "label", "BraTS20_Training_001"),
        ("notes.nii.gz", None, "notes"),
    ],
)
def test_brats_modality(name, modality, rest):
    assert brats_modality(name) == (modality, rest)


def _draft(patients: dict[str, int], strata: dict[str, str] | None = None) -> ManifestDraft:
    draft = ManifestDraft("classification", ["image"])
    for patient, count in patients.items():
        for i in range(count):
            draft.rows.append(DraftRow(f"{patient}_{i}", {"image": Path(f"{patient}_{i}.png")}, "X", patient,
                                       stratum=(strata or {}).get(patient, "")))
    return draft


def test_split_is_seeded_patient_level_and_stratified():
    patients = {f"p{i}": 1 + i % 4 for i in range(100)}
    strata = {p: ("A" if i < 60 else "B") for i, p in enumerate(patients)}
    first, second, other = _draft(patients, strata), _draft(patients, strata), _draft(patients, strata)
    assign_splits(first, (0.7, 0.15, 0.15), seed=3)
    assign_splits(second, (0.7, 0.15, 0.15), seed=3)
    assign_splits(other, (0.7, 0.15, 0.15), seed=4)
    assert [r.split for r in first.rows] == [r.split for r in second.rows]
    assert [r.split for r in first.rows] != [r.split for r in other.rows]
    split_of = {}
    for row in first.rows:
        assert split_of.setdefault(row.patient_id, row.split) == row.split  # one split per patient
    per_stratum = Counter((strata[p], s) for p, s in split_of.items())
    assert per_stratum[("A", "validation")] == 9 and per_stratum[("A", "test")] == 9
    assert per_stratum[("B", "validation")] == 6 and per_stratum[("B", "test")] == 6


def test_two_fractions_mean_no_test_split_and_fixed_splits_stay():
    draft = _draft({f"p{i}": 1 for i in range(10)})
    draft.rows[0].split = "test"
    assign_splits(draft, "0.8,0.2", seed=0)
    counts = Counter(r.split for r in draft.rows)
    assert counts == {"train": 7, "validation": 2, "test": 1} and draft.rows[0].split == "test"


@pytest.mark.parametrize("text", ["0.7,0.2", "1", "0.5,0.5,0.5,-0.5", "a,b"])
def test_bad_fractions(text):
    with pytest.raises(InputDataError, match="--fractions"):
        parse_fractions(text)


def _fake_msd(folder: Path) -> None:
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    label = np.zeros((4, 4, 4), np.uint8)
    label[1, 1, 1] = 2
    for case in ("case_001", "case_002", "case_003"):
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(folder / "imagesTr" / f"{case}.nii.gz"))
        if case != "case_003":
            nib.save(nib.Nifti1Image(label, np.eye(4)), str(folder / "labelsTr" / f"{case}.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(folder / "imagesTs" / "case_009.nii.gz"))


def test_msd_layout_writes_a_valid_manifest(tmp_path):
    _fake_msd(tmp_path / "Task99")
    draft = scan_layout("msd", tmp_path / "Task99")
    assert draft.notes == ["skipped case_003.nii.gz: no labelsTr/case_003.nii.gz"]
    assert draft.metadata["labels"] == "0,2"  # scanned from the label files
    assign_splits(draft, (0.5, 0.5), seed=0)
    out = write_manifest(draft, tmp_path / "out" / "task.csv", data_root=tmp_path)
    text = out.read_text()
    assert "Task99/imagesTr/case_001.nii.gz" in text and str(tmp_path) not in text  # relative paths
    manifest = read_manifest(out, data_root=tmp_path)
    assert Counter(s.split for s in manifest.subjects()) == {"train": 1, "validation": 1, "unlabelled": 1}
    assert validate_manifest(manifest).ok
    with pytest.raises(OutputExistsError, match="already exists"):
        write_manifest(draft, out, data_root=tmp_path)
    assert out.read_text() == text
    write_manifest(draft, out, data_root=tmp_path, overwrite=True)


def test_paths_outside_the_data_root_are_absolute(tmp_path):
    _fake_msd(tmp_path / "Task99")
    draft = scan_layout("msd", tmp_path / "Task99", label_values=[0, 1, 2])
    assign_splits(draft, (0.5, 0.5))
    text = format_manifest(draft, data_root=tmp_path / "elsewhere")
    assert "# labels: 0,1,2" in text and str(tmp_path / "Task99" / "imagesTr" / "case_001.nii.gz") in text


def test_layout_errors(tmp_path):
    with pytest.raises(InputDataError, match="no imagesTr"):
        scan_layout("msd", tmp_path)
    with pytest.raises(InputDataError, match="no class sub-folders"):
        scan_layout("folders", tmp_path)
    with pytest.raises(InputDataError, match="no BraTS modality files"):
        scan_layout("brats", tmp_path)
    with pytest.raises(InputDataError, match="folder not found"):
        scan_layout("msd", tmp_path / "missing")


def test_brats_layout_on_the_real_data(dataset):
    draft = scan_layout("brats", dataset("brats2015_flair_t1c"), label_values=range(5))
    assert draft.channel_names == ["flair", "t1c"]
    assert {(r.subject_id, r.split) for r in draft.rows} == {
        ("brats_2013_pat0005_1", "train"), ("brats_2013_pat0006_1", "train"),
        ("brats_2013_pat0003_1", "validation"), ("brats_2013_pat0001_1", "test")}
    four = scan_layout("brats", dataset("brats2023_4mod_nolabel"))
    assert four.channel_names == ["flair", "t1", "t1c", "t2"]
    assert [(r.subject_id, r.split, r.label) for r in four.rows] == [("BraTS-GLI-00001-000", "unlabelled", None)]
    assert four.rows[0].channels["flair"].name == "BraTS-GLI-00001-000-t2f.nii.gz"


def test_folders_layout_on_the_real_kermany_names(dataset):
    draft = scan_layout("folders", dataset("chest_xray_kermany_224") / "train")
    assert draft.metadata["classes"] == "NORMAL,PNEUMONIA"
    assert Counter(r.label for r in draft.rows) == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assign_splits(draft, (0.8, 0.2), seed=0)
    split_of: dict[str, str] = {}
    for row in draft.rows:
        assert split_of.setdefault(row.patient_id, row.split) == row.split
    share = Counter(r.split for r in draft.rows)["validation"] / len(draft.rows)
    assert 0.15 < share < 0.25


def test_msd_dataset_json_declares_labels(tmp_path):
    _fake_msd(tmp_path / "Task99")
    (tmp_path / "Task99" / "dataset.json").write_text('{"labels": {"0": "background", "2": "body", "1": "head"}}')
    draft = scan_layout("msd", tmp_path / "Task99")
    assert draft.metadata == {"labels": "0,1,2", "label_names": "background,head,body"}
    assert scan_layout("msd", tmp_path / "Task99", label_values=[0, 2]).metadata == {"labels": "0,2"}
    (tmp_path / "Task99" / "dataset.json").write_text('{"labels": ["x"]}')
    with pytest.raises(InputDataError, match="dataset.json: has no readable 'labels'"):
        scan_layout("msd", tmp_path / "Task99")


def test_msd_multimodal_task_names_the_volumes_of_its_4d_images(tmp_path):
    """MSD Task01 layout: one 4-D image per case; dataset.json's modality names become channel names."""
    from vol_transfer.io.case import load_case

    task = tmp_path / "Task01"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    volumes = np.stack([np.full((4, 4, 3), float(v), np.float32) for v in range(4)], axis=-1)  # (X, Y, Z, 4)
    nib.save(nib.Nifti1Image(volumes, np.eye(4)), str(task / "imagesTr" / "BRATS_001.nii.gz"))
    label = np.zeros((4, 4, 3), np.uint8)
    label[1, 1, 1] = 2
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(task / "labelsTr" / "BRATS_001.nii.gz"))
    (task / "dataset.json").write_text('{"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, '
                                       '"labels": {"0": "background", "1": "edema", "2": "tumour"}}')
    draft = scan_layout("msd", task)
    assert draft.metadata["volumes"] == "image=flair,t1,t1c,t2"
    assign_splits(draft, (1.0, 0.0), seed=0)
    out = write_manifest(draft, tmp_path / "task01.csv", data_root=tmp_path)
    assert "# volumes: image=flair,t1,t1c,t2" in out.read_text().splitlines()
    manifest = read_manifest(out, data_root=tmp_path)
    assert validate_manifest(manifest).ok
    image, _ = load_case(manifest.subjects()[0])
    assert image.channel_names == ("flair", "t1", "t1c", "t2")
    image, _ = load_case(manifest.subjects()[0], ["t2", "t1ce"])  # by name, in the order asked, with aliases
    assert [float(c.max()) for c in image.array] == [3.0, 2.0]
