"""Reading volumes repeatedly: gzipped NIfTI through nibabel / MONAI / TorchIO vs our VolumeCache.

Claim: after one decode, :class:`vol_transfer.io.cache.VolumeCache` serves a 240×240×155 volume
in about a millisecond (memory-mapped), and still far faster than inflating the .nii.gz when every
voxel is read into memory. Peers, all in this one run on the same files:

* nibabel ``np.asanyarray(nib.load(p).dataobj)`` — the baseline every tool builds on;
* MONAI ``LoadImage`` and TorchIO ``ScalarImage(...).data`` — what pipelines usually call;
* MONAI ``PersistentDataset`` (warm) — the peers' own on-disk cache of decoded volumes.

A second table does the same for the two CT DICOM series: our ``load_dicom_series`` vs SimpleITK's
``ImageSeriesReader`` (GDCM), and the cache in front of ours.

Run: ``python benchmarks/bench_io.py [--data-root DIR] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import torch

from vol_transfer.io.cache import VolumeCache
from vol_transfer.io.data_root import resolve_data_root
from vol_transfer.io.dicom import load_dicom_series
from vol_transfer.io.volumes import load_volume

BRATS2015_CASES = (
    "train/brats_2013_pat0005_1",
    "train/brats_2013_pat0006_1",
    "validation/brats_2013_pat0003_1",
    "test/brats_2013_pat0001_1",
)
BRATS2015_FILES = ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz")
BRATS2023_MODALITIES = ("t1c", "t1n", "t2f", "t2w")
DICOM_SERIES = ("ct_abdomen_totalsegmentator/example_ct_dicom", "lung_ct_dicom/series_B40f")


def volumes(root: Path) -> list[Path]:
    paths = [root / "brats2015_flair_t1c" / case / name for case in BRATS2015_CASES for name in BRATS2015_FILES]
    paths += [root / "brats2023_4mod_nolabel" / f"BraTS-GLI-00001-000-{m}.nii.gz" for m in BRATS2023_MODALITIES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"error: missing benchmark volumes: {', '.join(missing)}")
    return paths


def readers(cache: VolumeCache, monai_cache: dict[Path, Callable[[], object]]) -> dict[str, Callable[[Path], object]]:
    from monai.transforms import LoadImage
    import torchio as tio

    monai_load = LoadImage(image_only=True)
    return {
        "nibabel .nii.gz": lambda p: np.asanyarray(nib.load(str(p)).dataobj),
        "MONAI LoadImage": lambda p: monai_load(str(p)),
        "TorchIO ScalarImage": lambda p: tio.ScalarImage(p).data,
        "ours load_volume (.gz, CRC-checked)": lambda p: load_volume(p, allow_nonfinite=True).array,
        "MONAI PersistentDataset (warm)": lambda p: monai_cache[p](),
        "ours VolumeCache (warm, mmap)": lambda p: cache.load(p, allow_nonfinite=True).array,
        "ours VolumeCache (warm, all voxels read)": lambda p: np.array(cache.load(p, allow_nonfinite=True).array),
    }


def monai_persistent(paths: list[Path], folder: Path) -> dict[Path, Callable[[], object]]:
    from monai.data import PersistentDataset
    from monai.transforms import LoadImaged

    dataset = PersistentDataset([{"image": str(p)} for p in paths], transform=LoadImaged(keys="image", image_only=True),
                                cache_dir=folder)
    for i in range(len(paths)):  # fill MONAI's cache (the cold pass), as we do for ours
        dataset[i]
    return {p: (lambda i=i: dataset[i]["image"]) for i, p in enumerate(paths)}


def time_per_volume(read: Callable[[Path], object], paths: list[Path], repeats: int) -> float:
    """Median over repeats of the mean seconds per volume."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            read(path)
        runs.append((time.perf_counter() - start) / len(paths))
    return statistics.median(runs)


def simpleitk_series(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def dicom_table(root: Path, scratch: Path, repeats: int) -> None:
    folders = [root / s for s in DICOM_SERIES]
    cache = VolumeCache(scratch / "dicom")
    for folder in folders:
        cache.load(folder)
    table = {
        "SimpleITK ImageSeriesReader": simpleitk_series,
        "ours load_dicom_series": lambda f: load_dicom_series(f).array,
        "ours VolumeCache (warm, mmap)": lambda f: cache.load(f).array,
        "ours VolumeCache (warm, all voxels read)": lambda f: np.array(cache.load(f).array),
    }
    seconds = {name: time_per_volume(read, folders, repeats) for name, read in table.items()}
    baseline = seconds["SimpleITK ImageSeriesReader"]
    print(f"\nDICOM: {len(folders)} CT series (20 slices JPEG 2000 + 30 slices uncompressed, 512x512), "
          f"median of {repeats} passes")
    print(f"{'reader':42s} {'s/series':>10s} {'vs SimpleITK':>13s}")
    for name, value in seconds.items():
        print(f"{name:42s} {value:10.4f} {baseline / value:12.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    root = resolve_data_root(args.data_root)
    paths = volumes(root)
    with tempfile.TemporaryDirectory(prefix="bench_io_") as scratch:
        cache = VolumeCache(Path(scratch) / "ours")
        start = time.perf_counter()
        for path in paths:  # the cold pass: decode once and write the entries
            cache.load(path, allow_nonfinite=True)
        cold = (time.perf_counter() - start) / len(paths)
        table = readers(cache, monai_persistent(paths, Path(scratch) / "monai"))
        for read in table.values():  # warm the OS page cache for every reader alike
            read(paths[0])
        seconds = {name: time_per_volume(read, paths, args.repeats) for name, read in table.items()}

    shape = nib.load(str(paths[0])).shape
    print(f"{len(paths)} volumes {shape} (4 BraTS 2015 cases x Flair/T1c/label + BraTS 2023 4 modalities), "
          f"median of {args.repeats} passes, torch threads 2")
    baseline = seconds["nibabel .nii.gz"]
    best_peer_gz = min(seconds[k] for k in ("nibabel .nii.gz", "MONAI LoadImage", "TorchIO ScalarImage"))
    print(f"{'reader':42s} {'s/volume':>10s} {'vs nibabel':>11s}")
    for name, value in seconds.items():
        print(f"{name:42s} {value:10.4f} {baseline / value:10.1f}x")
    print(f"{'ours VolumeCache (cold: decode + write)':42s} {cold:10.4f} {baseline / cold:10.1f}x")
    mmap = seconds["ours VolumeCache (warm, mmap)"]
    full = seconds["ours VolumeCache (warm, all voxels read)"]
    monai_cache = seconds["MONAI PersistentDataset (warm)"]
    print(f"speed-up of our warm cache over the best .nii.gz reader: {best_peer_gz / mmap:.0f}x (mmap), "
          f"{best_peer_gz / full:.1f}x (all voxels read)")
    print(f"speed-up over MONAI PersistentDataset (warm): {monai_cache / mmap:.0f}x (mmap), "
          f"{monai_cache / full:.1f}x (all voxels read)")
    with tempfile.TemporaryDirectory(prefix="bench_io_dicom_") as scratch:
        dicom_table(root, Path(scratch), args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
