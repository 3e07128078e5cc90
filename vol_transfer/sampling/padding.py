"""Cut a window out of a volume, padding virtually where it leaves the volume.

Nothing is padded in memory: the window is allocated once, filled with ``fill`` and the part that
overlaps the volume copied in. :func:`valid_mask` marks which window voxels came from the volume
(True) and which are padding (False), so losses can ignore the padding.

Example:
    >>> import numpy as np
    >>> volume = np.arange(27, dtype=np.float32).reshape(1, 3, 3, 3)
    >>> crop_window(volume, start=(-1, 0, 0), size=(2, 2, 2), fill=-5.0)[0, :, 0, 0].tolist()
    [-5.0, 0.0]
    >>> valid_mask((3, 3, 3), start=(-1, 0, 0), size=(2, 2, 2))[:, 0, 0].tolist()
    [False, True]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _overlap(shape: Sequence[int], start: Sequence[int], size: Sequence[int]):
    """Source and destination slices of the part of the window inside the volume (or None)."""
    src, dst = [], []
    for n, s, w in zip(shape, start, size):
        lo, hi = max(int(s), 0), min(int(s) + int(w), int(n))
        if hi <= lo:
            return None
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s), hi - int(s)))
    return tuple(src), tuple(dst)


def crop_window(
    array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0, dtype=None
) -> np.ndarray:
    """``array[..., start:start+size]`` over the last three axes, ``fill`` outside the volume."""
    spatial = array.shape[-3:]
    size = tuple(int(w) for w in size)
    dtype = array.dtype if dtype is None else dtype
    inside = all(s >= 0 and s + w <= n for n, s, w in zip(spatial, start, size))
    if inside:  # the common case: one strided copy
        region = array[(...,) + tuple(slice(int(s), int(s) + w) for s, w in zip(start, size))]
        return np.array(region, dtype=dtype, copy=True)
    out = np.full(array.shape[:-3] + size, fill, dtype=dtype)
    overlap = _overlap(spatial, start, size)
    if overlap is not None:
        src, dst = overlap
        out[(...,) + dst] = array[(...,) + src]
    return out


def valid_mask(spatial_shape: Sequence[int], start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Boolean window: True where the window voxel lies inside the volume."""
    mask = np.zeros(tuple(int(w) for w in size), dtype=bool)
    overlap = _overlap(spatial_shape, start, size)
    if overlap is not None:
        mask[overlap[1]] = True
    return mask


def window_start(centre: Sequence[int], size: Sequence[int]) -> tuple[int, int, int]:
    """First voxel of a window of ``size`` centred on ``centre`` (centre at index ``size // 2``)."""
    return tuple(int(c) - int(w) // 2 for c, w in zip(centre, size))  # type: ignore[return-value]
