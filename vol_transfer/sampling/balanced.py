"""Balanced (class-weighted) sampler: pick a class, then a voxel of that class uniformly.

This is the class-weighted window sampling of the study: rare classes (tumour core is ~1 % of a
BraTS volume) are centred as often as background. Class probabilities default to equal over the
classes present among the eligible centres; a requested class absent from a volume is skipped
with a :class:`~vol_transfer.sampling.base.SamplingWarning` and the others renormalised.
Precomputation per volume: one array of flat voxel positions per class.

Example:
    >>> import numpy as np
    >>> from vol_transfer.sampling import BalancedSampler
    >>> label = np.zeros((40, 40, 40), dtype=np.uint8); label[15:25, 15:25, 15:25] = 1
    >>> sampler = BalancedSampler(window=8, probabilities={0: 0.25, 1: 0.75})
    >>> centres = sampler.draw(sampler.prepare(label), 4000, np.random.default_rng(0))
    >>> abs(float((label[tuple(centres.T)] == 1).mean()) - 0.75) < 0.03
    True
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from vol_transfer.sampling.base import Box, CentreIndex, PatchSampler, SamplingError, UniformBoxIndex, warn


REJECTION_FRACTION = 0.25  # classes covering at least this share of the box are drawn by rejection


class ClassIndex:
    """Per class: flat voxel positions (rare classes) or rejection draws (common classes).

    Storing every background position of a BRATS volume would cost ~30 MB and ~50 ms per volume;
    a class covering ≥ 25 % of the eligible box is instead drawn uniformly from the box and kept
    where the label matches (≤ 4 tries per draw on average).
    """

    def __init__(self, classes: list[int], positions: list[np.ndarray | None], probabilities: np.ndarray,
                 flat_labels: np.ndarray | None) -> None:
        self.classes = classes
        self.positions = positions
        self.probabilities = probabilities
        self.flat_labels = flat_labels

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        picks = rng.choice(len(self.classes), size=n, p=self.probabilities)
        flat = np.empty(n, dtype=np.int64)
        for k, positions in enumerate(self.positions):
            chosen = np.flatnonzero(picks == k)
            if not chosen.size:
                continue
            if positions is not None:
                flat[chosen] = positions[rng.integers(0, positions.size, size=chosen.size)]
            else:
                flat[chosen] = self._rejection(self.classes[k], chosen.size, rng)
        return flat

    def _rejection(self, value: int, n: int, rng: np.random.Generator) -> np.ndarray:
        found: list[np.ndarray] = []
        missing = n
        while missing > 0:
            candidates = rng.integers(0, self.flat_labels.size, size=max(4 * missing, 16))  # type: ignore[union-attr]
            hits = candidates[self.flat_labels[candidates] == value][:missing]  # type: ignore[index]
            found.append(hits)
            missing -= hits.size
        return np.concatenate(found)


class BalancedSampler(PatchSampler):
    """Class first (by ``probabilities``), then a voxel of that class uniformly.

    Args:
        window: window size (int or three ints).
        probabilities: ``{label value: probability}``; values not listed are never centres.
            ``None``: equal over the label values present among the eligible centres.
        padding: ``"fit"`` or ``"full"``, see :mod:`vol_transfer.sampling.base`.
    """

    def __init__(
        self,
        window: int | Sequence[int],
        probabilities: Mapping[int, float] | None = None,
        padding: str = "fit",
    ) -> None:
        super().__init__(window, padding)
        if probabilities is not None:
            values = np.array(list(probabilities.values()), dtype=float)
            if not len(values) or (values < 0).any() or values.sum() <= 0:
                raise SamplingError(
                    "probabilities", f"{dict(probabilities)} is not a set of non-negative weights with a positive sum",
                    "give e.g. {0: 0.5, 1: 0.5}",
                )
            probabilities = {int(k): float(v) for k, v in probabilities.items()}
        self.probabilities = probabilities

    def build_index(self, sampling_map: np.ndarray | None, box: Box, name: str) -> CentreIndex:
        if sampling_map is None:
            raise SamplingError(name, "no label map", "give the label map to BalancedSampler.prepare")
        labels = np.asarray(sampling_map)
        if labels.dtype.kind not in "iub":
            labels = labels.astype(np.int64)
        flat = labels.ravel()
        counts = _class_counts(flat, self.probabilities)
        wanted = self.probabilities or {value: 1.0 for value in counts}
        classes, weights, positions = [], [], []
        position_dtype = np.int32 if flat.size < 2**31 else np.int64
        needs_labels = False
        for value, weight in wanted.items():
            if weight <= 0:
                continue
            if not counts.get(value):
                warn(name, f"class {value} has no voxel among the eligible window centres; skipped")
                continue
            classes.append(value)
            weights.append(weight)
            if counts[value] >= REJECTION_FRACTION * flat.size:
                positions.append(None)
                needs_labels = True
            else:
                positions.append(np.flatnonzero(flat == value).astype(position_dtype))
        if not classes:
            warn(name, "none of the requested classes is present; drawing centres uniformly instead")
            return UniformBoxIndex(box)
        probabilities = np.asarray(weights, dtype=float)
        return ClassIndex(classes, positions, probabilities / probabilities.sum(), flat if needs_labels else None)


def _class_counts(flat: np.ndarray, requested: Mapping[int, float] | None) -> dict[int, int]:
    """Voxel count per label value (only the requested values, when given)."""
    if flat.size == 0:
        return {}
    if requested is not None:
        values = list(requested)
    else:
        low, high = int(flat.min()), int(flat.max())
        values = list(range(low, high + 1)) if high - low <= 256 else [int(v) for v in np.unique(flat)]
    counts = {value: int(np.count_nonzero(flat == value)) for value in values}
    return {value: count for value, count in counts.items() if count or requested is not None}
