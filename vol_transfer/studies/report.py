"""A study's report: tables in the study's layout, plots, ``report.md``, ``report.html`` and ``results.csv``.

``report.html`` is the same report as one self-contained page (tables as HTML, the plots embedded
as PNG data, no script and no network access): open it in any browser, attach it to an e-mail.

Per-subject Dice that is NaN (no class in prediction or truth) is left out of every mean, SD,
count and box, as in ``vol-transfer evaluate`` (:func:`vol_transfer.evaluation.metrics.mean_dice`).

Example::

    write_report(results, "runs/ablation", title="Freezing ablation", kind="freeze_ablation")
    # PosixPath('runs/ablation/report.md')
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from vol_transfer.evaluation.statistics import mean_ci
from vol_transfer.io.atomic import atomic_path, atomic_write_text
from vol_transfer.studies.results import ArmResult, smooth

SPLITS = ("train", "validation", "test")


def _fmt(value: float, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _mean_sd(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def _arm_order(results: Sequence[ArmResult]) -> list[str]:
    seen: list[str] = []
    for result in results:
        if result.name not in seen:
            seen.append(result.name)
    return seen


def ablation_table(results: Sequence[ArmResult], splits: Sequence[str] = SPLITS) -> str:
    """Mean Dice per arm and split (± SD over seeds when there are several), markdown."""
    by_arm: dict[str, list[ArmResult]] = defaultdict(list)
    for result in results:
        by_arm[result.name].append(result)
    lines = ["| arm | " + " | ".join(splits) + " | best iteration |", "|---" * (len(splits) + 2) + "|"]
    for arm in _arm_order(results):
        runs = by_arm[arm]
        cells = [_mean_sd([r.mean_dice(s) for r in runs]) for s in splits]
        iterations = ", ".join(str(r.best_iteration) for r in runs)
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {iterations} |")
    return "\n".join(lines)


def size_table(results: Sequence[ArmResult], split: str = "test") -> str:
    """Per subset (rows) and arm (columns): Dice on ``split`` and the chosen iteration, markdown."""
    arms = _arm_order(results)
    subsets: dict[str, int] = {}
    cell: dict[tuple[str, str], list[ArmResult]] = defaultdict(list)
    for result in results:
        subsets.setdefault(result.subset, result.subset_size)
        cell[(result.subset, result.name)].append(result)
    lines = ["| subset (cases) | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for subset, size in subsets.items():
        row = []
        for arm in arms:
            runs = cell.get((subset, arm), [])
            if not runs:
                row.append("–")
                continue
            iterations = "/".join(str(r.best_iteration) for r in runs)
            row.append(f"{_mean_sd([r.mean_dice(split) for r in runs])} ({iterations})")
        lines.append(f"| {subset} ({size}) | " + " | ".join(row) + " |")
    return "\n".join(lines)


def timing_table(results: Sequence[ArmResult], threshold: float) -> str:
    """Step time, wall time and time-to-threshold per run, markdown."""
    lines = [
        f"| arm | subset | seed | step time (s) | wall time (min) | iterations to val Dice ≥ {threshold} | minutes to it |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        reached = result.time_to_threshold(threshold)
        iterations, minutes = (str(reached[0]), f"{reached[1] / 60:.1f}") if reached else ("not reached", "–")
        lines.append(
            f"| {result.name} | {result.subset or '–'} | {result.seed} | {_fmt(result.step_time, 3)} | "
            f"{_fmt(result.wall_time / 60, 1)} | {iterations} | {minutes} |"
        )
    return "\n".join(lines)


def results_csv(results: Sequence[ArmResult], threshold: float) -> str:
    """Every number of the study, one row per run and split."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([
        "arm", "subset", "subset_size", "seed", "split", "mean_dice", "sd_dice", "n_subjects", "best_iteration",
        "step_time_s", "wall_time_s", "iterations_to_threshold", "seconds_to_threshold", "threshold",
    ])
    for result in results:
        reached = result.time_to_threshold(threshold) or ("", "")
        for split in result.dice:
            values = result.scored(split)
            writer.writerow([
                result.name, result.subset, result.subset_size, result.seed, split,
                _fmt(result.mean_dice(split), 6), _fmt(float(np.std(values)) if values else math.nan, 6), len(values),
                result.best_iteration, _fmt(result.step_time, 4), _fmt(result.wall_time, 1), reached[0],
                "" if reached[1] == "" else f"{reached[1]:.1f}", threshold,
            ])
    return buffer.getvalue()


def per_case_csv(results: Sequence[ArmResult]) -> str:
    """One row per arm, split and case: the scores behind every mean, for re-analysis (empty Dice: NaN).

    >>> print(per_case_csv([ArmResult("scratch", dice={"test": [0.5]}, cases={"test": ["a"]})]).strip())
    arm,subset,seed,split,case,dice
    scratch,,0,test,a,0.500000
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arm", "subset", "seed", "split", "case", "dice"])
    for result in results:
        for split, scores in result.dice.items():
            cases = result.cases.get(split) or [""] * len(scores)
            for case, dice in zip(cases, scores):
                writer.writerow([result.name, result.subset, result.seed, split, case,
                                 "" if math.isnan(dice) else f"{dice:.6f}"])
    return buffer.getvalue()


def _save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_loss_curves(results: Sequence[ArmResult], path: Path, weight: float = 0.9) -> Path:
    """Smoothed train (solid) and validation (dashed) loss per run on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, result in enumerate(results):
        colour = colours[index % len(colours)]
        label = result.name + (f" {result.subset}" if result.subset else "") + (f" s{result.seed}" if result.seed else "")
        iterations = [p.iteration for p in result.curve]
        train = smooth([p.train_loss for p in result.curve], weight)
        axis.plot(iterations, train, color=colour, label=f"{label} train")
        val_points = [(p.iteration, p.val_loss) for p in result.curve if not math.isnan(p.val_loss)]
        if val_points:
            xs, ys = zip(*val_points)
            axis.plot(xs, smooth(list(ys), 0.5), color=colour, linestyle="--", label=f"{label} validation")
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss (smoothed)")
    axis.legend(fontsize=7, ncol=2)
    axis.grid(alpha=0.3)
    _save_figure(figure, path)
    return path


def plot_dice_boxes(results: Sequence[ArmResult], split: str, path: Path) -> Path:
    """Per-subject Dice on ``split`` as one box per arm (seeds pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = _arm_order(results)
    data = [[d for r in results if r.name == arm for d in r.scored(split)] for arm in arms]
    figure, axis = plt.subplots(figsize=(1.2 * len(arms) + 2, 4))
    axis.boxplot(data, showmeans=True)
    axis.set_xticks(range(1, len(arms) + 1), arms)
    axis.set_ylabel(f"Dice ({split})")
    axis.set_ylim(0, 1)
    axis.grid(axis="y", alpha=0.3)
    _save_figure(figure, path)
    return path


def plot_dice_vs_size(results: Sequence[ArmResult], split: str, path: Path) -> Path:
    """Mean Dice on ``split`` against training-set size, one line per arm, with 95 % bootstrap intervals over
    the cases (every seed's scores pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for offset, arm in enumerate(_arm_order(results)):
        points: dict[int, list[float]] = defaultdict(list)
        for result in results:
            if result.name == arm:
                points[result.subset_size].extend(result.scored(split))
        sizes = sorted(points)
        low, mean, high = (np.array(v) for v in zip(*(mean_ci(points[s]) for s in sizes)))
        errors = np.nan_to_num(np.stack([mean - low, high - mean]))  # no interval from one case
        shifted = np.array(sizes, dtype=float) * (1 + 0.015 * offset)  # arms side by side, not on top
        axis.errorbar(shifted, mean, yerr=errors, marker="o", capsize=3, label=arm)
    axis.set_xlabel("training cases")
    axis.set_ylabel(f"mean Dice ({split}), 95 % CI")
    axis.legend()
    axis.grid(alpha=0.3)
    _save_figure(figure, path)
    return path


def write_report(
    results: Sequence[ArmResult],
    folder: str | Path,
    *,
    title: str,
    kind: str,
    threshold: float = 0.4,
    notes: str = "",
    reference_table: str = "",
) -> Path:
    """Write ``report.md``, ``report.html``, ``results.csv`` and the PNGs into ``folder``; return the report path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = [s for s in SPLITS if any(s in r.dice for r in results)]
    sections = [f"# {title}", ""]
    if notes:
        sections += [notes, ""]
    if kind == "dataset_size":
        for split in splits:
            sections += [f"## Dice on {split} (iteration of the chosen checkpoint)", "", size_table(results, split), ""]
        plot_dice_vs_size(results, splits[-1] if splits else "test", folder / "dice_vs_size.png")
        sections += ["![Dice vs training-set size](dice_vs_size.png)", ""]
    else:
        sections += ["## Mean Dice per arm", "", ablation_table(results, splits), ""]
    if reference_table:
        sections += ["## The study's numbers (REFERENCE.md)", "", reference_table, ""]
    sections += ["## Time", "", timing_table(results, threshold), ""]
    plot_loss_curves(results, folder / "loss_curves.png")
    sections += ["![Smoothed loss curves](loss_curves.png)", ""]
    for split in splits:
        plot_dice_boxes(results, split, folder / f"dice_box_{split}.png")
        sections += [f"![Dice per arm, {split}](dice_box_{split}.png)", ""]
    atomic_write_text(folder / "results.csv", results_csv(results, threshold))
    atomic_write_text(folder / "per_case.csv", per_case_csv(results))
    markdown_text = "\n".join(sections)
    report = atomic_write_text(folder / "report.md", markdown_text)
    atomic_write_text(folder / "report.html", report_html(markdown_text, folder, title))
    return report


HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
code { background: #f3f3f3; padding: 0 .25em; }
"""


def report_html(markdown_text: str, folder: Path, title: str) -> str:
    """``report.md`` as one self-contained HTML page: the PNGs it links are embedded as data URIs.

    >>> page = report_html("# T\\n\\n| a | b |\\n|---|---|\\n| 1 | 2 |\\n", Path("."), "T")
    >>> "<table>" in page and "<td>1</td>" in page and "http" not in page
    True
    """
    import base64
    import html
    import re

    import markdown

    def embed(match: re.Match) -> str:
        alt, name = match.group(1), match.group(2)
        path = folder / name
        if not path.is_file():
            return f"*(missing figure {name})*"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{alt}](data:image/png;base64,{data})"

    text = re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", embed, markdown_text)
    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n{body}\n"
            "</body>\n</html>\n")
