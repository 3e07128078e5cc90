from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from vol_transfer.cli import main
from vol_transfer.evaluation.report import Pair, evaluate_pairs, summarise, summary_markdown
from vol_transfer.io.volumes import load_volume, save_volume


def _rows(values, split="test", name="core", metric="dice"):
    return [{"subject_id": f"s{i}", "split": split, "class": name, metric: v, "hd95": 1.0, "asd": 1.0,
             "volume_difference_ml": 0.0, "sensitivity": 1.0, "precision": 1.0} for i, v in enumerate(values)]


def test_summarise_hand_computed_and_excludes_non_finite():
    rows = _rows([0.5, 0.7, 0.9]) + _rows([0.2], split="train")
    rows[1]["hd95"] = math.inf
    summary = {(s["split"], s["metric"]): s for s in summarise(rows)}
    dice = summary[("test", "dice")]
    assert dice["n"] == 3 and dice["mean"] == pytest.approx(0.7) and dice["sd"] == pytest.approx(0.2)
    assert (dice["median"], dice["q1"], dice["q3"]) == pytest.approx((0.7, 0.6, 0.8))
    hd = summary[("test", "hd95")]
    assert hd["n"] == 2 and hd["n_excluded"] == 1 and hd["mean"] == 1.0
    assert math.isnan(summary[("train", "dice")]["sd"])  # one subject: no SD
    markdown = summary_markdown(summarise(rows))
    assert "| | train | test |" in markdown  # splits as columns, as in the study's tables
    assert "| core | 0.2000 ± – | 0.7000 ± 0.2000 |" in markdown
    assert "| test | core | 2 | 1.0000 | 0.0000 | 1.0000 | 1.0000–1.0000 | 1 |" in markdown


def test_evaluate_pairs_on_arrays():
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1:4, 1:4, 1:4] = 2
    prediction = truth.copy()
    prediction[1:4, 1:4, 1] = 0
    rows = evaluate_pairs([Pair("a", "test", prediction, truth, spacing=(1, 1, 1))], {"core": [2]})
    assert rows[0]["dice"] == pytest.approx(2 * 18 / 45)
    assert rows[0]["volume_difference_ml"] == pytest.approx(-9 / 1000)


def _write_predictions(shared_data: Path, tmp_path: Path, subjects: list[str], damage: str) -> Path:
    pred = tmp_path / "pred"
    for subject in subjects:
        label = load_volume(shared_data / "msd_hippocampus" / "labelsTr" / f"{subject}.nii.gz")
        array = label.array[0].astype(np.uint8)
        if subject == damage:
            array = np.roll(array, 2, axis=0)
        save_volume(array, pred / f"{subject}_seg.nii.gz", reference=label)
    return pred


def test_evaluate_command_on_real_hippocampus(dataset, shared_data, tmp_path, capsys):
    dataset("msd_hippocampus")
    subjects = ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "# kind: segmentation\n# labels: 0,1,2\n# label_names: background,anterior,posterior\n"
        "subject_id,split,image,label\n"
        + "".join(f"{s},{'test' if i else 'validation'},msd_hippocampus/imagesTr/{s}.nii.gz,"
                  f"msd_hippocampus/labelsTr/{s}.nii.gz\n" for i, s in enumerate(subjects))
    )
    pred = _write_predictions(shared_data, tmp_path, subjects, damage="hippocampus_004")
    out = tmp_path / "report"
    args = ["evaluate", "--pred", str(pred), "--manifest", str(manifest), "--data-root", str(shared_data),
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    with open(out / "metrics_per_subject.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["subject_id"], r["class"]) for r in rows][:2] == [("hippocampus_001", "anterior"), ("hippocampus_001", "posterior")]
    perfect = [r for r in rows if r["subject_id"] != "hippocampus_004"]
    assert all(float(r["dice"]) == 1.0 and float(r["hd95"]) == 0.0 for r in perfect)
    damaged = [r for r in rows if r["subject_id"] == "hippocampus_004"]
    assert all(0 < float(r["dice"]) < 1 and float(r["hd95"]) >= 2.0 for r in damaged)
    markdown = (out / "summary.md").read_text()
    assert "| | validation | test |" in markdown and "## HD95 (mm)" in markdown
    assert (out / "dice_boxplot.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [f"{s}.png" for s in subjects]
    assert main(args) == 2  # an existing report is not replaced without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--split", "test", "--labels", "hippocampus=1,2", "--overlays", "0"]) == 0
    with open(out / "metrics_per_subject.csv") as handle:
        assert {r["class"] for r in csv.DictReader(handle)} == {"hippocampus"}


def test_evaluate_lps_brats_tumour_core_with_prediction_values(dataset, shared_data, tmp_path):
    case = dataset("brats2015_flair_t1c") / "validation" / "brats_2013_pat0003_1"
    truth = load_volume(case / "OTMultiClass.nii.gz")
    core = np.isin(truth.array[0], [1, 3, 4]).astype(np.uint8)  # class-index prediction: 1 = core
    pred = tmp_path / "pred"
    save_volume(core, pred / "pat3_seg.nii.gz", reference=truth)
    manifest = tmp_path / "b.csv"
    manifest.write_text("# kind: segmentation\n# labels: 0,1,2,3,4\nsubject_id,split,flair,label\n"
                        f"pat3,validation,{case}/Flair_subtrMeanDivStd.nii.gz,{case}/OTMultiClass.nii.gz\n")
    out = tmp_path / "report"
    assert main(["evaluate", "--pred", str(pred), "--manifest", str(manifest), "--out", str(out), "--no-progress",
                 "--labels", "tumour_core=1,3,4", "--pred-labels", "tumour_core=1", "--overlays", "1",
                 "--data-root", str(shared_data)]) == 0
    with open(out / "metrics_per_subject.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["dice"]) == 1.0 and float(row["volume_truth_ml"]) == pytest.approx(25664 / 1000)


def test_missing_prediction_and_wrong_grid_are_one_line_errors(dataset, shared_data, tmp_path, capsys):
    dataset("msd_hippocampus")
    manifest = tmp_path / "m.csv"
    manifest.write_text("# kind: segmentation\n# labels: 0,1,2\nsubject_id,split,image,label\n"
                        "hippocampus_001,test,msd_hippocampus/imagesTr/hippocampus_001.nii.gz,"
                        "msd_hippocampus/labelsTr/hippocampus_001.nii.gz\n")
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--manifest", str(manifest), "--data-root",
            str(shared_data), "--out", str(tmp_path / "r"), "--no-progress", "--labels", "hippocampus=1,2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no prediction for 1 subject(s): hippocampus_001" in err[0]
    save_volume(np.zeros((10, 10, 10), np.uint8), tmp_path / "pred" / "hippocampus_001_seg.nii.gz", affine=np.eye(4))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shape (10, 10, 10) differs" in err[0]
    assert not (tmp_path / "r" / "summary.md").exists()


def test_class_absent_from_both_is_nan_and_left_out_of_the_mean(tmp_path):
    """nnU-Net's convention, as in the validator and the study reports: nothing to score is not a 1."""
    affine = np.eye(4)
    truth_a = np.zeros((6, 6, 6), np.uint8)
    truth_a[1:4, 1:4, 1:4] = 1
    pred_a = truth_a.copy()
    pred_a[1:4, 1:4, 1] = 0  # Dice 2·18 / 45
    empty = np.zeros_like(truth_a)
    for subject, truth, prediction in (("a", truth_a, pred_a), ("b", empty, empty)):
        save_volume(truth, tmp_path / f"{subject}_label.nii.gz", affine=affine)
        save_volume(truth.astype(np.float32), tmp_path / f"{subject}_image.nii.gz", affine=affine)
        save_volume(prediction, tmp_path / "pred" / f"{subject}_seg.nii.gz", affine=affine)
    manifest = tmp_path / "m.csv"
    manifest.write_text("# labels: 0,1\nsubject_id,split,image,label\n"
                        + "".join(f"{s},test,{s}_image.nii.gz,{s}_label.nii.gz\n" for s in "ab"))
    out = tmp_path / "report"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--manifest", str(manifest), "--data-root",
                 str(tmp_path), "--labels", "core=1", "--out", str(out), "--no-progress", "--overlays", "0"]) == 0
    with open(out / "metrics_per_subject.csv") as handle:
        dice = {r["subject_id"]: float(r["dice"]) for r in csv.DictReader(handle)}
    assert dice["a"] == pytest.approx(2 * 18 / 45) and math.isnan(dice["b"])
    with open(out / "summary.csv") as handle:
        summary = next(r for r in csv.DictReader(handle) if r["metric"] == "dice")
    assert float(summary["mean"]) == pytest.approx(2 * 18 / 45)
    assert (summary["n"], summary["n_excluded"]) == ("1", "1")
