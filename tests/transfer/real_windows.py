"""Small real-data windows for the transfer tests (loaded once per session)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from vol_transfer.io.volumes import load_volume

BRATS_CASE = "brats2015_flair_t1c/train/brats_2013_pat0005_1"
HIPPOCAMPUS_CASE = "hippocampus_001.nii.gz"
TUMOUR_CORE_2015 = (1, 3, 4)


def _window_around(array: np.ndarray, centre: np.ndarray, size: int) -> tuple[slice, ...]:
    starts = [int(np.clip(c - size // 2, 0, dim - size)) for c, dim in zip(centre, array.shape[-3:])]
    return tuple(slice(s, s + size) for s in starts)


@functools.lru_cache(maxsize=4)
def brats_window(root: Path, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """FLAIR+T1c ``(1, 2, s, s, s)`` float32 and tumour-core labels ``(1, s, s, s)`` centred on the core."""
    case = root / BRATS_CASE
    images = np.concatenate(
        [load_volume(case / name).array for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")]
    ).astype(np.float32)
    labels = load_volume(case / "OTMultiClass.nii.gz").array[0]
    core = np.isin(np.rint(labels), TUMOUR_CORE_2015)
    window = _window_around(labels, np.argwhere(core).mean(axis=0).round(), size)
    image = torch.from_numpy(np.ascontiguousarray(images[(slice(None), *window)]))[None]
    label = torch.from_numpy(core[window].astype(np.int64))[None]
    return image, label


@functools.lru_cache(maxsize=2)
def hippocampus_window(root: Path, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A z-scored hippocampus crop ``(1, 1, s, s, s)`` and its labels {0,1,2} ``(1, s, s, s)``."""
    image = load_volume(root / "msd_hippocampus" / "imagesTr" / HIPPOCAMPUS_CASE).array[0].astype(np.float32)
    label = load_volume(root / "msd_hippocampus" / "labelsTr" / HIPPOCAMPUS_CASE).array[0]
    pad = [(0, max(0, size - dim)) for dim in image.shape]
    image, label = np.pad(image, pad), np.pad(label, pad)
    window = _window_around(label, np.argwhere(label > 0).mean(axis=0).round(), size)
    image = image[window]
    image = (image - image.mean()) / image.std()
    return torch.from_numpy(np.ascontiguousarray(image))[None, None], torch.from_numpy(label[window].astype(np.int64))[None]
