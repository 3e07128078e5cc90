from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vol_transfer.cli import main
from vol_transfer.errors import OutputExistsError, RecipeError
from vol_transfer.io.volumes import Volume
from vol_transfer.preprocessing.patches import voxel_to_world
from vol_transfer.preprocessing.slices import (
    SliceSource,
    SliceSpec,
    clahe,
    evenly_spaced,
    normalise_slice,
    select_slices,
    slice_axis,
    valid_slice_mask,
    write_slice_dataset,
)

MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"


def test_evenly_spaced_includes_both_ends():
    assert evenly_spaced(range(2, 11), 3) == [2, 6, 10]
    assert evenly_spaced([1, 5, 9], None) == [1, 5, 9]
    assert evenly_spaced([1, 5, 9], 10) == [1, 5, 9]
    assert evenly_spaced([1, 5, 9], 1) == [5]
    assert evenly_spaced(range(30), 8) == [0, 4, 8, 12, 17, 21, 25, 29]


def _volume_with_label():
    image = np.zeros((1, 6, 5, 10), np.float32)
    image[0, :, :, 2:8] = 100.0  # "body" in slices 2..7
    label = np.zeros((1, 6, 5, 10), np.uint8)
    label[0, 2, 2, 4:7] = 1  # foreground in slices 4..6
    return Volume(image, np.eye(4)), Volume(label, np.eye(4))


def test_empty_and_out_of_body_slices_are_skipped():
    image, label = _volume_with_label()
    assert np.flatnonzero(valid_slice_mask(image, 2, SliceSpec(skip_empty=True), label.array[0])).tolist() == [4, 5, 6]
    assert np.flatnonzero(valid_slice_mask(image, 2, SliceSpec(skip_empty=True))).tolist() == list(range(2, 8))
    body = SliceSpec(body_threshold=50, min_body_fraction=0.5)
    assert np.flatnonzero(valid_slice_mask(image, 2, body)).tolist() == list(range(2, 8))
    chosen = select_slices(image, SliceSpec(budget=2, skip_empty=True), label)
    assert [s.index for s in chosen] == [4, 6] and chosen[0].image.shape == (1, 6, 5)
    assert chosen[0].label.sum() == 1


def test_plane_follows_anatomy():
    # array axes (S, R, A): axial slices step along array axis 0
    permuted = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    volume = Volume(np.zeros((1, 4, 5, 6), np.float32), permuted)
    assert slice_axis(volume, "axial") == 0 and slice_axis(volume, "sagittal") == 1 and slice_axis(volume, "2") == 2
    with pytest.raises(RecipeError, match="plane"):
        slice_axis(volume, "oblique")


def test_normalisation_presets():
    hu = np.array([[[-2000.0, -1000.0, 200.0, 1400.0]]])
    assert normalise_slice(hu, "hu:genesis").tolist() == [[[0.0, 0.0, 0.5, 1.0]]]
    assert normalise_slice(hu, "hu:-1000,200").tolist() == [[[0.0, 0.0, 1.0, 1.0]]]
    mri = np.array([[[0.0, 50.0, 200.0]], [[1.0, 2.0, 4.0]]])
    assert np.allclose(normalise_slice(mri, "mri_max"), [[[0, 0.25, 1]], [[0.25, 0.5, 1]]])
    assert np.allclose(normalise_slice(np.array([[[0, 51, 255]]]), "xray"), [[[0, 0.2, 1]]])
    ramp = normalise_slice(np.arange(1000, dtype=float).reshape(1, 10, 100), "percentile")
    assert ramp.min() == 0 and ramp.max() == 1
    with pytest.raises(RecipeError, match="normalise"):
        normalise_slice(hu, "zscore")


def test_clahe_raises_local_contrast_bounded_and_monotone():
    rng = np.random.default_rng(0)
    dull = 0.45 + 0.1 * rng.random((64, 64)).astype(np.float32)
    out = clahe(dull, clip_limit=2.0, tiles=4)
    assert out.shape == dull.shape and 0 <= out.min() and out.max() <= 1
    assert out.std() > 2 * dull.std()
    single = clahe(dull, clip_limit=40.0, tiles=1)  # one tile: a single monotone mapping
    order = np.argsort(dull, axis=None)
    assert np.all(np.diff(single.ravel()[order]) >= -1e-6)
    assert np.ptp(clahe(np.full((16, 16), 0.3, np.float32), tiles=2)) < 1e-6


def test_clahe_agrees_with_opencv(dataset):
    """Cross-check with OpenCV's CLAHE (test extra only: 150 MB of wheels for a 2-10 ms step per slice).

    Where the two definitions coincide (one tile, no clipping, no pixel at level 0: plain histogram
    equalisation) they agree to rounding. Tiled and clipped they differ by a few grey levels by
    design: OpenCV puts the clipped excess that does not divide evenly into the lowest bins, maps
    level 0 of a tile to its count instead of 0, and places tile centres half a pixel off.
    """
    import cv2

    from tests.training.kermany_fixture import KERMANY
    from vol_transfer.io.images2d import load_image

    rng = np.random.default_rng(3)
    levels = np.sort(rng.integers(1, 256, (64, 64)), axis=1).astype(np.uint8)
    ours = np.rint(clahe(levels / np.float32(255), clip_limit=1000.0, tiles=1) * 255)
    assert np.abs(ours - cv2.createCLAHE(clipLimit=1000.0, tileGridSize=(1, 1)).apply(levels)).max() <= 1

    xray = load_image(sorted((dataset(KERMANY) / "train" / "NORMAL").glob("*.jpeg"))[0], size=256, channels=1)[0]
    for tiles, clip in ((8, 2.0), (4, 3.0)):
        ours = clahe(xray / np.float32(255), clip_limit=clip, tiles=tiles)
        theirs = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(xray) / 255.0
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.995
        assert np.abs(ours - theirs).mean() < 8 / 255
    transposed = clahe(np.ascontiguousarray(xray.T) / np.float32(255), 2.0, 8).T  # a tile-indexing bug would show
    assert np.abs(transposed - clahe(xray / np.float32(255), 2.0, 8)).max() < 1e-5


def test_png_and_npz_outputs_with_index(tmp_path):
    image, label = _volume_with_label()
    image.array[0, 1, 3, 5] = 50.0
    spec = SliceSpec(skip_empty=True, normalise="mri_max")
    index = write_slice_dataset([SliceSource("case1", image, label, "p1", "train", "mem")], tmp_path / "png", spec)
    rows = list(csv.DictReader(index.open()))
    assert [r["index"] for r in rows] == ["4", "5", "6"] and rows[0]["patient_id"] == "p1"
    png = np.asarray(Image.open(tmp_path / "png" / rows[1]["image"]))
    assert png.shape == (5, 6)  # transposed: rows follow the second array axis
    assert png[3, 1] == 128 and png[0, 0] == 255
    assert np.asarray(Image.open(tmp_path / "png" / rows[0]["label"]))[2, 2] == 1
    with pytest.raises(OutputExistsError):
        write_slice_dataset([SliceSource("case1", image, label)], tmp_path / "png", spec)
    index = write_slice_dataset([SliceSource("case1", image, label)], tmp_path / "npz", spec, file_format="npz")
    first = next(csv.DictReader(index.open()))
    with np.load(tmp_path / "npz" / first["image"]) as arrays:
        assert arrays["image"].shape == (1, 6, 5) and arrays["label"].sum() == 1
    assert not list(tmp_path.rglob(".*tmp*"))


def test_cli_slices_real_ct_with_budget_body_mask_and_hu_window(dataset, tmp_path):
    series = dataset("lung_ct_dicom") / "series_B40f"
    out = tmp_path / "ct"
    assert main(["slices", str(series), "--out", str(out), "--budget", "8", "--normalise", "hu:genesis",
                 "--body-threshold", "-500", "--clahe"]) == 0
    rows = list(csv.DictReader((out / "slices.csv").open()))
    assert [int(r["index"]) for r in rows] == [0, 4, 8, 12, 17, 21, 25, 29]
    assert {r["patient_id"] for r in rows} == {"Lung_Dx-A0002"}
    pixels = np.asarray(Image.open(out / rows[3]["image"]))
    assert pixels.shape == (512, 512) and pixels.dtype == np.uint8 and pixels.max() > 200
    assert main(["slices", str(series), "--out", str(out), "--budget", "2"]) == 2  # exists → refuse


def test_cli_slices_from_manifest_keep_only_labelled_slices(dataset, tmp_path):
    dataset("msd_hippocampus")
    lines = (MANIFESTS / "msd_hippocampus.csv").read_text().splitlines()
    header_end = next(i for i, line in enumerate(lines) if line.startswith("subject_id"))
    small = tmp_path / "two.csv"
    train_rows = [line for line in lines[header_end + 1:] if ",train," in line][:2]
    small.write_text("\n".join(lines[:header_end + 1] + train_rows) + "\n")
    out = tmp_path / "hippo"
    assert main(["slices", str(small), "--split", "train", "--out", str(out), "--budget", "3", "--skip-empty",
                 "--normalise", "mri_max", "--format", "npz"]) == 0
    rows = list(csv.DictReader((out / "slices.csv").open()))
    assert len(rows) == 6 and {r["split"] for r in rows} == {"train"}
    for row in rows:
        with np.load(out / row["image"]) as arrays:
            assert arrays["label"].any()  # every kept slice shows hippocampus
            assert np.isclose(arrays["image"].max(), 1.0)


def test_cli_candidate_patches_on_real_ct(dataset, tmp_path):
    from vol_transfer.io.dicom import load_dicom_series

    series = dataset("lung_ct_dicom") / "series_B40f"
    ct = load_dicom_series(series)
    world = voxel_to_world(ct.affine, (175, 306, 13), "LPS")
    candidates = tmp_path / "candidates.csv"
    candidates.write_text("seriesuid,coordX,coordY,coordZ,class\n"
                          f"{ct.header['series_uid']},{world[0]},{world[1]},{world[2]},1\n"
                          "1.2.3.other,0,0,0,0\n")
    out = tmp_path / "patches"
    assert main(["slices", str(series), "--candidates", str(candidates), "--out", str(out),
                 "--patch-size", "48", "--cube", "16"]) == 0
    rows = list(csv.DictReader((out / "patches.csv").open()))
    assert len(rows) == 1  # the other series' candidate is not this volume's
    assert [float(rows[0][k]) for k in ("voxel_i", "voxel_j", "voxel_k")] == [175, 306, 13]
    with np.load(out / rows[0]["file"]) as arrays:
        assert arrays["axial"].shape == (48, 48) and arrays["cube"].shape == (16, 16, 16)
        assert arrays["axial"][24, 24] == ct.array[0, 175, 306, 13]


def test_cli_bad_input_is_one_line_and_writes_nothing(dataset, tmp_path, capsys):
    series = dataset("lung_ct_dicom") / "series_B40f"
    out = tmp_path / "bad"
    assert main(["slices", str(series), "--out", str(out), "--normalise", "zscore"]) == 2
    assert not (out / "slices.csv").exists() and not list(out.rglob("*.png"))
    assert main(["slices", str(tmp_path / "missing.nii.gz"), "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "normalise" in errors[0] and "missing.nii.gz" in errors[1]
