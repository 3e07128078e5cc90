"""``vol-transfer evaluate`` on classification predictions of real chest X-rays: metrics with CIs,
patient-wise scores, plots, labels from a manifest, and the AUC against MONAI's (and scikit-learn's)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vol_transfer.cli import main
from vol_transfer.evaluation.classification import auc_score, roc_auc

from .conftest import MANIFESTS, read_rows, write_manifest

torch.set_num_threads(2)
PNG = b"\x89PNG\r\n\x1a\n"


def _patients_with_several_images(data_root: Path, per_class: int = 3) -> list[dict[str, str]]:
    """Validation images of ``per_class`` patients per class that have 2–3 images each (real manifest)."""
    with open(MANIFESTS / "chest_xray_kermany.csv", newline="") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    by_patient: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if row["split"] == "validation":
            by_patient.setdefault(row["patient_id"], []).append(row)
    chosen = []
    for label in ("NORMAL", "PNEUMONIA"):
        several = [p for p, items in sorted(by_patient.items()) if len(items) > 1 and items[0]["label"] == label]
        for patient in several[:per_class]:
            chosen += [{"path": str(data_root / r["image"]), "patient_id": patient, "label": label}
                       for r in by_patient[patient][:3]]
    return chosen


@pytest.fixture(scope="module")
def inferred(trained_run, tmp_path_factory):
    """``infer`` on a manifest of real validation images of patients with several images."""
    root = tmp_path_factory.mktemp("evaluate")
    rows = _patients_with_several_images(trained_run.data_root)
    manifest = write_manifest(rows, root / "patients.csv")
    assert main(["infer", "--checkpoint", str(trained_run.checkpoint), str(manifest), "--out", str(root / "pred"),
                 "--no-progress"]) == 0
    return root, manifest, rows


def test_evaluate_reports_metrics_cis_patients_and_plots(inferred, capsys):
    root, _, chosen = inferred
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(root / "pred"), "--out", str(root / "report"), "--resamples", "500"]) == 0
    printed = capsys.readouterr().out
    rows = read_rows(root / "pred" / "predictions.csv")
    truth = np.array([r["label"] == "PNEUMONIA" for r in rows])
    score = np.array([float(r["p_PNEUMONIA"]) for r in rows])
    report = json.loads((root / "report" / "metrics.json").read_text())
    assert report["count"] == len(chosen) and report["accuracy"] == pytest.approx(float(((score > 0.5) == truth).mean()))
    assert report["auc"] == pytest.approx(roc_auc(truth, score))
    low, value, high = report["auc_ci"]
    assert value == report["auc"] and low <= value <= high
    low, value, high = report["accuracy_ci"]
    assert value == pytest.approx(report["accuracy"]) and low <= value <= high
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == len(rows) and matrix[1].sum() == truth.sum()
    recall_normal = matrix[0, 0] / matrix[0].sum()
    assert report["per_class"]["NORMAL"]["recall"] == pytest.approx(recall_normal)
    # per patient: positive if any image is, with the highest PNEUMONIA probability
    patients = report["patient_wise"]
    assert patients["count"] == 6 and np.array(patients["confusion_matrix"]).sum(axis=1).tolist() == [3, 3]
    highest = {}
    for row in rows:
        highest[row["patient_id"]] = max(highest.get(row["patient_id"], 0.0), float(row["p_PNEUMONIA"]))
    patient_truth = [next(r["label"] for r in rows if r["patient_id"] == p) == "PNEUMONIA" for p in highest]
    assert patients["auc"] == pytest.approx(roc_auc(patient_truth, list(highest.values())))
    for name in ("roc.png", "confusion_matrix.png", "roc_patients.png", "confusion_matrix_patients.png"):
        assert (root / "report" / name).read_bytes()[:8] == PNG, name
    summary = (root / "report" / "summary.md").read_text()
    assert "## Per image (" in summary and "## Per patient (6 patients)" in summary and "95 % bootstrap CI" in summary
    assert f"ROC AUC: {report['auc']:.3f}" in printed
    # the report is not replaced without --overwrite
    assert main(["evaluate", "--pred", str(root / "pred"), "--out", str(root / "report")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_labels_and_patients_from_the_manifest(inferred, trained_run, tmp_path, capsys):
    root, manifest, chosen = inferred
    unlabelled = tmp_path / "flat"
    assert main(["infer", "--checkpoint", str(trained_run.checkpoint), *[r["path"] for r in chosen], "--out",
                 str(unlabelled), "--no-progress"]) == 0
    assert not any(r["label"] or r["patient_id"] for r in read_rows(unlabelled / "predictions.csv"))
    assert main(["evaluate", "--pred", str(unlabelled), "--out", str(tmp_path / "no_labels")]) == 2
    assert "has no true labels" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(unlabelled / "predictions.csv"), "--manifest", str(manifest), "--split",
                 "validation", "--out", str(tmp_path / "report"), "--resamples", "500"]) == 0
    with_manifest = json.loads((tmp_path / "report" / "metrics.json").read_text())
    main(["evaluate", "--pred", str(root / "pred"), "--out", str(tmp_path / "again"), "--resamples", "500"])
    assert with_manifest == json.loads((tmp_path / "again" / "metrics.json").read_text())
    # a manifest image without a prediction is named
    extra = write_manifest(chosen + [dict(trained_run.rows[0], patient_id="other")], tmp_path / "more.csv")
    assert main(["evaluate", "--pred", str(unlabelled), "--manifest", str(extra), "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no prediction for 1 labelled image(s)" in error[0]


def test_a_training_runs_predictions_are_scored_like_its_summary(trained_run, tmp_path):
    assert main(["evaluate", "--pred", str(trained_run.run / "predictions.csv"), "--out", str(tmp_path),
                 "--resamples", "200"]) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    summary = trained_run.summary["validation"]
    assert report["confusion_matrix"] == summary["confusion_matrix"]
    assert report["auc"] == pytest.approx(summary["auc"]) and report["accuracy"] == pytest.approx(summary["accuracy"])


def test_auc_agrees_with_monai_and_sklearn(inferred):
    from monai.metrics import compute_roc_auc

    rng = np.random.default_rng(0)
    rows = read_rows(inferred[0] / "pred" / "predictions.csv")
    cases = [(np.array([r["label"] == "PNEUMONIA" for r in rows]), np.array([float(r["p_PNEUMONIA"]) for r in rows])),
             (rng.random(300) < 0.3, np.round(rng.random(300), 1)),  # many ties
             (rng.random(50) < 0.5, rng.random(50))]
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:  # not a dependency; compared where installed
        roc_auc_score = None
    for truth, score in cases:
        ours = roc_auc(truth, score)
        monai = compute_roc_auc(torch.from_numpy(score), torch.from_numpy(truth.astype(np.int64)))
        assert ours == pytest.approx(monai, abs=1e-12)
        assert auc_score(truth.astype(int), score) == pytest.approx(ours)
        if roc_auc_score is not None:
            assert ours == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
    # more classes: the macro one-vs-rest mean, as MONAI's average="macro"
    labels = rng.integers(0, 3, 120)
    probabilities = rng.dirichlet(np.ones(3), 120)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), 3)
    monai = compute_roc_auc(torch.from_numpy(probabilities), one_hot, average="macro")
    assert auc_score(labels, probabilities) == pytest.approx(monai, abs=1e-12)


def test_segmentation_options_and_bad_csv_are_one_line_errors(inferred, tmp_path, capsys):
    root = inferred[0]
    assert main(["evaluate", "--pred", str(root / "pred"), "--labels", "x=1", "--out", str(tmp_path / "a")]) == 2
    assert "--labels" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("path,p_NORMAL,p_PNEUMONIA\nx.png,0.3,oops\n")
    assert main(["evaluate", "--pred", str(bad), "--out", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "bad.csv" in error[0] and "not a number" in error[0]
    assert main(["evaluate", "--pred", str(tmp_path / "seg_pred"), "--out", str(tmp_path / "c")]) == 2
    assert "--manifest" in capsys.readouterr().err  # a segmentation folder still needs its manifest
