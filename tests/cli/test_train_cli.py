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


# --------------------------------------------------------------------------------------------
# Issue 15: no traceback, no dead end, nothing rewritten by a refused resume


def _error(capsys) -> str:
    """The last stderr line is the one error line; notes may precede it; never a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


def _leftovers(run_dir) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def test_full_disk_at_the_first_checkpoint_is_one_line_and_no_dead_end(recipe, tmp_path, capsys, monkeypatch):
    import errno
    import os

    real_replace = os.replace

    def full(source, target, *args, **kwargs):
        if str(target).endswith(".pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target, *args, **kwargs)

    run_dir = tmp_path / "run"
    monkeypatch.setattr(os, "replace", full)
    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 2
    error = _error(capsys)
    assert "checkpoints/" in error and ".pt: cannot be written (No space left on device)" in error
    assert not [p for p in _leftovers(run_dir) if "tmp" in p]  # no half checkpoint
    monkeypatch.setattr(os, "replace", real_replace)  # space freed

    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--resume"]) == 2
    assert "stopped before its first checkpoint" in (error := _error(capsys)) and "without --resume" in error
    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert "replacing" in capsys.readouterr().err
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_full_disk_on_a_real_small_filesystem(recipe, tmp_path, capsys):
    from tests.io.full_disk import tiny_filesystem

    with tiny_filesystem(tmp_path / "small", "200k") as mount:
        assert main(["train", str(recipe), "--run-dir", str(mount / "run"), "--no-progress"]) == 2
        error = _error(capsys)
        assert ".pt: cannot be written" in error and "free disk space" in error
        assert not [p for p in _leftovers(mount / "run") if "tmp" in p]


def test_a_run_that_fails_on_its_data_leaves_nothing_and_the_fixed_rerun_runs(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    torch.set_num_threads(1)
    manifest = make_dataset(tmp_path / "data")
    label_path = tmp_path / "data" / "lab_0.nii.gz"
    good = label_path.read_bytes()
    label = np.asarray(nib.load(str(label_path)).dataobj).copy()
    label[0, 0, 0] = 7  # not declared in '# labels: 0,1,2'
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(label_path))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "segmentation", **tiny_recipe(manifest, iterations=2)}))
    run_dir = tmp_path / "run"
    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 2
    assert "[7] outside the declared labels" in _error(capsys)
    assert not run_dir.exists()

    label_path.write_bytes(good)  # fixed
    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 0


def test_a_kill_during_the_first_checkpoint_write_is_no_dead_end(recipe, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run_dir = tmp_path / "run"
    env = dict(os.environ, VOL_TRANSFER_KILL_BEFORE_RENAME="last.pt",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    killed = subprocess.run([sys.executable, "-m", "vol_transfer", "train", str(recipe), "--run-dir", str(run_dir),
                             "--no-progress"], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = _leftovers(run_dir)
    assert "recipe.yaml" in left and "checkpoints/last.pt" not in left
    assert [p for p in left if p.startswith("checkpoints/.last.") and p.endswith(".tmp.pt")]

    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "removed 1 temporary file(s)" in err and "taking over the lock" in err  # the next run cleans up
    error = err.strip().splitlines()[-1]
    assert "stopped before its first checkpoint" in error and "rerun without --resume" in error
    assert "Traceback" not in err and not [p for p in _leftovers(run_dir) if "tmp" in p]
    assert main(["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert "replacing" in capsys.readouterr().err
    left = _leftovers(run_dir)
    assert not [p for p in left if "tmp" in p] and "checkpoints/last.pt" in left
    # the best.pt written just before the kill is kept aside, never deleted unasked
    assert [p for p in left if p.startswith("stopped-run-") and p.endswith("/best.pt")], left


def test_resume_from_a_last_pt_of_another_class_count_is_one_line_and_keeps_recipe_yaml(recipe, tmp_path, capsys):
    import shutil

    three, two = tmp_path / "three", tmp_path / "two"
    assert main(["train", str(recipe), "--run-dir", str(three), "--no-progress"]) == 0
    assert main(["train", str(recipe), "--run-dir", str(two), "--no-progress",
                 "--set", "data.label_mapping=hippocampus_merged"]) == 0
    shutil.copy(two / "checkpoints" / "last.pt", three / "checkpoints" / "last.pt")  # the wrong run's last.pt
    saved = (three / "recipe.yaml").read_bytes()
    capsys.readouterr()
    assert main(["train", str(recipe), "--run-dir", str(three), "--resume", "--no-progress",
                 "--set", "training.iterations=4"]) == 2
    error = _error(capsys)
    assert error.startswith(f"error: {three / 'checkpoints' / 'last.pt'}: does not fit this recipe's network")
    assert (three / "recipe.yaml").read_bytes() == saved  # the refused override is not recorded


def test_a_second_train_into_a_busy_run_folder_is_refused(recipe, tmp_path, capsys):
    from vol_transfer.io.folder_lock import FolderLock

    run_dir = tmp_path / "run"
    with FolderLock(run_dir, "vol-transfer train other.yaml"):
        assert main(["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 2
        assert "is in use by another run" in (error := _error(capsys)) and "train other.yaml" in error
    assert _leftovers(run_dir) == []


def test_a_source_of_another_width_is_summarised(recipe, tmp_path, capsys):
    source = tmp_path / "source"
    assert main(["train", str(recipe), "--run-dir", str(source), "--no-progress",
                 "--set", "network.options.width=0.5"]) == 0
    capsys.readouterr()
    args = ["train", str(recipe), "--run-dir", str(tmp_path / "target"), "--no-progress",
            "--set", f"transfer.source={source / 'checkpoints' / 'best.pt'}"]
    assert main(args) == 2
    error = _error(capsys)
    assert len(error) < 700, error
    assert "tensor(s) cannot be transferred; likely cause: the source network has another width" in error
    assert "the first 3; --debug lists all" in error and "network.options.width" in error
    assert main(args + ["--debug"]) == 2
    listed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]
    assert len(listed) > 50  # every mismatched tensor, one per line


def test_debug_is_accepted_after_the_subcommand(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), "--set", "optim.lrr=0.1", "--run-dir", str(tmp_path / "r"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
