"""Typed intensity steps of a preprocessing spec (``preprocessing.intensity``), one dataclass per kind.

:data:`IntensityStep` is a tagged union on ``kind`` (see :mod:`vol_transfer.recipes`); each step
is called on one channel and returns it normalised (the functions of
:mod:`vol_transfer.preprocessing.intensity`). ``channels: [0, 2]`` limits a step to those channels.

Example:
    >>> import numpy as np
    >>> from vol_transfer.recipes import from_dict
    >>> steps = from_dict(list[IntensityStep], [{"kind": "hu_window", "window": "genesis"}, {"kind": "zscore"}])
    >>> steps[0]
    HUWindow(kind='hu_window', window='genesis', channels=None)
    >>> steps[0](np.array([-1000.0, 200.0, 1400.0])).tolist()
    [0.0, 0.5, 1.0]
    >>> from_dict(list[IntensityStep], [{"kind": "zscore", "mask": "nonzero"}, {"kind": "percentile"}], "intensity")
    Traceback (most recent call last):
    ...
    vol_transfer.errors.RecipeError: intensity[1].kind: 'percentile' is not allowed — did you mean 'percentile_clip'? choose one of 'zscore', 'percentile_clip', 'hu_window', 'scale_by_max', 'scale_uint8', 'histogram_standardization'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

import numpy as np

from vol_transfer.errors import RecipeError
from vol_transfer.preprocessing import intensity
from vol_transfer.preprocessing.histogram_standardization import HistogramStandardization
from vol_transfer.recipes import option

Channels = Optional[list[int]]


@dataclass(kw_only=True)
class ZScore:
    """Z-score over a foreground mask (:func:`~vol_transfer.preprocessing.intensity.foreground_mask`)."""

    kind: Literal["zscore"] = "zscore"
    mask: Literal["nonzero", "foreground", "threshold", "all"] = "nonzero"
    threshold: float = 0.0  # for mask: threshold
    channels: Channels = option(None, ge=0, min_len=1)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return intensity.zscore(array, intensity.foreground_mask(array, self.mask, self.threshold))


@dataclass(kw_only=True)
class PercentileClip:
    """Clip to the ``lower``/``upper`` percentiles."""

    kind: Literal["percentile_clip"] = "percentile_clip"
    lower: float = option(0.5, ge=0, le=100)
    upper: float = option(99.5, ge=0, le=100)
    channels: Channels = option(None, ge=0, min_len=1)

    def validate(self, where: str) -> None:
        if not self.lower < self.upper:
            raise RecipeError(f"{where}.upper", f"upper percentile {self.upper} is not above lower {self.lower}",
                              "use e.g. lower: 0.5, upper: 99.5")

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return intensity.percentile_clip(array, self.lower, self.upper)


@dataclass(kw_only=True)
class HUWindow:
    """CT window (a :data:`~vol_transfer.preprocessing.intensity.HU_WINDOWS` name or ``[low, high]``) → [0, 1]."""

    kind: Literal["hu_window"] = "hu_window"
    window: Union[str, tuple[float, float]]
    channels: Channels = option(None, ge=0, min_len=1)

    def validate(self, where: str) -> None:
        try:
            intensity.resolve_window(self.window)
        except RecipeError as error:
            raise RecipeError(f"{where}.window", error.problem, error.fix) from None

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return intensity.hu_window(array, self.window)


@dataclass(kw_only=True)
class ScaleByMax:
    """Divide by the maximum absolute value (per slice along ``slice_axis`` if given)."""

    kind: Literal["scale_by_max"] = "scale_by_max"
    slice_axis: Optional[int] = None
    channels: Channels = option(None, ge=0, min_len=1)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return intensity.scale_by_max(array, self.slice_axis)


@dataclass(kw_only=True)
class ScaleUint8:
    """8-bit values 0..255 → [0, 1]."""

    kind: Literal["scale_uint8"] = "scale_uint8"
    channels: Channels = option(None, ge=0, min_len=1)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return intensity.scale_uint8(array)


IntensityStep = Union[ZScore, PercentileClip, HUWindow, ScaleByMax, ScaleUint8, HistogramStandardization]

__all__ = ["IntensityStep", "ZScore", "PercentileClip", "HUWindow", "ScaleByMax", "ScaleUint8",
           "HistogramStandardization"]
