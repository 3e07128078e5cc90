"""Acquisition-robustness augmentation for 2D training batches (X-rays): pose, exposure, blur, noise.

Chest X-rays from another hospital or scanner differ in patient position and field of view
(small rotations, zoom, shifts), in exposure and processing (brightness, contrast, gamma) and in
sharpness and noise. :func:`augment_images` draws one set of such parameters per image from a
NumPy generator — so a batch is a pure function of its seed and resume stays exact — and applies
them to a float batch in ``[0, 1]``: one batched ``affine_grid``/``grid_sample`` (bilinear,
border padding), then intensity changes, clipped back to ``[0, 1]``.

>>> import numpy as np
>>> images = np.random.default_rng(0).random((4, 1, 32, 32), dtype=np.float32)
>>> out = augment_images(images, ImageAugmentation(), np.random.default_rng(1))
>>> out.shape, out.dtype, bool(out.min() >= 0 and out.max() <= 1), bool(np.abs(out - images).mean() > 0.01)
((4, 1, 32, 32), dtype('float32'), True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from vol_transfer.recipes import option


@dataclass
class ImageAugmentation:
    """Ranges of the random changes (a recipe's ``data.augment:`` section; 0 turns one off)."""

    rotate_degrees: float = option(10.0, ge=0, le=180, help="rotation drawn from ±this")
    scale: float = option(0.1, ge=0, lt=1, help="zoom factor drawn from 1 ± this")
    translate: float = option(0.06, ge=0, lt=1, help="shift drawn from ± this fraction of the side")
    brightness: float = option(0.1, ge=0, le=1, help="added intensity drawn from ± this")
    contrast: float = option(0.2, ge=0, lt=1, help="contrast factor around the image mean drawn from 1 ± this")
    gamma: float = option(0.25, ge=0, le=2, help="gamma drawn log-uniformly from [1/(1+g), 1+g]")
    blur_probability: float = option(0.2, ge=0, le=1, help="chance of a Gaussian blur")
    blur_sigma: float = option(1.0, ge=0, help="largest blur sigma in pixels (drawn uniformly from 0.3 to this)")
    noise_std: float = option(0.02, ge=0, le=1, help="largest Gaussian noise standard deviation")


def _affine_matrices(count: int, settings: ImageAugmentation, rng: np.random.Generator) -> torch.Tensor:
    angle = np.deg2rad(rng.uniform(-settings.rotate_degrees, settings.rotate_degrees, count))
    zoom = rng.uniform(1 - settings.scale, 1 + settings.scale, count)
    shift = rng.uniform(-settings.translate, settings.translate, (count, 2)) * 2  # grid units span [-1, 1]
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    theta = np.stack([np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1)
    return torch.from_numpy(theta.astype(np.float32))


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(image.dtype)
    channels = image.shape[0]
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)[0]


def augment_images(images: np.ndarray, settings: ImageAugmentation, rng: np.random.Generator) -> np.ndarray:
    """Randomly posed, exposed, blurred and noised copies of ``images`` ``(N, C, H, W)`` in ``[0, 1]``."""
    count = len(images)
    batch = torch.from_numpy(np.array(images, dtype=np.float32))  # a copy: the input is left as it is
    if settings.rotate_degrees or settings.scale or settings.translate:
        grid = F.affine_grid(_affine_matrices(count, settings, rng), list(batch.shape), align_corners=False)
        batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gains = rng.uniform(1 - settings.contrast, 1 + settings.contrast, count)
    offsets = rng.uniform(-settings.brightness, settings.brightness, count)
    limit = math.log1p(settings.gamma)
    gammas = np.exp(rng.uniform(-limit, limit, count))
    blurs = rng.random(count) < settings.blur_probability
    sigmas = rng.uniform(0.3, max(0.3, settings.blur_sigma), count)
    noise = rng.uniform(0, settings.noise_std, count)
    out = batch.numpy()
    for i in range(count):
        image = out[i]
        if blurs[i] and settings.blur_sigma > 0:
            image = _blur(torch.from_numpy(image), float(sigmas[i])).numpy()
        mean = float(image.mean())
        image = np.clip((image - mean) * gains[i] + mean + offsets[i], 0.0, 1.0) ** gammas[i]
        if noise[i] > 0:
            image = image + rng.normal(0.0, noise[i], image.shape).astype(np.float32)
        out[i] = np.clip(image, 0.0, 1.0)
    return out
