"""Reading volumes: gzipped NIfTI through nibabel / MONAI / TorchIO vs ours, and DICOM series.

Claim: our readers cost no more than the libraries they sit beside. Peers, all in this one run on
the same files, each read whole into memory on every pass (no cache of any kind):

* nibabel ``np.asanyarray(nib.load(p).dataobj)`` — the baseline every tool builds on;
* MONAI ``LoadImage`` and TorchIO ``ScalarImage(...).data`` — what pipelines usually call;
* ours :func:`vol_transfer.io.volumes.load_volume`, which also inflates the whole .gz to check
  its CRC and length trailer (nibabel alone never reads the trailer).

A second table does the same for the two CT DICOM series: our
:func:`vol_transfer.io.dicom.load_dicom_series` vs SimpleITK's ``ImageSeriesReader`` (GDCM).

Run: ``python benchmarks/bench_io.py [--data-root DIR] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import torch

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


def nifti_readers() -> dict[str, Callable[[Path], object]]:
    from monai.transforms import LoadImage
    import torchio as tio

    monai_load = LoadImage(image_only=True)
    return {
        "nibabel .nii.gz": lambda p: np.asanyarray(nib.load(str(p)).dataobj),
        "MONAI LoadImage": lambda p: monai_load(str(p)),
        "TorchIO ScalarImage": lambda p: tio.ScalarImage(p).data,
        "ours load_volume (.gz, CRC-checked)": lambda p: load_volume(p, allow_nonfinite=True).array,
    }


def time_per_item(read: Callable[[Path], object], paths: list[Path], repeats: int) -> float:
    """Median over repeats of the mean seconds per file (or series)."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            read(path)
        runs.append((time.perf_counter() - start) / len(paths))
    return statistics.median(runs)


def timed(table: dict[str, Callable[[Path], object]], paths: list[Path], repeats: int) -> dict[str, float]:
    """Seconds per item for each reader, after one untimed read each warms the OS page cache alike."""
    for read in table.values():
        read(paths[0])
    return {name: time_per_item(read, paths, repeats) for name, read in table.items()}


def print_table(seconds: dict[str, float], unit: str, baseline_name: str, label: str) -> None:
    baseline = seconds[baseline_name]
    print(f"{'reader':42s} {unit:>10s} {label:>13s}")
    for name, value in seconds.items():
        print(f"{name:42s} {value:10.4f} {baseline / value:12.2f}x")


def simpleitk_series(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def nifti_table(root: Path, repeats: int) -> None:
    paths = volumes(root)
    seconds = timed(nifti_readers(), paths, repeats)
    shape = nib.load(str(paths[0])).shape
    print(f"{len(paths)} volumes {shape} (4 BraTS 2015 cases x Flair/T1c/label + BraTS 2023 4 modalities), "
          f"median of {repeats} passes, torch threads 2")
    print_table(seconds, "s/volume", "nibabel .nii.gz", "vs nibabel")
    ours = seconds["ours load_volume (.gz, CRC-checked)"]
    best_peer = min(seconds[k] for k in ("nibabel .nii.gz", "MONAI LoadImage", "TorchIO ScalarImage"))
    print(f"ours load_volume vs the fastest peer: {best_peer / ours:.2f}x")


def dicom_table(root: Path, repeats: int) -> None:
    folders = [root / s for s in DICOM_SERIES]
    table = {
        "SimpleITK ImageSeriesReader": simpleitk_series,
        "ours load_dicom_series": lambda f: load_dicom_series(f).array,
    }
    seconds = timed(table, folders, repeats)
    print(f"\nDICOM: {len(folders)} CT series (20 slices JPEG 2000 + 30 slices uncompressed, 512x512), "
          f"median of {repeats} passes")
    print_table(seconds, "s/series", "SimpleITK ImageSeriesReader", "vs SimpleITK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    root = resolve_data_root(args.data_root)
    nifti_table(root, args.repeats)
    dicom_table(root, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
