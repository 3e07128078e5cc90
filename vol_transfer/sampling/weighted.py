"""Weighted sampler: centre probability proportional to a non-negative sampling map (NiftyNet).

With the label map as the sampling map (the default), a voxel of label value ``v`` weighs ``v``:
background (0) is never a centre. Any non-negative weight map of the volume's shape can be
given instead. Precomputation per volume: the positions of non-zero weights and their cumulative
sum; a draw is ``np.searchsorted`` on it. ``stratified=True`` draws one centre in each 1/n of the
distribution (then shuffles them), which lowers the variance of small batches.

Example:
    >>> import numpy as np
    >>> from vol_transfer.sampling import WeightedSampler
    >>> label = np.zeros((30, 30, 30), dtype=np.uint8); label[10:20, 10:20, 10:20] = 1
    >>> sampler = WeightedSampler(window=8)
    >>> centres = sampler.draw(sampler.prepare(label), 100, np.random.default_rng(0))
    >>> bool((label[tuple(centres.T)] == 1).all())
    True
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vol_transfer.sampling.base import Box, CentreIndex, PatchSampler, SamplingError, UniformBoxIndex, warn


class CumulativeIndex:
    """Positions with non-zero weight and the cumulative sum of their weights."""

    def __init__(self, positions: np.ndarray, cumulative: np.ndarray, stratified: bool) -> None:
        self.positions = positions
        self.cumulative = cumulative
        self.stratified = stratified

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        total = self.cumulative[-1]
        if self.stratified:
            u = (np.arange(n) + rng.random(n)) * (total / n)
            u = u[rng.permutation(n)]
        else:
            u = rng.random(n) * total
        picks = np.searchsorted(self.cumulative, u, side="right")
        return self.positions[np.minimum(picks, len(self.positions) - 1)]


class WeightedSampler(PatchSampler):
    """Centres drawn with probability proportional to the sampling map.

    Args:
        window: window size (int or three ints).
        padding: ``"fit"`` or ``"full"``, see :mod:`vol_transfer.sampling.base`.
        stratified: one draw per 1/n of the distribution within each call to ``draw``.
    """

    def __init__(self, window: int | Sequence[int], padding: str = "fit", stratified: bool = False) -> None:
        super().__init__(window, padding)
        self.stratified = stratified

    def build_index(self, sampling_map: np.ndarray | None, box: Box, name: str) -> CentreIndex:
        if sampling_map is None:
            raise SamplingError(name, "no sampling map", "give the label map or a weight map to WeightedSampler")
        weights = np.asarray(sampling_map).ravel()
        if weights.dtype.kind == "f" and not np.isfinite(weights).all():
            raise SamplingError(name, "sampling map contains NaN or infinite values", "clean the weight map")
        if weights.dtype.kind in "iuf" and weights.size and weights.min() < 0:
            raise SamplingError(name, "sampling map has negative weights", "use a non-negative weight map")
        positions = np.flatnonzero(weights)
        if positions.size == 0:
            warn(name, "sampling map is zero over every eligible centre; drawing centres uniformly instead")
            return UniformBoxIndex(box)
        positions = positions.astype(np.int32 if weights.size < 2**31 else np.int64)
        cumulative = np.cumsum(weights[positions], dtype=np.float64)
        return CumulativeIndex(positions, cumulative, self.stratified)
