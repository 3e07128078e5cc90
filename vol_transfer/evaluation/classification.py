"""Classification metrics: accuracy, precision/recall/F1 per class and macro, ROC AUC, confusion
matrix, study-wise aggregation, per-group accuracy, and ROC / confusion-matrix figures; the
predictions CSV that ``vol-transfer infer`` and a classification run write (:func:`write_predictions`,
:func:`read_predictions`) and its report with bootstrap CIs (:func:`evaluate_predictions`).

Everything works on plain arrays: ``labels`` (N,) integer classes and ``probabilities`` (N, K)
(rows sum to one) or, for two classes, ``scores`` (N,) = probability of class 1.

Example:
    >>> report = classification_report([0, 1, 1, 0], [[.9, .1], [.2, .8], [.6, .4], [.3, .7]])
    >>> report["accuracy"], report["auc"]
    (0.5, 0.75)
"""

from __future__ import annotations

import csv
import io
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np

from vol_transfer.errors import InputDataError, PathLike
from vol_transfer.io.atomic import atomic_path, atomic_write_text


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """``(K, K)`` counts; row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, int), np.asarray(predictions, int)), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)


def precision_recall_f1(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from a confusion matrix (0 where undefined)."""
    true_positive = np.diag(matrix).astype(float)
    precision = _safe_divide(true_positive, matrix.sum(axis=0).astype(float))
    recall = _safe_divide(true_positive, matrix.sum(axis=1).astype(float))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return precision, recall, f1


def roc_curve(targets: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold (highest first).

    Returns ``(fpr, tpr, thresholds)``; the curve starts at (0, 0) with threshold ``+inf``.
    """
    y = np.asarray(targets, dtype=bool)
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    true_positives = np.cumsum(y)[last_of_tie]
    false_positives = (last_of_tie + 1) - true_positives
    positives, negatives = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, false_positives / negatives]
    tpr = np.r_[0.0, true_positives / positives]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def roc_auc(targets: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (ties count one half); NaN if only one class is present."""
    y = np.asarray(targets, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, scores)
    return float(np.trapezoid(tpr, fpr))


def study_wise(
    study_ids: Sequence[Hashable], labels: Sequence[int], scores: Sequence[float]
) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    """Aggregate image results per study: positive if ANY image is (max label, max score).

    Returns ``(studies, study_labels, study_scores)`` in order of first appearance.
    """
    grouped: OrderedDict[Hashable, tuple[int, float]] = OrderedDict()
    for study, label, score in zip(study_ids, labels, scores):
        old_label, old_score = grouped.get(study, (0, -np.inf))
        grouped[study] = (max(old_label, int(label)), max(old_score, float(score)))
    studies = list(grouped)
    values = np.array(list(grouped.values()), dtype=float).reshape(-1, 2)
    return studies, values[:, 0].astype(int), values[:, 1]


def per_group_accuracy(
    groups: Sequence[Hashable], labels: Sequence[int], predictions: Sequence[int]
) -> dict[str, float]:
    """Accuracy within each group (e.g. scanner, site, sex)."""
    g = np.asarray([str(x) for x in groups])
    correct = np.asarray(labels) == np.asarray(predictions)
    return {name: float(correct[g == name].mean()) for name in sorted(set(g.tolist()))}


def _as_probabilities(probabilities: Any) -> np.ndarray:
    p = np.asarray(probabilities, dtype=float)
    if p.ndim == 1:  # binary scores = P(class 1)
        p = np.stack([1 - p, p], axis=1)
    return p


def auc_score(labels: Sequence[int], probabilities: Any) -> float:
    """ROC AUC: binary, of class 1; more classes, the macro mean of one-vs-rest AUCs (NaN if undefined)."""
    p = _as_probabilities(probabilities)
    y = np.asarray(labels, dtype=int)
    if p.shape[1] == 2:
        return roc_auc(y == 1, p[:, 1])
    per_class = [roc_auc(y == k, p[:, k]) for k in range(p.shape[1])]
    return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")


def classification_report(
    labels: Sequence[int],
    probabilities: Any,
    class_names: Sequence[str] | None = None,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, Any]:
    """All metrics in one JSON-serialisable dict.

    Keys: ``accuracy``, ``macro`` (precision/recall/f1), ``per_class`` (name → precision, recall,
    f1, support), ``auc`` (binary: of class 1; more classes: macro one-vs-rest), ``confusion_matrix``
    (nested lists, row = true), and ``per_group_accuracy`` when ``groups`` is given.
    """
    p = _as_probabilities(probabilities)
    y = np.asarray(labels, dtype=int)
    num_classes = p.shape[1]
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    predictions = p.argmax(axis=1)
    matrix = confusion_matrix(y, predictions, num_classes)
    precision, recall, f1 = precision_recall_f1(matrix)
    auc = auc_score(y, p)
    report: dict[str, Any] = {
        "accuracy": float((predictions == y).mean()) if y.size else float("nan"),
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "per_class": {
            name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                   "support": int(matrix[k].sum())}
            for k, name in enumerate(names)
        },
        "auc": auc,
        "confusion_matrix": matrix.tolist(),
        "count": int(y.size),
    }
    if groups is not None:
        report["per_group_accuracy"] = per_group_accuracy(groups, y, predictions)
    return report


def plot_roc(targets: Sequence[int], scores: Sequence[float], path: PathLike, title: str = "ROC") -> Path:
    """Write the ROC curve with its AUC in the legend as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(targets, scores)
    figure, axes = plt.subplots(figsize=(4, 4), dpi=100)
    axes.plot(fpr, tpr, label=f"AUC = {roc_auc(targets, scores):.3f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axes.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    return _save_figure(figure, path)


def plot_confusion_matrix(matrix: Any, class_names: Sequence[str], path: PathLike, title: str = "Confusion matrix") -> Path:
    """Write a confusion matrix (row = true, column = predicted) with counts as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    figure, axes = plt.subplots(figsize=(1.5 + 1.2 * len(class_names), 1.2 + 1.2 * len(class_names)), dpi=100)
    axes.imshow(counts, cmap="Blues")
    for (row, column), value in np.ndenumerate(counts):
        colour = "white" if value > counts.max() / 2 else "black"
        axes.text(column, row, str(value), ha="center", va="center", color=colour)
    ticks = range(len(class_names))
    axes.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names,
             xlabel="predicted", ylabel="true", title=title)
    return _save_figure(figure, path)


def _save_figure(figure: Any, path: PathLike) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Predictions CSV (written by ``vol-transfer infer`` and by a classification run) and its report

PREDICTION_COLUMNS = ("path", "patient_id", "label", "prediction")


@dataclass
class Predictions:
    """A predictions CSV: one row per image, ``probabilities`` ``(N, K)`` over ``classes``; ``labels`` the
    true class names ("" where unknown), ``patients`` the patient ids ("" where unknown)."""

    paths: list[str]
    probabilities: np.ndarray
    classes: list[str]
    labels: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = list(self.labels) or [""] * len(self.paths)
        self.patients = list(self.patients) or [""] * len(self.paths)


def write_predictions(target: PathLike, predictions: Predictions) -> Path:
    """Write ``path, patient_id, label, prediction, p_<class>…`` atomically (probabilities to 6 decimals)."""
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow([*PREDICTION_COLUMNS, *[f"p_{c}" for c in predictions.classes]])
    for path, patient, label, p in zip(predictions.paths, predictions.patients, predictions.labels,
                                       predictions.probabilities):
        writer.writerow([str(path), patient, label or "", predictions.classes[int(np.argmax(p))],
                         *[f"{v:.6f}" for v in p]])
    atomic_write_text(target, rows.getvalue())
    return Path(target)


def read_predictions(path: PathLike) -> Predictions:
    """Read a predictions CSV (see :func:`write_predictions`); one-line errors for what cannot be scored."""
    path = Path(path)
    fix = "pass the predictions.csv written by vol-transfer infer (or a classification run)"
    if not path.is_file():
        raise InputDataError(path, "predictions file not found", fix)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    classes = [c[2:] for c in columns if c.startswith("p_")]
    if "path" not in columns or len(classes) < 2:
        raise InputDataError(path, f"has columns {columns}, not path and one p_<class> column per class", fix)
    try:
        probabilities = np.array([[float(row[f"p_{c}"]) for c in classes] for row in rows], dtype=float).reshape(-1, len(classes))
    except (TypeError, ValueError):
        raise InputDataError(path, "holds a probability that is not a number", fix) from None
    labels = [(row.get("label") or "").strip() for row in rows]
    unknown = sorted({label for label in labels if label and label not in classes})
    if unknown:
        raise InputDataError(path, f"labels {unknown} are not among its classes {classes}",
                             "fix the label column (class names as in the p_<class> columns)")
    return Predictions([row["path"] for row in rows], probabilities, classes, labels,
                       [(row.get("patient_id") or "").strip() for row in rows])


def _with_intervals(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str],
                    resamples: int, seed: int) -> dict[str, Any]:
    from vol_transfer.evaluation.statistics import bootstrap_ci, mean_ci

    report = classification_report(labels, probabilities, class_names)
    p = _as_probabilities(probabilities)
    report["accuracy_ci"] = list(mean_ci((p.argmax(axis=1) == labels).astype(float), resamples=resamples, seed=seed))
    report["auc_ci"] = list(bootstrap_ci(lambda i: auc_score(labels[i], p[i]), len(labels), resamples=resamples, seed=seed))
    return report


def evaluate_predictions(predictions: Predictions, resamples: int = 2_000, seed: int = 0) -> dict[str, Any]:
    """Image-wise report (:func:`classification_report`) with 95 % bootstrap intervals of accuracy and AUC
    (``accuracy_ci``, ``auc_ci``: ``[low, value, high]``) over the labelled rows, and ``patient_wise``, the same
    per patient when some patient has several images (two classes: a patient is positive if any image is, with
    the highest probability, :func:`study_wise`), else None.

    >>> rows = Predictions(["a", "b", "c", "d"], np.array([[.9, .1], [.2, .8], [.6, .4], [.3, .7]]), ["N", "P"],
    ...                    ["N", "P", "P", "N"], ["p1", "p1", "p2", "p3"])
    >>> report = evaluate_predictions(rows, resamples=200)
    >>> report["accuracy"], report["auc"], report["patient_wise"]["count"]
    (0.5, 0.75, 3)
    """
    keep = [i for i, label in enumerate(predictions.labels) if label]
    labels = np.array([predictions.classes.index(predictions.labels[i]) for i in keep], dtype=int)
    probabilities = predictions.probabilities[keep]
    report = _with_intervals(labels, probabilities, predictions.classes, resamples, seed)
    report["unlabelled"] = len(predictions.paths) - len(keep)
    patients = [predictions.patients[i] for i in keep]
    report["patient_wise"] = None
    if len(predictions.classes) == 2 and all(patients) and len(set(patients)) < len(patients):
        _, patient_labels, patient_scores = study_wise(patients, labels, probabilities[:, 1])
        report["patient_wise"] = _with_intervals(patient_labels, patient_scores, predictions.classes, resamples, seed)
    return report


def _interval(values: Sequence[float]) -> str:
    low, value, high = values
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if np.isfinite([low, high]).all() else f"{value:.3f}"


def report_markdown(report: dict[str, Any], title: str) -> str:
    """The report as Markdown: accuracy and AUC with 95 % CIs, per-class table, confusion matrix, patient-wise."""
    lines = [f"# {title}", ""]
    for name, part in (("images", report), ("patients", report.get("patient_wise"))):
        if part is None:
            continue
        names = list(part["per_class"])
        lines += [f"## Per {name[:-1]} ({part['count']} {name})", "",
                  f"- accuracy: {_interval(part['accuracy_ci'])} (95 % bootstrap CI)",
                  f"- ROC AUC: {_interval(part['auc_ci'])} (95 % bootstrap CI)",
                  f"- macro F1: {part['macro']['f1']:.3f}", "",
                  "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
                  for c, m in part["per_class"].items()]
        lines += ["", "Confusion matrix (row = true, column = predicted):", "",
                  "| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(map(str, row)) + " |" for c, row in zip(names, part["confusion_matrix"])]
        lines.append("")
    if report.get("unlabelled"):
        lines.append(f"{report['unlabelled']} unlabelled image(s) not scored.")
    return "\n".join(lines) + "\n"
