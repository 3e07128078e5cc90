"""``vol-transfer infer`` with a classification checkpoint on real chest X-rays: manifests, class folders,
grey/RGB mixes and DICOM, the predictions equal to the training validator's, and one-line refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vol_transfer.cli import main
from vol_transfer.transfer.checkpoint import (
    load_checkpoint,
    make_metadata,
    save_checkpoint,
)

from .conftest import read_rows, write_manifest

torch.set_num_threads(2)


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and "Traceback" not in error[0], error
    return error[0]


def _probabilities(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(r["p_NORMAL"]), float(r["p_PNEUMONIA"])] for r in rows])


def test_manifest_predictions_equal_the_training_validators(trained_run, tmp_path, capsys):
    manifest = write_manifest(trained_run.rows, tmp_path / "validation.csv")
    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(trained_run.checkpoint), str(manifest), "--split", "validation",
                 "--out", str(out), "--no-progress"]) == 0
    assert "classified 12 image(s) (12 with a known label)" in capsys.readouterr().out
    rows = read_rows(out / "predictions.csv")
    assert [r["path"] for r in rows] == [r["path"] for r in trained_run.rows]
    assert np.abs(_probabilities(rows) - _probabilities(trained_run.rows)).max() <= 2e-6
    for key in ("label", "patient_id", "prediction"):
        assert [r[key] for r in rows] == [r[key] for r in trained_run.rows]
    # an existing output is kept unless --overwrite
    error = _one_line_error(capsys, ["infer", "--checkpoint", str(trained_run.checkpoint), str(manifest),
                                     "--out", str(out)])
    assert "predictions.csv" in error and "--overwrite" in error


def test_checkpoint_records_every_preprocessing_step(trained_run):
    from vol_transfer.inference.classify import ImagePreprocessing

    metadata = load_checkpoint(trained_run.checkpoint).metadata
    assert metadata["task"] == "classification"
    assert metadata["preprocessing"] == {"kind": "image2d", "image_size": 32, "channels": 1, "resize": "bilinear",
                                         "intensity": "scale_uint8"}
    assert ImagePreprocessing.from_metadata(metadata, "best.pt") == ImagePreprocessing(32, 1)


def _class_folder(trained_run, root: Path) -> dict[str, tuple[Path, str]]:
    """DIR/<class>/ with each validation JPEG as it is, and grey / RGB PNG copies of two of them."""
    made = {}
    for index, row in enumerate(trained_run.rows):
        source = Path(row["path"])
        folder = root / row["label"]
        folder.mkdir(parents=True, exist_ok=True)
        made[source.name] = (shutil.copy(source, folder / source.name), row["path"])
        if index in (0, len(trained_run.rows) - 1):
            grey = Image.open(source).convert("L")
            grey.save(folder / f"{source.stem}_grey.png")
            grey.convert("RGB").save(folder / f"{source.stem}_rgb.png")
            made[f"{source.stem}_grey.png"] = (folder / f"{source.stem}_grey.png", row["path"])
            made[f"{source.stem}_rgb.png"] = (folder / f"{source.stem}_rgb.png", row["path"])
    return made


def test_class_folder_with_grey_and_rgb_images(trained_run, tmp_path):
    made = _class_folder(trained_run, tmp_path / "images")
    (tmp_path / "images" / "README.txt").write_text("not an image")  # ignored
    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(trained_run.checkpoint), str(tmp_path / "images"), "--out", str(out),
                 "--no-progress"]) == 0
    rows = {Path(r["path"]).name: r for r in read_rows(out / "predictions.csv")}
    assert set(rows) == set(made)
    expected = {r["path"]: r for r in trained_run.rows}
    for name, (_, source) in made.items():
        assert rows[name]["label"] == expected[source]["label"]  # from the class folder's name
        difference = np.abs(_probabilities([rows[name]]) - _probabilities([expected[source]])).max()
        # JPEG copies load exactly as in training; PNG copies differ only by the JPEG decoder's draft scaling
        assert difference <= (2e-6 if name.endswith(".jpeg") else 0.05), name
    for stem in {Path(n).stem.rsplit("_", 1)[0] for n in made if n.endswith(".png")}:
        grey, rgb = _probabilities([rows[f"{stem}_grey.png"]]), _probabilities([rows[f"{stem}_rgb.png"]])
        assert np.array_equal(grey, rgb)  # an RGB file of a grey X-ray is turned grey, as the network was trained


def test_rgb_checkpoint_takes_grey_and_rgb_files(tmp_path, dataset):
    from vol_transfer.inference.classify import ImageClassifier, ImageItem
    from vol_transfer.nets import build_network

    torch.manual_seed(0)
    architecture = {"name": "cbr_large_t", "in_channels": 3, "num_classes": 2, "widths": [4, 8, 8, 8, 8]}
    model = build_network(architecture)
    metadata = make_metadata(architecture, ["red", "green", "blue"], ["NORMAL", "PNEUMONIA"],
                             preprocessing={"kind": "image2d", "image_size": 32, "channels": 3, "resize": "bilinear",
                                            "intensity": "scale_uint8"})
    checkpoint = save_checkpoint(tmp_path / "rgb.pt", model.state_dict(), metadata | {"task": "classification"})
    jpeg = next((dataset("chest_xray_kermany_224") / "train" / "NORMAL").glob("*.jpeg"))
    Image.open(jpeg).convert("L").save(tmp_path / "grey.png")
    Image.open(tmp_path / "grey.png").convert("RGB").save(tmp_path / "rgb.png")
    classifier = ImageClassifier.from_checkpoint(checkpoint)
    loaded = classifier.preprocessing.load([tmp_path / "grey.png", tmp_path / "rgb.png", jpeg])
    assert loaded.shape == (3, 3, 32, 32) and np.array_equal(loaded[0], loaded[1])
    predictions = classifier.predict([ImageItem(tmp_path / "grey.png"), ImageItem(tmp_path / "rgb.png"), ImageItem(jpeg)])
    assert predictions.probabilities.shape == (3, 2)
    assert np.array_equal(predictions.probabilities[0], predictions.probabilities[1])


def test_dicom_xrays_invalid_headers_refused_or_skipped(trained_run, dataset, tmp_path, capsys):
    from vol_transfer.io.images2d import load_image
    from vol_transfer.training.classification import predict
    from vol_transfer.transfer.checkpoint import build_from_checkpoint

    dicoms = dataset("cxr_dicom_nih")
    checkpoint = str(trained_run.checkpoint)
    error = _one_line_error(capsys, ["infer", "--checkpoint", checkpoint, str(dicoms), "--out", str(tmp_path / "a")])
    assert "test4.dcm" in error and "RIBCAGE" in error and "2 more" in error and "--skip-invalid" in error
    assert not (tmp_path / "a").exists()
    error = _one_line_error(capsys, ["infer", "--checkpoint", checkpoint, str(dicoms / "test5.dcm"),
                                     "--out", str(tmp_path / "b")])
    assert "test5.dcm" in error and "Modality is 'CT'" in error

    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", checkpoint, str(dicoms), "--out", str(out), "--skip-invalid",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
    assert [Path(line.split()[1].rstrip(":")).name for line in skipped] == ["test4.dcm", "test5.dcm", "test6.dcm"]
    assert "'XX'" in skipped[2]
    rows = read_rows(out / "predictions.csv")
    assert [Path(r["path"]).name for r in rows] == ["test1.dcm", "test2.dcm", "test3.dcm"]
    assert all(r["patient_id"] and not r["label"] for r in rows)  # PatientID from the header; no class known
    model = build_from_checkpoint(load_checkpoint(checkpoint))
    direct = predict(model, np.stack([load_image(dicoms / f"test{i}.dcm", 32, 1) for i in (1, 2, 3)]))
    assert np.abs(_probabilities(rows) - direct).max() <= 2e-6


def test_wrong_kind_of_checkpoint_or_input_is_one_line_error(trained_run, dataset, tmp_path, capsys):
    jpeg = Path(trained_run.rows[0]["path"])
    segmentation = make_metadata({"name": "highres3dnet", "in_channels": 1, "num_classes": 3}, ["t1"],
                                 ["background", "anterior", "posterior"], preprocessing={"intensity": []})
    seg_checkpoint = save_checkpoint(tmp_path / "seg.pt", {"w": torch.zeros(1)}, segmentation | {"task": "segmentation"})
    for given in (jpeg, dataset("cxr_dicom_nih") / "test1.dcm", dataset("cxr_dicom_nih"), jpeg.parent):
        error = _one_line_error(capsys, ["infer", "--checkpoint", str(seg_checkpoint), str(given), "--out",
                                         str(tmp_path / "p")])
        assert "is a segmentation checkpoint" in error and "classification checkpoint" in error, error

    volume = next((dataset("msd_hippocampus") / "imagesTr").glob("*.nii.gz"))
    error = _one_line_error(capsys, ["infer", "--checkpoint", str(trained_run.checkpoint), str(volume), "--out",
                                     str(tmp_path / "p")])
    assert volume.name in error and "is a classification checkpoint" in error and "NORMAL, PNEUMONIA" in error
    error = _one_line_error(capsys, ["infer", "--checkpoint", str(trained_run.checkpoint),
                                     str(Path(__file__).resolve().parents[2] / "data_manifests" / "msd_hippocampus.csv"),
                                     "--out", str(tmp_path / "p")])
    assert "segmentation manifest" in error and "classification checkpoint" in error
    error = _one_line_error(capsys, ["infer", "--checkpoint", str(trained_run.checkpoint), str(jpeg), "--tta",
                                     "--out", str(tmp_path / "p")])
    assert "--tta" in error and "segmentation" in error


def test_old_or_unknown_preprocessing_record_is_refused(trained_run, tmp_path, capsys):
    checkpoint = load_checkpoint(trained_run.checkpoint)
    jpeg = trained_run.rows[0]["path"]
    cases = {"old": ({"intensity": "scale_uint8"}, "records no image preprocessing"),
             "future": (dict(checkpoint.metadata["preprocessing"], clahe=True), "['clahe']")}
    for name, (preprocessing, expected) in cases.items():
        path = save_checkpoint(tmp_path / f"{name}.pt", checkpoint.state_dict,
                               dict(checkpoint.metadata, preprocessing=preprocessing))
        error = _one_line_error(capsys, ["infer", "--checkpoint", str(path), jpeg, "--out", str(tmp_path / "p")])
        assert expected in error and f"{name}.pt" in error, error
    # the first classification checkpoints recorded image_size and intensity only: grey/RGB from in_channels
    first = save_checkpoint(tmp_path / "first.pt", checkpoint.state_dict, dict(
        checkpoint.metadata, preprocessing={"image_size": 32, "intensity": "scale_uint8"}))
    assert main(["infer", "--checkpoint", str(first), jpeg, "--out", str(tmp_path / "ok"), "--no-progress"]) == 0


@pytest.mark.parametrize("command", ["infer", "evaluate"])
def test_help_has_a_classification_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    examples = capsys.readouterr().out.split("examples:", 1)[1]
    assert any("vol-transfer " + command in line and ("predictions.csv" in line or "chest_xray" in line
                                                      or "pneumonia" in line) for line in examples.splitlines())
