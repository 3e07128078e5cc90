"""Acquisition-robustness augmentation of 2-D batches: what each change does, seeding, exact resume."""

import numpy as np
import pytest
import torch

from vol_transfer.training.classification import class_loss_weights
from vol_transfer.training.image_augmentation import ImageAugmentation, augment_images
from vol_transfer.training.image_data import ImageBatches, epoch_indices

OFF = dict(rotate_degrees=0, scale=0, translate=0, brightness=0, contrast=0, gamma=0, blur_probability=0, noise_std=0)


def _bar_image(size: int = 32) -> np.ndarray:
    image = np.zeros((1, 1, size, size), np.float32)
    image[0, 0, :, size // 2 - 2: size // 2 + 2] = 1.0  # a vertical bar
    return image


def test_everything_off_is_the_identity():
    images = np.random.default_rng(0).random((3, 1, 16, 16), dtype=np.float32)
    out = augment_images(images, ImageAugmentation(**OFF), np.random.default_rng(0))
    np.testing.assert_allclose(out, images, atol=1e-6)


def test_rotation_turns_a_vertical_bar():
    settings = ImageAugmentation(**{**OFF, "rotate_degrees": 90})
    rotated = augment_images(_bar_image(), settings, np.random.default_rng(3))[0, 0]
    angle = np.rad2deg(np.deg2rad(np.random.default_rng(3).uniform(-90, 90)))
    assert abs(angle) > 30  # this seed draws a large rotation, so the bar must leave its columns
    columns = rotated[:, 14:18].sum() / rotated.sum()
    assert columns < 0.6


def test_contrast_and_brightness_change_the_intensities_but_stay_in_range():
    images = np.full((8, 1, 8, 8), 0.5, np.float32)
    images[:, :, :4] = 0.2
    out = augment_images(images, ImageAugmentation(**{**OFF, "contrast": 0.5, "brightness": 0.3}),
                         np.random.default_rng(0))
    spreads = out[:, 0, 5, 0] - out[:, 0, 0, 0]
    assert np.ptp(spreads) > 0.05 and out.min() >= 0 and out.max() <= 1


def test_blur_lowers_the_edge_sharpness_and_noise_adds_variance():
    image = _bar_image()
    blurred = augment_images(image, ImageAugmentation(**{**OFF, "blur_probability": 1, "blur_sigma": 2}),
                             np.random.default_rng(0))
    assert np.abs(np.diff(blurred[0, 0], axis=1)).max() < 0.9 * np.abs(np.diff(image[0, 0], axis=1)).max()
    flat = np.full((1, 1, 32, 32), 0.5, np.float32)
    noisy = augment_images(flat, ImageAugmentation(**{**OFF, "noise_std": 0.1}), np.random.default_rng(0))
    assert noisy.std() > 0.005


def test_same_seed_same_batch_and_resume_is_exact():
    rng = np.random.default_rng(0)
    images = (rng.random((12, 1, 16, 16)) * 255).astype(np.uint8)
    labels = np.array([0] * 8 + [1] * 4)
    make = lambda: ImageBatches(images, labels, batch_size=4, balance="oversample", seed=5, hflip=True,
                                augment=ImageAugmentation())
    straight = make()
    expected = [next(straight)["image"] for _ in range(5)]
    resumed = make()
    next(resumed), next(resumed)
    state = resumed.state_dict()
    again = make()
    again.load_state_dict(state)
    for batch in expected[2:]:
        assert torch.equal(next(again)["image"], batch)
    plain = ImageBatches(images, labels, batch_size=4, balance="oversample", seed=5, hflip=True)
    assert not torch.equal(next(plain)["image"], expected[0])


def test_class_weighted_loss_keeps_every_image_once_and_weights_the_minority():
    labels = np.array([0] * 30 + [1] * 10)
    order = epoch_indices(labels, "class_weighted_loss", np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(40))
    weights = class_loss_weights(labels, 2)
    assert weights[1] / weights[0] == pytest.approx(3.0)
    # the weighted loss of a constant prediction is the same for either class when weights balance counts
    logits = torch.zeros(40, 2)
    logits[:, 0] = 1.0
    per_class = [torch.nn.functional.cross_entropy(logits[labels == k], torch.from_numpy(labels[labels == k]),
                                                   reduction="sum") * weights[k] for k in (0, 1)]
    assert float(per_class[1]) / float(per_class[0]) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits[:1], torch.tensor([1])))
        / float(torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0]))))
