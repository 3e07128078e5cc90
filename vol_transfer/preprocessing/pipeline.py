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
``"channels": [0, 2]`` to touch only those channels. The steps are typed per ``kind``
(:mod:`vol_transfer.preprocessing.intensity_steps`) and the whole spec is read by
:meth:`Preprocessor.from_spec` through the recipe types, the same code for a recipe's
``preprocessing`` section and for the spec a checkpoint stores.

Example (a volume stored right-to-left, prepared in RAS, and a label map of the prepared volume
restored to the original grid, ready for ``save_volume(restored, "seg.nii.gz", reference=volume)``):
    >>> volume = Volume(np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4), np.diag([-1.0, 1.0, 1.0, 1.0]))
    >>> prep = Preprocessor.from_spec({"orientation": "RAS", "intensity": [{"kind": "zscore", "mask": "nonzero"}]})
    >>> prepared, inverse = prep.apply(volume)
    >>> volume.axcodes, prepared.axcodes
    (('L', 'A', 'S'), ('R', 'A', 'S'))
    >>> segmentation = (prepared.array > 0).astype(np.uint8)   # above the mean of the non-zero voxels, 12
    >>> restored = inverse.restore(segmentation, order="nearest")
    >>> bool((restored == (volume.array > 12)).all())
    True
    >>> Preprocessor.from_spec({"intensity": [{"kind": "zscore", "mask": "brain"}]})
    Traceback (most recent call last):
    ...
    vol_transfer.errors.RecipeError: preprocessing.intensity[0].mask: 'brain' is not allowed — choose one of 'nonzero', 'foreground', 'threshold', 'all'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

import numpy as np

from vol_transfer.errors import RecipeError
from vol_transfer.io.volumes import Volume
from vol_transfer.preprocessing.intensity_steps import IntensityStep
from vol_transfer.preprocessing.spatial import (
    SpatialInverse,
    plan_foreground_crop,
    plan_pad,
    plan_reorientation,
    plan_resampling,
)
from vol_transfer.recipes import config_to_dict, from_dict, option


@dataclass
class Preprocessor:
    """Spatial + intensity preparation of a volume, with the spatial part undoable.

    The fields are the spec (see the module docstring); :meth:`from_spec` reads one through the
    recipe types (:func:`vol_transfer.recipes.from_dict`), so a recipe's ``preprocessing`` section
    and a checkpoint's stored spec are checked by the same code. A key left out is a step left out.
    """

    orientation: Optional[str] = None  # axis codes, e.g. RAS; None keeps the file's order
    crop_foreground: Optional[int] = option(None, ge=0)  # margin in voxels; None: no crop
    intensity: list[IntensityStep] = option(default_factory=list)
    spacing: Optional[tuple[float, float, float]] = option(None, gt=0)  # mm; None keeps the spacing
    min_size: Optional[tuple[int, int, int]] = option(None, ge=1)  # pad (with 0) up to this size

    def validate(self, where: str) -> None:
        if self.orientation is not None:
            try:
                plan_reorientation((1, 1, 1), np.eye(4), self.orientation)  # validates the codes
            except RecipeError as error:
                raise RecipeError(f"{where}.orientation" if where else "orientation", error.problem, error.fix) from None
            self.orientation = self.orientation.upper()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | "Preprocessor" | None, where: str = "preprocessing") -> "Preprocessor":
        """Build from a spec mapping (a recipe section or a checkpoint's stored spec) or a typed section."""
        return from_dict(Preprocessor, {} if spec is None else spec, where)

    def to_spec(self) -> dict[str, Any]:
        """The JSON-serialisable spec that :meth:`from_spec` turns back into this pipeline."""
        spec = config_to_dict(self)
        json.dumps(spec)  # fail here, not when a checkpoint is written
        return spec

    def normalise(self, array: np.ndarray) -> np.ndarray:
        """Apply the intensity steps channel by channel to a ``(C, X, Y, Z)`` array (float32)."""
        result = np.asarray(array, dtype=np.float32).copy()
        for step in self.intensity:
            channels = step.channels if step.channels is not None else range(result.shape[0])
            for c in channels:
                result[c] = step(result[c])
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
