"""The pneumonia CPU comparison's report: every run of run.sh scored on the patient-level validation split.

Per run: accuracy and ROC AUC with 95 % bootstrap CIs (1,048 images), per-class recall, patient-wise
accuracy, training time and throughput. Per arm: the mean over seeds. Each arm against scratch of
the same seed, on the same images: the accuracy difference (bootstrap CI of the paired per-image
differences, Wilcoxon/sign test) and the AUC difference (paired bootstrap).

    python benchmarks/results/pneumonia_cpu/report.py [RUNS_FOLDER] > benchmarks/results/pneumonia_cpu/report.md
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

from vol_transfer.evaluation.classification import auc_score, evaluate_predictions, read_predictions
from vol_transfer.evaluation.statistics import bootstrap_ci, paired_comparison

ARMS = ["scratch", "autoencoder", "genesis", "scratch_weighted_loss"]


def _runs(folder: Path) -> dict[tuple[str, int], Path]:
    runs = {}
    for run in sorted(folder.iterdir()):
        match = re.fullmatch(r"(.+)_s(\d+)", run.name)
        if match and (run / "summary.json").is_file() and (run / "predictions.csv").is_file():
            runs[(match.group(1), int(match.group(2)))] = run
    return runs


def _throughput(run: Path) -> float:
    with open(run / "metrics.csv", newline="") as handle:
        rates = [float(r["perf_samples_per_s"]) for r in csv.DictReader(handle) if r.get("perf_samples_per_s")]
    return float(np.median(rates)) if rates else float("nan")


def _minutes(run: Path) -> tuple[float, float]:
    """(fine-tuning minutes, pre-training minutes) from the runs' summaries."""
    summary = json.loads((run / "summary.json").read_text())
    pretrain = run / "pretrain" / "summary.json"
    return summary["wall_s"] / 60, (json.loads(pretrain.read_text())["wall_s"] / 60 if pretrain.is_file() else 0.0)


def _ci(values: list[float]) -> str:
    low, value, high = values
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def main(folder: Path) -> str:
    runs = _runs(folder)
    if not runs:
        raise SystemExit(f"{folder}: no finished runs (summary.json + predictions.csv)")
    predictions = {key: read_predictions(run / "predictions.csv") for key, run in runs.items()}
    reports = {key: evaluate_predictions(p, resamples=2000) for key, p in predictions.items()}
    first = next(iter(predictions.values()))
    lines = ["# Pneumonia at the study's data scale on 2 CPU cores: scratch vs pre-training, sampler vs loss weights", "",
             f"Validation = the manifest's patient-level validation split ({len(first.paths)} images, "
             f"{sum(label == 'NORMAL' for label in first.labels)} NORMAL). Every run trains on the other "
             "4,168 training-split images at 96 px for 5 epochs and keeps its best epoch by validation AUC, "
             "so these validation figures carry a small selection optimism; the official test split is not "
             "here (it scores the recipes independently).", "",
             "Made by `bash benchmarks/results/pneumonia_cpu/run.sh 0 1` then "
             "`python benchmarks/results/pneumonia_cpu/report.py runs/pneumonia_cpu`.", "",
             "## Every run", "",
             "| arm | seed | best epoch | accuracy [95 % CI] | ROC AUC [95 % CI] | NORMAL recall | PNEUMONIA recall "
             "| patient-wise accuracy | fine-tune min | pre-train min | train img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (arm, seed), run in sorted(runs.items(), key=lambda item: (ARMS.index(item[0][0]) if item[0][0] in ARMS else 99,
                                                                    item[0][1])):
        report, summary = reports[(arm, seed)], json.loads((run / "summary.json").read_text())
        recall = {c: m["recall"] for c, m in report["per_class"].items()}
        patients = report["patient_wise"]
        fine, pre = _minutes(run)
        lines.append(f"| {arm} | {seed} | {summary['best_epoch']} | {_ci(report['accuracy_ci'])} | "
                     f"{_ci(report['auc_ci'])} | {recall['NORMAL']:.3f} | {recall['PNEUMONIA']:.3f} | "
                     f"{patients['accuracy'] if patients else float('nan'):.3f} | {fine:.1f} | {pre:.1f} | "
                     f"{_throughput(run):.0f} |")
    lines += ["", "## Per arm (mean over seeds; range in brackets)", "",
              "| arm | seeds | accuracy | ROC AUC | NORMAL recall |", "|---|---|---|---|---|"]
    for arm in ARMS:
        keys = [key for key in reports if key[0] == arm]
        if not keys:
            continue
        row = [f"| {arm} | {len(keys)}"]
        for metric in ("accuracy", "auc", "NORMAL"):
            values = [reports[k]["per_class"]["NORMAL"]["recall"] if metric == "NORMAL" else reports[k][metric]
                      for k in keys]
            row.append(f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]")
        lines.append(" | ".join(row) + " |")
    lines += ["", "## Against scratch of the same seed, on the same images (paired)", "",
              "| arm | seed | Δ accuracy [95 % CI], Wilcoxon p, images better | Δ ROC AUC [95 % CI] |", "|---|---|---|---|"]
    for (arm, seed) in sorted(reports):
        base = predictions.get(("scratch", seed))
        if arm == "scratch" or base is None:
            continue
        mine = predictions[(arm, seed)]
        assert mine.paths == base.paths, "runs scored on different images"
        labels = np.array([mine.classes.index(label) for label in mine.labels])
        right = (mine.probabilities.argmax(1) == labels).astype(float)
        right_base = (base.probabilities.argmax(1) == labels).astype(float)
        comparison = paired_comparison(right, right_base)
        low, delta, high = bootstrap_ci(lambda i: auc_score(labels[i], mine.probabilities[i])
                                        - auc_score(labels[i], base.probabilities[i]), len(labels), resamples=2000)
        lines.append(f"| {arm} | {seed} | {comparison.text()} | {delta:+.4f} [{low:+.4f}, {high:+.4f}] |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/pneumonia_cpu")), end="")
