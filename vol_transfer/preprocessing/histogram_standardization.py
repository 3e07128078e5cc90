"""Nyúl histogram standardisation (TorchIO's ``HistogramStandardization``) as a learned intensity step.

Li et al. 2017 fed their HighRes3DNet histogram-standardised T1. The step
``{kind: histogram_standardization}`` maps a channel's foreground (non-zero voxels) so that its
percentile landmarks land on a standard scale learned from training images. Its ``landmarks``
start empty in a recipe; :func:`learn_landmarks` fills them from the **training split only** with
:meth:`torchio.HistogramStandardization.train`, on exactly the arrays the step will see (after
orientation, crop and the steps before it). The filled spec goes into the checkpoint's
preprocessing, so ``vol-transfer infer`` applies the same mapping with nothing to pass.

Example::

    preprocessing:
      intensity:
        - {kind: histogram_standardization, channels: [0]}   # T1: its own landmarks
        - {kind: histogram_standardization, channels: [1]}   # T2: its own landmarks
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional

import numpy as np

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import option

Channels = Optional[list[int]]


def _foreground(tensor):  # a plain function: TorchIO calls it on a (1, X, Y, Z) tensor
    return tensor > 0


@dataclass(kw_only=True)
class HistogramStandardization:
    """Piecewise-linear map of the foreground's percentile landmarks onto learned ones (Nyúl et al. 2000)."""

    kind: Literal["histogram_standardization"] = "histogram_standardization"
    landmarks: Optional[list[float]] = option(None, help="learned on the training split when empty")
    channels: Channels = option(None, ge=0, min_len=1)

    def validate(self, where: str) -> None:
        if self.landmarks is not None and (len(self.landmarks) < 3 or np.any(np.diff(self.landmarks) <= 0)):
            raise RecipeError(f"{where}.landmarks", "landmarks must be at least 3 increasing numbers",
                              "leave landmarks out: they are learned on the training split")

    def __call__(self, array: np.ndarray) -> np.ndarray:
        import torch

        torchio = _torchio()

        if self.landmarks is None:
            raise RecipeError("preprocessing.intensity", "histogram_standardization has no landmarks yet",
                              "train with this recipe first: landmarks are learned on its training split")
        transform = torchio.HistogramStandardization({"image": np.asarray(self.landmarks)},
                                                     masking_method=_foreground)
        image = torchio.ScalarImage(tensor=torch.from_numpy(np.asarray(array, np.float32)[None].copy()))
        mapped = transform(torchio.Subject(image=image))["image"].data[0].numpy()
        return np.where(np.asarray(array) > 0, mapped, 0).astype(np.float32)


def _torchio():
    """The torchio module, or a one-line error naming the extra that installs it."""
    try:
        import torchio
    except ImportError:
        raise RecipeError("preprocessing.intensity", "histogram_standardization needs TorchIO, which is not installed",
                          'pip install -c constraints.txt -e ".[torchio]"') from None
    return torchio


def learn_landmarks(preprocessor, volumes: Callable[[], Iterable]) -> "object":
    """``preprocessor`` with every empty ``histogram_standardization`` step's landmarks learned.

    ``volumes()`` yields the training images (:class:`~vol_transfer.io.volumes.Volume`, channels
    first). Each step learns from the channels it applies to, as they arrive at that step.
    """
    import nibabel as nib

    steps = list(preprocessor.intensity)
    empty = [i for i, step in enumerate(steps) if isinstance(step, HistogramStandardization) and step.landmarks is None]
    if not empty:
        return preprocessor  # every recipe passes here: TorchIO (an extra) is needed only past this point
    torchio = _torchio()
    for index in empty:
        before = dataclasses.replace(preprocessor, intensity=steps[:index], spacing=None, min_size=None)
        with tempfile.TemporaryDirectory(prefix="vol_transfer_landmarks_") as folder:
            paths = []
            for number, volume in enumerate(volumes()):
                array, _ = before.apply(volume)
                channels = steps[index].channels if steps[index].channels is not None else range(array.array.shape[0])
                for c in channels:
                    path = Path(folder) / f"{number}_{c}.nii"
                    nib.save(nib.Nifti1Image(array.array[c].astype(np.float32), np.eye(4)), path)
                    paths.append(path)
            landmarks = torchio.HistogramStandardization.train(paths, masking_function=_foreground)
        steps[index] = dataclasses.replace(steps[index], landmarks=[float(v) for v in landmarks])
    return dataclasses.replace(preprocessor, intensity=steps)
