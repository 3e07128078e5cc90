"""Spatial steps: geometry is proven by world coordinates, and every step undoes exactly."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from vol_transfer.errors import RecipeError
from vol_transfer.preprocessing.spatial import (
    SpatialInverse,
    plan_foreground_crop,
    plan_pad,
    plan_reorientation,
    plan_resampling,
)


def _world(affine: np.ndarray, index) -> np.ndarray:
    return (affine @ np.append(np.asarray(index, dtype=float), 1.0))[:3]


def _index(affine: np.ndarray, world) -> np.ndarray:
    return np.rint((np.linalg.inv(affine) @ np.append(world, 1.0))[:3]).astype(int)


def _awkward_affine() -> np.ndarray:
    # axes permuted and flipped (voxel axes run P, I, L), anisotropic, off-origin
    affine = np.zeros((4, 4))
    affine[0, 2] = -1.5
    affine[1, 0] = -0.8
    affine[2, 1] = -2.0
    affine[:3, 3] = [30.0, -12.0, 7.5]
    affine[3, 3] = 1.0
    return affine


@pytest.mark.parametrize("target", ["RAS", "LPS", "PIR", "SAL"])
def test_reorientation_keeps_every_voxel_at_its_world_position(target):
    rng = np.random.default_rng(1)
    array = rng.random((2, 5, 6, 7)).astype(np.float32)
    affine = _awkward_affine()
    step = plan_reorientation((5, 6, 7), affine, target)
    out = step.forward(array)
    assert "".join(nib.aff2axcodes(step.out_affine)) == target
    assert out.shape[1:] == step.out_shape
    for index in [(0, 0, 0), (4, 5, 6), (1, 3, 2)]:
        moved = _index(step.out_affine, _world(affine, index))
        assert out[(slice(None), *moved)].tolist() == array[(slice(None), *index)].tolist()
    np.testing.assert_array_equal(step.backward(out), array)


def test_reorientation_matches_nibabel_canonical():
    array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    image = nib.Nifti1Image(array, _awkward_affine())
    canonical = nib.as_closest_canonical(image)
    step = plan_reorientation(array.shape, image.affine, "RAS")
    np.testing.assert_array_equal(step.forward(array), np.asanyarray(canonical.dataobj))
    np.testing.assert_allclose(step.out_affine, canonical.affine)


def test_reorientation_rejects_bad_codes():
    with pytest.raises(RecipeError):
        plan_reorientation((2, 2, 2), np.eye(4), "RAR")
    with pytest.raises(RecipeError):
        plan_reorientation((2, 2, 2), np.eye(4), "XYZ")


def test_resampling_linear_field_lands_on_world_coordinates():
    # the image value is the world x coordinate, so after linear resampling every new voxel
    # must hold its own (new) world x coordinate
    affine = _awkward_affine()
    shape = (10, 12, 9)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world_x = (grid @ affine[:3, :3].T + affine[:3, 3])[:, 0].reshape(shape).astype(np.float32)
    step = plan_resampling(shape, affine, [0.5, 1.0, 1.0])
    out = step.forward(world_x, "linear")
    assert out.shape == step.out_shape
    np.testing.assert_allclose(step.out_affine[:3, 3], affine[:3, 3])  # first voxel centre kept
    np.testing.assert_allclose(np.sqrt((step.out_affine[:3, :3] ** 2).sum(0)), [0.5, 1.0, 1.0])
    for index in [(0, 0, 0), (5, 7, 3), (12, 10, 8)]:
        assert out[index] == pytest.approx(_world(step.out_affine, index)[0], abs=1e-3)


def test_resampling_labels_nearest_round_trip_is_exact_for_integer_upsampling():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=(6, 7, 8)).astype(np.uint8)
    step = plan_resampling(labels.shape, _awkward_affine(), [0.4, 1.0, 0.75])
    up = step.forward(labels, "nearest")
    assert up.dtype == np.uint8 and set(np.unique(up)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(step.backward(up, "nearest"), labels)


def test_crop_and_pad_translate_the_affine_and_undo():
    array = np.zeros((1, 10, 10, 10), np.float32)
    array[0, 3:5, 4:8, 6] = 5.0
    affine = _awkward_affine()
    crop = plan_foreground_crop(array, affine, margin=1)
    assert crop.start == (2, 3, 5) and crop.stop == (6, 9, 8)
    cropped = crop.forward(array)
    assert _world(crop.out_affine, (0, 0, 0)).tolist() == _world(affine, crop.start).tolist()
    pad = plan_pad(crop.out_shape, crop.out_affine, [8, 6, 5])
    padded = pad.forward(cropped)
    assert padded.shape[1:] == (8, 6, 5) and pad.before == (2, 0, 1)
    np.testing.assert_allclose(_world(pad.out_affine, pad.before), _world(crop.out_affine, (0, 0, 0)))
    np.testing.assert_array_equal(crop.backward(pad.backward(padded)), array)


def test_crop_uses_border_background_not_zero():
    array = np.full((8, 8, 8), -1024.0)
    array[2:4, 3, 5] = 40.0
    crop = plan_foreground_crop(array, np.eye(4))
    assert crop.start == (2, 3, 5) and crop.stop == (4, 4, 6)
    empty = plan_foreground_crop(np.zeros((3, 3, 3)), np.eye(4), margin=2)
    assert empty.out_shape == (3, 3, 3)


def test_inverse_checks_shapes():
    inverse = SpatialInverse((4, 4, 4), np.eye(4), [plan_pad((4, 4, 4), np.eye(4), [6, 6, 6])])
    with pytest.raises(ValueError, match="prepared shape"):
        inverse.restore(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="order"):
        inverse.restore(np.zeros((6, 6, 6)), order="cubic")
