"""The demo's figures: test Dice per arm and the arms' learning curves (matplotlib, Agg backend).

Example (``curves`` as ``{arm: [(iteration, validation Dice), ...]}``)::

    plot_learning_curves({"model_1": [(10, 0.3), (20, 0.6)], "scratch": [(10, 0.0), (20, 0.1)]}, "curves.png")
    plot_dice_per_arm({"model_1": {"case_1": 0.7}, "scratch": {"case_1": 0.2}}, "dice.png")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vol_transfer.errors import PathLike
from vol_transfer.evaluation.plots import _pyplot, _save

COLOURS = {"model_1": "tab:blue", "scratch": "tab:orange"}


def _colour(arm: str, index: int) -> str:
    return COLOURS.get(arm, f"C{index}")


def plot_learning_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: PathLike, *, title: str = "",
                         level: float | None = 0.5) -> Path:
    """Validation Dice against iteration, one line per arm (a dotted line at ``level``)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for index, (arm, points) in enumerate(curves.items()):
        if points:
            xs, ys = zip(*points)
            axis.plot(xs, ys, marker="o", color=_colour(arm, index), label=arm)
    if level is not None:
        axis.axhline(level, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("training iteration")
    axis.set_ylabel("validation Dice (tumour core)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(loc="best")
    axis.set_title(title, fontsize=10)
    return _save(figure, path)


def plot_dice_per_arm(dice: Mapping[str, Mapping[str, float]], path: PathLike, *, title: str = "") -> Path:
    """One bar (mean) per arm with each test case's Dice as a labelled point."""
    plt = _pyplot()
    arms = list(dice)
    figure, axis = plt.subplots(figsize=(max(4.5, 2.2 * len(arms) + 1.5), 4.2))
    for position, arm in enumerate(arms):
        values = np.asarray([v for v in dice[arm].values() if not math.isnan(v)])
        mean = float(values.mean()) if values.size else math.nan
        axis.bar(position, 0 if math.isnan(mean) else mean, width=0.6, color=_colour(arm, position), alpha=0.35)
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(len(values))
        axis.scatter(position + jitter, values, color=_colour(arm, position), zorder=3, s=25)
        axis.text(position, 0.03, f"mean {mean:.2f}", ha="center", fontsize=10, fontweight="bold")
    axis.set_xticks(range(len(arms)), arms)
    axis.set_ylabel("test Dice per case")
    axis.set_ylim(0, 1)
    axis.grid(axis="y", alpha=0.3)
    axis.set_title(title, fontsize=10)
    return _save(figure, path)
