from __future__ import annotations

import math

import numpy as np
import pytest

from vol_transfer.evaluation.classification import (
    classification_report,
    confusion_matrix,
    per_group_accuracy,
    plot_confusion_matrix,
    plot_roc,
    roc_auc,
    roc_curve,
    study_wise,
)


def test_hand_computed_binary_case():
    # true:  1 1 1 1 0 0 0 0 0 0 ; predicted (p1>=.5): 1 1 1 0 1 0 0 0 0 0
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.05, 0.35]
    report = classification_report(labels, scores, class_names=["normal", "pneumonia"])
    assert report["confusion_matrix"] == [[5, 1], [1, 3]]
    assert report["accuracy"] == pytest.approx(0.8)
    pneumonia = report["per_class"]["pneumonia"]
    assert pneumonia["precision"] == pytest.approx(3 / 4)
    assert pneumonia["recall"] == pytest.approx(3 / 4)
    assert pneumonia["f1"] == pytest.approx(3 / 4)
    normal = report["per_class"]["normal"]
    assert (normal["precision"], normal["recall"], normal["support"]) == (pytest.approx(5 / 6), pytest.approx(5 / 6), 6)
    assert report["macro"]["f1"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    # pairs (pos, neg) with pos > neg: 0.9, 0.8 beat all 6 (12); 0.6 beats all but 0.7 (5);
    # 0.3 beats 0.2, 0.1, 0.05 (3) → 20 of 24
    assert report["auc"] == pytest.approx(20 / 24)


def test_auc_counts_ties_as_half_and_is_nan_for_one_class():
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 1, 0], [0.5, 0.9, 0.5]) == pytest.approx((0.5 + 1) / 2)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_roc_curve_points():
    fpr, tpr, thresholds = roc_curve([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1])
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1]
    assert tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert thresholds[0] == np.inf and thresholds[1] == 0.9


def test_multiclass_confusion_and_macro_auc():
    labels = [0, 1, 2, 2]
    probabilities = [[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]
    assert confusion_matrix(labels, [0, 1, 1, 2], 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    report = classification_report(labels, probabilities)
    assert report["per_class"]["1"]["precision"] == pytest.approx(0.5)
    assert report["per_class"]["2"]["recall"] == pytest.approx(0.5)
    # one-vs-rest AUCs: class0 1.0, class1 (0.7 vs .1,.5,.1 → 1.0), class2 (.3,.8 vs .1,.2 → 1.0)
    assert report["auc"] == pytest.approx(1.0)


def test_study_wise_is_positive_if_any_image_is():
    studies, labels, scores = study_wise(
        ["a", "a", "b", "b", "c"], [0, 1, 0, 0, 1], [0.2, 0.6, 0.3, 0.1, 0.4]
    )
    assert studies == ["a", "b", "c"]
    assert labels.tolist() == [1, 0, 1]
    assert scores.tolist() == [0.6, 0.3, 0.4]
    report = classification_report(labels, scores)
    assert report["accuracy"] == pytest.approx(2 / 3)  # c is missed at 0.4


def test_per_group_accuracy():
    result = per_group_accuracy(["m", "f", "m", "f", "f"], [1, 0, 1, 1, 0], [1, 1, 0, 1, 0])
    assert result == {"f": pytest.approx(2 / 3), "m": pytest.approx(0.5)}
    report = classification_report([1, 0], [0.9, 0.2], groups=["x", "y"])
    assert report["per_group_accuracy"] == {"x": 1.0, "y": 1.0}


def test_figures_are_written(tmp_path):
    roc = plot_roc([0, 1, 1, 0], [0.1, 0.8, 0.6, 0.4], tmp_path / "roc.png")
    cm = plot_confusion_matrix([[5, 1], [2, 3]], ["normal", "pneumonia"], tmp_path / "cm.png")
    for path in (roc, cm):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))
