"""Evaluate predictions against labels and report: per-subject CSV and a markdown summary.

The studies call :func:`evaluate_pairs` then :func:`summarise`; ``vol-transfer evaluate`` adds
the files and plots.

Dice is :func:`vol_transfer.evaluation.metrics.dice` (NaN when a class is absent from both
prediction and truth) and every mean leaves NaN out (:func:`summarise`), as in the training
validator and the study reports.

Example::

    pairs = [Pair("pat0001", "test", "pred/pat0001_seg.nii.gz", "labels/pat0001.nii.gz")]
    rows = evaluate_pairs(pairs, {"tumour_core": [1, 3, 4]})
    print(summary_markdown(summarise(rows)))
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vol_transfer.errors import PathLike
from vol_transfer.evaluation.metrics import METRICS, SUMMARY_METRICS, binary_metrics
from vol_transfer.io.atomic import atomic_write_text
from vol_transfer.io.case import label_array
from vol_transfer.io.volumes import Volume, check_same_grid, load_volume

SPLIT_ORDER = ("train", "validation", "test", "unlabelled")
ROW_COLUMNS = ("subject_id", "split", "class", *METRICS)
SUMMARY_COLUMNS = ("split", "class", "metric", "n", "n_excluded", "mean", "sd", "median", "q1", "q3")
METRIC_TITLES = {
    "dice": "Dice", "hd95": "HD95 (mm)", "asd": "Average surface distance (mm)",
    "volume_difference_ml": "Volume difference, predicted − true (mL)", "sensitivity": "Sensitivity",
    "precision": "Precision",
}


@dataclass
class Pair:
    """A prediction and its ground truth: file paths, Volumes, or arrays (arrays need ``spacing``)."""

    subject_id: str
    split: str
    prediction: Any
    truth: Any
    spacing: Sequence[float] | None = None


def _as_volume(item: Any, spacing: Sequence[float] | None, what: str, subject: str) -> Volume:
    if isinstance(item, Volume):
        return item
    if isinstance(item, (str, Path)):
        return load_volume(item)
    array = np.asarray(item)
    if spacing is None:
        raise ValueError(f"{subject}: {what} given as an array needs Pair.spacing")
    return Volume(array[np.newaxis] if array.ndim == 3 else array, np.diag([*map(float, spacing), 1.0]))


def evaluate_case(
    subject_id: str, split: str, prediction: np.ndarray, truth: np.ndarray,
    classes: Mapping[str, Sequence[int]], spacing: Sequence[float],
    prediction_classes: Mapping[str, Sequence[int]] | None = None,
) -> list[dict[str, Any]]:
    """One row per class for one subject. ``prediction_classes`` (same names) when the prediction
    uses other label values than the truth, e.g. ``{"core": [1]}`` vs ``{"core": [1, 3, 4]}``."""
    if prediction.shape != truth.shape:
        raise ValueError(f"{subject_id}: prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    predicted_values = prediction_classes or classes
    metrics = {
        name: binary_metrics(np.isin(prediction, list(predicted_values[name])), np.isin(truth, list(values)), spacing)
        for name, values in classes.items()
    }
    return [{"subject_id": subject_id, "split": split, "class": name, **values} for name, values in metrics.items()]


def evaluate_pairs(
    pairs: Iterable[Pair],
    classes: Mapping[str, Sequence[int]],
    *,
    prediction_classes: Mapping[str, Sequence[int]] | None = None,
    progress: bool = False,
    truth_values: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Metrics per subject and class (rows with :data:`ROW_COLUMNS`), distances in mm.

    Prediction and truth must share one voxel grid (shape and affine); otherwise a one-line
    :class:`InputDataError` names the prediction file. ``truth_values`` (a manifest's declared
    labels) refuses a truth label holding any other value, instead of scoring it as background.
    """
    pairs = list(pairs)
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc="evaluate", unit="subject")  # type: ignore[assignment]
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        truth = _as_volume(pair.truth, pair.spacing, "truth", pair.subject_id)
        prediction = _as_volume(pair.prediction, pair.spacing or truth.spacing, "prediction", pair.subject_id)
        check_same_grid(truth, prediction, "prediction")
        rows.extend(evaluate_case(
            pair.subject_id, pair.split, label_array(prediction, prediction.name), label_array(truth, truth.name, truth_values),
            classes, truth.spacing, prediction_classes,
        ))
    return rows


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(values))
    return sorted(unique, key=lambda v: (order.index(v) if v in order else len(order), unique.index(v)))


def summarise(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = SUMMARY_METRICS) -> list[dict[str, Any]]:
    """Mean, SD (ddof 1), median and quartiles per split, class and metric.

    Non-finite values (``nan`` Dice and distances when a class is absent from both masks, ``inf``
    distances when one mask is empty, ``nan`` when a rate is undefined) are left out of the
    statistics and counted in ``n_excluded`` — the mean is the nanmean of
    :func:`vol_transfer.evaluation.metrics.mean_dice`.
    """
    summary = []
    splits = _ordered((r["split"] for r in rows), SPLIT_ORDER)
    classes = _ordered((r["class"] for r in rows), ())
    for split in splits:
        for name in classes:
            selected = [r for r in rows if r["split"] == split and r["class"] == name]
            if not selected:
                continue
            for metric in metrics:
                values = np.asarray([float(r[metric]) for r in selected])
                finite = values[np.isfinite(values)]
                stats = dict(mean=math.nan, sd=math.nan, median=math.nan, q1=math.nan, q3=math.nan)
                if finite.size:
                    q1, median, q3 = np.percentile(finite, [25, 50, 75])
                    stats = dict(mean=float(finite.mean()), sd=float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                                 median=float(median), q1=float(q1), q3=float(q3))
                summary.append({"split": split, "class": name, "metric": metric, "n": int(finite.size),
                                "n_excluded": int(values.size - finite.size), **stats})
    return summary


def _number(value: float, digits: int = 4) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def summary_markdown(summary: Sequence[Mapping[str, Any]], title: str = "Evaluation") -> str:
    """Markdown: per metric, a compact table (classes × splits, ``mean ± SD``) as in the study's
    tables, then the detail (n, median, IQR, excluded) per split and class."""
    lines = [f"# {title}", ""]
    metrics = _ordered((s["metric"] for s in summary), SUMMARY_METRICS)
    splits = _ordered((s["split"] for s in summary), SPLIT_ORDER)
    classes = _ordered((s["class"] for s in summary), ())
    index = {(s["split"], s["class"], s["metric"]): s for s in summary}
    for metric in metrics:
        lines += [f"## {METRIC_TITLES.get(metric, metric)}", "", "| | " + " | ".join(splits) + " |",
                  "|---|" + "---|" * len(splits)]
        for name in classes:
            cells = []
            for split in splits:
                s = index.get((split, name, metric))
                cells.append("" if s is None else f"{_number(s['mean'])} ± {_number(s['sd'])}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "| split | class | n | mean | SD | median | IQR | excluded |", "|---|---|---|---|---|---|---|---|"]
        for split in splits:
            for name in classes:
                s = index.get((split, name, metric))
                if s is not None:
                    lines.append(f"| {split} | {name} | {s['n']} | {_number(s['mean'])} | {_number(s['sd'])} | "
                                 f"{_number(s['median'])} | {_number(s['q1'])}–{_number(s['q3'])} | {s['n_excluded']} |")
        lines.append("")
    lines.append("Excluded: values that are not finite — Dice, HD95 and ASD are undefined when a class is absent from "
                 "both prediction and truth (nnU-Net's convention); HD95/ASD are infinite when exactly one of them is "
                 "empty; sensitivity is undefined for an empty truth, precision for an empty prediction.")
    return "\n".join(lines) + "\n"


def dice_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The console table of ``vol-transfer evaluate``: per split and class, n and Dice mean ± SD, median, IQR.

    >>> print(dice_table(summarise([{"subject_id": "a", "split": "test", "class": "core", "dice": 0.8,
    ...                              "hd95": 1.0, "asd": 1.0, "volume_difference_ml": 0.0,
    ...                              "sensitivity": 1.0, "precision": 1.0}])))
    | split | class | n | Dice mean ± SD | median | IQR | excluded |
    |---|---|---|---|---|---|---|
    | test | core | 1 | 0.8000 ± – | 0.8000 | 0.8000–0.8000 | 0 |
    """
    lines = ["| split | class | n | Dice mean ± SD | median | IQR | excluded |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        if s["metric"] == "dice":
            lines.append(f"| {s['split']} | {s['class']} | {s['n']} | {_number(s['mean'])} ± {_number(s['sd'])} | "
                         f"{_number(s['median'])} | {_number(s['q1'])}–{_number(s['q3'])} | {s['n_excluded']} |")
    return "\n".join(lines)


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Per-subject metrics as CSV (``inf``/``nan`` written as such), atomically."""
    return atomic_write_text(path, _csv_text(rows, ROW_COLUMNS))


def write_summary_csv(summary: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    return atomic_write_text(path, _csv_text(summary, SUMMARY_COLUMNS))
