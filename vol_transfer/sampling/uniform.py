"""Uniform sampler: every eligible window centre is equally likely.

Example:
    >>> import numpy as np
    >>> from vol_transfer.sampling import UniformSampler
    >>> sampler = UniformSampler(window=8)
    >>> prepared = sampler.prepare(None, spatial_shape=(20, 20, 20))
    >>> centres = sampler.draw(prepared, 3, np.random.default_rng(0))
    >>> bool(((centres >= 4) & (centres <= 16)).all())
    True
"""

from __future__ import annotations

import numpy as np

from vol_transfer.sampling.base import Box, CentreIndex, PatchSampler, UniformBoxIndex


class UniformSampler(PatchSampler):
    """Window centres uniform over the eligible region; ignores the label map."""

    def sampling_map(self, label: np.ndarray | None, weights: np.ndarray | None) -> np.ndarray | None:
        return None

    def prepare(self, label=None, weights=None, spatial_shape=None, name: str = "<volume>"):  # type: ignore[override]
        if spatial_shape is None:
            reference = label if label is not None else weights
            if reference is None:
                raise TypeError("UniformSampler.prepare needs a label map or spatial_shape")
            spatial_shape = np.shape(reference)
        return super().prepare(None, None, spatial_shape=spatial_shape, name=name)

    def build_index(self, sampling_map: np.ndarray | None, box: Box, name: str) -> CentreIndex:
        return UniformBoxIndex(box)
