"""Patch augmentation: rotation, scaling and flips in one resample of the window; intensity options.

Spatial augmentation never rotates the whole volume: for a window centred on ``c`` the output
voxel at offset ``r`` (from the window centre) reads the volume at ``c + M r`` where ``M`` folds
rotation (±``rotation_degrees`` about each axis), isotropic scaling (±``scaling``) and flips. Only
the source region those positions need is cut out (bigger than the window when rotating or
shrinking), so window borders hold real voxels wherever the volume has them; images are
interpolated linearly, labels and the ``valid`` mask by nearest neighbour.

Speed: the linear resample runs as two 2D ``grid_sample`` passes (in-plane, then between planes;
see :func:`_linear_two_pass`) because PyTorch's 2D CPU kernel is vectorised and its 3D one is
not — about twice as fast as one 3D pass and within ~1 % of trilinear on MR-like images.

TorchIO transforms (``torchio``, :mod:`vol_transfer.sampling.torchio_augment`) run after the
resample and before the intensity options below; those needing context (elastic deformation)
get a resampled margin that is cropped off afterwards.

Intensity options (off by default): ``gamma`` (γ = exp(U(-gamma, gamma)) applied to each
channel rescaled to [0, 1], then scaled back), ``noise_std`` (Gaussian noise, σ ~ U(0, noise_std),
in image units) and ``bias_field`` (a smooth multiplicative field exp(polynomial of order
``bias_order``), coefficients ~ U(-bias_field, bias_field)).

Example:
    >>> import numpy as np
    >>> aug = Augmentation(rotation_degrees=10, scaling=0.1, flip_axes=(0,))
    >>> params = aug.draw(np.random.default_rng(0))
    >>> image = np.random.rand(2, 60, 60, 60).astype(np.float32); label = np.zeros((60, 60, 60), np.int16)
    >>> patch = extract_patch(image, label, centre=(30, 30, 30), window=(32, 32, 32), params=params)
    >>> patch.image.shape, patch.label.shape, bool(patch.valid.all())
    ((2, 32, 32, 32), (32, 32, 32), True)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vol_transfer.sampling.base import SamplingError
from vol_transfer.sampling.padding import crop_window, valid_mask, window_start

if TYPE_CHECKING:
    from vol_transfer.sampling.torchio_augment import TorchioPipeline

IDENTITY_TOLERANCE = 1e-6
TWO_PASS_MIN_DIAGONAL = 0.5  # |M[0,0]| below this (rotations near 90°) uses the single 3D resample


@dataclass(frozen=True)
class Augmentation:
    """Random augmentation settings; :meth:`draw` makes the parameters for one patch.

    Args:
        rotation_degrees: maximum absolute rotation about each axis (uniform), degrees.
        scaling: maximum relative isotropic zoom, e.g. 0.1 = ×0.9 … ×1.1.
        flip_axes: spatial axes (0, 1, 2) each flipped with probability 0.5.
        gamma: maximum |log γ| for the gamma change, or None.
        noise_std: maximum σ of added Gaussian noise, or None.
        bias_field: maximum |coefficient| of the log bias-field polynomial, or None.
        bias_order: order of that polynomial.
        torchio: TorchIO transform specs (:mod:`vol_transfer.sampling.torchio_augment`), applied in order.
    """

    rotation_degrees: float = 10.0
    scaling: float = 0.1
    flip_axes: tuple[int, ...] = ()
    gamma: float | None = None
    noise_std: float | None = None
    bias_field: float | None = None
    bias_order: int = 3
    torchio: tuple[Any, ...] = ()

    @functools.cached_property
    def torchio_pipeline(self) -> "TorchioPipeline | None":
        """The ``torchio`` transforms as one pipeline (None when there are none)."""
        from vol_transfer.sampling.torchio_augment import TorchioPipeline

        return TorchioPipeline(self.torchio) if self.torchio else None

    def __post_init__(self) -> None:
        if self.rotation_degrees < 0 or not 0 <= self.scaling < 1:
            raise SamplingError(
                "augmentation", f"rotation {self.rotation_degrees} / scaling {self.scaling} out of range",
                "use rotation_degrees >= 0 and 0 <= scaling < 1",
            )
        if any(axis not in (0, 1, 2) for axis in self.flip_axes):
            raise SamplingError("augmentation", f"flip_axes {self.flip_axes} must be among 0, 1, 2", "e.g. flip_axes=(0,)")

    @classmethod
    def study(cls) -> "Augmentation":
        """The study's setting: rotation ±10°, scaling ±10 %."""
        return cls(rotation_degrees=10.0, scaling=0.1)

    def draw(self, rng: np.random.Generator) -> "AugmentParams":
        angles = np.deg2rad(rng.uniform(-self.rotation_degrees, self.rotation_degrees, size=3))
        zoom = float(rng.uniform(1 - self.scaling, 1 + self.scaling))
        flips = np.ones(3)
        for axis in self.flip_axes:
            if rng.random() < 0.5:
                flips[axis] = -1.0
        matrix = rotation_matrix(angles) / zoom @ np.diag(flips)
        gamma = float(np.exp(rng.uniform(-self.gamma, self.gamma))) if self.gamma else None
        noise = float(rng.uniform(0, self.noise_std)) if self.noise_std else None
        bias = None
        if self.bias_field:
            bias = rng.uniform(-self.bias_field, self.bias_field, size=len(_monomials(self.bias_order)))
        seed = int(rng.integers(0, 2**63 - 1))
        return AugmentParams(matrix, gamma, noise, bias, self.bias_order, seed)


@dataclass
class AugmentParams:
    """One patch's augmentation: source-offset matrix and intensity parameters."""

    matrix: np.ndarray = field(default_factory=lambda: np.eye(3))
    gamma: float | None = None
    noise_std: float | None = None
    bias: np.ndarray | None = None
    bias_order: int = 3
    seed: int = 0


@dataclass
class Patch:
    image: np.ndarray  # (C, *window) float32
    label: np.ndarray | None  # (*window) int16; padding_label outside the volume
    valid: np.ndarray  # (*window) bool, False where the window left the volume
    centre: tuple[int, int, int]


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """Rotation about axes 0, 1 and 2 by ``angles`` (radians), composed in that order."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def extract_patch(
    image: np.ndarray,
    label: np.ndarray | None,
    centre: Sequence[int],
    window: Sequence[int],
    params: AugmentParams | None = None,
    image_fill: float = 0.0,
    padding_label: int = -1,
    torchio: "TorchioPipeline | None" = None,
    torchio_seed: int = 0,
) -> Patch:
    """Cut (and augment) one window centred on ``centre``; see the module docstring.

    ``torchio`` (with ``torchio_seed``) runs TorchIO transforms between the resample and the
    intensity options.
    """
    window = tuple(int(w) for w in window)
    centre = tuple(int(c) for c in centre)
    if torchio is not None:
        margin = torchio.margin
        spatial = None if params is None else replace(params, gamma=None, noise_std=None, bias=None)
        patch = extract_patch(image, label, centre, tuple(w + 2 * margin for w in window), spatial,
                              image_fill, padding_label)
        patch.image, patch.label, patch.valid = torchio.apply(patch.image, patch.label, patch.valid, torchio_seed,
                                                              padding_label)
        if margin:
            inner = tuple(slice(margin, margin + w) for w in window)
            patch.image = np.ascontiguousarray(patch.image[(slice(None),) + inner])
            patch.valid = np.ascontiguousarray(patch.valid[inner])
            patch.label = None if patch.label is None else np.ascontiguousarray(patch.label[inner])
        patch.centre = centre
        if params is not None:
            patch.image = apply_intensity(patch.image, params)
        return patch
    matrix = np.eye(3) if params is None else params.matrix
    flips_only = np.allclose(np.abs(matrix), np.diag(np.abs(np.diag(matrix))), atol=IDENTITY_TOLERANCE) and np.allclose(
        np.abs(np.diag(matrix)), 1.0, atol=IDENTITY_TOLERANCE
    )
    if flips_only:
        patch = _crop(image, label, centre, window, image_fill, padding_label)
        flip_axes = tuple(i for i in range(3) if matrix[i, i] < 0)
        if flip_axes:
            patch.image = np.ascontiguousarray(np.flip(patch.image, axis=tuple(a + 1 for a in flip_axes)))
            patch.valid = np.ascontiguousarray(np.flip(patch.valid, axis=flip_axes))
            if patch.label is not None:
                patch.label = np.ascontiguousarray(np.flip(patch.label, axis=flip_axes))
    else:
        patch = _resample(image, label, centre, window, matrix, image_fill, padding_label)
    if params is not None:
        patch.image = apply_intensity(patch.image, params)
    return patch


def _crop(image, label, centre, window, image_fill, padding_label) -> Patch:
    start = window_start(centre, window)
    img = crop_window(image, start, window, fill=image_fill, dtype=np.float32)
    valid = valid_mask(image.shape[1:], start, window)
    lab = None if label is None else crop_window(label, start, window, fill=padding_label, dtype=np.int16)
    return Patch(img, lab, valid, centre)


def _resample(image, label, centre, window, matrix, image_fill, padding_label) -> Patch:
    spatial = image.shape[1:]
    offsets = [np.arange(w, dtype=np.float64) - w // 2 for w in window]
    if abs(matrix[0, 0]) >= TWO_PASS_MIN_DIAGONAL:
        img = _linear_two_pass(image, centre, window, matrix, offsets, image_fill)
    else:
        img = _linear_grid_3d(image, centre, window, matrix, offsets, image_fill)
    lab, valid = _nearest_labels(label, spatial, centre, window, matrix, offsets, padding_label)
    return Patch(img, lab, valid, tuple(centre))


def _nearest_labels(label, spatial, centre, window, matrix, offsets, padding_label):
    """Labels and the valid mask: the nearest source voxel of every window voxel.

    Indices go straight into the volume (clipped per axis where the window can leave it), so no
    padded copy of the region is made; voxels whose nearest source is outside get
    ``padding_label`` and ``valid=False``.
    """
    origin = np.asarray(centre, dtype=np.float64)
    low, high = _extent(origin, matrix, offsets)
    leaves = [lo < 0 or hi > n - 1 for lo, hi, n in zip(low, high, spatial)]
    flat, outside = _nearest_flat(origin, matrix, offsets, spatial, clip=leaves)
    valid = np.ones(window, dtype=bool) if outside is None else ~outside
    if label is None:
        return None, valid
    lab = np.ascontiguousarray(label).reshape(-1).take(flat).astype(np.int16)
    if outside is not None:
        lab[outside] = padding_label
    return lab, valid


def _extent(origin: np.ndarray, matrix: np.ndarray, offsets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest source coordinate per axis of ``origin + matrix @ r`` over the window."""
    low, high = origin.copy(), origin.copy()
    for i in range(len(origin)):
        for j in range(3):
            ends = (matrix[i, j] * offsets[j][0], matrix[i, j] * offsets[j][-1])
            low[i] += min(ends)
            high[i] += max(ends)
    return low, high


def _broadcast_sum(first: np.ndarray, second: np.ndarray, third: np.ndarray, dtype=np.float32, out=None) -> np.ndarray:
    """``first[:, None, None] + second[None, :, None] + third[None, None, :]`` in one allocation."""
    if out is None:
        out = np.empty((len(first), len(second), len(third)), dtype=dtype)
    np.add(first.astype(dtype)[:, None, None], second.astype(dtype)[None, :, None], out=out)
    out += third.astype(dtype)[None, None, :]
    return out


def separable_grid(x_terms: Sequence[np.ndarray], y_terms: Sequence[np.ndarray]) -> torch.Tensor:
    """A 2D ``grid_sample`` grid ``g[a, b, c] = (Σ x_terms[n][·], Σ y_terms[n][·])`` over three axes.

    Built as complex64 sums (x real, y imaginary), so the interleaved (x, y) pairs are written in
    one contiguous pass: measured 2.5× faster than filling each coordinate through a strided view.

    Example:
        >>> g = separable_grid([np.zeros(2), np.zeros(3), np.arange(4.0)], [np.ones(2), np.zeros(3), np.zeros(4)])
        >>> tuple(g.shape), g[1, 2, 3].tolist()
        ((2, 3, 4, 2), [3.0, 1.0])
    """
    first, second, third = ((np.asarray(x, dtype=np.float32) + 1j * np.asarray(y, dtype=np.float32)).astype(np.complex64)
                            for x, y in zip(x_terms, y_terms))
    out = np.empty((len(first), len(second), len(third)), dtype=np.complex64)
    np.add((first[:, None] + second[None, :])[:, :, None], third[None, None, :], out=out)
    return torch.from_numpy(out.view(np.float32).reshape(out.shape + (2,)))


def _nearest_flat(origin, matrix, offsets, size, clip: Sequence[bool] = (False, False, False)):
    """Flat index (into a volume of ``size``) of the nearest source voxel of every window voxel.

    Axes flagged in ``clip`` may round outside the volume: those indices are clipped and the
    voxels reported in the returned ``outside`` mask (None when nothing is clipped).
    """
    dtype = np.float32 if int(np.prod(size)) < 2**24 else np.float64  # flat indices stay exact
    flat = coord = outside = None
    for i in range(3):
        coord = _broadcast_sum(origin[i] + matrix[i, 0] * offsets[0], matrix[i, 1] * offsets[1],
                               matrix[i, 2] * offsets[2], dtype, out=coord)
        np.rint(coord, out=coord)
        if clip[i]:
            beyond = (coord < 0) | (coord > size[i] - 1)
            outside = beyond if outside is None else outside | beyond
            np.clip(coord, 0, size[i] - 1, out=coord)
        if flat is None:
            flat, coord = coord, None
        else:
            flat *= size[i]
            flat += coord
    return flat.astype(np.intp), outside


def _linear_two_pass(image, centre, window, matrix, offsets, image_fill) -> np.ndarray:
    """Linear resample as two cheap 2D passes (PyTorch's 2D grid_sample is vectorised, 3D is not).

    Write M = B·C with C changing only axis 0 (its row 0 is M's row 0) and B keeping axis 0.
    Pass 1 resamples every source plane k along axes 1–2 by B (batch = planes); pass 2
    interpolates between planes at s = c0 + M[0]·r. Exact for linear intensities, within a few
    per cent of trilinear on noise-like images: plenty for augmentation.
    """
    w0, w1, w2 = window
    centre = np.asarray(centre, dtype=np.float64)
    shear = np.zeros((3, 3))
    for i in (1, 2):
        shear[i, 0] = matrix[i, 0] / matrix[0, 0]
        shear[i, 1] = matrix[i, 1] - shear[i, 0] * matrix[0, 1]
        shear[i, 2] = matrix[i, 2] - shear[i, 0] * matrix[0, 2]
    low, high = _extent(centre, matrix, offsets)
    first, last = int(np.floor(low[0])), int(np.floor(high[0])) + 1
    planes = np.arange(first, last + 1, dtype=np.float64) - centre[0]
    start, size = [first], [last - first + 1]
    for i in (1, 2):
        lo, hi = _extent(np.array([centre[i]]), shear[i:i + 1], [planes, offsets[1], offsets[2]])
        start.append(int(np.floor(lo[0])))
        size.append(int(np.floor(hi[0])) + 2 - start[-1])
    spatial = image.shape[1:]
    padding = "border"  # never reached: the region has a voxel of margin
    inside = all(s >= 0 and s + n <= full for s, n, full in zip(start, size, spatial))
    clamped = [(max(s, 0), min(s + n, full)) for s, n, full in zip(start, size, spatial)]
    if not inside and image_fill == 0.0 and all(hi - lo >= 2 for lo, hi in clamped):
        # read only the part inside the volume; grid_sample's zero padding then equals a
        # zero-filled copy (the same linear blend towards 0 at the edge) without making one
        start, size = [lo for lo, _ in clamped], [hi - lo for lo, hi in clamped]
        first, padding, inside = start[0], "zeros", True
        planes = np.arange(first, first + size[0], dtype=np.float64) - centre[0]
    if inside:
        # a strided view, planes first: grid_sample reads strides, so no copy is made
        region = image[:, start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]]
        source = torch.from_numpy(np.asarray(region, dtype=np.float32)).permute(1, 0, 2, 3)
    else:
        source = torch.from_numpy(crop_window(image, start, size, fill=image_fill, dtype=np.float32)).permute(1, 0, 2, 3)
    k = size[0]
    # pass-1 grid: per plane, the window's (axis 1, axis 2) mapped onto the source plane;
    # grid_sample's x reads axis 2, its y axis 1
    x_terms, y_terms = [], []
    for terms, i in ((x_terms, 2), (y_terms, 1)):
        scale = 2.0 / (size[i] - 1)
        terms += [(centre[i] - start[i] + shear[i, 0] * planes) * scale - 1,
                  shear[i, 1] * offsets[1] * scale, shear[i, 2] * offsets[2] * scale]
    grid = separable_grid(x_terms, y_terms)
    planes_out = F.grid_sample(source, grid, mode="bilinear",
                               padding_mode=padding, align_corners=True)  # (k, C, w1, w2)
    # pass 2: along the planes, as a 2D resample with batch = axis 1 and an exact identity on axis 2
    stacked = planes_out.permute(2, 1, 0, 3).contiguous()  # (w1, C, k, w2)
    # pass-2 grid: x is the identity on axis 2 (exact), y the plane position s
    step = 2.0 / max(k - 1, 1)
    identity = np.linspace(-1, 1, w2) if w2 > 1 else np.zeros(1)
    grid2 = separable_grid(
        [np.zeros(w1), np.zeros(w0), identity],
        [matrix[0, 1] * offsets[1] * step, (centre[0] - first + matrix[0, 0] * offsets[0]) * step - 1,
         matrix[0, 2] * offsets[2] * step])
    out = F.grid_sample(stacked, grid2, mode="bilinear", padding_mode=padding, align_corners=True)  # (w1, C, w0, w2)
    return out.permute(1, 2, 0, 3).numpy()  # a view; the batch stack makes the one copy


def _linear_grid_3d(image, centre, window, matrix, offsets, image_fill) -> np.ndarray:
    """Plain trilinear resample with one 3D grid_sample (used for large rotations)."""
    low, high = _extent(np.asarray(centre, dtype=np.float64), matrix, offsets)
    start = np.floor(low).astype(int) - 1
    size = np.floor(high).astype(int) + 3 - start
    source = crop_window(image, start, size, fill=image_fill, dtype=np.float32)
    origin = np.asarray(centre, dtype=np.float64) - start
    grid = np.empty(tuple(window) + (3,), dtype=np.float32)
    for slot, i in ((0, 2), (1, 1), (2, 0)):  # grid_sample's (x, y, z) are axes (2, 1, 0)
        scale = 2.0 / (size[i] - 1)
        _broadcast_sum((origin[i] + matrix[i, 0] * offsets[0]) * scale - 1,
                       matrix[i, 1] * offsets[1] * scale, matrix[i, 2] * offsets[2] * scale, out=grid[..., slot])
    out = F.grid_sample(torch.from_numpy(source)[None], torch.from_numpy(grid)[None], mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out[0].numpy()


def apply_intensity(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Gamma, bias field and noise (in that order) on a ``(C, X, Y, Z)`` float32 patch."""
    if params.gamma is None and params.noise_std is None and params.bias is None:
        return image
    out = torch.from_numpy(image)
    if params.gamma is not None:
        low = out.amin(dim=(1, 2, 3), keepdim=True)
        span = (out.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-8)
        out = ((out - low) / span).pow(params.gamma) * span + low
    if params.bias is not None:
        out = out * bias_field(out.shape[1:], params.bias, params.bias_order)
    if params.noise_std is not None:
        generator = torch.Generator().manual_seed(params.seed)
        out = out + torch.randn(out.shape, generator=generator) * params.noise_std
    return out.numpy()


def _monomials(order: int) -> list[tuple[int, int, int]]:
    return [(i, j, k) for i in range(order + 1) for j in range(order + 1 - i) for k in range(order + 1 - i - j)]


def bias_field(shape: Sequence[int], coefficients: np.ndarray, order: int) -> torch.Tensor:
    """exp(Σ c_ijk x^i y^j z^k) on a window, coordinates in [-1, 1]; separable contraction."""
    powers = [torch.linspace(-1, 1, int(n))[:, None] ** torch.arange(order + 1) for n in shape]
    table = torch.zeros(order + 1, order + 1, order + 1)
    for c, (i, j, k) in zip(coefficients, _monomials(order)):
        table[i, j, k] = float(c)
    log_field = torch.einsum("ijk,xi,yj,zk->xyz", table, *powers)
    return torch.exp(log_field)
