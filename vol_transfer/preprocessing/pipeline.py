"""A preprocessing pipeline described by a JSON-serialisable spec, stored in checkpoints.

Spec keys (all optional)::

    {
      "orientation": "RAS",                 # axis codes, or null to keep the file's order
      "crop_foreground": 4,                 # margin in voxels, or null for no crop
      "intensity": [                        # applied per channel, in order
        {"kind": "percentile_clip", "lower": 0.5, "upper": 99.5},
        {"kind": "zscore", "mask": "nonzero"}   # mask: nonzero | foreground | threshold | all
      ],                                    # other kinds: hu_window (window), scale_by_max
                                            #   (slice_axis), scale_uint8
      "spacing": [1.0, 1.0, 1.0],           # mm, or null to keep the spacing
      "min_size": [96, 96, 96]              # pad (with 0) up to this size, or null
    }

Steps run in that order: orient, crop, intensity, resample, pad. Each intensity step may name
``"channels": [0, 2]`` to touch only those channels.

Example:
    >>> prep = Preprocessor.from_spec({"orientation": "RAS", "intensity": [{"kind": "zscore", "mask": "nonzero"}]})
    >>> prepared, inverse = prep.apply(volume)                         # doctest: +SKIP
    >>> prediction = inverse.restore(segmentation, order="nearest")    # doctest: +SKIP
    >>> save_volume(prediction, "seg.nii.gz", reference=volume)        # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from vol_transfer.errors import RecipeError
from vol_transfer.io.volumes import Volume
from vol_transfer.preprocessing import intensity
from vol_transfer.preprocessing.spatial import (
    SpatialInverse,
    plan_foreground_crop,
    plan_pad,
    plan_reorientation,
    plan_resampling,
)

SPEC_KEYS = ("orientation", "crop_foreground", "intensity", "spacing", "min_size")

# kind → (function(channel, mask-or-None, **options), allowed option names)
_INTENSITY_KINDS: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...]]] = {
    "zscore": (lambda a, **o: intensity.zscore(a, intensity.foreground_mask(a, o.get("mask", "nonzero"), o.get("threshold", 0.0))),
               ("mask", "threshold")),
    "percentile_clip": (lambda a, **o: intensity.percentile_clip(a, o.get("lower", 0.5), o.get("upper", 99.5)),
                        ("lower", "upper")),
    "hu_window": (lambda a, **o: intensity.hu_window(a, o["window"]), ("window",)),
    "scale_by_max": (lambda a, **o: intensity.scale_by_max(a, o.get("slice_axis")), ("slice_axis",)),
    "scale_uint8": (lambda a, **o: intensity.scale_uint8(a), ()),
}


def _validate_intensity(steps: Any) -> list[dict[str, Any]]:
    if steps is None:
        return []
    if not isinstance(steps, list):
        raise RecipeError("preprocessing.intensity", f"{steps!r} is not a list", 'write e.g. [{"kind": "zscore"}]')
    for index, step in enumerate(steps):
        where = f"preprocessing.intensity[{index}]"
        if not isinstance(step, dict) or "kind" not in step:
            raise RecipeError(where, f"{step!r} has no 'kind'", f"use one of {', '.join(_INTENSITY_KINDS)}")
        if step["kind"] not in _INTENSITY_KINDS:
            raise RecipeError(where, f"unknown kind {step['kind']!r}", f"use one of {', '.join(_INTENSITY_KINDS)}")
        allowed = set(_INTENSITY_KINDS[step["kind"]][1]) | {"kind", "channels"}
        unknown = sorted(set(step) - allowed)
        if unknown:
            raise RecipeError(where, f"unknown option(s) {unknown} for {step['kind']}",
                              f"allowed: {', '.join(sorted(allowed))}")
        if step["kind"] == "hu_window":
            if "window" not in step:
                raise RecipeError(where, "hu_window needs a 'window'", f"use one of {', '.join(intensity.HU_WINDOWS)} or [low, high]")
            intensity.resolve_window(step["window"])
        if step["kind"] == "zscore":
            if step.get("mask", "nonzero") not in intensity.MASK_KINDS:
                raise RecipeError(where, f"unknown foreground mask {step['mask']!r}",
                                  f"use one of: {', '.join(intensity.MASK_KINDS)}")
    return copy.deepcopy(steps)


def _triple(value: Any, key: str, kind: type) -> list | None:
    if value is None:
        return None
    values = [value] * 3 if isinstance(value, (int, float)) else value
    try:
        values = [kind(v) for v in values]
    except (TypeError, ValueError):
        raise RecipeError(f"preprocessing.{key}", f"{value!r} is not a number or three numbers", "write e.g. [1, 1, 1]") from None
    if len(values) != 3:
        raise RecipeError(f"preprocessing.{key}", f"{value!r} has {len(values)} values", "give one value per axis (x, y, z)")
    return values


@dataclass
class Preprocessor:
    """Spatial + intensity preparation of a volume, with the spatial part undoable."""

    orientation: str | None = None
    crop_foreground: int | None = None
    intensity: list[dict[str, Any]] = field(default_factory=list)
    spacing: list[float] | None = None
    min_size: list[int] | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> "Preprocessor":
        """Build from a spec dict (see module docstring); unknown keys are refused."""
        spec = dict(spec or {})
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise RecipeError("preprocessing", f"unknown key(s) {unknown}", f"use only {', '.join(SPEC_KEYS)}")
        margin = spec.get("crop_foreground")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int) or margin < 0):
            raise RecipeError("preprocessing.crop_foreground", f"{margin!r} is not a margin in voxels",
                              "use an integer >= 0, or null for no crop")
        orientation = spec.get("orientation")
        if orientation is not None:
            plan_reorientation((1, 1, 1), np.eye(4), orientation)  # validates the codes
            orientation = orientation.upper()
        spacing = _triple(spec.get("spacing"), "spacing", float)
        if spacing is not None and min(spacing) <= 0:
            raise RecipeError("preprocessing.spacing", f"{spacing} has a value <= 0", "use positive millimetres")
        return cls(
            orientation=orientation,
            crop_foreground=margin,
            intensity=_validate_intensity(spec.get("intensity")),
            spacing=spacing,
            min_size=_triple(spec.get("min_size"), "min_size", int),
        )

    def to_spec(self) -> dict[str, Any]:
        """The JSON-serialisable spec that :meth:`from_spec` turns back into this pipeline."""
        spec = {
            "orientation": self.orientation,
            "crop_foreground": self.crop_foreground,
            "intensity": copy.deepcopy(self.intensity),
            "spacing": self.spacing,
            "min_size": self.min_size,
        }
        json.dumps(spec)  # fail here, not when a checkpoint is written
        return spec

    def normalise(self, array: np.ndarray) -> np.ndarray:
        """Apply the intensity steps channel by channel to a ``(C, X, Y, Z)`` array (float32)."""
        result = np.asarray(array, dtype=np.float32).copy()
        for step in self.intensity:
            function = _INTENSITY_KINDS[step["kind"]][0]
            options = {k: v for k, v in step.items() if k not in ("kind", "channels")}
            channels = step.get("channels", range(result.shape[0]))
            for c in channels:
                result[c] = function(result[c], **options)
        return result

    def apply(self, volume: Volume) -> tuple[Volume, SpatialInverse]:
        """Prepare ``volume``; return it and the :class:`SpatialInverse` back to its original grid."""
        inverse = SpatialInverse(volume.spatial_shape, volume.affine.copy())
        array = np.asarray(volume.array)
        shape, affine = volume.spatial_shape, volume.affine.copy()

        def add(step) -> None:
            nonlocal array, shape, affine
            inverse.steps.append(step)
            array = step.forward(array, "linear")
            shape, affine = step.out_shape, step.out_affine

        if self.orientation is not None:
            add(plan_reorientation(shape, affine, self.orientation))
        if self.crop_foreground is not None:
            add(plan_foreground_crop(array, affine, self.crop_foreground))
        array = self.normalise(array)
        if self.spacing is not None and not np.allclose(_spacing(affine), self.spacing, atol=1e-6):
            add(plan_resampling(shape, affine, self.spacing))
        if self.min_size is not None:
            add(plan_pad(shape, affine, self.min_size))
        prepared = replace(volume, array=array, affine=affine.copy(), header=None)
        return prepared, inverse

    def apply_with_label(self, volume: Volume, label: Volume | None) -> tuple[Volume, Volume | None, SpatialInverse]:
        """Prepare an image and carry its label (nearest neighbour) through the same spatial steps."""
        prepared, inverse = self.apply(volume)
        if label is None:
            return prepared, None, inverse
        label_array = inverse.forward(np.asarray(label.array), order="nearest")
        return prepared, replace(label, array=label_array, affine=inverse.prepared_affine.copy(), header=None), inverse


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
