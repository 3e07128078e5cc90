"""``vol-transfer infer`` on real volumes: outputs land on each input's original grid.

Geometry is checked with a pointwise (1×1×1) network registered for the test: its label at a
voxel depends only on that voxel's (normalised) intensities, so the written label map must equal
the network applied to the original array voxel by voxel — whatever reorientation or cropping the
checkpoint's preprocessing did in between.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.inference.pointwise import PointwiseNet, difference_checkpoint
from vol_transfer.cli import main
from vol_transfer.io.volumes import load_volume
from vol_transfer.preprocessing.pipeline import Preprocessor
from vol_transfer.transfer.checkpoint import make_metadata, save_checkpoint

torch.set_num_threads(2)
MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"
ZSCORE = [{"kind": "zscore", "mask": "nonzero"}]


def _pointwise_checkpoint(path: Path, channels: list[str], classes: int, preprocessing: dict) -> Path:
    torch.manual_seed(0)
    net = PointwiseNet(len(channels), classes)
    with torch.no_grad():  # class k wins in intensity band k: thresholds at -0.5 and +0.5 (z-scores)
        net.conv.weight.zero_()
        net.conv.weight[:, 0, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0][:classes])
        net.conv.bias.copy_(torch.tensor([0.0, 0.5, 0.0][:classes]))
    metadata = make_metadata({"name": "pointwise_test", "in_channels": len(channels), "num_classes": classes},
                             channels, [f"class_{i}" for i in range(classes)], preprocessing=preprocessing)
    return save_checkpoint(path, net.state_dict(), metadata)


def _expected_labels(net_path: Path, image: np.ndarray, preprocessing: dict) -> np.ndarray:
    from vol_transfer.transfer.checkpoint import build_from_checkpoint, load_checkpoint

    net = build_from_checkpoint(load_checkpoint(net_path)).eval()
    normalised = Preprocessor.from_spec({"intensity": preprocessing.get("intensity", [])}).normalise(image)
    with torch.no_grad():
        return net(torch.from_numpy(normalised)[None])[0].argmax(0).numpy().astype(np.uint8)


def _assert_aligned(output: Path, reference_affine: np.ndarray, reference_shape: tuple[int, ...], itk_reference) -> None:
    written = nib.load(str(output))
    assert written.shape[:3] == tuple(reference_shape)
    assert np.allclose(written.affine, reference_affine, atol=1e-4)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(reference_affine)
    itk = sitk.ReadImage(str(output))  # a 4D probability file reads as 4D: compare its first 3 axes
    dim = itk.GetDimension()
    direction = np.asarray(itk.GetDirection()).reshape(dim, dim)[:3, :3]
    assert itk.GetSize()[:3] == itk_reference.GetSize()[:3]
    assert np.allclose(itk.GetOrigin()[:3], itk_reference.GetOrigin(), atol=1e-3)
    assert np.allclose(direction.ravel(), itk_reference.GetDirection(), atol=1e-5)
    assert np.allclose(itk.GetSpacing()[:3], itk_reference.GetSpacing(), atol=1e-4)


def test_lps_brats_case_folder_round_trips(dataset, tmp_path):
    case = dataset("brats2015_flair_t1c") / "test" / "brats_2013_pat0001_1"
    spec = {"orientation": "RAS", "crop_foreground": 2, "intensity": []}  # the files are z-scored already
    checkpoint = _pointwise_checkpoint(tmp_path / "tc.pt", ["flair", "t1c"], 2, spec)
    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(checkpoint), str(case), "--out", str(out), "--no-progress",
                 "--map-labels", "1:4"]) == 0
    seg = out / "brats_2013_pat0001_1_seg.nii.gz"
    flair = case / "Flair_subtrMeanDivStd.nii.gz"
    original = load_volume(flair)
    assert original.axcodes == ("L", "P", "S")
    _assert_aligned(seg, original.affine, original.spatial_shape, sitk.ReadImage(str(flair)))
    written = np.asarray(nib.load(str(seg)).dataobj)
    assert written.dtype == np.uint8 and set(np.unique(written)) <= {0, 4}
    # inside the foreground crop the label equals the pointwise net on the original voxels
    image = np.concatenate([load_volume(flair).array, load_volume(case / "T1c_subtrMeanDivStd.nii.gz").array]).astype(np.float32)
    expected = _expected_labels(checkpoint, image, spec) * 4
    inside = np.any(image != image[:, :1, :1, :1], axis=0)  # background is the corner value
    assert np.array_equal(written[inside], expected[inside])
    assert 0.01 < (written == 4).mean() < 0.99
    with open(out / "inference_timings.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["case"] == "brats_2013_pat0001_1" and rows[0]["strategy"] in ("whole", "tiled", "window")


def test_ras_hippocampus_reoriented_with_probabilities(dataset, tmp_path):
    image_path = dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz"
    spec = {"orientation": "LPI", "intensity": ZSCORE}
    checkpoint = _pointwise_checkpoint(tmp_path / "hippo.pt", ["image"], 3, spec)
    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(checkpoint), str(image_path), "--out", str(out), "--no-progress",
                 "--probabilities", "--tta"]) == 0
    original = load_volume(image_path)
    assert original.axcodes == ("R", "A", "S")
    seg, prob = out / "hippocampus_001_seg.nii.gz", out / "hippocampus_001_prob.nii.gz"
    itk_reference = sitk.ReadImage(str(image_path))
    _assert_aligned(seg, original.affine, original.spatial_shape, itk_reference)
    _assert_aligned(prob, original.affine, original.spatial_shape, itk_reference)
    expected = _expected_labels(checkpoint, original.array.astype(np.float32), spec)
    written = np.asarray(nib.load(str(seg)).dataobj)
    assert np.array_equal(written, expected)
    assert len(np.unique(written)) == 3
    probabilities = np.asarray(nib.load(str(prob)).dataobj)
    assert probabilities.shape == (*original.spatial_shape, 3)
    assert np.allclose(probabilities.sum(-1), 1.0, atol=1e-4)
    assert np.array_equal(probabilities.argmax(-1), written)


def test_dicom_series_input(dataset, tmp_path):
    series = dataset("mr_dicom_brain_tumor_progression") / "hippocrop" / "Study1_13_HCropVolume"
    spec = {"orientation": "RAS", "intensity": ZSCORE}
    checkpoint = _pointwise_checkpoint(tmp_path / "hippo.pt", ["image"], 3, spec)
    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(checkpoint), str(series), "--out", str(out), "--no-progress"]) == 0
    from vol_transfer.io.dicom import load_dicom_series

    volume = load_dicom_series(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    itk_series = reader.Execute()
    seg = out / "Study1_13_HCropVolume_seg.nii.gz"
    _assert_aligned(seg, volume.affine, volume.spatial_shape, itk_series)
    written = np.asarray(nib.load(str(seg)).dataobj)
    assert np.array_equal(written, _expected_labels(checkpoint, volume.array.astype(np.float32), spec))
    # SimpleITK's own DICOM reading and our NIfTI agree voxel by voxel in world space
    resampled = sitk.Resample(sitk.ReadImage(str(seg)), itk_series, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(sitk.ReadImage(str(seg))))


def test_highres3dnet_checkpoint_on_manifest_split(dataset, tmp_path, shared_data):
    from vol_transfer.nets import build_network

    config = {"name": "highres3dnet", "in_channels": 1, "num_classes": 3, "width": 0.25}
    net = build_network(config)
    metadata = make_metadata(config, ["image"], ["background", "anterior", "posterior"],
                             preprocessing={"intensity": ZSCORE}, label_mapping={1: 1, 2: 2})
    checkpoint = save_checkpoint(tmp_path / "net.pt", net.state_dict(), metadata)
    manifest = tmp_path / "two.csv"
    manifest.write_text(
        "# kind: segmentation\n# labels: 0,1,2\nsubject_id,split,image,label\n"
        "h1,test,msd_hippocampus/imagesTr/hippocampus_001.nii.gz,msd_hippocampus/labelsTr/hippocampus_001.nii.gz\n"
        "h3,train,msd_hippocampus/imagesTr/hippocampus_003.nii.gz,msd_hippocampus/labelsTr/hippocampus_003.nii.gz\n"
    )
    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(checkpoint), str(manifest), "--split", "test", "--data-root",
                 str(shared_data), "--out", str(out), "--no-progress", "--map-labels", "checkpoint",
                 "--mode", "window", "--window", "40"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["h1_seg.nii.gz", "inference_timings.csv"]
    written = nib.load(str(out / "h1_seg.nii.gz"))
    assert written.shape == nib.load(str(shared_data / "msd_hippocampus/imagesTr/hippocampus_001.nii.gz")).shape
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}


def test_channel_count_mismatch_is_one_line_and_writes_nothing(dataset, tmp_path, capsys):
    image_path = dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz"
    checkpoint = _pointwise_checkpoint(tmp_path / "tc.pt", ["flair", "t1c"], 2, {"intensity": ZSCORE})
    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(checkpoint), str(image_path), "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "has no channel 'flair' (its channels: image; wanted: flair, t1c)" in error[0]
    assert "expects channels flair, t1c" in error[0] and "--channels" in error[0]
    assert not out.exists() or not any(out.iterdir())


def test_refuses_existing_outputs_and_dicom_folder_as_out(dataset, tmp_path, capsys):
    image_path = dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz"
    checkpoint = _pointwise_checkpoint(tmp_path / "h.pt", ["image"], 3, {"intensity": ZSCORE})
    out = tmp_path / "pred"
    out.mkdir()
    (out / "hippocampus_001_seg.nii.gz").write_text("old")
    args = ["infer", "--checkpoint", str(checkpoint), str(image_path), "--out", str(out), "--no-progress"]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "hippocampus_001_seg.nii.gz").read_text() == "old"
    assert main(args + ["--overwrite"]) == 0
    series = dataset("mr_dicom_brain_tumor_progression") / "hippocrop" / "Study1_13_HCropVolume"
    assert main(["infer", "--checkpoint", str(checkpoint), str(series), "--out", str(series), "--no-progress"]) == 2
    assert "inside an input DICOM folder" in capsys.readouterr().err


def test_ambiguous_checkpoint_label_mapping_is_refused(dataset, tmp_path, capsys):
    image_path = dataset("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz"
    checkpoint = _pointwise_checkpoint(tmp_path / "h.pt", ["image"], 2, {"intensity": ZSCORE})
    payload = torch.load(checkpoint, weights_only=True)
    from vol_transfer.transfer.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    loaded.metadata["label_mapping"] = {"1": 1, "2": 1}
    save_checkpoint(checkpoint, payload["state_dict"], loaded.metadata)
    assert main(["infer", "--checkpoint", str(checkpoint), str(image_path), "--out", str(tmp_path / "o"),
                 "--map-labels", "checkpoint", "--no-progress"]) == 2
    assert "cannot be mapped back uniquely" in capsys.readouterr().err



# --------------------------------------------------------------------------------------------
# Channels by name (issue 12): the checkpoint's names pick the channels, whatever the input order.


def _segmentation(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _integer_volume(path: Path, rng: np.random.Generator, shape=(9, 8, 7)) -> np.ndarray:
    array = rng.integers(0, 50, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(array, np.diag([-1.5, 1.0, 2.0, 1.0])), str(path))
    return array


def test_manifest_column_order_does_not_change_the_segmentation(tmp_path):
    rng = np.random.default_rng(0)
    t1c, flair = _integer_volume(tmp_path / "a.nii.gz", rng), _integer_volume(tmp_path / "b.nii.gz", rng)
    checkpoint = difference_checkpoint(tmp_path / "tc.pt", ["t1c", "flair"])
    written = []
    for columns, files in ((["t1c", "flair"], "a.nii.gz,b.nii.gz"), (["flair", "t1c"], "b.nii.gz,a.nii.gz")):
        manifest = tmp_path / f"{columns[0]}_first.csv"
        manifest.write_text(f"subject_id,split,{','.join(columns)}\npat,test,{files}\n")
        out = tmp_path / f"pred_{columns[0]}"
        assert main(["infer", "--checkpoint", str(checkpoint), str(manifest), "--data-root", str(tmp_path),
                     "--out", str(out), "--no-progress"]) == 0
        written.append(_segmentation(out / "pat_seg.nii.gz"))
    expected = (t1c > flair).astype(np.uint8)
    assert 0.2 < expected.mean() < 0.8
    np.testing.assert_array_equal(written[0], expected)
    np.testing.assert_array_equal(written[1], expected)


def test_t1_t2_model_reads_four_sequence_inputs_and_brats_2023_names(dataset, shared_data, tmp_path):
    brats23 = dataset("brats2023_4mod_nolabel")
    checkpoint = difference_checkpoint(tmp_path / "t1t2.pt", ["t1", "t2"])
    t1 = load_volume(brats23 / "BraTS-GLI-00001-000-t1n.nii.gz").array[0]
    t2 = load_volume(brats23 / "BraTS-GLI-00001-000-t2w.nii.gz").array[0]
    expected = (t1 > t2).astype(np.uint8)
    assert 0.01 < expected.mean() < 0.99
    renamed = tmp_path / "brats2023_names.csv"  # columns named as BraTS 2023 names its files, in its own order
    renamed.write_text("subject_id,split,t2f,t1n,t1c,t2w\nx,test," + ",".join(
        f"brats2023_4mod_nolabel/BraTS-GLI-00001-000-{m}.nii.gz" for m in ("t2f", "t1n", "t1c", "t2w")) + "\n")
    inputs = {"manifest": [str(MANIFESTS / "brats2023_4mod.csv")], "folder": [str(brats23)], "renamed": [str(renamed)]}
    for name, given in inputs.items():
        out = tmp_path / name
        assert main(["infer", "--checkpoint", str(checkpoint), *given, "--data-root", str(shared_data),
                     "--out", str(out), "--no-progress"]) == 0, name
        (seg,) = out.glob("*_seg.nii.gz")
        np.testing.assert_array_equal(_segmentation(seg), expected, err_msg=name)


def test_t1_t2_model_reads_a_multi_series_dicom_study(dataset, tmp_path):
    from vol_transfer.io.dicom import load_dicom_series

    study = dataset("mr_dicom_brain_tumor_progression") / "Study3"
    checkpoint = difference_checkpoint(tmp_path / "t1t2.pt", ["t1", "t2"])
    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(checkpoint), str(study), "--out", str(out), "--no-progress"]) == 0
    t1 = load_dicom_series(study / "26401-T1prereg-52906")
    t2 = load_dicom_series(study / "37830-T2reg-78532").array[0]
    written = nib.load(str(out / "Study3_seg.nii.gz"))
    assert np.allclose(written.affine, t1.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(written.dataobj), (t1.array[0] > t2).astype(np.uint8))


def test_channels_option_names_files_of_a_flat_nnunet_folder(tmp_path):
    rng = np.random.default_rng(1)
    images = tmp_path / "imagesTs"
    images.mkdir()
    volumes = {(case, index): _integer_volume(images / f"{case}_{index:04d}.nii.gz", rng)
               for case in ("case1", "case2") for index in (0, 1)}
    checkpoint = difference_checkpoint(tmp_path / "tc.pt", ["t1c", "flair"])
    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(checkpoint), str(images), "--channels",
                 "flair=*_0000.nii.gz,t1c=*_0001.nii.gz", "--out", str(out), "--no-progress"]) == 0
    for case in ("case1", "case2"):
        expected = (volumes[(case, 1)] > volumes[(case, 0)]).astype(np.uint8)  # t1c is _0001
        np.testing.assert_array_equal(_segmentation(out / f"{case}_seg.nii.gz"), expected)


def test_channels_option_is_documented_with_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--channels SPEC" in text and "--channels flair=*_0000.nii.gz,t1c=*_0001.nii.gz" in text


def _four_volume_case(path: Path, rng: np.random.Generator) -> np.ndarray:
    volumes = rng.integers(0, 50, (4, 9, 8, 7)).astype(np.float32)
    nib.save(nib.Nifti1Image(np.moveaxis(volumes, 0, -1), np.eye(4)), str(path))
    return volumes


def test_4d_inputs_by_volume_name_and_legacy_one_name_checkpoints(tmp_path):
    rng = np.random.default_rng(2)
    volumes = _four_volume_case(tmp_path / "BRATS_001.nii.gz", rng)
    cases = {
        "image_k": (["image_2", "image_0", "image_1", "image_3"], [], volumes[2] > volumes[0]),
        "named": (["t1", "t2", "flair", "t1c"], ["--channels", "flair,t1,t1c,t2"], volumes[1] > volumes[3]),
        "legacy": (["image"], [], volumes[0] > volumes[1]),  # metadata of a 4-D run before the fix: one name
    }
    for name, (channels, extra, expected) in cases.items():
        checkpoint = difference_checkpoint(tmp_path / f"{name}.pt", channels if name != "legacy" else ["a"] * 4)
        if name == "legacy":
            payload = torch.load(checkpoint, weights_only=True)
            from vol_transfer.transfer.checkpoint import load_checkpoint

            metadata = load_checkpoint(checkpoint).metadata
            metadata["channels"] = ["image"]
            save_checkpoint(checkpoint, payload["state_dict"], metadata)
        out = tmp_path / name
        assert main(["infer", "--checkpoint", str(checkpoint), str(tmp_path / "BRATS_001.nii.gz"), *extra,
                     "--out", str(out), "--no-progress"]) == 0, name
        np.testing.assert_array_equal(_segmentation(out / "BRATS_001_seg.nii.gz"), expected.astype(np.uint8),
                                      err_msg=name)


def test_a_model_trained_on_4d_files_stores_image_k_and_infers_on_4d_input(tmp_path):
    """Train on MSD-Task01-style 4-D files, then segment a 4-D file and a 4-D manifest with the checkpoint."""
    from vol_transfer.recipes import from_dict
    from vol_transfer.training.segmentation import SegmentationConfig, run_segmentation
    from vol_transfer.transfer.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    rows = []
    for i in range(3):
        label = np.zeros((14, 16, 12), np.uint8)
        label[4:9, 5:10, 3:8] = 1
        image = np.stack([rng.normal(100, 10, label.shape) + 50 * k * label for k in range(4)], -1)
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), str(tmp_path / f"img_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp_path / f"lab_{i}.nii.gz"))
        rows.append(f"case{i},{'validation' if i == 2 else 'train'},img_{i}.nii.gz,lab_{i}.nii.gz")
    manifest = tmp_path / "task01.csv"
    manifest.write_text("# labels: 0,1\nsubject_id,split,image,label\n" + "\n".join(rows) + "\n")
    recipe = {
        "data": {"manifest": str(manifest), "data_root": str(tmp_path), "label_mapping": "hippocampus_merged"},
        "network": {"options": {"width": 0.25}},
        "sampler": {"patches_per_volume": 2, "volumes_per_block": 2},
        "training": {"iterations": 2, "batch_size": 2, "window": [12, 12, 12], "threads": 1, "log_every": 2},
        "validation": {"every": 2},
        "checkpoint": {"every": 2},
    }
    run_segmentation(from_dict(SegmentationConfig, recipe), tmp_path / "run", progress=False)
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    assert load_checkpoint(checkpoint).metadata["channels"] == ["image_0", "image_1", "image_2", "image_3"]
    for given in (tmp_path / "img_2.nii.gz", manifest):
        out = tmp_path / f"pred_{given.suffix}"
        assert main(["infer", "--checkpoint", str(checkpoint), str(given), "--data-root", str(tmp_path),
                     "--out", str(out), "--no-progress"]) == 0
        assert nib.load(str(next(out.glob("*_seg.nii.gz")))).shape == (14, 16, 12)
