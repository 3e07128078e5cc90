"""Intensity normalisation: z-score, percentile clipping, CT windows and simple scalings.

Every function takes one array (a single channel, any number of dimensions) and returns a new
float32 array; the input is never modified. Pipelines apply them channel by channel.

Example:
    >>> import numpy as np
    >>> ct = np.array([-2000.0, -1000.0, 200.0, 1400.0, 3000.0])
    >>> hu_window(ct, "genesis").tolist()
    [0.0, 0.0, 0.5, 1.0, 1.0]
    >>> hu_window(ct, (-1000, 200)).tolist()
    [0.0, 0.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from vol_transfer.errors import RecipeError

Window = Union[str, Sequence[float]]

# Named CT windows as (lowest, highest) Hounsfield units; common radiology presets
# (centre/width: lung -600/1500, soft tissue 50/400, brain 40/80, bone 400/1800) and the wide
# [-1000, 1400] range used for self-supervised pre-training on CT (Models Genesis).
HU_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-1350.0, 150.0),
    "soft_tissue": (-150.0, 250.0),
    "brain": (0.0, 80.0),
    "bone": (-500.0, 1300.0),
    "genesis": (-1000.0, 1400.0),
}


def _float(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def zscore(array: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation of the voxels in ``mask``.

    With a mask, the statistics come from the masked voxels only and voxels outside the mask are
    set to 0 (the background stays background, as in MONAI's ``NormalizeIntensity(nonzero=True)``).
    A constant region is only centred (divided by 1), never divided by zero.
    """
    data = _float(array)
    if mask is None:
        values = data
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise ValueError(f"mask shape {mask.shape} differs from array shape {data.shape}")
        values = data[mask]
    if values.size == 0:
        return np.zeros_like(data)
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    result = (data - mean) / (std if std > 0 else 1.0)
    if mask is not None:
        result[~mask] = 0.0
    return result.astype(np.float32, copy=False)


MASK_KINDS = ("nonzero", "foreground", "threshold", "all")


def border_background(array: np.ndarray) -> float:
    """The most common value on the outer faces of a 3D array: the background level.

    0 for skull-stripped MRI, but e.g. -3.16 for BRATS volumes z-scored before release.
    """
    data = np.asarray(array)
    faces = np.concatenate([data[i].ravel() for i in (0, -1)] + [data[:, i].ravel() for i in (0, -1)]
                           + [data[:, :, i].ravel() for i in (0, -1)])
    values, counts = np.unique(faces, return_counts=True)
    return float(values[np.argmax(counts)])


def foreground_mask(array: np.ndarray, kind: str = "nonzero", threshold: float = 0.0) -> np.ndarray | None:
    """A boolean mask for :func:`zscore`.

    ``"nonzero"``: voxels != 0; ``"foreground"``: voxels != the border background value
    (:func:`border_background`, 3D arrays); ``"threshold"``: voxels > ``threshold``; ``"all"``: None.
    """
    if kind == "all":
        return None
    if kind == "nonzero":
        return np.asarray(array) != 0
    if kind == "foreground":
        return np.asarray(array) != border_background(array)
    if kind == "threshold":
        return np.asarray(array) > threshold
    raise RecipeError("mask", f"unknown foreground mask {kind!r}", f"use one of: {', '.join(MASK_KINDS)}")


def percentile_clip(array: np.ndarray, lower: float = 0.5, upper: float = 99.5, mask: np.ndarray | None = None) -> np.ndarray:
    """Clip to the ``lower``/``upper`` percentiles (of the masked voxels, if a mask is given)."""
    if not 0.0 <= lower < upper <= 100.0:
        raise RecipeError("percentile_clip", f"percentiles ({lower}, {upper}) are not 0 <= lower < upper <= 100",
                          "use e.g. lower: 0.5, upper: 99.5")
    data = _float(array)
    values = data if mask is None else data[np.asarray(mask, dtype=bool)]
    if values.size == 0:
        return data.copy()
    low, high = np.percentile(values, [lower, upper])
    return np.clip(data, low, high).astype(np.float32, copy=False)


def resolve_window(window: Window) -> tuple[float, float]:
    """A preset name or a ``(low, high)`` pair → ``(low, high)`` in HU."""
    if isinstance(window, str):
        if window not in HU_WINDOWS:
            raise RecipeError("window", f"unknown HU window {window!r}",
                              f"use one of {', '.join(HU_WINDOWS)} or a [low, high] pair")
        return HU_WINDOWS[window]
    low, high = (float(v) for v in window)
    if not high > low:
        raise RecipeError("window", f"HU window [{low}, {high}] is empty", "give [low, high] with high > low")
    return low, high


def hu_window(array: np.ndarray, window: Window) -> np.ndarray:
    """Clip Hounsfield units to ``window`` (preset name or ``(low, high)``) and map it to [0, 1]."""
    low, high = resolve_window(window)
    data = _float(array)
    return np.clip((data - low) / (high - low), 0.0, 1.0).astype(np.float32, copy=False)


def scale_by_max(array: np.ndarray, slice_axis: int | None = None) -> np.ndarray:
    """Divide by the maximum absolute value (per slice along ``slice_axis`` if given); zeros stay zero."""
    data = _float(array)
    if slice_axis is None:
        peak = float(np.abs(data).max()) if data.size else 0.0
        return data / peak if peak > 0 else data.copy()
    axes = tuple(a for a in range(data.ndim) if a != slice_axis % data.ndim)
    peaks = np.abs(data).max(axis=axes, keepdims=True)
    return (data / np.where(peaks > 0, peaks, 1.0)).astype(np.float32, copy=False)


def scale_uint8(array: np.ndarray) -> np.ndarray:
    """Map 8-bit pixel values 0..255 to [0, 1] (divide by 255)."""
    return _float(array) / np.float32(255.0)
