"""``vol-transfer train``: one-line errors, refusing to clobber a run, resume checks."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.training.test_segmentation import make_dataset, tiny_recipe
from vol_transfer.cli import main


@pytest.fixture()
def recipe(tmp_path):
    torch.set_num_threads(1)
    manifest = make_dataset(tmp_path / "data")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"task": "segmentation", **tiny_recipe(manifest, iterations=2)}))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_unknown_key_is_a_one_line_error(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), "--set", "optim.lrr=0.1", "--run-dir", str(tmp_path / "r")]) == 2
    err = _one_line_error(capsys)
    assert "optim.lrr" in err and "did you mean 'lr'" in err
    assert not (tmp_path / "r").exists()  # nothing written


def test_bad_value_and_missing_recipe(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), "--set", "training.batch_size=0", "--run-dir", str(tmp_path / "r")]) == 2
    assert "training.batch_size" in _one_line_error(capsys)
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_train_refuse_overwrite_resume_and_extend(recipe, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "best checkpoint by val/dice_mean (max)" in out and (run_dir / "recipe.yaml").is_file()
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["task"] == "segmentation" and resolved["training"]["iterations"] == 2

    assert main(["train", str(recipe), "--run-dir", str(run_dir)]) == 2
    assert "--resume" in _one_line_error(capsys)

    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--resume", "--set", "optim.lr=0.5"]) == 2
    assert "differs" in _one_line_error(capsys)

    # more iterations is a resumable change: the run continues from iteration 2
    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--resume", "--no-progress",
                 "--set", "training.iterations=3"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 3

    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--overwrite", "--no-progress"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 2


def test_resume_without_a_run_is_an_error(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "empty"), "--resume"]) == 2
    assert "last.pt" in _one_line_error(capsys)
