"""Sampler semantics on tiny synthetic label maps: eligible region, weights, classes, warnings."""

from __future__ import annotations

import numpy as np
import pytest

from vol_transfer.sampling import BalancedSampler, SamplingError, SamplingWarning, UniformSampler, WeightedSampler
from vol_transfer.sampling.base import eligible_box


def fraction(label: np.ndarray, centres: np.ndarray, value: int) -> float:
    return float((label[tuple(centres.T)] == value).mean())


@pytest.mark.parametrize(
    "shape, window, padding, lo, hi",
    [
        ((20, 20, 20), (8, 8, 8), "fit", (4, 4, 4), (16, 16, 16)),  # window [c-4, c+4) inside [0, 20)
        ((20, 20, 20), (7, 7, 7), "fit", (3, 3, 3), (16, 16, 16)),  # odd window: [c-3, c+4)
        ((5, 20, 20), (8, 8, 8), "fit", (3, 4, 4), (3, 16, 16)),    # short axis: window [-1, 7) covers it
        ((20, 20, 20), (8, 8, 8), "full", (0, 0, 0), (19, 19, 19)),
    ],
)
def test_eligible_box(shape, window, padding, lo, hi):
    box = eligible_box(shape, window, padding)
    assert (box.lo, box.hi) == (lo, hi)


def test_uniform_reaches_both_ends_of_the_eligible_region_and_nothing_beyond():
    sampler = UniformSampler(window=(8, 6, 4))
    centres = sampler.draw(sampler.prepare(None, spatial_shape=(12, 10, 9)), 5000, np.random.default_rng(1))
    box = eligible_box((12, 10, 9), (8, 6, 4))
    assert (centres.min(axis=0) == box.lo).all() and (centres.max(axis=0) == box.hi).all()
    starts = centres - np.array([4, 3, 2])
    assert (starts >= 0).all() and (starts + np.array([8, 6, 4]) <= np.array([12, 10, 9])).all()


def test_weighted_never_centres_background_and_follows_label_values_as_weights():
    label = np.zeros((30, 30, 30), dtype=np.uint8)
    label[8:12, 8:22, 8:22] = 1
    label[18:22, 8:22, 8:22] = 2  # same size, twice the weight
    sampler = WeightedSampler(window=8)
    centres = sampler.draw(sampler.prepare(label), 20000, np.random.default_rng(0))
    values = label[tuple(centres.T)]
    assert (values > 0).all()
    assert abs((values == 2).mean() - 2 / 3) < 0.02


def test_weighted_stratified_covers_the_distribution_evenly():
    weights = np.zeros((20, 20, 20))
    weights[4:16, 4:16, 4:16] = np.random.default_rng(3).random((12, 12, 12))
    sampler = WeightedSampler(window=4, stratified=True)
    prepared = sampler.prepare(None, weights)
    centres = sampler.draw(prepared, 64, np.random.default_rng(0))
    flat = np.ravel_multi_index(tuple((centres - prepared.box.lo).T), prepared.box.shape)
    # one draw per 1/64 of the cumulative weight: every stratum is hit exactly once
    cumulative = prepared.index.cumulative
    position_rank = np.searchsorted(prepared.index.positions, flat)
    strata = np.floor((cumulative[position_rank] - 1e-12) / cumulative[-1] * 64).astype(int)
    assert len(set(np.minimum(strata, 63))) >= 60  # boundaries may round into a neighbour


def test_weighted_rejects_negative_weights_and_warns_on_an_empty_map():
    with pytest.raises(SamplingError, match="negative"):
        WeightedSampler(4).prepare(None, -np.ones((10, 10, 10)))
    with pytest.warns(SamplingWarning, match="uniformly"):
        prepared = WeightedSampler(4).prepare(np.zeros((10, 10, 10), dtype=np.uint8))
    assert WeightedSampler(4).draw(prepared, 3, np.random.default_rng(0)).shape == (3, 3)


@pytest.mark.parametrize("probabilities", [None, {0: 0.2, 1: 0.3, 2: 0.5}, {1: 1.0}])
def test_balanced_class_frequencies_match_the_request(probabilities):
    label = np.zeros((40, 40, 40), dtype=np.uint8)
    label[10:14, 10:30, 10:30] = 1  # 2 % of the volume
    label[20:21, 10:20, 10:20] = 2  # tiny
    sampler = BalancedSampler(window=8, probabilities=probabilities)
    centres = sampler.draw(sampler.prepare(label), 10000, np.random.default_rng(7))
    requested = probabilities or {0: 1 / 3, 1: 1 / 3, 2: 1 / 3}
    total = sum(requested.values())
    for value in (0, 1, 2):
        assert abs(fraction(label, centres, value) - requested.get(value, 0) / total) < 0.02


def test_balanced_skips_an_absent_class_with_a_warning():
    label = np.zeros((20, 20, 20), dtype=np.uint8)
    label[8:12, 8:12, 8:12] = 1
    sampler = BalancedSampler(window=8, probabilities={0: 0.5, 1: 0.25, 3: 0.25})
    with pytest.warns(SamplingWarning, match="class 3"):
        prepared = sampler.prepare(label, name="case_7")
    centres = sampler.draw(prepared, 4000, np.random.default_rng(0))
    assert abs(fraction(label, centres, 1) - 1 / 3) < 0.03


def test_balanced_counts_only_voxels_that_can_be_centres():
    label = np.zeros((20, 20, 20), dtype=np.uint8)
    label[0:2, :, :] = 1  # only near the border: no window of 8 fits there without padding
    with pytest.warns(SamplingWarning, match="class 1"):
        BalancedSampler(window=8, probabilities={0: 0.5, 1: 0.5}).prepare(label)
    full = BalancedSampler(window=8, probabilities={0: 0.5, 1: 0.5}, padding="full")
    centres = full.draw(full.prepare(label), 2000, np.random.default_rng(0))
    assert abs(fraction(label, centres, 1) - 0.5) < 0.04


def test_draws_are_reproducible_for_a_seed():
    label = np.random.default_rng(0).integers(0, 3, size=(16, 16, 16)).astype(np.uint8)
    sampler = BalancedSampler(window=6)
    prepared = sampler.prepare(label)
    a = sampler.draw(prepared, 50, np.random.default_rng(11))
    b = sampler.draw(prepared, 50, np.random.default_rng(11))
    c = sampler.draw(prepared, 50, np.random.default_rng(12))
    assert (a == b).all() and not (a == c).all()


def test_bad_window_and_probabilities_are_refused():
    with pytest.raises(SamplingError, match="window"):
        UniformSampler(window=(8, 8))
    with pytest.raises(SamplingError, match="probabilities"):
        BalancedSampler(window=8, probabilities={0: -1.0})


def test_balanced_draws_common_classes_by_rejection_and_rare_ones_from_lists():
    label = np.zeros((30, 30, 30), dtype=np.uint8)
    label[10:12, 10:12, 10:12] = 1
    sampler = BalancedSampler(window=4)
    prepared = sampler.prepare(label)
    kinds = dict(zip(prepared.index.classes, prepared.index.positions))
    assert kinds[0] is None and kinds[1].size == 8  # background by rejection, class 1 listed
    centres = sampler.draw(prepared, 5000, np.random.default_rng(0))
    assert abs(fraction(label, centres, 0) - 0.5) < 0.02
