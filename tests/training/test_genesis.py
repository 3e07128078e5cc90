from __future__ import annotations

import numpy as np
import pytest

from vol_transfer.training.genesis import (
    GenesisCorruption,
    bezier_curve,
    bezier_intensity,
    inpaint,
    inpaint_boxes,
    local_pixel_shuffling,
    outpaint,
    outpaint_boxes,
    random_monotone_controls,
    shuffle_block,
)


@pytest.mark.parametrize("seed", range(20))
def test_bezier_mapping_is_monotone_and_maps_unit_interval_onto_itself(seed):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 501, dtype=np.float32)[None, :, None]
    mapped = bezier_intensity(ramp, rng, invert_probability=0.5).ravel()
    steps = np.diff(mapped)
    assert np.all(steps >= -1e-6) or np.all(steps <= 1e-6)
    assert mapped.min() >= 0 and mapped.max() <= 1
    assert {round(float(mapped[0]), 5), round(float(mapped[-1]), 5)} == {0.0, 1.0}


def test_bezier_curve_hits_its_endpoints_and_is_not_identity():
    xs, ys = bezier_curve([(0.1, 0.8), (0.3, 0.9)])
    assert (xs[0], ys[0], xs[-1], ys[-1]) == (0, 0, 1, 1)
    mapped = bezier_intensity(np.full((1, 2, 2), 0.3, np.float32), np.random.default_rng(0),
                              control_points=[(0.1, 0.8), (0.3, 0.9)], invert_probability=0.0)
    assert mapped.min() > 0.6  # bright curve lifts 0.3 a lot


def test_random_controls_are_ordered():
    for seed in range(10):
        (x1, y1), (x2, y2) = random_monotone_controls(np.random.default_rng(seed))
        assert x1 <= x2 and y1 <= y2


def test_single_block_shuffle_keeps_block_multiset_and_touches_nothing_else():
    rng = np.random.default_rng(1)
    image = rng.random((2, 20, 20)).astype(np.float32)
    box = (slice(3, 9), slice(5, 12))
    out = shuffle_block(image.copy(), box, rng)
    inside = (slice(None), *box)
    for c in range(2):
        assert np.array_equal(np.sort(out[c][box].ravel()), np.sort(image[c][box].ravel()))
    assert not np.array_equal(out[inside], image[inside])
    mask = np.ones((20, 20), bool)
    mask[box] = False
    assert np.array_equal(out[:, mask], image[:, mask])
    # the same permutation for all channels: channel pairs stay together
    pairs_in = sorted(zip(image[0][box].ravel(), image[1][box].ravel()))
    pairs_out = sorted(zip(out[0][box].ravel(), out[1][box].ravel()))
    assert pairs_in == pairs_out


def test_local_pixel_shuffling_keeps_values_and_changes_texture_in_3d():
    rng = np.random.default_rng(2)
    image = rng.random((1, 16, 16, 8)).astype(np.float32)
    out = local_pixel_shuffling(image, rng, num_blocks=50, max_block_size=4)
    assert np.array_equal(np.sort(out.ravel()), np.sort(image.ravel()))
    assert not np.array_equal(out, image)
    assert image.shape == out.shape


def test_inpainting_changes_only_inside_boxes():
    rng = np.random.default_rng(3)
    image = np.full((1, 60, 60), 0.5, np.float32)
    boxes = inpaint_boxes((60, 60), rng, max_boxes=3)
    out = inpaint(image, boxes, rng)
    inside = np.zeros((60, 60), bool)
    for box in boxes:
        inside[box] = True
        assert 10 <= box[0].stop - box[0].start <= 15
    assert np.all(out[0][~inside] == 0.5)
    assert np.mean(out[0][inside] != 0.5) > 0.99
    assert out.min() >= 0 and out.max() <= 1


def test_outpainting_keeps_only_inside_boxes():
    rng = np.random.default_rng(4)
    image = np.full((1, 70, 70), 0.5, np.float32)
    boxes = outpaint_boxes((70, 70), rng, max_boxes=2)
    out = outpaint(image, boxes, rng)
    inside = np.zeros((70, 70), bool)
    for box in boxes:
        inside[box] = True
    assert np.all(out[0][inside] == 0.5)
    assert np.mean(out[0][~inside] != 0.5) > 0.99


def test_combined_corruption_respects_probabilities():
    image = np.random.default_rng(5).random((1, 32, 32)).astype(np.float32)
    never = GenesisCorruption(nonlinear_probability=0, shuffle_probability=0, paint_probability=0)
    assert np.array_equal(never(image, np.random.default_rng(0)), image)
    shuffle_only = GenesisCorruption(nonlinear_probability=0, shuffle_probability=1, paint_probability=0,
                                     shuffle_blocks=20, shuffle_block_size=4)
    out = shuffle_only(image, np.random.default_rng(0))
    assert np.array_equal(np.sort(out.ravel()), np.sort(image.ravel())) and not np.array_equal(out, image)
    default = GenesisCorruption()
    outs = [default(image, np.random.default_rng(s)) for s in range(10)]
    assert all(o.shape == image.shape and o.dtype == np.float32 for o in outs)
    assert all(0 <= o.min() and o.max() <= 1 for o in outs)
    assert sum(not np.array_equal(o, image) for o in outs) >= 9
