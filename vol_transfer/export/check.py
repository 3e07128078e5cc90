"""Check an export against its checkpoint: logits on one prepared volume, and a bundle's preprocessing.

The reference is the checkpoint's own network (not BN-folded, eval mode, float32, CPU), run on the
volume as ``vol-transfer infer`` prepares it (:class:`~vol_transfer.inference.predictor.Predictor`:
channels by name, the checkpoint's preprocessing). An export passes through the BN folding and the
exporter, so its logits differ by float rounding: :attr:`LogitCheck.max_abs_diff` says by how much,
:attr:`LogitCheck.label_agreement` whether any voxel's class changed.

Example::

    image, source, volume = check_image("hippo.pt", ["hippocampus_001.nii.gz"])
    compare(module_runner(reference), onnx_runner("model.onnx"), image, "onnx", source).describe()
    # 'onnx on hippocampus_001.nii.gz (1, 35, 51, 35): max |Δlogit| 2.1e-06 (logits up to 9.3), labels agree on 100.0000 % of voxels'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vol_transfer.errors import InputDataError, PathLike
from vol_transfer.export.traced import Runner
from vol_transfer.io.volumes import Volume

RANDOM_SIZE = 40


@dataclass
class LogitCheck:
    """How far an export's logits are from the checkpoint's on one volume."""

    what: str
    source: str
    shape: tuple[int, ...]
    max_abs_diff: float
    max_abs_logit: float
    label_agreement: float

    def describe(self) -> str:
        return (f"{self.what} on {self.source} {self.shape}: max |Δlogit| {self.max_abs_diff:.2g} (logits up to "
                f"{self.max_abs_logit:.3g}), labels agree on {100 * self.label_agreement:.4f} % of voxels")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreprocessingCheck:
    """MONAI's bundle preprocessing against ours on one volume."""

    source: str
    shape: tuple[int, ...]
    same_grid: bool
    max_abs_diff: float

    def describe(self) -> str:
        grid = "same grid and affine" if self.same_grid else "DIFFERENT grid"
        return f"bundle preprocessing on {self.source} {self.shape}: {grid}, max |Δintensity| {self.max_abs_diff:.2g}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: Runner, candidate: Runner, image: torch.Tensor, what: str, source: str) -> LogitCheck:
    """Run both on ``image`` ``(1, C, X, Y, Z)`` and measure the difference of their logits."""
    expected = reference(image)
    got = candidate(image)
    if got.shape != expected.shape:
        raise InputDataError(what, f"gives logits of shape {tuple(got.shape)}, the checkpoint {tuple(expected.shape)}",
                             "re-export the checkpoint")
    agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    return LogitCheck(what, source, tuple(image.shape[1:]), float((got - expected).abs().max()),
                      float(expected.abs().max()), agreement)


def check_image(checkpoint: PathLike, inputs: Sequence[PathLike] | None, channels: str | None = None,
                in_channels: int = 1) -> tuple[torch.Tensor, str, Volume | None]:
    """The first case of ``inputs`` prepared as ``infer`` prepares it, ``(1, C, X, Y, Z)``.

    Without ``inputs``: a seeded random ``RANDOM_SIZE``³ volume (source ``"random"``).
    """
    if not inputs:
        generator = torch.Generator().manual_seed(0)
        shape = (1, in_channels, RANDOM_SIZE, RANDOM_SIZE, RANDOM_SIZE)
        return torch.randn(shape, generator=generator), "random", None
    from vol_transfer.inference.predictor import Predictor
    from vol_transfer.io.case_inputs import discover_cases
    from vol_transfer.preprocessing.pipeline import Preprocessor

    predictor = Predictor.from_checkpoint(checkpoint)
    cases = discover_cases(list(inputs), predictor.channels, names=channels)
    if not cases:
        raise InputDataError(inputs[0], "holds no case to check on", "pass an image file or case folder with --check")
    volume = predictor.load(cases[0])
    prepared, _ = Preprocessor.from_spec(predictor.preprocessing).apply(volume)
    return torch.from_numpy(np.ascontiguousarray(prepared.array))[None].float(), cases[0].name, volume


def check_bundle_preprocessing(bundle: PathLike, volume: Volume, spec: dict[str, Any] | None) -> PreprocessingCheck | None:
    """The bundle's MONAI ``preprocessing`` on ``volume``'s files against our :class:`Preprocessor`.

    None when the volume's channels do not come one per file or all from one file (nothing to feed MONAI).
    """
    from vol_transfer.export.bundle import bundle_preprocessing
    from vol_transfer.preprocessing.pipeline import Preprocessor

    paths = [str(Path(p)) for p in volume.paths]
    if len(set(paths)) == len(paths):
        image: str | list[str] = paths[0] if len(paths) == 1 else paths
    elif len(set(paths)) == 1:
        image = paths[0]
    else:
        return None
    ours, _ = Preprocessor.from_spec(spec).apply(volume)
    theirs = bundle_preprocessing(bundle)({"image": image})["image"]
    same = tuple(theirs.shape) == ours.array.shape and np.allclose(theirs.affine.numpy(), ours.affine, atol=1e-4)
    difference = float(np.abs(theirs.numpy() - ours.array).max()) if same else float("inf")
    return PreprocessingCheck(Path(paths[0]).name, tuple(ours.array.shape), bool(same), difference)


__all__ = ["LogitCheck", "PreprocessingCheck", "compare", "check_image", "check_bundle_preprocessing"]
