"""Overlapping windows with Gaussian or constant blending — the MONAI-style path.

Windows are placed as MONAI's ``sliding_window_inference`` places them (stride
``window × (1 − overlap)``, the last window flush with the far border), run in batches, and the
logits are blended with an importance map. Use it for networks that down-sample; for a network
without down-sampling (HighRes3DNet) :mod:`vol_transfer.inference.tiling` is exact and cheaper.

Kept instead of MONAI's ``SlidingWindowInferer`` because the fair benchmark (same BN-folded
channels_last model, same windows and batch size) measured it 5–10 % faster end to end on a
BraTS head crop, in both run orders
(``benchmarks/bench_inference.py``; benchmarks/RESULTS.md). Given the same weights
(:func:`importance_map`) its output equals MONAI's (tests/inference/test_window.py); MONAI's own
Gaussian map is this one times a constant except at the 1e-3 floor, so its blend differs there.

Padding semantics: every window is zero-padded by the network at its own borders, also where the
window border lies inside the volume. Those voxels therefore see less context than in a
whole-volume pass; Gaussian blending down-weights them, constant blending does not. A window
larger than the volume along an axis is clipped to the volume (MONAI instead zero-pads the volume
up to the window; a fully convolutional network needs neither).

Example:
    >>> starts = window_starts(240, 96, 0.25)
    >>> starts
    [0, 72, 144]
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator, Sequence

import torch

BLEND_MODES = ("gaussian", "constant")
GAUSSIAN_SIGMA_SCALE = 0.125  # sigma = 1/8 of the window, as MONAI and nnU-Net
Forward = Callable[[torch.Tensor], torch.Tensor]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices along one axis; a window larger than the axis is clipped to it."""
    if window >= size:
        return [0]
    stride = max(int(window * (1.0 - overlap)), 1)
    count = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(count)})


def window_slices(
    shape: Sequence[int], window: Sequence[int], overlap: float
) -> list[tuple[slice, slice, slice]]:
    """Every window of a volume of spatial ``shape``, as spatial slices."""
    sizes = [min(w, s) for w, s in zip(window, shape)]
    per_axis = [window_starts(s, w, overlap) for s, w in zip(shape, sizes)]
    return [
        tuple(slice(start, start + size) for start, size in zip(starts, sizes))  # type: ignore[misc]
        for starts in itertools.product(*per_axis)
    ]


def importance_map(window: Sequence[int], blend: str = "gaussian") -> torch.Tensor:
    """``(X, Y, Z)`` weights for one window: a separable Gaussian (max 1) or all ones."""
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, not {blend!r}")
    if blend == "constant":
        return torch.ones(tuple(window))
    profiles = []
    for size in window:
        centre = (size - 1) / 2.0
        sigma = max(size * GAUSSIAN_SIGMA_SCALE, 1e-3)
        position = torch.arange(size, dtype=torch.float64)
        profiles.append(torch.exp(-0.5 * ((position - centre) / sigma) ** 2))
    weights = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    weights = weights / weights.max()
    # a zero weight would leave border voxels undefined where only one window covers them
    return weights.clamp_min(1e-3).float()


def _batches(items: list, size: int) -> Iterator[list]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


def windowed_logits(
    forward: Forward,
    image: torch.Tensor,
    window: Sequence[int],
    *,
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 2,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Blend ``forward`` over overlapping windows of ``image`` ``(C, X, Y, Z)`` → ``(K, X, Y, Z)``.

    ``forward`` maps a ``(N, C, x, y, z)`` batch to ``(N, K, x, y, z)`` float32 logits on the CPU.
    ``progress(n)`` is called after each batch with the number of windows done in it.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), not {overlap!r}")
    shape = tuple(image.shape[1:])
    slices = window_slices(shape, window, overlap)
    size = tuple(s.stop - s.start for s in slices[0])
    weights = importance_map(size, blend)
    total: torch.Tensor | None = None
    weight_sum = torch.zeros(shape)
    for batch in _batches(slices, max(1, batch_size)):
        inputs = torch.stack([image[(slice(None), *where)] for where in batch])
        logits = forward(inputs)
        if total is None:
            total = torch.zeros((logits.shape[1], *shape))
        for where, window_logits in zip(batch, logits):
            total[(slice(None), *where)].add_(window_logits * weights)
            weight_sum[where].add_(weights)
        if progress is not None:
            progress(len(batch))
    assert total is not None
    return total.div_(weight_sum)
