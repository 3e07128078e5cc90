"""What every window sampler shares: the eligible centre region and cached per-volume indices.

A sampler answers one question: *where are the centres of the next n windows?* Subclasses
override one method, :meth:`PatchSampler.build_index`, which turns the sampling map restricted to
the eligible region into a :class:`CentreIndex` — precomputed once per volume (cumulative sums,
per-class voxel lists) so that each draw is a few vectorised numpy calls.

Centre convention: a window of size ``w`` centred at voxel ``c`` covers ``[c - w//2, c - w//2 + w)``
along each axis. Eligible centres are those whose window fits inside the volume *after padding*:

* ``padding="fit"`` (default): an axis shorter than the window is padded symmetrically up to the
  window (so the window covers the whole axis, centred); longer axes are not padded.
* ``padding="full"``: every axis is padded by half a window on each side, so every voxel can be
  a centre (windows near the border then contain padding).

Padding is virtual: :func:`vol_transfer.sampling.padding.crop_window` fills the part outside the
volume and marks it, so losses can ignore it.

Example:
    >>> import numpy as np
    >>> from vol_transfer.sampling import BalancedSampler
    >>> label = np.zeros((40, 40, 40), dtype=np.uint8); label[18:22, 18:22, 18:22] = 1
    >>> sampler = BalancedSampler(window=(16, 16, 16))
    >>> index = sampler.prepare(label)                 # once per volume
    >>> centres = sampler.draw(index, 4, np.random.default_rng(0))
    >>> centres.shape
    (4, 3)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from vol_transfer.errors import VolTransferError

PADDING_MODES = ("fit", "full")


class SamplingError(VolTransferError):
    """A sampler that cannot be built or used as configured (bad window, negative weights)."""


class SamplingWarning(UserWarning):
    """A volume that cannot honour the request fully (an absent class, an empty sampling map)."""


def as_window(window: int | Sequence[int]) -> tuple[int, int, int]:
    """``96`` → ``(96, 96, 96)``; checks three positive integers."""
    size = (int(window),) * 3 if np.isscalar(window) else tuple(int(s) for s in window)  # type: ignore[arg-type]
    if len(size) != 3 or min(size) < 1:
        raise SamplingError("window", f"{window!r} is not three positive sizes", "give e.g. 96 or (96, 96, 96)")
    return size  # type: ignore[return-value]


@dataclass(frozen=True)
class Box:
    """The eligible centres ``lo[i] <= c[i] <= hi[i]`` of one volume, in its voxel indices."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(h - l + 1 for l, h in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(l, h + 1) for l, h in zip(self.lo, self.hi))  # type: ignore[return-value]

    def to_centres(self, flat: np.ndarray) -> np.ndarray:
        """Flat indices within the box → ``(n, 3)`` int64 voxel centres of the volume."""
        coords = np.stack(np.unravel_index(flat, self.shape), axis=1).astype(np.int64)
        return coords + np.asarray(self.lo, dtype=np.int64)


def eligible_box(spatial_shape: Sequence[int], window: Sequence[int], padding: str = "fit") -> Box:
    """The centres whose window fits in the (virtually) padded volume; see the module docstring."""
    if padding not in PADDING_MODES:
        raise SamplingError("padding", f"unknown mode {padding!r}", f"use one of {PADDING_MODES}")
    lo, hi = [], []
    for size, w in zip(spatial_shape, window):
        if padding == "full":
            lo.append(0)
            hi.append(size - 1)
        elif size >= w:
            lo.append(w // 2)
            hi.append(size - w + w // 2)
        else:  # pad (w - size) split evenly: the single centre puts the whole axis in the window
            centre = w // 2 - (w - size) // 2
            lo.append(centre)
            hi.append(centre)
    return Box(tuple(lo), tuple(hi))  # type: ignore[arg-type]


class CentreIndex(Protocol):
    """Per-volume precomputed state; ``draw`` returns flat indices into the eligible box."""

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


@dataclass
class PreparedVolume:
    """The cached result of :meth:`PatchSampler.prepare` for one volume."""

    box: Box
    index: CentreIndex
    spatial_shape: tuple[int, int, int]


class PatchSampler:
    """Base class: eligible region + cached index + vectorised draws. Override :meth:`build_index`.

    Args:
        window: window size, an int or three ints (voxels).
        padding: ``"fit"`` or ``"full"`` (see the module docstring).
    """

    def __init__(self, window: int | Sequence[int], padding: str = "fit") -> None:
        self.window = as_window(window)
        if padding not in PADDING_MODES:
            raise SamplingError("padding", f"unknown mode {padding!r}", f"use one of {PADDING_MODES}")
        self.padding = padding

    def build_index(self, sampling_map: np.ndarray | None, box: Box, name: str) -> CentreIndex:
        """The per-volume index over the eligible box; ``sampling_map`` is already cut to the box."""
        raise NotImplementedError

    def sampling_map(self, label: np.ndarray | None, weights: np.ndarray | None) -> np.ndarray | None:
        """Which map this sampler reads: the label map unless a weight map is given."""
        return label if weights is None else weights

    def prepare(
        self,
        label: np.ndarray | None,
        weights: np.ndarray | None = None,
        spatial_shape: Sequence[int] | None = None,
        name: str = "<volume>",
    ) -> PreparedVolume:
        """Precompute the index for one volume (do this once; draws reuse it)."""
        source = self.sampling_map(label, weights)
        shape = tuple(int(s) for s in (source.shape if source is not None else spatial_shape))  # type: ignore[union-attr]
        if len(shape) != 3:
            raise SamplingError(name, f"sampling map has shape {shape}, not (X, Y, Z)", "pass a 3D label or weight map")
        box = eligible_box(shape, self.window, self.padding)
        cut = None if source is None else np.asarray(source)[box.slices]
        return PreparedVolume(box, self.build_index(cut, box, name), shape)  # type: ignore[arg-type]

    def draw(self, prepared: PreparedVolume, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` window centres, ``(n, 3)`` int64 voxel indices of the volume."""
        return prepared.box.to_centres(prepared.index.draw(n, rng))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(window={self.window}, padding={self.padding!r})"


class UniformBoxIndex:
    """Every eligible centre equally likely (no precomputation needed)."""

    def __init__(self, box: Box) -> None:
        self.size = int(np.prod(box.shape))

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.size, size=n)


def warn(name: str, problem: str) -> None:
    warnings.warn(f"{name}: {problem}", SamplingWarning, stacklevel=3)
