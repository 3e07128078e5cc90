from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pydicom
import pytest

from vol_transfer.errors import InputDataError, ManifestError
from vol_transfer.io.volumes import Volume
from vol_transfer.preprocessing.patches import (
    Candidate,
    crop_padded,
    extract_candidate_patches,
    plane_axes,
    read_candidates,
    voxel_to_world,
    world_to_voxel,
)


def test_crop_padded_centres_and_pads():
    array = np.arange(25).reshape(5, 5)
    patch = crop_padded(array, (0, 0), (3, 3), pad_value=-1)
    assert patch.tolist() == [[-1, -1, -1], [-1, 0, 1], [-1, 5, 6]]
    assert crop_padded(array, (2, 2), (4, 4), -1)[2, 2] == array[2, 2]
    assert np.all(crop_padded(array, (20, 20), (3, 3), -1) == -1)


def test_lps_and_ras_are_handled_explicitly():
    affine = np.diag([-0.7, -0.7, 2.0, 1.0])
    affine[:3, 3] = [100.0, 120.0, -50.0]
    voxel = np.array([10.0, 20.0, 5.0])
    ras = voxel_to_world(affine, voxel, "RAS")
    lps = voxel_to_world(affine, voxel, "LPS")
    assert np.allclose(lps, ras * [-1, -1, 1])
    assert np.allclose(world_to_voxel(affine, lps, "LPS"), voxel)
    assert np.allclose(world_to_voxel(affine, ras, "RAS"), voxel)
    assert not np.allclose(world_to_voxel(affine, lps, "RAS"), voxel)


def test_plane_axes_follow_orientation_not_array_order():
    assert plane_axes(np.eye(4), "axial") == (0, 1)
    assert plane_axes(np.eye(4), "sagittal") == (1, 2)
    # array axes (S, R, A): axial = perpendicular to axis 0
    permuted = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    assert plane_axes(permuted, "axial") == (1, 2)
    assert plane_axes(permuted, "coronal") == (0, 1)


def test_read_candidates_reports_every_bad_row(tmp_path):
    good = tmp_path / "candidates.csv"
    good.write_text("seriesuid,coordX,coordY,coordZ,class\n1.2.3,-56.1,67.2,-231.5,0\n1.2.3,10,20,30,1\n")
    candidates = read_candidates(good)
    assert [c.label for c in candidates] == [0, 1] and candidates[0].world == (-56.1, 67.2, -231.5)
    assert candidates[0].system == "LPS"
    bad = tmp_path / "bad.csv"
    bad.write_text("seriesuid,coordX,coordY,coordZ,class\n1,a,2,3,0\n1,1,2,3,1\n1,1,nan,3,0\n")
    with pytest.raises(ManifestError, match="2 problem") as error:
        read_candidates(bad)
    assert "line 2" in str(error.value) and "line 4" in str(error.value)
    with pytest.raises(ManifestError, match="coordZ"):
        (tmp_path / "nohead.csv").write_text("seriesuid,coordX,coordY\n")
        read_candidates(tmp_path / "nohead.csv")


def test_synthetic_cube_and_planes_are_centred():
    image = np.zeros((1, 40, 30, 20), np.float32)
    image[0, 25, 10, 7] = 5.0
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    volume = Volume(image, affine)
    world = voxel_to_world(affine, (25, 10, 7), "LPS")
    [patch] = extract_candidate_patches(volume, [Candidate("", tuple(world))], size=(9, 7), cube=5)
    assert patch.inside and np.allclose(patch.voxel, (25, 10, 7))
    assert patch.planes["axial"].shape == (9, 7) and patch.planes["axial"][4, 3] == 5.0
    assert patch.planes["coronal"][4, 3] == 5.0 and patch.planes["sagittal"][4, 3] == 5.0
    assert patch.cube.shape == (5, 5, 5) and patch.cube[2, 2, 2] == 5.0 and patch.cube.sum() == 5.0
    far = Candidate("", tuple(voxel_to_world(affine, (100, 10, 7), "LPS")))
    assert extract_candidate_patches(volume, [far], skip_outside=True) == []
    assert not extract_candidate_patches(volume, [far])[0].inside


def aerated(hounsfield: np.ndarray) -> float:
    """Fraction of voxels in the aerated-lung range."""
    return float(np.mean((hounsfield > -950) & (hounsfield < -600)))


def _box_candidates(root, volume):
    """Tumour boxes (PASCAL VOC, file name = SOPInstanceUID) → LPS world centres from DICOM geometry."""
    slices = {}
    for index, name in enumerate(volume.header["files"]):
        header = pydicom.dcmread(name, stop_before_pixels=True)
        slices[header.SOPInstanceUID] = (index, header)
    found = []
    for xml in sorted((root / "annotations").glob("*.xml")):
        if xml.stem not in slices:
            continue  # boxes drawn on the other reconstruction
        index, header = slices[xml.stem]
        box = ET.parse(xml).find("object/bndbox")
        xmin, ymin, xmax, ymax = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        column, row = (xmin + xmax) / 2, (ymin + ymax) / 2
        position = np.array(header.ImagePositionPatient, float)
        orientation = np.array(header.ImageOrientationPatient, float)
        row_spacing, column_spacing = (float(s) for s in header.PixelSpacing)
        world = position + orientation[:3] * column_spacing * column + orientation[3:] * row_spacing * row
        found.append(((column, row, index), world))
    return found


def test_tumour_boxes_as_luna16_candidates_on_real_ct(dataset, tmp_path):
    import SimpleITK as sitk

    from vol_transfer.io.dicom import load_dicom_series

    root = dataset("lung_ct_dicom")
    ct = load_dicom_series(root / "series_B40f")
    boxes = _box_candidates(root, ct)
    assert len(boxes) == 10
    csv = tmp_path / "candidates.csv"
    csv.write_text("seriesuid,coordX,coordY,coordZ,class\n" + "".join(
        f"{ct.header['series_uid']},{w[0]:.4f},{w[1]:.4f},{w[2]:.4f},1\n" for _, w in boxes))
    candidates = read_candidates(csv)
    patches = extract_candidate_patches(ct, candidates, size=32, cube=16)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(root / "series_B40f")))
    itk_image = reader.Execute()
    image = ct.array[0]
    for ((column, row, index), world), patch in zip(boxes, patches):
        assert np.allclose(patch.voxel, (column, row, index), atol=0.01)  # world → voxel through the affine
        assert np.allclose(patch.voxel, itk_image.TransformPhysicalPointToContinuousIndex(world), atol=0.01)
        axial = patch.planes["axial"]
        centre = float(axial[12:20, 12:20].mean())
        assert centre > -150  # soft-tissue tumour, not aerated lung
        assert aerated(axial[12:20, 12:20]) < 0.05 < 0.15 < aerated(image[..., index])  # solid mass in a lung slice
        assert patch.cube.shape == (16, 16, 16)
        assert patch.cube[8, 8, 8] == image[tuple(np.rint(patch.voxel).astype(int))]
        assert patch.planes["coronal"].shape == patch.planes["sagittal"].shape == (32, 32)
    wrong_system = [Candidate(c.series_uid, c.world, 1, "RAS") for c in candidates[:1]]
    assert not extract_candidate_patches(ct, wrong_system)[0].inside  # LPS read as RAS lands outside
    with pytest.raises(InputDataError, match="series"):
        extract_candidate_patches(ct, [Candidate("9.9.9", candidates[0].world)])
