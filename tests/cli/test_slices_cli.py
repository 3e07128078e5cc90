"""`vol-transfer slices`: a format that works for the input's channel count, or a message saying which to use."""

from __future__ import annotations

import csv

import numpy as np

from vol_transfer.cli import main
from vol_transfer.demo.synthetic import write_dataset
from vol_transfer.io.volumes import save_volume


def test_two_channel_manifest_defaults_to_npz_and_says_so(tmp_path, capsys) -> None:
    manifest = write_dataset(tmp_path / "data", "tumour", count=2, seed=3, splits=(1.0, 0.0))
    out = tmp_path / "slices"
    assert main(["slices", str(manifest), "--data-root", str(tmp_path / "data"), "--out", str(out), "--budget", "2"]) == 0
    text = capsys.readouterr().out
    assert "NPZ" in text and "2 channels" in text
    rows = list(csv.DictReader(open(out / "slices.csv")))
    assert len(rows) == 4 and all(r["image"].endswith(".npz") for r in rows)
    with np.load(out / rows[0]["image"]) as data:
        assert data["image"].shape[0] == 2 and "label" in data


def test_png_asked_for_two_channels_is_a_one_line_error_naming_the_fix(tmp_path, capsys) -> None:
    manifest = write_dataset(tmp_path / "data", "tumour", count=1, seed=3, splits=(1.0, 0.0))
    out = tmp_path / "slices"
    assert main(["slices", str(manifest), "--data-root", str(tmp_path / "data"), "--out", str(out),
                 "--format", "png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 channels" in err[0] and "--format npz" in err[0]
    assert not (out / "slices.csv").exists()


def test_one_channel_volume_still_defaults_to_png(tmp_path, capsys) -> None:
    volume = tmp_path / "ct.nii.gz"
    save_volume(np.random.default_rng(0).random((8, 8, 4)).astype(np.float32), volume, affine=np.eye(4))
    out = tmp_path / "slices"
    assert main(["slices", str(volume), "--out", str(out), "--budget", "2"]) == 0
    assert "as PNG" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "slices.csv")))
    assert len(rows) == 2 and all(r["image"].endswith(".png") for r in rows)
