"""PNG figures for evaluation: Dice box plots and overlay slices (matplotlib, Agg backend).

Example (``rows`` from :func:`vol_transfer.evaluation.report.evaluate_pairs`)::

    dice_boxplot(rows, "report/dice.png")
    overlay_slice(image, truth, prediction, "report/pat0001.png", title="pat0001")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vol_transfer.errors import PathLike
from vol_transfer.io.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    _pyplot().close(figure)
    return path


def dice_boxplot(rows: Sequence[Mapping[str, Any]], path: PathLike, metric: str = "dice") -> Path:
    """One box per (class, split) of the per-subject ``metric`` values, points overlaid."""
    plt = _pyplot()
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        value = float(row[metric])
        if np.isfinite(value):
            groups.setdefault((str(row["class"]), str(row["split"])), []).append(value)
    keys = list(groups)
    figure, axis = plt.subplots(figsize=(max(4.0, 1.2 * len(keys) + 1), 4))
    if keys:
        axis.boxplot([groups[k] for k in keys], showfliers=False)
        for position, key in enumerate(keys, start=1):
            values = groups[key]
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            axis.scatter(np.asarray(jitter) + position, values, s=12, alpha=0.7, color="tab:blue")
        axis.set_xticks(range(1, len(keys) + 1), [f"{c}\n{s}" for c, s in keys])
    axis.set_ylabel(metric)
    if metric == "dice":
        axis.set_ylim(0, 1)
    axis.set_title(f"{metric} per subject")
    axis.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def best_slice(truth: np.ndarray, prediction: np.ndarray, axis: int = 2) -> int:
    """The slice along ``axis`` with the most truth (else prediction) voxels; else the middle."""
    for mask in (truth, prediction):
        counts = np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != axis))
        if counts.max() > 0:
            return int(counts.argmax())
    return truth.shape[axis] // 2


def overlay_slice(
    image: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    path: PathLike,
    *,
    axis: int = 2,
    index: int | None = None,
    title: str = "",
) -> Path:
    """Image slice in grey with the truth outline (green) and prediction outline (red).

    ``image``, ``truth`` and ``prediction`` are ``(X, Y, Z)`` on one grid (masks: nonzero =
    foreground). The slice is shown with X to the right and Y up (voxel order, not world).
    """
    plt = _pyplot()
    index = best_slice(truth != 0, prediction != 0, axis) if index is None else index
    take = lambda a: np.take(a, index, axis=axis).T  # noqa: E731  (rows = second voxel axis)
    figure, ax = plt.subplots(figsize=(5, 5))
    picture = take(np.asarray(image, dtype=np.float32))
    low, high = np.percentile(picture, [1, 99]) if picture.size else (0, 1)
    ax.imshow(picture, cmap="gray", vmin=low, vmax=high if high > low else low + 1, origin="lower")
    for mask, colour in ((truth, "lime"), (prediction, "red")):
        section = take(np.asarray(mask) != 0).astype(float)
        if section.any() and not section.all():
            ax.contour(section, levels=[0.5], colors=colour, linewidths=1.0, origin="lower")
    ax.set_title(f"{title} slice {index} (axis {axis})  truth: green, prediction: red".strip())
    ax.axis("off")
    return _save(figure, path)


def spread_slices(truth: np.ndarray, prediction: np.ndarray, count: int = 3, axis: int = 2) -> list[int]:
    """``count`` slices along ``axis`` spread over the truth's extent (else the prediction's, else the volume).

    >>> mask = np.zeros((4, 4, 20), bool); mask[1:3, 1:3, 4:13] = True
    >>> spread_slices(mask, mask, 3)
    [6, 8, 10]
    """
    for mask in (truth, prediction):
        counts = np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != axis))
        present = np.flatnonzero(counts)
        if present.size:
            low, high = int(present[0]), int(present[-1])
            break
    else:
        low, high = 0, truth.shape[axis] - 1
    positions = np.linspace(low, high, count + 2)[1:-1]
    return sorted({int(round(p)) for p in positions})


def overlay_slices(
    image: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    path: PathLike,
    *,
    count: int = 3,
    axis: int = 2,
    title: str = "",
) -> Path:
    """``count`` slices side by side through the structure: grey image, truth outline (green),
    prediction filled (red, translucent) and outlined, each panel labelled with its slice index.

    ``image``, ``truth`` and ``prediction`` are ``(X, Y, Z)`` on one grid (masks: nonzero =
    foreground); panels show X to the right and Y up (voxel order).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plt = _pyplot()
    indices = spread_slices(truth != 0, prediction != 0, count, axis)
    figure, axes = plt.subplots(1, len(indices), figsize=(3.4 * len(indices), 3.9), squeeze=False)
    volume = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(volume, [1, 99]) if volume.size else (0, 1)
    for ax, index in zip(axes[0], indices):
        take = lambda a: np.take(a, index, axis=axis).T  # noqa: E731  (rows = second voxel axis)
        ax.imshow(take(volume), cmap="gray", vmin=low, vmax=high if high > low else low + 1, origin="lower")
        predicted = take(np.asarray(prediction) != 0)
        ax.imshow(np.ma.masked_where(~predicted, predicted), cmap="autumn", alpha=0.35, origin="lower",
                  interpolation="nearest")
        for mask, colour in ((take(np.asarray(truth) != 0), "lime"), (predicted, "red")):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2, origin="lower")
        ax.set_title(f"slice {index} (axis {axis})", fontsize=9)
        ax.axis("off")
    handles = [Line2D([], [], color="lime", label="truth (outline)"),
               Patch(facecolor="red", edgecolor="red", alpha=0.5, label="prediction")]
    figure.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return _save(figure, path)
