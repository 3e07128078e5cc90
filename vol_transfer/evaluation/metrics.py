"""Segmentation metrics per class, in millimetres: Dice, HD95, ASD, volumes, sensitivity, precision.

Surfaces and distances follow MONAI's definitions (``monai.metrics``): a surface voxel is a
foreground voxel with a background 6-neighbour (outside the image counts as background);
distances are Euclidean between voxel centres, scaled by the voxel spacing. HD95 is the larger
of the two directed 95th percentiles (MONAI's ``compute_hausdorff_distance(percentile=95)``);
ASD is the symmetric average surface distance (mean over both surfaces' distances, MONAI's
``compute_average_surface_distance(symmetric=True)``). We compute them with one exact
Euclidean distance transform on the bounding box of both masks, which is what MONAI does too,
without its one-hot batch tensors; ``tests/evaluation`` checks ours against MONAI.

Empty masks, explicitly:

================  =====  ==========  ==========  ===========  =========
case              Dice   HD95, ASD   volume Δ    sensitivity  precision
================  =====  ==========  ==========  ===========  =========
both empty        nan    nan         0           nan          nan
truth empty only  0      inf         pred volume nan          0
pred empty only   0      inf         −truth vol  0            nan
================  =====  ==========  ==========  ===========  =========

Dice follows nnU-Net (``nnunetv2.evaluation.evaluate_predictions``: NaN when ``tp + fp + fn`` is
0, and ``nanmean`` over cases): a class absent from both prediction and truth says nothing and is
left out of means; a false positive on an empty truth counts as 0. (MONAI's ``DiceMetric`` with
its default ``ignore_empty=True`` also returns NaN for that false positive — every empty truth is
NaN there; with ``ignore_empty=False`` both-empty is 1.) HD95/ASD of two empty masks are NaN as
in MONAI. ``inf`` says "no surface to measure to". Every Dice of the toolkit — the training
validator (:func:`dice_per_class`), ``vol-transfer evaluate`` and the study reports — is
:func:`dice`, averaged with :func:`mean_dice`; summaries (:mod:`vol_transfer.evaluation.report`)
count non-finite values and leave them out of means.

Example:
    >>> import numpy as np
    >>> truth = np.zeros((10, 10, 10), bool); truth[2:6, 2:6, 2:6] = True
    >>> pred = np.zeros_like(truth); pred[2:6, 2:6, 3:7] = True
    >>> round(binary_metrics(pred, truth, (1, 1, 1))["dice"], 3)
    0.75
    >>> dice(np.zeros(3, bool), np.zeros(3, bool)), mean_dice([0.5, float("nan"), 0.7])
    (nan, 0.6)
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

METRICS = ("dice", "hd95", "asd", "volume_pred_ml", "volume_truth_ml", "volume_difference_ml",
           "sensitivity", "precision")
SUMMARY_METRICS = ("dice", "hd95", "asd", "volume_difference_ml", "sensitivity", "precision")
_SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one background 6-neighbour (image border = background)."""
    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, structure=_SIX_NEIGHBOURS)
    return (padded & ~eroded)[1:-1, 1:-1, 1:-1]


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    coordinates = np.nonzero(mask)
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coordinates)


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each pred surface voxel to the truth surface, and back. Both non-empty."""
    box = _bounding_box(pred | truth)
    pred_surface = surface(pred[box])
    truth_surface = surface(truth[box])
    sampling = tuple(float(s) for s in spacing)
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return to_truth[pred_surface], to_pred[truth_surface]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks: ``2|P∩T| / (|P| + |T|)``, NaN when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    return math.nan if total == 0 else 2.0 * int(np.count_nonzero(pred & truth)) / total


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float]:
    """:func:`dice` of each foreground class ``1 … num_classes - 1`` of two label maps (NaN when absent from both)."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    return [dice(prediction == k, truth == k) for k in range(1, num_classes)]


def mean_dice(values: Sequence[float]) -> float:
    """Mean of the Dice values that are not NaN (nnU-Net's ``nanmean``); NaN when none is.

    The one mean rule: over classes for a case's score, over cases for a split's score — so a case
    whose classes are all NaN (nothing in prediction or truth) is left out of a split's mean.
    """
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return math.fsum(finite) / len(finite) if finite else math.nan


def binary_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one pair of boolean masks on the same grid."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    true_positive = int(np.count_nonzero(pred & truth))
    n_pred = int(np.count_nonzero(pred))
    n_truth = int(np.count_nonzero(truth))
    result = {
        "volume_pred_ml": n_pred * voxel_ml,
        "volume_truth_ml": n_truth * voxel_ml,
        "volume_difference_ml": (n_pred - n_truth) * voxel_ml,
        "sensitivity": true_positive / n_truth if n_truth else math.nan,
        "precision": true_positive / n_pred if n_pred else math.nan,
    }
    result["dice"] = dice(pred, truth)
    if n_pred == 0 and n_truth == 0:
        result.update(hd95=math.nan, asd=math.nan)
    elif n_pred == 0 or n_truth == 0:
        result.update(hd95=math.inf, asd=math.inf)
    else:
        to_truth, to_pred = surface_distances(pred, truth, spacing)
        result.update(
            hd95=float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95))),
            asd=float(np.concatenate([to_truth, to_pred]).mean()),
        )
    return {name: float(result[name]) for name in METRICS}


def class_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    classes: Mapping[str, Sequence[int]],
    spacing: Sequence[float],
) -> dict[str, dict[str, float]]:
    """Metrics per named class; a class is a set of label values (e.g. ``{"core": [1, 3, 4]}``).

    Example:
        >>> import numpy as np
        >>> labels = np.zeros((4, 4, 4), np.uint8); labels[1:3, 1:3, 1:3] = 4
        >>> class_metrics(labels, labels, {"core": [1, 3, 4]}, (1, 1, 1))["core"]["dice"]
        1.0
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    return {
        name: binary_metrics(np.isin(pred, list(values)), np.isin(truth, list(values)), spacing)
        for name, values in classes.items()
    }
