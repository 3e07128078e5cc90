"""Nested training subsets S1 ⊂ S2 ⊂ … for training-set-size studies.

One seeded permutation of the training subjects is cut into prefixes, so every smaller subset is
inside every larger one by construction (and the same seed always gives the same subsets).

Example:
    >>> subsets = nested_subsets([f"case{i}" for i in range(105)], [26, 0.5, 0.75, "all"], seed=0)
    >>> [len(s) for s in subsets]
    [26, 52, 79, 105]
    >>> set(subsets[0]) <= set(subsets[1])
    True
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vol_transfer.errors import RecipeError


def subset_sizes(total: int, sizes: Sequence[int | float | str], where: str = "subsets") -> list[int]:
    """Turn sizes (counts ≥ 1, fractions in (0, 1), or ``"all"``) into increasing counts ≤ ``total``."""
    counts = []
    for size in sizes:
        if size == "all":
            count = total
        elif isinstance(size, (int, float)) and 0 < size < 1:
            count = max(1, round(size * total))
        elif isinstance(size, (int, float)) and float(size).is_integer() and size >= 1:
            count = int(size)
        else:
            raise RecipeError(where, f"subset size {size!r} is not a count ≥ 1, a fraction in (0, 1) or 'all'", "fix the size")
        if count > total:
            raise RecipeError(where, f"subset of {count} cases but the training split has {total}", "use a smaller size")
        counts.append(count)
    if counts != sorted(counts) or len(set(counts)) != len(counts):
        raise RecipeError(where, f"sizes {counts} are not strictly increasing", "list subsets from smallest to largest")
    return counts


def evenly_spaced_sizes(total: int, smallest: int, count: int = 4) -> list[int]:
    """``count`` sizes from ``smallest`` to ``total``, evenly between (the study's S1…S4 rule)."""
    return [int(round(v)) for v in np.linspace(smallest, total, count)]


def nested_subsets(subject_ids: Sequence[str], sizes: Sequence[int | float | str], seed: int = 0) -> list[list[str]]:
    """Nested subsets of ``subject_ids`` with the given sizes, from one seeded permutation."""
    ids = sorted(subject_ids)  # independent of manifest row order
    if len(set(ids)) != len(ids):
        raise RecipeError("subsets", "subject IDs are not unique", "fix the manifest")
    counts = subset_sizes(len(ids), sizes)
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    return [sorted(shuffled[:count]) for count in counts]
