"""TorchIO augmentation inside the patch loader: the transforms our own path does not have.

A recipe lists them under ``sampler.augmentation.torchio`` by TorchIO class name, with ``p`` (the
probability of applying it) and that transform's own arguments::

    sampler:
      augmentation:
        rotation_degrees: 10          # our own resample (see vol_transfer.sampling.augment)
        torchio:
          - {name: RandomElasticDeformation, p: 0.3, max_displacement: 5}
          - {name: RandomMotion, p: 0.2, degrees: 5, translation: 5}
          - {name: RandomBlur, p: 0.2, std: [0, 1]}

Each entry is a typed spec (a tagged union on ``name``), so an unknown transform or argument is a
one-line :class:`~vol_transfer.errors.RecipeError` with the closest valid name, and the TorchIO
transform is built once while the recipe is validated (TorchIO's own argument checks run then,
before any data is read). Rotation, scaling and flips stay in our own resample
(``RandomAffine``/``RandomFlip`` are refused with a pointer to it): it reads the rotated window's
real voxels from the whole volume, where TorchIO on a window pads, and it measured faster
(``benchmarks/bench_torchio_augmentation.py``).

Per patch, in the loader's workers: our spatial resample → these transforms in the listed order →
our intensity options (gamma, bias field, noise). TorchIO sees the window as an image on a 1 mm
grid, so its millimetre arguments (``max_displacement``, ``translation``, ``std``) are in voxels of
the preprocessed volume. Intensity transforms change the image channels only; spatial ones
(``RandomElasticDeformation``, ``RandomAnisotropy`` with ``scalars_only: false``) move the label
and the valid mask with the image by nearest-neighbour (or ``label_gaussian``) interpolation, so
labels keep their values. An elastic deformation is applied to the window with a margin of
``ceil(max_displacement) + 1`` voxels read from the volume and then cropped, so the window's
border holds real voxels, as with our own resample. It draws TorchIO's parameters and evaluates
SimpleITK's B-spline field, but resamples all channels and the label with one ``grid_sample``
(:class:`FastElastic`, 14× faster than TorchIO's per-channel SimpleITK resample in the benchmark);
``bspline`` image or ``label_gaussian`` label interpolation falls back to TorchIO's own.

TorchIO must be installed (``pip install torchio``) for a recipe that lists transforms; it is
imported only then.

Seeding: TorchIO draws from torch's global generator; each patch runs under
``torch.random.fork_rng`` seeded from ``(loader seed, visit, draw)``, so a batch stays a pure
function of ``(seed, batch)`` (exact resume, any worker count) and the caller's generator is
untouched.

Example:
    >>> from vol_transfer.recipes import from_dict
    >>> specs = from_dict(list[TorchioTransform], [{"name": "RandomBlur", "p": 0.5, "std": [0, 1]}], "torchio")
    >>> specs[0]
    RandomBlurSpec(p=0.5, name='RandomBlur', std=(0.0, 1.0))
    >>> from_dict(list[TorchioTransform], [{"name": "RandomMotoin"}], "sampler.augmentation.torchio")
    Traceback (most recent call last):
    ...
    vol_transfer.errors.RecipeError: sampler.augmentation.torchio[0].name: 'RandomMotoin' is not allowed — did you mean 'RandomMotion'? choose one of 'RandomElasticDeformation', 'RandomMotion', 'RandomGhosting', 'RandomSpike', 'RandomAnisotropy', 'RandomBlur', 'RandomBiasField', 'RandomGamma', 'RandomNoise', 'RandomAffine', 'RandomFlip'
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Sequence, Union

import numpy as np
import torch

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import option

FloatRange = Union[float, tuple[float, float]]
IntRange = Union[int, tuple[int, int]]
PerAxis = Union[float, tuple[float, float, float]]
ImageInterpolation = Literal["linear", "nearest", "bspline"]


def _where(where: str) -> str:
    return where or "torchio"


@dataclass(frozen=True, kw_only=True)
class _Spec:
    """Shared by every transform spec: ``p`` and building the TorchIO transform."""

    p: float = option(1.0, ge=0, le=1)  # probability of applying this transform to a patch

    @property
    def kwargs(self) -> dict[str, Any]:
        """The TorchIO constructor arguments (everything but ``name``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}

    def build(self) -> Any:
        """The TorchIO transform (``copy=False``: the loader gives it a fresh subject per patch)."""
        import torchio

        return getattr(torchio, self.name)(**self.kwargs, copy=False)  # type: ignore[attr-defined]

    def validate(self, where: str) -> None:
        try:
            self.build()
        except ModuleNotFoundError as error:
            if error.name != "torchio":
                raise
            raise RecipeError(_where(where), f"{self.name} needs TorchIO, which is not installed",  # type: ignore[attr-defined]
                              "pip install torchio (or drop sampler.augmentation.torchio)") from None
        except (ValueError, TypeError) as error:
            problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RecipeError(_where(where), f"TorchIO refuses {self.name}: {problem}",  # type: ignore[attr-defined]
                              "fix its arguments (see the TorchIO documentation of this transform)") from None

    moves_voxels: ClassVar[bool] = False  # whether it moves voxels, so the label and valid mask must follow

    @property
    def margin(self) -> int:
        """Voxels of real context this transform needs around the window (0: none)."""
        return 0


@dataclass(frozen=True, kw_only=True)
class RandomElasticDeformationSpec(_Spec):
    """Dense elastic deformation from a random coarse grid of displacements (image, label and valid mask)."""

    name: Literal["RandomElasticDeformation"] = "RandomElasticDeformation"
    num_control_points: Union[int, tuple[int, int, int]] = option(7, ge=4)  # coarse grid points per axis
    max_displacement: PerAxis = option(7.5, ge=0)  # largest control-point shift, voxels (per axis)
    locked_borders: int = option(2, ge=0, le=2)  # 0/1/2 rings of control points held still
    image_interpolation: ImageInterpolation = "linear"  # how image channels are resampled
    label_interpolation: Literal["nearest", "label_gaussian"] = "nearest"  # how the label is resampled
    moves_voxels: ClassVar[bool] = True

    @property
    def margin(self) -> int:
        largest = max(self.max_displacement) if isinstance(self.max_displacement, tuple) else self.max_displacement
        return int(math.ceil(largest)) + 1 if largest > 0 else 0


@dataclass(frozen=True, kw_only=True)
class RandomMotionSpec(_Spec):
    """Motion artefacts: the k-space of a few rigidly moved copies combined (image channels only)."""

    name: Literal["RandomMotion"] = "RandomMotion"
    degrees: FloatRange = option(10.0, ge=-180, le=180)  # rotation range of each simulated movement
    translation: FloatRange = 10.0  # translation range of each movement, voxels
    num_transforms: int = option(2, ge=1)  # movements during the simulated acquisition
    image_interpolation: ImageInterpolation = "linear"  # resampling of the moved copies


@dataclass(frozen=True, kw_only=True)
class RandomGhostingSpec(_Spec):
    """Ghosting artefacts along a phase-encoding axis (image channels only)."""

    name: Literal["RandomGhosting"] = "RandomGhosting"
    num_ghosts: IntRange = option((4, 10), ge=0)  # ghosts per image (range)
    axes: tuple[int, ...] = option((0, 1, 2), ge=0, le=2, min_len=1)  # one of these is the phase-encoding axis
    intensity: FloatRange = option((0.5, 1.0), ge=0)  # ghost strength relative to the k-space maximum
    restore: Optional[float] = option(None, ge=0, le=1)  # share of k-space centre kept unchanged


@dataclass(frozen=True, kw_only=True)
class RandomSpikeSpec(_Spec):
    """Spike artefacts (Herringbone): bright k-space spikes (image channels only)."""

    name: Literal["RandomSpike"] = "RandomSpike"
    num_spikes: IntRange = option((1, 1), ge=0)  # k-space spikes (range)
    intensity: FloatRange = (1.0, 3.0)  # spike strength relative to the spectrum maximum


@dataclass(frozen=True, kw_only=True)
class RandomAnisotropySpec(_Spec):
    """Low resolution along one axis: downsampled and upsampled back (image channels unless scalars_only: false)."""

    name: Literal["RandomAnisotropy"] = "RandomAnisotropy"
    axes: tuple[int, ...] = option((0, 1, 2), ge=0, le=2, min_len=1)  # one of these is downsampled
    downsampling: FloatRange = option((1.5, 5.0), ge=1)  # downsampling factor range along that axis
    image_interpolation: ImageInterpolation = "linear"  # upsampling back to the window grid
    scalars_only: bool = True  # false: resample the label (nearest) too

    @property
    def moves_voxels(self) -> bool:
        return not self.scalars_only


@dataclass(frozen=True, kw_only=True)
class RandomBlurSpec(_Spec):
    """Gaussian blur (image channels only)."""

    name: Literal["RandomBlur"] = "RandomBlur"
    std: FloatRange = option((0.0, 2.0), ge=0)  # Gaussian kernel SD range, voxels


@dataclass(frozen=True, kw_only=True)
class RandomBiasFieldSpec(_Spec):
    """TorchIO's smooth multiplicative bias field (image channels only)."""

    name: Literal["RandomBiasField"] = "RandomBiasField"
    coefficients: FloatRange = 0.5  # range of the polynomial coefficients of the log field
    order: int = option(3, ge=0)  # polynomial order


@dataclass(frozen=True, kw_only=True)
class RandomGammaSpec(_Spec):
    """TorchIO's gamma change (image channels only; ours rescales to [0, 1] first: see gamma)."""

    name: Literal["RandomGamma"] = "RandomGamma"
    log_gamma: FloatRange = (-0.3, 0.3)  # range of log γ (TorchIO raises |x| to γ keeping the sign)


@dataclass(frozen=True, kw_only=True)
class RandomNoiseSpec(_Spec):
    """TorchIO's Gaussian noise (image channels only)."""

    name: Literal["RandomNoise"] = "RandomNoise"
    mean: FloatRange = 0.0  # noise mean range, image units
    std: FloatRange = option((0.0, 0.25), ge=0)  # noise SD range, image units


@dataclass(frozen=True, kw_only=True)
class _OurPath:
    """A TorchIO transform that our own resample does (faster, real voxels beyond the window)."""

    instead: ClassVar[str] = ""

    def validate(self, where: str) -> None:
        raise RecipeError(_where(where), f"{self.name} is done by our own patch resample "  # type: ignore[attr-defined]
                                         "(faster, and it reads real voxels beyond the window)",
                          f"drop this entry and set {self.instead} in sampler.augmentation")


@dataclass(frozen=True, kw_only=True)
class RandomAffineSpec(_OurPath):
    """Refused: rotation and scaling are our own resample's (rotation_degrees, scaling)."""

    name: Literal["RandomAffine"] = "RandomAffine"
    scales: Any = None  # refused: use sampler.augmentation.scaling
    degrees: Any = None  # refused: use sampler.augmentation.rotation_degrees
    translation: Any = None  # refused: the sampler chooses the window centres
    isotropic: Any = None  # refused
    p: Any = None  # refused
    instead: ClassVar[str] = "rotation_degrees / scaling"


@dataclass(frozen=True, kw_only=True)
class RandomFlipSpec(_OurPath):
    """Refused: flips are our own resample's (flip_axes)."""

    name: Literal["RandomFlip"] = "RandomFlip"
    axes: Any = None  # refused: use sampler.augmentation.flip_axes
    flip_probability: Any = None  # refused
    p: Any = None  # refused
    instead: ClassVar[str] = "flip_axes"


TorchioTransform = Union[
    RandomElasticDeformationSpec, RandomMotionSpec, RandomGhostingSpec, RandomSpikeSpec, RandomAnisotropySpec,
    RandomBlurSpec, RandomBiasFieldSpec, RandomGammaSpec, RandomNoiseSpec, RandomAffineSpec, RandomFlipSpec,
]
TORCHIO_TRANSFORMS = tuple(t.__dataclass_fields__["name"].default for t in TorchioTransform.__args__)


class TorchioPipeline:
    """The listed transforms in order, applied to a patch under a seed.

    Built lazily (in the worker that first needs it), so the loader's stream stays cheap to pickle.
    An elastic deformation with linear/nearest image and nearest label interpolation runs as
    :class:`FastElastic` (TorchIO's parameters, SimpleITK's B-spline field, one ``grid_sample`` for
    all channels); every other transform is TorchIO's own.
    """

    def __init__(self, specs: Sequence[_Spec]) -> None:
        self.specs = tuple(specs)
        self.margin = max((s.margin for s in self.specs), default=0)
        self.moves_voxels = any(s.moves_voxels for s in self.specs)
        self._steps: list[Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_steps": None}

    @property
    def steps(self) -> list[Any]:
        if self._steps is None:
            from torch.utils.data import get_worker_info

            if get_worker_info() is not None:  # one SimpleITK thread per loader worker, like torch's
                import SimpleITK

                SimpleITK.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
            self._steps = [FastElastic(s) if FastElastic.handles(s) else s.build() for s in self.specs]
        return self._steps

    def apply(self, image: np.ndarray, label: np.ndarray | None, valid: np.ndarray, seed: int,
              padding_label: int = -1) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(image, label, valid)`` of one patch after the transforms, drawn under ``seed``.

        When a transform moves voxels, label and valid travel as one label map (0 = outside the
        volume, else label - lowest + 1), resampled by the transform's label interpolation.

        Example:
            >>> pipe = TorchioPipeline([RandomBlurSpec(std=(1.0, 1.0))])
            >>> image = np.zeros((1, 9, 9, 9), np.float32); image[0, 4, 4, 4] = 1
            >>> out, _, _ = pipe.apply(image, None, np.ones((9, 9, 9), bool), seed=0)
            >>> bool(out[0, 4, 4, 4] < 0.5), bool(out[0, 4, 4, 5] > 0)
            (True, True)
        """
        import torchio

        subject = {"image": torchio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(image, np.float32)))}
        lowest = 0
        if self.moves_voxels:
            if label is not None:
                lowest = int(label[valid].min()) if valid.any() else 0
                encoded = np.where(valid, label.astype(np.int32) - lowest + 1, 0)
            else:
                encoded = valid.astype(np.int32)
            subject["label"] = torchio.LabelMap(tensor=torch.from_numpy(encoded.astype(np.int16))[None])
        out = torchio.Subject(subject)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for step in self.steps:
                out = step(out)
        image = np.ascontiguousarray(out["image"].data.numpy(), dtype=np.float32)
        if self.moves_voxels:
            encoded = np.rint(out["label"].data.numpy()[0]).astype(np.int32)
            valid = encoded > 0
            if label is not None:
                label = np.where(valid, encoded + lowest - 1, padding_label).astype(np.int16)
        return image, label, valid



def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


@functools.lru_cache(maxsize=32)  # every patch of a run has the same shape
def _bspline_basis(voxels: int, points: int, flipped: bool) -> np.ndarray:
    """``(voxels, points)`` weights of SimpleITK's cubic B-spline grid on one axis of a TorchIO image.

    ``BSplineTransformInitializer`` spans the voxel edges plus 1/8 voxel each side
    (``voxels + 0.25`` over ``points - 3`` intervals, one extra point below the domain) along the
    physical (LPS) axis, which runs against the array index on TorchIO's axes 0 and 1.
    """
    spacing = (voxels + 0.25) / (points - 3)
    index = np.arange(voxels, dtype=np.float64)
    position = ((voxels - 0.375 - index) if flipped else (index + 0.625)) / spacing + 1
    return _cubic_bspline(position[:, None] - np.arange(points)[None, :])


def bspline_displacement(control_points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The dense displacement ``(3, X, Y, Z)`` in array-index units of TorchIO's elastic deformation.

    ``control_points`` is ``RandomElasticDeformation.get_params``' ``(nx, ny, nz, 3)`` LPS array;
    the field equals SimpleITK's ``BSplineTransform`` of it on a TorchIO image with an identity
    affine (tested to 1e-12), computed by three separable contractions instead of per voxel.

    Example:
        >>> field = bspline_displacement(np.zeros((5, 5, 5, 3)), (8, 9, 10))
        >>> field.shape, float(abs(field).max())
        ((3, 8, 9, 10), 0.0)
    """
    bases = [_bspline_basis(int(n), int(c), flipped) for n, c, flipped in zip(shape, control_points.shape[:3],
                                                                              (True, True, False))]
    field = np.tensordot(bases[0], control_points, axes=(1, 0))  # (X, ny, nz, 3)
    field = np.tensordot(bases[1], field, axes=(1, 1))  # (Y, X, nz, 3)
    field = np.tensordot(bases[2], field, axes=(1, 2))  # (Z, Y, X, 3)
    field = field.transpose(3, 2, 1, 0).copy()  # (3, X, Y, Z)
    field[:2] *= -1  # LPS → TorchIO's RAS array axes
    return field


class FastElastic:
    """TorchIO's ``RandomElasticDeformation``, resampled by one ``grid_sample`` for all channels.

    The same draws from torch's generator (the ``p`` check, then ``get_params``), the same
    B-spline field (:func:`bspline_displacement`), the same linear/nearest interpolation; only
    SimpleITK's per-channel resample (with its per-voxel B-spline evaluation) is replaced.
    Out-of-window reads repeat the border: the loader's margin keeps them out of the result.
    """

    def __init__(self, spec: RandomElasticDeformationSpec) -> None:
        self.transform = spec.build()
        self.image_mode = "bilinear" if spec.image_interpolation == "linear" else "nearest"

    @staticmethod
    def handles(spec: _Spec) -> bool:
        return (isinstance(spec, RandomElasticDeformationSpec) and spec.image_interpolation in ("linear", "nearest")
                and spec.label_interpolation == "nearest")

    def __call__(self, subject: Any) -> Any:
        transform = self.transform
        if torch.rand(1).item() > transform.probability:
            return subject
        control = transform.get_params(transform.num_control_points, transform.max_displacement,
                                       transform.num_locked_borders)
        if not any(transform.max_displacement):
            return subject
        image = subject["image"].data
        shape = tuple(image.shape[1:])
        field = bspline_displacement(control.astype(np.float64), shape)
        axes = [np.arange(n, dtype=np.float64) for n in shape]
        grid = np.empty(shape + (3,), dtype=np.float32)
        for slot, axis in ((0, 2), (1, 1), (2, 0)):  # grid_sample's (x, y, z) are array axes (2, 1, 0)
            coordinate = field[axis] + axes[axis].reshape([-1 if a == axis else 1 for a in range(3)])
            grid[..., slot] = coordinate * (2.0 / max(shape[axis] - 1, 1)) - 1
        grid_t = torch.from_numpy(grid)[None]
        resample = lambda data, mode: torch.nn.functional.grid_sample(  # noqa: E731
            data[None].float(), grid_t, mode=mode, padding_mode="border", align_corners=True)[0]
        subject["image"].set_data(resample(image, self.image_mode))
        if "label" in subject:
            label = subject["label"].data
            subject["label"].set_data(resample(label, "nearest").round().to(label.dtype))
        return subject
