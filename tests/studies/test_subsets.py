"""Nested training subsets: nesting, determinism, sizes."""

from __future__ import annotations

import pytest

from vol_transfer.errors import RecipeError
from vol_transfer.studies.subsets import evenly_spaced_sizes, nested_subsets

IDS = [f"case{i:03d}" for i in range(105)]


def test_subsets_are_nested_and_sized() -> None:
    subsets = nested_subsets(IDS, evenly_spaced_sizes(105, 26), seed=3)
    assert [len(s) for s in subsets] == [26, 52, 79, 105]
    for small, large in zip(subsets, subsets[1:]):
        assert set(small) < set(large)


def test_same_seed_same_subsets_regardless_of_row_order() -> None:
    assert nested_subsets(IDS, [10, 20], seed=1) == nested_subsets(list(reversed(IDS)), [10, 20], seed=1)
    assert nested_subsets(IDS, [10, 20], seed=1) != nested_subsets(IDS, [10, 20], seed=2)


def test_fractions_and_counts_mix() -> None:
    assert [len(s) for s in nested_subsets(IDS, [0.25, 60, "all"])] == [26, 60, 105]
    assert [len(s) for s in nested_subsets(IDS, [1.0, 2])] == [1, 2]  # 1.0 is a count, not 100 %


@pytest.mark.parametrize("sizes", [[20, 10], [10, 10], [200], [0], [-0.5], [2.5], ["most"]])
def test_impossible_sizes_are_recipe_errors(sizes) -> None:
    with pytest.raises(RecipeError):
        nested_subsets(IDS, sizes)
