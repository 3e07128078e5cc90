"""Volumes: loading NIfTI/MHA/NRRD, saving with a reference's geometry, and bad input."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from vol_transfer.errors import InputDataError, OutputExistsError
from vol_transfer.io.case import load_image
from vol_transfer.io.volumes import (
    Volume,
    check_same_grid,
    itk_geometry_to_affine,
    load_label,
    load_volume,
    save_volume,
)

BRATS_CASE = "brats2015_flair_t1c/test/brats_2013_pat0001_1"


def _itk_affine(path: Path) -> np.ndarray:
    return itk_geometry_to_affine(sitk.ReadImage(str(path)))


def _oblique_affine() -> np.ndarray:
    """Rotated about all three axes, anisotropic, left-handed, off-centre: nothing lines up."""
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [17, -31, 52], degrees=True).as_matrix() @ np.diag([-0.7, 1.3, 2.9])
    affine[:3, 3] = [-12.25, 40.5, -7.125]
    return affine


def _only_our_files(folder: Path, expected: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == expected, "something else was written"


def _assert_one_line(error: Exception, path: Path) -> None:
    text = str(error)
    assert "\n" not in text and path.name in text and " — " in text


# --- real data: loading ------------------------------------------------------------------------


def test_every_hippocampus_pair_loads_on_one_grid(dataset) -> None:
    root = dataset("msd_hippocampus")
    images = sorted((root / "imagesTr").glob("hippocampus_*.nii.gz"))
    assert len(images) == 200
    for image_path in images:
        image = load_volume(image_path)
        label = load_label(root / "labelsTr" / image_path.name, reference=image)
        assert image.axcodes == ("R", "A", "S") and np.allclose(image.spacing, 1.0)
        assert label.array.dtype == np.int64
        assert set(np.unique(label.array)) <= {0, 1, 2}


def test_brats_channels_stack_with_lps_geometry(dataset) -> None:
    case = dataset(BRATS_CASE)
    volume = load_image({"flair": case / "Flair_subtrMeanDivStd.nii.gz", "t1c": case / "T1c_subtrMeanDivStd.nii.gz"})
    assert volume.array.shape == (2, 240, 240, 155) and volume.array.dtype == np.float32
    assert volume.axcodes == ("L", "P", "S") and volume.channel_names == ("flair", "t1c")
    flair = nib.load(str(case / "Flair_subtrMeanDivStd.nii.gz"))
    np.testing.assert_array_equal(volume.array[0], flair.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(volume.affine, _itk_affine(case / "Flair_subtrMeanDivStd.nii.gz"), atol=1e-6)


def test_four_modality_brats2023_stacks(dataset) -> None:
    root = dataset("brats2023_4mod_nolabel")
    paths = [root / f"BraTS-GLI-00001-000-{m}.nii.gz" for m in ("t1c", "t1n", "t2f", "t2w")]
    volume = load_image(dict(zip(("t1c", "t1n", "t2f", "t2w"), paths)))
    assert volume.array.shape == (4, 240, 240, 155)
    assert [int(volume.array[c].max()) for c in range(4)] == [15462, 2921, 3119, 3689]  # README facts


# --- real data: saving keeps the geometry exactly -----------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_saved_brats_volume_round_trips_its_lps_affine(dataset, tmp_path: Path, suffix: str) -> None:
    case = dataset(BRATS_CASE)
    reference = load_volume(case / "OTMultiClass.nii.gz")
    out = save_volume(reference.array.astype(np.uint8), tmp_path / f"seg{suffix}", reference=reference)
    back = load_volume(out)
    np.testing.assert_array_equal(back.array, reference.array)
    if suffix == ".nii.gz":
        np.testing.assert_array_equal(back.affine, reference.affine)  # exactly, via the sform
    np.testing.assert_allclose(back.affine, reference.affine, atol=1e-6)
    np.testing.assert_allclose(_itk_affine(out), reference.affine, atol=1e-6)
    assert back.axcodes == ("L", "P", "S")


def test_saved_hippocampus_crop_round_trips_its_ras_affine(dataset, tmp_path: Path) -> None:
    image = load_volume(dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz")
    out = save_volume(image.array.astype(np.float32) * 2, tmp_path / "doubled.nii.gz", reference=image)
    np.testing.assert_array_equal(nib.load(str(out)).affine, image.affine)
    np.testing.assert_allclose(_itk_affine(out), image.affine, atol=1e-6)
    np.testing.assert_array_equal(load_volume(out).array, image.array.astype(np.float32) * 2)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_oblique_affine_reads_back_the_same_in_nibabel_and_simpleitk(tmp_path: Path, suffix: str) -> None:
    affine = _oblique_affine()
    array = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    out = save_volume(array, tmp_path / f"oblique{suffix}", affine=affine)
    back = load_volume(out)
    np.testing.assert_array_equal(back.array[0], array)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_allclose(_itk_affine(out), affine, atol=1e-5)
    if suffix.startswith(".nii"):
        np.testing.assert_allclose(nib.load(str(out)).affine, affine, atol=1e-5)


def test_multichannel_round_trip_keeps_channel_order(tmp_path: Path) -> None:
    array = np.arange(3 * 4 * 5 * 6, dtype=np.float32).reshape(3, 4, 5, 6)
    for suffix in (".nii.gz", ".mha"):
        back = load_volume(save_volume(array, tmp_path / f"multi{suffix}", affine=_oblique_affine()))
        np.testing.assert_array_equal(back.array, array)


def test_sheared_affine_is_refused_for_nifti(tmp_path: Path) -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    with pytest.raises(InputDataError, match="sheared") as caught:
        save_volume(np.zeros((5, 6, 7), np.float32), tmp_path / "sheared.nii.gz", affine=sheared)
    _assert_one_line(caught.value, tmp_path / "sheared.nii.gz")
    _only_our_files(tmp_path, set())


def test_save_refuses_to_overwrite_an_input(tmp_path: Path) -> None:
    source = save_volume(np.ones((4, 4, 4), np.float32), tmp_path / "in.nii.gz", affine=np.eye(4))
    volume = load_volume(source)
    before = source.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite an input"):
        save_volume(volume.array * 0, source, reference=volume)
    with pytest.raises(OutputExistsError, match="already exists"):
        save_volume(volume.array, source, affine=np.eye(4), overwrite=False)
    assert source.read_bytes() == before
    _only_our_files(tmp_path, {"in.nii.gz"})


def test_unsupported_output_type_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="unsupported output type"):
        save_volume(np.ones((4, 4, 4)), tmp_path / "out.png", affine=np.eye(4))
    _only_our_files(tmp_path, set())


# --- bad input -----------------------------------------------------------------------------------


def _damaged_copies(source: Path, folder: Path) -> dict[str, Path]:
    raw = source.read_bytes()
    bitflip = bytearray(raw)
    bitflip[len(raw) // 2] ^= 0x01  # a single bit: nibabel alone would load wrong voxels silently
    scrambled = bytearray(raw)
    scrambled[200:-200:50] = bytes(b ^ 0xFF for b in scrambled[200:-200:50])
    damaged = {
        "truncated_half": raw[: len(raw) // 2],
        "truncated_trailer": raw[:-4],
        "bitflip": bytes(bitflip),
        "scrambled": bytes(scrambled),
        "empty": b"",
        "not_gzip": gzip.decompress(raw),
        "header_only": gzip.compress(gzip.decompress(raw)[:352]),
    }
    paths = {}
    for name, data in damaged.items():
        paths[name] = folder / f"{name}.nii.gz"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize(
    "kind", ["truncated_half", "truncated_trailer", "bitflip", "scrambled", "empty", "not_gzip", "header_only"]
)
def test_corrupt_and_truncated_nifti_give_one_line_errors(dataset, tmp_path: Path, kind: str) -> None:
    source = dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz"
    path = _damaged_copies(source, tmp_path)[kind]
    with pytest.raises(InputDataError, match="corrupt or truncated") as caught:
        load_volume(path)
    _assert_one_line(caught.value, path)


def test_nan_and_inf_voxels_are_reported_with_their_count(dataset, tmp_path: Path) -> None:
    image = load_volume(dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz", dtype=np.float32)
    broken = image.array.copy()
    broken[0, 1, 2, 3] = np.nan
    broken[0, 4, 5, 6] = np.inf
    broken[0, 7, 8, 9] = -np.inf
    path = save_volume(broken, tmp_path / "nan.nii.gz", reference=image)
    with pytest.raises(InputDataError, match="contains 3 NaN/Inf voxels") as caught:
        load_volume(path)
    _assert_one_line(caught.value, path)
    assert np.isnan(load_volume(path, allow_nonfinite=True).array).sum() == 1


def test_label_on_another_grid_is_refused(dataset, tmp_path: Path) -> None:
    root = dataset("msd_hippocampus")
    image = load_volume(root / "imagesTr" / "hippocampus_001.nii.gz")
    other_shape = root / "labelsTr" / "hippocampus_003.nii.gz"
    assert load_volume(other_shape).spatial_shape != image.spatial_shape
    with pytest.raises(InputDataError, match="label shape") as caught:
        load_label(other_shape, reference=image)
    _assert_one_line(caught.value, other_shape)

    label = load_volume(root / "labelsTr" / "hippocampus_001.nii.gz")
    shifted_affine = label.affine.copy()
    shifted_affine[:3, 3] += [0.0, 2.5, 0.0]
    shifted = save_volume(label.array, tmp_path / "shifted_label.nii.gz", affine=shifted_affine)
    with pytest.raises(InputDataError, match="affine differs .* by up to 2.5 mm"):
        load_label(shifted, reference=image)


def test_non_integer_label_values_are_refused(tmp_path: Path) -> None:
    path = save_volume(np.full((4, 4, 4), 0.5, np.float32), tmp_path / "soft.nii.gz", affine=np.eye(4))
    with pytest.raises(InputDataError, match="non-integer"):
        load_label(path)


def test_outlier_files_load_alone_but_never_pair(dataset) -> None:
    root = dataset("msd_hippocampus")
    outliers = root / "outliers"
    image_118 = load_volume(outliers / "hippocampus_118_image_nolabel.nii.gz")
    label_010 = load_label(outliers / "hippocampus_010_label_noimage.nii.gz")
    label_281 = load_label(outliers / "hippocampus_281_label_noimage.nii.gz")
    assert image_118.spatial_shape == (37, 52, 33)
    assert label_010.spatial_shape == (36, 50, 31)
    assert label_281.spatial_shape == (512, 512, 94)
    np.testing.assert_allclose(label_281.spacing, (0.734375, 0.734375, 5.0), atol=1e-3)
    assert set(np.unique(label_281.array)) == {0, 1}

    # their partners are missing: the error names the missing file
    for missing in (root / "labelsTr" / "hippocampus_118.nii.gz", root / "imagesTr" / "hippocampus_010.nii.gz"):
        with pytest.raises(InputDataError, match="file not found") as caught:
            load_volume(missing)
        _assert_one_line(caught.value, missing)
    # paired with each other (or with any crop) they are refused, naming the shapes
    with pytest.raises(InputDataError, match=r"label shape \(36, 50, 31\) differs .* \(37, 52, 33\)"):
        check_same_grid(image_118, label_010, "label")
    with pytest.raises(InputDataError, match=r"label shape \(512, 512, 94\)"):
        check_same_grid(image_118, label_281, "label")


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="file not found"):
        load_volume(tmp_path / "nope.nii.gz")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(InputDataError, match="unsupported file type"):
        load_volume(text)


def test_multicomponent_mha_loads_channels_first(tmp_path: Path) -> None:
    xyzc = np.random.default_rng(1).normal(size=(4, 5, 6, 3)).astype(np.float32)
    image = sitk.GetImageFromArray(np.transpose(xyzc, (2, 1, 0, 3)), isVector=True)
    path = tmp_path / "vector.mha"
    sitk.WriteImage(image, str(path))
    volume = load_volume(path)
    assert volume.array.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(volume.array, np.moveaxis(xyzc, -1, 0))


def test_in_memory_volume_properties() -> None:
    volume = Volume(array=np.zeros((2, 3, 4, 5)), affine=_oblique_affine())
    assert volume.spatial_shape == (3, 4, 5) and volume.num_channels == 2
    np.testing.assert_allclose(volume.spacing, (0.7, 1.3, 2.9))
    assert volume.name == "<in-memory volume>"


def test_saved_files_get_ordinary_permissions(tmp_path: Path) -> None:
    out = save_volume(np.zeros((3, 3, 3), np.uint8), tmp_path / "perm.nii.gz", affine=np.eye(4))
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
