"""Virtual padding: windows that leave the volume are filled and marked."""

from __future__ import annotations

import numpy as np

from vol_transfer.sampling.padding import crop_window, valid_mask, window_start


def test_inside_window_is_a_plain_copy():
    volume = np.random.default_rng(0).random((2, 10, 11, 12)).astype(np.float32)
    out = crop_window(volume, (1, 2, 3), (4, 5, 6))
    assert np.array_equal(out, volume[:, 1:5, 2:7, 3:9])
    out[...] = 0  # a copy, not a view
    assert volume.any()


def test_window_larger_than_volume_is_padded_and_marked():
    volume = np.ones((1, 3, 4, 5), dtype=np.float32)
    start = window_start((1, 2, 2), (8, 8, 8))
    out = crop_window(volume, start, (8, 8, 8), fill=-2.0)
    valid = valid_mask((3, 4, 5), start, (8, 8, 8))
    assert valid.sum() == 3 * 4 * 5
    assert (out[0][valid] == 1).all() and (out[0][~valid] == -2).all()


def test_window_entirely_outside_is_all_padding():
    volume = np.ones((5, 5, 5), dtype=np.int16)
    assert (crop_window(volume, (10, 0, 0), (2, 2, 2), fill=-1) == -1).all()
    assert not valid_mask((5, 5, 5), (10, 0, 0), (2, 2, 2)).any()
