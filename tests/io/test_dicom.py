"""DICOM: 3D series (geometry checked against SimpleITK, HU, broken series) and 2D X-rays."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from vol_transfer.errors import DicomError
from vol_transfer.io.dicom import list_dicom_series, load_dicom_image, load_dicom_series, validate_xray_header
from vol_transfer.io.volumes import itk_geometry_to_affine, load_volume, save_volume

CT_SERIES = "ct_abdomen_totalsegmentator/example_ct_dicom"
LUNG_SERIES = "lung_ct_dicom/series_B40f"
MR_STUDY = "mr_dicom_brain_tumor_progression/Study3"
HIPPO_CROP = "mr_dicom_brain_tumor_progression/hippocrop/Study1_13_HCropVolume"


def _simpleitk_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)), itk_geometry_to_affine(image)


def _copy_series(source: Path, target: Path, skip: set[str] = frozenset()) -> list[Path]:
    target.mkdir()
    for path in sorted(source.iterdir()):
        if path.name not in skip:
            shutil.copy(path, target / path.name)
    return sorted(target.iterdir(), key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))


def _assert_one_line(error: Exception, where: Path) -> None:
    text = str(error)
    assert "\n" not in text and where.name in text and " — " in text


# --- geometry and values on the real series --------------------------------------------------


@pytest.mark.parametrize(
    "series", [CT_SERIES, LUNG_SERIES, f"{MR_STUDY}/11-T1post-18670", f"{MR_STUDY}/37830-T2reg-78532", HIPPO_CROP]
)
def test_geometry_and_voxels_match_simpleitk(dataset, series: str) -> None:
    folder = dataset(series)
    volume = load_dicom_series(folder)
    itk_voxels, itk_affine = _simpleitk_series(folder)
    assert volume.array.shape == (1, *itk_voxels.shape) and volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array[0], itk_voxels.astype(np.float32))
    np.testing.assert_allclose(volume.affine, itk_affine, atol=1e-4)


@pytest.mark.parametrize(
    ("series", "shape", "spacing", "hu_range"),
    [
        (CT_SERIES, (512, 512, 20), (0.9765625, 0.9765625, 2.0), (-1024, 1839)),
        (LUNG_SERIES, (512, 512, 30), (0.646484375, 0.646484375, 8.0), (-1024, 1548)),
    ],
)
def test_ct_series_come_out_in_hounsfield_units(dataset, series, shape, spacing, hu_range) -> None:
    volume = load_dicom_series(dataset(series))
    assert volume.spatial_shape == shape
    np.testing.assert_allclose(volume.spacing, spacing, atol=1e-6)
    assert (volume.array.min(), volume.array.max()) == hu_range
    assert volume.header["units"] == "HU" and volume.header["modality"] == "CT"
    assert volume.axcodes == ("L", "P", "S")


def test_ct_label_from_totalsegmentator_lines_up_with_the_series(dataset) -> None:
    ct = load_dicom_series(dataset(CT_SERIES))
    seg = load_volume(dataset("ct_abdomen_totalsegmentator") / "example_seg_dicom.nii.gz")
    assert seg.spatial_shape == ct.spatial_shape
    # the label was written with the row axis flipped; bring the CT onto the label's axes
    transform = nib.orientations.ornt_transform(nib.io_orientation(ct.affine), nib.io_orientation(seg.affine))
    hu = nib.orientations.apply_orientation(ct.array[0], transform)
    affine = ct.affine @ nib.orientations.inv_ornt_aff(transform, ct.spatial_shape)
    np.testing.assert_allclose(affine, seg.affine, atol=1e-3)
    labels = seg.array[0]
    liver, spleen = labels == 5, labels == 1  # TotalSegmentator v2 ids
    assert liver.sum() > 100_000 and spleen.sum() > 50_000
    # organs on the label sit on soft tissue in the CT; misaligned, they would land on fat/air
    assert 40 < hu[liver].mean() < 150 and 40 < hu[spleen].mean() < 150
    assert hu[labels == 0].mean() < -500


def test_study_with_four_series_lists_them_and_loads_the_one_asked_for(dataset) -> None:
    folder = dataset(MR_STUDY)
    series = list_dicom_series(folder)
    assert [s.description for s in series] == ["T1post", "T1pre_reg", "FLAIR_reg", "T2_reg"]
    assert all(s.num_files == 22 and s.modality == "MR" for s in series)
    with pytest.raises(DicomError, match="holds 4 series") as caught:
        load_dicom_series(folder)
    message = str(caught.value)
    assert all(s.series_uid in message and s.description in message for s in series)
    assert "series_uid=" in message
    flair = load_dicom_series(folder, series_uid=series[2].series_uid)
    direct = load_dicom_series(folder / "36468-FLAIRreg-58706")
    np.testing.assert_array_equal(flair.array, direct.array)
    assert flair.spatial_shape == (280, 320, 22)
    np.testing.assert_allclose(flair.spacing, (0.6875, 0.6875, 6.5), atol=1e-5)
    with pytest.raises(DicomError, match="has no series 1.2.3"):
        load_dicom_series(folder, series_uid="1.2.3")


# --- broken series ---------------------------------------------------------------------------


def test_series_with_a_slice_removed_names_the_gap(dataset, tmp_path: Path) -> None:
    source = dataset(CT_SERIES)
    files = sorted(source.iterdir())
    z = {p.name: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files}
    removed = files[7].name
    folder = tmp_path / "ct"
    _copy_series(source, folder, skip={removed})
    with pytest.raises(DicomError) as caught:
        load_dicom_series(folder)
    message = str(caught.value)
    _assert_one_line(caught.value, folder)
    assert "slice gap 4 mm" in message and "expected 2 mm: 1 slice is missing" in message
    assert f"z={z[removed] - 2:.4g}" in message and f"z={z[removed] + 2:.4g}" in message


def test_duplicate_slice_is_refused(dataset, tmp_path: Path) -> None:
    files = _copy_series(dataset(HIPPO_CROP), tmp_path / "crop")
    shutil.copy(files[5], tmp_path / "crop" / "copy_of_slice.dcm")
    with pytest.raises(DicomError, match="duplicate slice"):
        load_dicom_series(tmp_path / "crop")


def test_mixed_orientations_are_refused(dataset, tmp_path: Path) -> None:
    files = _copy_series(dataset(HIPPO_CROP), tmp_path / "crop")
    ds = pydicom.dcmread(files[3])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal slice among axial ones
    ds.save_as(files[3])
    with pytest.raises(DicomError, match="mixed orientations") as caught:
        load_dicom_series(tmp_path / "crop")
    _assert_one_line(caught.value, files[3])


def test_gantry_tilt_is_refused(dataset, tmp_path: Path) -> None:
    files = _copy_series(dataset(HIPPO_CROP), tmp_path / "crop")
    for path in files:  # shear the stack: each slice moves 0.2 mm along y per mm along z
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.2 * z, z]
        ds.save_as(path)
    with pytest.raises(DicomError, match=r"gantry tilt: slices are sheared by 11\.3"):
        load_dicom_series(tmp_path / "crop")


def test_gantry_tilt_tag_is_refused(dataset, tmp_path: Path) -> None:
    files = _copy_series(dataset(HIPPO_CROP), tmp_path / "crop")
    ds = pydicom.dcmread(files[0])
    ds.GantryDetectorTilt = 12.0
    ds.save_as(files[0])
    with pytest.raises(DicomError, match="gantry tilt of 12°"):
        load_dicom_series(tmp_path / "crop")


def test_slice_without_pixel_data_is_named(dataset, tmp_path: Path) -> None:
    files = _copy_series(dataset(HIPPO_CROP), tmp_path / "crop")
    ds = pydicom.dcmread(files[10])
    del ds.PixelData
    ds.save_as(files[10])
    with pytest.raises(DicomError, match="has no pixel data") as caught:
        load_dicom_series(tmp_path / "crop")
    _assert_one_line(caught.value, files[10])
    with pytest.raises(DicomError, match="has no pixel data"):
        load_dicom_image(files[10])


def test_folder_without_dicom_and_files_that_are_not_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(DicomError, match=r"holds no DICOM files \(1 other files\)"):
        load_dicom_series(tmp_path)
    with pytest.raises(DicomError, match="is not a DICOM file"):
        load_dicom_image(tmp_path / "notes.txt")
    with pytest.raises(DicomError, match="folder not found"):
        list_dicom_series(tmp_path / "missing")


def test_non_dicom_files_beside_a_series_are_skipped(dataset, tmp_path: Path) -> None:
    _copy_series(dataset(HIPPO_CROP), tmp_path / "crop")
    (tmp_path / "crop" / "README.txt").write_text("exported by hand")
    assert load_dicom_series(tmp_path / "crop").spatial_shape == (35, 51, 32)


# --- 2D X-ray ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test1.dcm", "test2.dcm", "test3.dcm"])
def test_valid_xray_headers_pass(dataset, name: str) -> None:
    image = load_dicom_image(dataset("cxr_dicom_nih") / name)
    assert image.array.shape == (1024, 1024) and image.array.dtype == np.float32
    assert image.modality == "DX" and image.body_part == "CHEST" and image.view_position in ("PA", "AP")
    assert image.view_position_tag == "PatientPosition"  # these files misuse it for the view
    assert validate_xray_header(image) == []
    assert validate_xray_header(image.path, strict=True) == []


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("test4.dcm", "BodyPartExamined is 'RIBCAGE', expected one of CHEST"),
        ("test5.dcm", "Modality is 'CT', expected one of DX, CR"),
        ("test6.dcm", "view position (PatientPosition) is 'XX', expected one of PA, AP"),
    ],
)
def test_broken_xray_headers_are_reported(dataset, name: str, problem: str) -> None:
    path = dataset("cxr_dicom_nih") / name
    assert validate_xray_header(path) == [problem]
    assert validate_xray_header(pydicom.dcmread(path)) == [problem]
    with pytest.raises(DicomError, match="implausible X-ray header") as caught:
        validate_xray_header(load_dicom_image(path), strict=True)
    _assert_one_line(caught.value, path)
    assert problem in str(caught.value)


def test_xray_pixels_are_the_stored_values(dataset) -> None:
    path = dataset("cxr_dicom_nih") / "test1.dcm"
    np.testing.assert_array_equal(load_dicom_image(path).array, pydicom.dcmread(path).pixel_array)


def test_monochrome1_is_inverted_with_its_window(dataset, tmp_path: Path) -> None:
    source = dataset("cxr_dicom_nih") / "test1.dcm"
    ds = pydicom.dcmread(source)
    stored = ds.pixel_array.astype(np.float32)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = 100, 80
    ds.save_as(tmp_path / "mono1.dcm")
    image = load_dicom_image(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(image.array, 255 - stored)
    assert (image.window_center, image.window_width) == (155.0, 80.0)
    windowed = image.windowed()
    assert windowed.min() == 0.0 and windowed.max() == 1.0
    np.testing.assert_allclose(windowed, np.clip((255 - stored - 115) / 80, 0, 1), atol=1e-6)


def test_missing_header_fields_are_reported(dataset) -> None:
    ds = pydicom.dcmread(dataset("cxr_dicom_nih") / "test1.dcm", stop_before_pixels=True)
    del ds.BodyPartExamined
    del ds.PatientPosition
    assert validate_xray_header(ds) == [
        "BodyPartExamined is missing, expected one of CHEST",
        "view position (ViewPosition/PatientPosition) is missing, expected one of PA, AP",
    ]


def test_dicom_volume_saves_as_nifti_with_its_oblique_geometry(dataset, tmp_path: Path) -> None:
    folder = dataset(f"{MR_STUDY}/11-T1post-18670")
    volume = load_dicom_series(folder)
    out = save_volume(volume.array, tmp_path / "t1post.nii.gz", reference=volume)
    back = load_volume(out)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    _, itk_affine = _simpleitk_series(folder)
    np.testing.assert_allclose(itk_geometry_to_affine(sitk.ReadImage(str(out))), itk_affine, atol=1e-4)
