"""Spatial steps that can be undone exactly: reorient, crop, resample, pad.

Each step is planned once from a volume (``plan_*``) and then applied to any array on the same
grid — the image, its label, a prediction — forwards (original → prepared) or backwards
(prepared → original). Arrays are ``(X, Y, Z)`` or channels-first ``(C, X, Y, Z)``; affines map
voxel indices to RAS+ millimetres. A :class:`SpatialInverse` chains the steps.

Example:
    >>> import numpy as np
    >>> from vol_transfer.io.volumes import Volume
    >>> volume = Volume(np.zeros((1, 4, 5, 6), np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))
    >>> step = plan_reorientation(volume.spatial_shape, volume.affine, "RAS")
    >>> step.forward(volume.array).shape, float(step.out_affine[0, 0])
    ((1, 4, 5, 6), 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from nibabel import orientations

from vol_transfer.errors import RecipeError
from vol_transfer.io.volumes import set_itk_geometry
from vol_transfer.preprocessing.intensity import border_background

Shape = tuple[int, int, int]
INTERPOLATION_ORDERS = ("nearest", "linear")


def _spatial(array: np.ndarray) -> Shape:
    return tuple(int(s) for s in array.shape[-3:])  # type: ignore[return-value]


def _per_channel(array: np.ndarray, fn) -> np.ndarray:
    """Apply a 3D → 3D function to ``(X,Y,Z)`` or to each channel of ``(C,X,Y,Z)``."""
    if array.ndim == 3:
        return fn(array)
    if array.ndim == 4:
        return np.stack([fn(channel) for channel in array])
    raise ValueError(f"expected a (X,Y,Z) or (C,X,Y,Z) array, got shape {array.shape}")


def _check_order(order: str) -> None:
    if order not in INTERPOLATION_ORDERS:
        raise ValueError(f"order must be one of {INTERPOLATION_ORDERS}, got {order!r}")


@dataclass
class SpatialStep:
    """One invertible step between an input grid and an output grid."""

    in_shape: Shape
    in_affine: np.ndarray
    out_shape: Shape
    out_affine: np.ndarray

    def forward(self, array: np.ndarray, order: str = "linear") -> np.ndarray:
        raise NotImplementedError

    def backward(self, array: np.ndarray, order: str = "nearest") -> np.ndarray:
        raise NotImplementedError

    def _expect(self, array: np.ndarray, shape: Shape, direction: str) -> None:
        if _spatial(array) != shape:
            raise ValueError(f"{type(self).__name__}.{direction}: array spatial shape {_spatial(array)} != {shape}")


@dataclass
class Reorientation(SpatialStep):
    """Permute/flip voxel axes so the array reads in ``target`` axis codes (e.g. RAS)."""

    transform: np.ndarray = field(default_factory=lambda: np.eye(0))
    inverse_transform: np.ndarray = field(default_factory=lambda: np.eye(0))

    def forward(self, array: np.ndarray, order: str = "linear") -> np.ndarray:
        self._expect(array, self.in_shape, "forward")
        return _apply_orientation(array, self.transform)

    def backward(self, array: np.ndarray, order: str = "nearest") -> np.ndarray:
        self._expect(array, self.out_shape, "backward")
        return _apply_orientation(array, self.inverse_transform)


def _apply_orientation(array: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """nibabel's ``apply_orientation`` on the last three axes of any array, copied once."""
    lead = array.ndim - 3
    for axis, (_, flip) in enumerate(transform):
        if flip == -1:
            array = np.flip(array, lead + axis)
    order = [lead + int(axis) for axis in np.argsort(transform[:, 0])]
    return np.ascontiguousarray(array.transpose(*range(lead), *order))


def plan_reorientation(shape: Shape, affine: np.ndarray, target: str = "RAS") -> Reorientation:
    """Plan the axis permutation/flips from ``affine``'s orientation to ``target`` (3 axis codes)."""
    if not isinstance(target, str) or len(target) != 3 or set(target.upper()) - set("LRAPSI"):
        raise RecipeError("orientation", f"{target!r} is not three axis codes", "use e.g. RAS or LPS")
    axis_of = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    if sorted(axis_of[c] for c in target.upper()) != [0, 1, 2]:
        raise RecipeError("orientation", f"{target!r} repeats an axis", "use one of L/R, A/P, S/I each, e.g. RAS")
    target_ornt = orientations.axcodes2ornt(tuple(target.upper()))
    start = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(start, target_ornt)
    inverse = orientations.ornt_transform(target_ornt, start)
    out_affine = affine @ orientations.inv_ornt_aff(transform, shape)
    out_shape = tuple(int(shape[int(axis)]) for axis in np.argsort(transform[:, 0]))
    return Reorientation(tuple(shape), affine.copy(), out_shape, out_affine, transform, inverse)  # type: ignore[arg-type]


@dataclass
class Crop(SpatialStep):
    """Keep voxels ``start <= index < stop``; backwards pads with ``fill`` (0 by default)."""

    start: tuple[int, int, int] = (0, 0, 0)
    stop: tuple[int, int, int] = (0, 0, 0)

    def forward(self, array: np.ndarray, order: str = "linear") -> np.ndarray:
        self._expect(array, self.in_shape, "forward")
        window = tuple(slice(a, b) for a, b in zip(self.start, self.stop))
        return np.ascontiguousarray(array[(Ellipsis, *window)])

    def backward(self, array: np.ndarray, order: str = "nearest", fill: float = 0) -> np.ndarray:
        self._expect(array, self.out_shape, "backward")
        restored = np.full((*array.shape[:-3], *self.in_shape), fill, dtype=array.dtype)
        window = tuple(slice(a, b) for a, b in zip(self.start, self.stop))
        restored[(Ellipsis, *window)] = array
        return restored


def _translated(affine: np.ndarray, voxel_offset: Sequence[float]) -> np.ndarray:
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ np.asarray(voxel_offset, dtype=float) + affine[:3, 3]
    return shifted


def foreground_bounding_box(mask: np.ndarray) -> tuple[Shape, Shape] | None:
    """``(start, stop)`` of the True voxels of a 3D mask; None if there are none."""
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start.append(int(hits[0]))
        stop.append(int(hits[-1]) + 1)
    return tuple(start), tuple(stop)  # type: ignore[return-value]


def foreground(array: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """3D mask of voxels that differ from the border background in any channel (or are > threshold)."""
    channels = array if array.ndim == 4 else array[np.newaxis]
    mask = np.zeros(channels.shape[1:], dtype=bool)
    for channel in channels:
        mask |= (channel > threshold) if threshold is not None else (channel != border_background(channel))
    return mask


def plan_foreground_crop(array: np.ndarray, affine: np.ndarray, margin: int | Sequence[int] = 0,
                         threshold: float | None = None) -> Crop:
    """Crop to the box of non-background voxels plus ``margin`` voxels on each side.

    Background is the most common value on the array's border (0 for skull-stripped MRI, the
    padding value for CT) unless ``threshold`` is given (then foreground is > threshold).
    An image with no foreground is not cropped.
    """
    shape = _spatial(array)
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (3,))
    if (margins < 0).any():
        raise RecipeError("crop_foreground", f"margin {margin} is negative", "use a margin >= 0 voxels")
    box = foreground_bounding_box(foreground(np.asarray(array), threshold))
    if box is None:
        start, stop = (0, 0, 0), shape
    else:
        start = tuple(int(max(0, s - m)) for s, m in zip(box[0], margins))
        stop = tuple(int(min(n, e + m)) for e, m, n in zip(box[1], margins, shape))
    out_shape = tuple(int(b - a) for a, b in zip(start, stop))
    return Crop(shape, affine.copy(), out_shape, _translated(affine, start), start, stop)  # type: ignore[arg-type]


@dataclass
class Pad(SpatialStep):
    """Pad with ``value`` to at least a minimum size (split evenly before/after); backwards crops."""

    before: tuple[int, int, int] = (0, 0, 0)
    after: tuple[int, int, int] = (0, 0, 0)
    value: float = 0.0

    def forward(self, array: np.ndarray, order: str = "linear") -> np.ndarray:
        self._expect(array, self.in_shape, "forward")
        widths = [(0, 0)] * (array.ndim - 3) + list(zip(self.before, self.after))
        return np.pad(array, widths, mode="constant", constant_values=self.value)

    def backward(self, array: np.ndarray, order: str = "nearest") -> np.ndarray:
        self._expect(array, self.out_shape, "backward")
        window = tuple(slice(b, b + n) for b, n in zip(self.before, self.in_shape))
        return np.ascontiguousarray(array[(Ellipsis, *window)])


def plan_pad(shape: Shape, affine: np.ndarray, min_size: Sequence[int], value: float = 0.0) -> Pad:
    """Pad ``shape`` up to ``min_size`` per axis (no-op where already large enough)."""
    wanted = [int(s) for s in np.broadcast_to(np.asarray(min_size, dtype=int), (3,))]
    total = [max(0, w - s) for w, s in zip(wanted, shape)]
    before = tuple(t // 2 for t in total)
    after = tuple(t - b for t, b in zip(total, before))
    out_shape = tuple(s + t for s, t in zip(shape, total))
    return Pad(tuple(shape), affine.copy(), out_shape, _translated(affine, [-b for b in before]),  # type: ignore[arg-type]
               before, after, value)  # type: ignore[arg-type]


@dataclass
class Resampling(SpatialStep):
    """Resample onto a grid of another spacing with SimpleITK (same direction, same first voxel centre)."""

    def forward(self, array: np.ndarray, order: str = "linear") -> np.ndarray:
        self._expect(array, self.in_shape, "forward")
        return _per_channel(array, lambda a: _sitk_resample(a, self.in_affine, self.out_shape, self.out_affine, order))

    def backward(self, array: np.ndarray, order: str = "nearest") -> np.ndarray:
        self._expect(array, self.out_shape, "backward")
        return _per_channel(array, lambda a: _sitk_resample(a, self.out_affine, self.in_shape, self.in_affine, order))


def affine_spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def plan_resampling(shape: Shape, affine: np.ndarray, spacing: Sequence[float]) -> Resampling:
    """Plan resampling to ``spacing`` (mm per voxel axis); the field of view is kept (rounded)."""
    target = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    if not (target > 0).all():
        raise RecipeError("spacing", f"spacing {list(spacing)} has a value <= 0", "use positive millimetres, e.g. [1, 1, 1]")
    current = affine_spacing(affine)
    out_shape = tuple(int(max(1, round(n * c / t))) for n, c, t in zip(shape, current, target))
    out_affine = affine.copy()
    out_affine[:3, :3] = affine[:3, :3] / current * target
    return Resampling(tuple(shape), affine.copy(), out_shape, out_affine)  # type: ignore[arg-type]


def _sitk_image(array: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    set_itk_geometry(image, affine)
    return image


def _sitk_resample(array: np.ndarray, affine: np.ndarray, out_shape: Shape, out_affine: np.ndarray, order: str) -> np.ndarray:
    import SimpleITK as sitk

    _check_order(order)
    source = array if order == "nearest" else array.astype(np.float32, copy=False)
    if source.dtype == np.bool_:
        source = source.astype(np.uint8)
    image = _sitk_image(source, affine)
    reference = _sitk_image(np.zeros(out_shape, dtype=np.uint8), out_affine)
    interpolator = sitk.sitkNearestNeighbor if order == "nearest" else sitk.sitkLinear
    resampled = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())
    result = np.transpose(sitk.GetArrayFromImage(resampled), (2, 1, 0))
    return np.ascontiguousarray(result.astype(array.dtype if order == "nearest" else np.float32, copy=False))


@dataclass
class SpatialInverse:
    """The spatial steps taken from an original grid to a prepared grid, undoable exactly.

    ``restore`` maps an array on the prepared grid (e.g. a prediction) back onto the original grid
    (same shape; save it with ``original_affine``). ``forward`` applies the same steps to another
    array on the original grid (e.g. the label of the image the steps were planned on).
    """

    original_shape: Shape
    original_affine: np.ndarray
    steps: list[SpatialStep] = field(default_factory=list)

    @property
    def prepared_shape(self) -> Shape:
        return self.steps[-1].out_shape if self.steps else self.original_shape

    @property
    def prepared_affine(self) -> np.ndarray:
        return self.steps[-1].out_affine if self.steps else self.original_affine

    def forward(self, array: np.ndarray, order: str = "nearest") -> np.ndarray:
        """Original grid → prepared grid (use ``order="nearest"`` for labels)."""
        _check_order(order)
        for step in self.steps:
            array = step.forward(array, order)
        return array

    def restore(self, array: np.ndarray, order: str = "nearest") -> np.ndarray:
        """Prepared grid → original grid (``"nearest"`` for labels, ``"linear"`` for probabilities)."""
        _check_order(order)
        array = np.asarray(array)
        if _spatial(array) != self.prepared_shape:
            raise ValueError(f"array spatial shape {_spatial(array)} != prepared shape {self.prepared_shape}")
        for step in reversed(self.steps):
            array = step.backward(array, order)
        return array
