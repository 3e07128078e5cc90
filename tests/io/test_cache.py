"""Volume cache: same volume as a direct read, memory-mapped, invalidated on change, process-safe."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vol_transfer.errors import InputDataError
from vol_transfer.io.cache import VolumeCache, default_cache_dir
from vol_transfer.io.dicom import load_dicom_series
from vol_transfer.io.volumes import load_channels, load_volume, save_volume

BRATS_CASE = "brats2015_flair_t1c/test/brats_2013_pat0001_1"


def _entry_files(cache: VolumeCache) -> list[str]:
    return sorted(p.name for p in cache.directory.iterdir()) if cache.directory.exists() else []


def test_cached_volume_equals_a_direct_read_and_is_memory_mapped(dataset, tmp_path: Path) -> None:
    source = dataset(BRATS_CASE) / "Flair_subtrMeanDivStd.nii.gz"
    cache = VolumeCache(tmp_path / "cache")
    direct = load_volume(source)
    first = cache.load(source)
    warm = cache.load(source)
    assert isinstance(warm.array, np.memmap) and not isinstance(first.array, np.memmap)
    for cached in (first, warm):
        np.testing.assert_array_equal(cached.array, direct.array)
        np.testing.assert_array_equal(cached.affine, direct.affine)
        assert cached.header == direct.header and cached.paths == (source,)
    assert len(_entry_files(cache)) == 2  # one .npy + one .json


def test_cached_volume_saves_like_the_original(dataset, tmp_path: Path) -> None:
    source = dataset(BRATS_CASE) / "OTMultiClass.nii.gz"
    cache = VolumeCache(tmp_path / "cache")
    cache.load(source)
    reference = cache.load(source)
    out = save_volume(reference.array.astype(np.uint8), tmp_path / "seg.nii.gz", reference=reference)
    np.testing.assert_array_equal(load_volume(out).affine, load_volume(source).affine)


def test_callers_may_modify_the_array_without_touching_the_cache(dataset, tmp_path: Path) -> None:
    source = dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz"
    cache = VolumeCache(tmp_path / "cache")
    cache.load(source)
    mapped = cache.load(source)
    original = np.array(mapped.array)
    mapped.array[...] = 0  # copy-on-write
    np.testing.assert_array_equal(cache.load(source).array, original)


def test_dtype_conversion_and_channels(dataset, tmp_path: Path) -> None:
    case = dataset(BRATS_CASE)
    paths = [case / "Flair_subtrMeanDivStd.nii.gz", case / "T1c_subtrMeanDivStd.nii.gz"]
    cache = VolumeCache(tmp_path / "cache")
    stacked = cache.load_channels(paths, names=("flair", "t1c"))
    np.testing.assert_array_equal(stacked.array, load_channels(paths).array)
    assert stacked.channel_names == ("flair", "t1c")
    label = cache.load(case / "OTMultiClass.nii.gz", dtype=np.int16)
    assert label.array.dtype == np.int16 and set(np.unique(label.array)) == {0, 1, 2, 3, 4}


def test_changed_source_is_decoded_again_and_prune_drops_the_stale_entry(tmp_path: Path) -> None:
    source = tmp_path / "scan.nii.gz"
    save_volume(np.ones((4, 5, 6), np.float32), source, affine=np.eye(4))
    cache = VolumeCache(tmp_path / "cache")
    first_key = cache.key(source)
    assert cache.load(source).array.sum() == 120
    save_volume(np.full((4, 5, 6), 2, np.float32), source, affine=np.eye(4))
    os.utime(source, ns=(0, 10**18))  # a different mtime even on coarse filesystem clocks
    assert cache.key(source) != first_key
    assert cache.load(source).array.sum() == 240
    assert len(cache.entries()) == 2
    assert cache.prune() == 1
    assert [e["key"] for e in cache.entries()] == [cache.key(source)]


def test_nonfinite_voxels_are_reported_on_every_read(tmp_path: Path) -> None:
    array = np.zeros((4, 4, 4), np.float32)
    array[1, 2, 3] = np.nan
    source = save_volume(array, tmp_path / "nan.nii.gz", affine=np.eye(4))
    cache = VolumeCache(tmp_path / "cache")
    for _ in range(2):  # cold, then warm
        with pytest.raises(InputDataError, match="contains 1 NaN/Inf voxels"):
            cache.load(source)
    assert np.isnan(cache.load(source, allow_nonfinite=True).array).sum() == 1


def test_corrupt_source_raises_and_caches_nothing(dataset, tmp_path: Path) -> None:
    raw = (dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz").read_bytes()
    broken = tmp_path / "truncated.nii.gz"
    broken.write_bytes(raw[: len(raw) // 2])
    cache = VolumeCache(tmp_path / "cache")
    with pytest.raises(InputDataError, match="corrupt or truncated"):
        cache.load(broken)
    with pytest.raises(InputDataError, match="file not found"):
        cache.load(tmp_path / "missing.nii.gz")
    assert _entry_files(cache) == []


def test_damaged_entry_is_rebuilt(dataset, tmp_path: Path) -> None:
    source = dataset("msd_hippocampus") / "imagesTr" / "hippocampus_003.nii.gz"
    cache = VolumeCache(tmp_path / "cache")
    expected = cache.load(source).array.copy()
    array_file = cache.directory / f"{cache.key(source)}.npy"
    array_file.write_bytes(array_file.read_bytes()[:100])
    np.testing.assert_array_equal(cache.load(source).array, expected)
    np.testing.assert_array_equal(cache.load(source).array, expected)


def test_dicom_folder_is_cached_too(dataset, tmp_path: Path) -> None:
    source = dataset("mr_dicom_brain_tumor_progression/hippocrop/Study2_14_HCropVolume")
    copy = tmp_path / "series"
    shutil.copytree(source, copy)
    cache = VolumeCache(tmp_path / "cache")
    direct = load_dicom_series(copy)
    cache.load(copy)
    warm = cache.load(copy)
    assert isinstance(warm.array, np.memmap)
    np.testing.assert_array_equal(warm.array, direct.array)
    np.testing.assert_array_equal(warm.affine, direct.affine)
    assert warm.header["series_uid"] == direct.header["series_uid"]
    (copy / sorted(os.listdir(copy))[0]).unlink()  # the folder changed: decode again
    assert cache.load(copy).spatial_shape[2] == direct.spatial_shape[2] - 1


def _load_sum(args: tuple[str, str]) -> float:
    directory, source = args
    return float(np.asarray(VolumeCache(directory).load(source).array, dtype=np.float64).sum())


def test_processes_filling_one_cache_at_once_agree(dataset, tmp_path: Path) -> None:
    source = dataset("msd_hippocampus") / "imagesTr" / "hippocampus_004.nii.gz"
    expected = float(load_volume(source).array.astype(np.float64).sum())
    directory = tmp_path / "shared_cache"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        sums = pool.map(_load_sum, [(str(directory), str(source))] * 8)
    assert sums == [expected] * 8
    cache = VolumeCache(directory)
    assert len(cache.entries()) == 1 and len(_entry_files(cache)) == 2  # no temporaries left behind


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOL_TRANSFER_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("VOL_TRANSFER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vol_transfer" / "volumes"
