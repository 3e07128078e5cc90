"""BatchRing: slots are reused only after a take, copies are private, close frees waiting workers."""

from __future__ import annotations

import pytest
import torch

from vol_transfer.sampling.ring import BatchRing

SHAPES = {"image": ((2, 1, 4, 4, 4), torch.float32), "label": ((2, 4, 4, 4), torch.int16)}


def fill(ring: BatchRing, value: int) -> dict:
    buffers, message = ring.reserve(0, SHAPES)
    buffers["image"].fill_(value)
    buffers["label"].fill_(value)
    return message


def test_take_copies_and_frees_the_slot():
    ring = BatchRing(num_workers=1, slots=2)
    first, second = fill(ring, 1), fill(ring, 2)
    assert "ring_buffers" in first and "ring_buffers" not in second  # buffers travel once
    batch = ring.take(first)
    third = fill(ring, 3)  # reuses the slot of the first batch
    assert third["ring_slot"] == first["ring_slot"]
    assert batch["image"].eq(1).all() and batch["label"].eq(1).all()  # the copy kept its values
    assert ring.take(second)["image"].eq(2).all() and ring.take(third)["image"].eq(3).all()


def test_a_full_ring_waits_and_close_releases_the_worker():
    ring = BatchRing(num_workers=1, slots=1)
    fill(ring, 1)
    ring.close()  # without this the next reserve would wait for a release
    assert ring.reserve(0, SHAPES) is None


def test_changed_shapes_are_refused():
    ring = BatchRing(num_workers=1, slots=2)
    fill(ring, 1)
    with pytest.raises(ValueError):
        ring.reserve(0, {"image": ((2, 2, 4, 4, 4), torch.float32)})


def test_bad_sizes():
    with pytest.raises(ValueError):
        BatchRing(num_workers=0, slots=1)
