"""Patient-level k-fold cross-validation: the ``fold`` column, ``data manifest --folds`` and ``data.fold``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from vol_transfer.errors import InputDataError, ManifestError, RecipeError
from vol_transfer.io.layouts import DraftRow, ManifestDraft, assign_folds, format_manifest
from vol_transfer.io.manifest import read_manifest
from vol_transfer.training.segmentation_data import split_subjects

MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"


def _draft(patients: int, per_patient: int = 1, test: int = 0) -> ManifestDraft:
    draft = ManifestDraft(kind="segmentation", channel_names=["image"])
    for p in range(patients):
        for v in range(per_patient):
            split = "test" if p < test else "train" if p % 3 else "validation"
            draft.rows.append(DraftRow(f"p{p}_v{v}", {"image": Path(f"/d/p{p}_v{v}.nii.gz")}, None, f"p{p}", split))
    return draft


def test_folds_keep_patients_together_are_balanced_and_seeded():
    draft = _draft(patients=11, per_patient=2, test=2)
    assign_folds(draft, 3, seed=4)
    pooled = [r for r in draft.rows if r.split != "test"]
    assert all(r.split == "train" and r.fold in (0, 1, 2) for r in pooled)  # validation rows join the pool
    assert all(r.fold is None for r in draft.rows if r.split == "test")
    by_patient = {r.patient_id: {x.fold for x in pooled if x.patient_id == r.patient_id} for r in pooled}
    assert all(len(folds) == 1 for folds in by_patient.values())
    sizes = Counter(next(iter(f)) for f in by_patient.values())
    assert sorted(sizes.values()) == [3, 3, 3]  # 9 patients in 3 folds
    again = _draft(patients=11, per_patient=2, test=2)
    assign_folds(again, 3, seed=4)
    assert [r.fold for r in again.rows] == [r.fold for r in draft.rows]
    other = _draft(patients=11, per_patient=2, test=2)
    assign_folds(other, 3, seed=5)
    assert [r.fold for r in other.rows] != [r.fold for r in draft.rows]
    assert "subject_id,split,patient_id,fold,image" in format_manifest(draft)


def test_more_folds_than_patients_is_refused():
    with pytest.raises(ManifestError, match="folds"):
        assign_folds(_draft(patients=2), 3)


def test_the_shipped_brats2018_manifest_cross_validates_by_patient(shared_data):
    manifest = read_manifest(MANIFESTS / "brats2018_4mod.csv", data_root=shared_data)
    assert manifest.channel_names == ("flair", "t1", "t1c", "t2")
    assert Counter(s.fold for s in manifest.subjects("train")) == {0: 7, 1: 7}
    duplicate = next(s for s in manifest.subjects() if s.subject_id == "Brats18_2013_20_1")
    assert duplicate.patient_id == "brats_2013_pat0006_1"  # the same scan as that BRATS 2015 case
    for fold in (0, 1):
        train = {s.subject_id for s in split_subjects(manifest, "train", fold)}
        held_out = {s.subject_id for s in split_subjects(manifest, "validation", fold)}
        assert len(held_out) == 7 and not train & held_out and len(train | held_out) == 14
    with pytest.raises(RecipeError, match="data.fold"):
        split_subjects(manifest, "train", 2)
    plain = read_manifest(MANIFESTS / "brats2015_flair_t1c.csv", data_root=shared_data)
    with pytest.raises(InputDataError, match="--folds"):
        split_subjects(plain, "train", 0)
