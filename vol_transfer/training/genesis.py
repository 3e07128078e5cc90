"""Models Genesis corruptions: the pretext task "restore the original from a corrupted copy".

Four corruptions (Zhou et al. 2019), each a pure function of a channels-first array with values
in ``[0, 1]`` (2D ``(C, H, W)`` or 3D ``(C, X, Y, Z)``) and a NumPy random generator:

- :func:`bezier_intensity` — a random monotone non-linear intensity curve;
- :func:`local_pixel_shuffling` — values permuted inside small random blocks;
- :func:`inpaint` — random boxes replaced by noise;
- :func:`outpaint` — everything except random boxes replaced by noise.

:class:`GenesisCorruption` combines them with probabilities, as in the paper.

Example:
    >>> rng = np.random.default_rng(0)
    >>> image = rng.random((1, 64, 64), dtype=np.float32)
    >>> corrupted = GenesisCorruption()(image, rng)
    >>> corrupted.shape == image.shape
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

Box = tuple[slice, ...]  # spatial slices, one per spatial axis


def bezier_curve(
    control_points: Sequence[tuple[float, float]], num_samples: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Sample a cubic Bézier curve through (0,0), two control points and (1,1).

    Returns ``(xs, ys)`` ordered by increasing ``t``.
    """
    (x1, y1), (x2, y2) = control_points
    t = np.linspace(0.0, 1.0, num_samples)
    b1, b2, b3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
    xs = b1 * x1 + b2 * x2 + b3
    ys = b1 * y1 + b2 * y2 + b3
    return xs, ys


def random_monotone_controls(rng: np.random.Generator) -> list[tuple[float, float]]:
    """Two control points with ordered coordinates, which makes the curve monotone.

    With ``0 <= x1 <= x2 <= 1`` every Bernstein term of ``dx/dt`` is non-negative, so ``x(t)``
    never turns back; the same holds for ``y``. The mapping ``x → y`` is therefore a monotone
    function from ``[0, 1]`` onto ``[0, 1]`` (the paper's random points do not guarantee this).
    """
    xs = np.sort(rng.random(2))
    ys = np.sort(rng.random(2))
    return [(float(xs[0]), float(ys[0])), (float(xs[1]), float(ys[1]))]


def bezier_intensity(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    control_points: Sequence[tuple[float, float]] | None = None,
    invert_probability: float = 0.5,
) -> np.ndarray:
    """Map intensities through a random monotone Bézier curve (decreasing with ``invert_probability``)."""
    controls = control_points if control_points is not None else random_monotone_controls(rng)
    xs, ys = bezier_curve(controls)
    mapped = np.interp(np.clip(image, 0.0, 1.0), xs, ys)
    if rng.random() < invert_probability:
        mapped = 1.0 - mapped
    return mapped.astype(image.dtype, copy=False)


def random_box(
    spatial_shape: Sequence[int], rng: np.random.Generator, min_size: Sequence[int], max_size: Sequence[int]
) -> Box:
    """A box with per-axis size in ``[min_size, max_size]`` placed uniformly inside the image."""
    box = []
    for extent, low, high in zip(spatial_shape, min_size, max_size):
        high = max(1, min(int(high), extent))
        low = max(1, min(int(low), high))
        size = int(rng.integers(low, high + 1))
        start = int(rng.integers(0, extent - size + 1))
        box.append(slice(start, start + size))
    return tuple(box)


def shuffle_block(image: np.ndarray, box: Box, rng: np.random.Generator) -> np.ndarray:
    """Permute the voxels inside ``box`` (the same permutation for every channel), in place."""
    region = image[(slice(None), *box)]
    channels = region.shape[0]
    flat = region.reshape(channels, -1)
    order = rng.permutation(flat.shape[1])
    image[(slice(None), *box)] = flat[:, order].reshape(region.shape)
    return image


def local_pixel_shuffling(
    image: np.ndarray, rng: np.random.Generator, *, num_blocks: int = 1000, max_block_size: int = 8
) -> np.ndarray:
    """Shuffle voxels inside ``num_blocks`` small random blocks (each side ``1..max_block_size``).

    Blocks are shuffled one after another, so every block's multiset of values, and the whole
    image's, is kept: only local texture is destroyed, not the global intensity distribution.
    """
    result = image.copy()
    spatial = result.shape[1:]
    ones = [1] * len(spatial)
    sizes = [max_block_size] * len(spatial)
    for _ in range(num_blocks):
        shuffle_block(result, random_box(spatial, rng, ones, sizes), rng)
    return result


def inpaint_boxes(
    spatial_shape: Sequence[int], rng: np.random.Generator, *, max_boxes: int = 5, min_fraction: float = 1 / 6,
    max_fraction: float = 1 / 4,
) -> list[Box]:
    """1..``max_boxes`` boxes with sides between the given fractions of the image."""
    count = int(rng.integers(1, max_boxes + 1))
    low = [max(1, int(s * min_fraction)) for s in spatial_shape]
    high = [max(1, int(s * max_fraction)) for s in spatial_shape]
    return [random_box(spatial_shape, rng, low, high) for _ in range(count)]


def outpaint_boxes(
    spatial_shape: Sequence[int], rng: np.random.Generator, *, max_boxes: int = 5, min_fraction: float = 3 / 7,
    max_fraction: float = 4 / 7,
) -> list[Box]:
    """Larger boxes whose union is the part of the image that out-painting keeps."""
    return inpaint_boxes(spatial_shape, rng, max_boxes=max_boxes, min_fraction=min_fraction, max_fraction=max_fraction)


def inpaint(image: np.ndarray, boxes: Sequence[Box], rng: np.random.Generator) -> np.ndarray:
    """Replace the inside of every box with uniform noise; the rest is untouched."""
    result = image.copy()
    for box in boxes:
        index = (slice(None), *box)
        result[index] = rng.random(result[index].shape)
    return result


def outpaint(image: np.ndarray, boxes: Sequence[Box], rng: np.random.Generator) -> np.ndarray:
    """Replace everything outside the union of ``boxes`` with uniform noise."""
    result = rng.random(image.shape).astype(image.dtype)
    for box in boxes:
        index = (slice(None), *box)
        result[index] = image[index]
    return result


@dataclass
class GenesisCorruption:
    """The combined corruption: each step applied with its probability, then at most one painting.

    Defaults follow the paper: non-linear 0.9, local shuffling 0.5, painting 0.9 of which
    in-painting 0.2 and out-painting 0.8. Inputs must be in ``[0, 1]``; the output is too.
    """

    nonlinear_probability: float = 0.9
    shuffle_probability: float = 0.5
    paint_probability: float = 0.9
    inpaint_share: float = 0.2
    shuffle_blocks: int = 1000
    shuffle_block_size: int = 8

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        result = np.asarray(image, dtype=np.float32).copy()
        if rng.random() < self.shuffle_probability:
            result = local_pixel_shuffling(
                result, rng, num_blocks=self.shuffle_blocks, max_block_size=self.shuffle_block_size
            )
        if rng.random() < self.nonlinear_probability:
            result = bezier_intensity(result, rng)
        if rng.random() < self.paint_probability:
            spatial = result.shape[1:]
            if rng.random() < self.inpaint_share:
                result = inpaint(result, inpaint_boxes(spatial, rng), rng)
            else:
                result = outpaint(result, outpaint_boxes(spatial, rng), rng)
        return result.astype(np.float32, copy=False)

    def to_spec(self) -> dict[str, float]:
        return dict(self.__dict__)
