"""``vol-transfer infer`` when things go wrong (issue 15): a full disk, a busy or file ``--out``,
a sheared input, an interrupted run, a killed write, test-time flips the model never saw.

Inputs are copies of real MSD hippocampus images; the checkpoint is a pointwise network
(tests/inference/pointwise.py), so predictions take milliseconds and their count is what the
tests watch (``predictions`` fixture).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.inference.pointwise import PointwiseNet
from tests.io.full_disk import tiny_filesystem
from vol_transfer.cli import main
from vol_transfer.inference import predictor as predictor_module
from vol_transfer.inference.records import TIMINGS_FILE, read_timings
from vol_transfer.io.folder_lock import LOCK_NAME
from vol_transfer.transfer.checkpoint import make_metadata, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("hippocampus_001", "hippocampus_003", "hippocampus_004")


def _checkpoint(path: Path, recipe: dict | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = PointwiseNet(1, 3)
    metadata = make_metadata({"name": "pointwise_test", "in_channels": 1, "num_classes": 3}, ["image"],
                             ["background", "anterior", "posterior"],
                             preprocessing={"intensity": [{"kind": "zscore", "mask": "nonzero"}]}, recipe=recipe)
    return save_checkpoint(path, net.state_dict(), metadata)


@pytest.fixture()
def inputs(dataset, tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in NAMES:
        shutil.copy(dataset("msd_hippocampus") / "imagesTr" / f"{name}.nii.gz", folder)
    return folder


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    return _checkpoint(tmp_path / "hippo.pt")


class Calls(list):
    """The options of every prediction made; ``hook(n)`` runs before the n-th."""

    hook = None

    def set_hook(self, hook) -> None:
        self.hook = hook


@pytest.fixture()
def predictions(monkeypatch) -> Calls:
    calls = Calls()
    real = predictor_module.predict_logits

    def counting(model, image, options, **overrides):
        calls.append(options)
        if calls.hook is not None:
            calls.hook(len(calls))
        return real(model, image, options, **overrides)

    monkeypatch.setattr(predictor_module, "predict_logits", counting)
    return calls


def _infer(checkpoint: Path, given, out: Path, *extra: str) -> int:
    given = [given] if isinstance(given, (str, Path)) else given
    return main(["infer", "--checkpoint", str(checkpoint), *map(str, given), "--out", str(out), "--no-progress", *extra])


def _error(err: str) -> str:
    """The error line: the last line, the only one starting 'error:', no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------ tracebacks


def test_full_disk_while_writing_a_segmentation_is_one_line(inputs, checkpoint, tmp_path, capsys, monkeypatch):
    real_replace = os.replace

    def full(source, target, *args, **kwargs):
        if str(target).endswith("_seg.nii.gz"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "pred"
    assert _infer(checkpoint, inputs / "hippocampus_001.nii.gz", out) == 2
    error = _error(capsys.readouterr().err)
    assert f"{out / 'hippocampus_001_seg.nii.gz'}: cannot be written (No space left on device)" in error
    assert "free disk space" in error
    assert _files(out) == []  # no temporary, no lock, no half file


def test_full_disk_on_a_real_small_filesystem(inputs, checkpoint, tmp_path, capsys):
    with tiny_filesystem(tmp_path / "small", "64k") as mount:
        out = mount / "pred"
        assert _infer(checkpoint, inputs / "hippocampus_001.nii.gz", out, "--probabilities") == 2
        error = _error(capsys.readouterr().err)
        assert "hippocampus_001_prob.nii.gz: cannot be written" in error and "free disk space" in error
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary or lock left


def test_out_naming_a_file_is_refused_before_predicting(inputs, checkpoint, tmp_path, capsys, predictions):
    out = tmp_path / "pred.nii.gz"
    out.write_text("keep me")
    assert _infer(checkpoint, inputs, out) == 2
    assert f"{out}: is a file, not a folder" in _error(capsys.readouterr().err)
    assert predictions == [] and out.read_text() == "keep me"


def test_sheared_input_is_refused_before_predicting_naming_the_input(inputs, checkpoint, tmp_path, capsys,
                                                                    predictions):
    sheared = inputs / "hippocampus_003.nii.gz"
    image = nib.load(str(sheared))
    affine = image.affine.copy()
    affine[0, 1] = 0.3
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), str(sheared))
    out = tmp_path / "pred"
    assert _infer(checkpoint, inputs, out) == 2
    error = _error(capsys.readouterr().err)
    assert error.startswith(f"error: {sheared}: the affine is sheared") and ".mha" not in error
    assert predictions == [] and _files(out) == []  # not even the first (good) case was segmented


# ------------------------------------------------------------------------------- races, records


def test_a_second_run_into_a_busy_folder_is_refused_up_front(inputs, checkpoint, tmp_path, capsys, predictions):
    out = tmp_path / "pred"
    other = _checkpoint(tmp_path / "other.pt", seed=1)
    second: dict = {}

    def start_a_second_run(call: int) -> None:
        if call == 2:  # the first run is between its cases
            capsys.readouterr()
            second["code"] = _infer(other, inputs, out, "--overwrite")
            second["err"] = capsys.readouterr().err

    predictions.set_hook(start_a_second_run)
    assert _infer(checkpoint, inputs, out) == 0
    assert second["code"] == 2
    error = _error(second["err"])
    assert f"{out}: is in use by another run: pid {os.getpid()}" in error and "infer" in error
    records = read_timings(out / TIMINGS_FILE)
    assert sorted(records) == list(NAMES)
    assert {r["checkpoint"] for r in records.values()} == {str(checkpoint)}  # every output from one checkpoint
    assert LOCK_NAME not in _files(out)


def test_a_lock_left_by_a_dead_process_is_taken_over(inputs, checkpoint, tmp_path, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "here", "started": "yesterday",
                                             "command": "vol-transfer infer old"}))
    assert _infer(checkpoint, inputs / "hippocampus_001.nii.gz", out) == 0
    assert f"taking over the lock left by pid {dead.pid}" in capsys.readouterr().err
    assert _files(out) == ["hippocampus_001_seg.nii.gz", TIMINGS_FILE]


def test_a_file_replaced_by_another_process_is_not_reported_as_written(inputs, checkpoint, tmp_path, capsys,
                                                                       predictions):
    out = tmp_path / "pred"
    first = out / "hippocampus_001_seg.nii.gz"

    def replace_first_output(call: int) -> None:
        if call == 2:  # someone who ignores the lock rewrites the first output
            stranger = tmp_path / "stranger.nii.gz"
            shutil.copy(first, stranger)
            os.replace(stranger, first)

    predictions.set_hook(replace_first_output)
    assert _infer(checkpoint, inputs, out) == 2
    out_text, err = capsys.readouterr()
    assert f"{first}: was replaced by another process" in _error(err) and "wrote" not in out_text


def test_timings_keep_the_rows_of_earlier_runs(inputs, checkpoint, tmp_path):
    out = tmp_path / "pred"
    assert _infer(checkpoint, inputs / "hippocampus_001.nii.gz", out) == 0
    assert _infer(checkpoint, inputs / "hippocampus_003.nii.gz", out) == 0
    assert sorted(read_timings(out / TIMINGS_FILE)) == ["hippocampus_001", "hippocampus_003"]


# ------------------------------------------------------------------------------------ dead ends


def test_an_interrupted_run_resumes_keeping_finished_cases(inputs, checkpoint, tmp_path, capsys, predictions):
    out = tmp_path / "pred"

    def interrupt(call: int) -> None:
        if call == 2:
            raise KeyboardInterrupt

    predictions.set_hook(interrupt)
    assert _infer(checkpoint, inputs, out) == 130
    assert "--resume" in capsys.readouterr().err
    first = out / "hippocampus_001_seg.nii.gz"
    kept = first.stat().st_mtime_ns
    assert sorted(read_timings(out / TIMINGS_FILE)) == ["hippocampus_001"]

    predictions.set_hook(None)
    predictions.clear()
    assert _infer(checkpoint, inputs, out) == 2  # without --resume the finished case is an existing output
    assert "already exists" in _error(capsys.readouterr().err) and predictions == []
    assert _infer(checkpoint, inputs, out, "--resume") == 0
    assert len(predictions) == 2 and first.stat().st_mtime_ns == kept
    assert sorted(read_timings(out / TIMINGS_FILE)) == list(NAMES)

    # a finished output found damaged is redone; nothing else is
    last = out / "hippocampus_004_seg.nii.gz"
    last.write_bytes(last.read_bytes()[:200])
    predictions.clear()
    assert _infer(checkpoint, inputs, out, "--resume") == 0
    assert len(predictions) == 1 and nib.load(str(last)).shape == nib.load(str(inputs / last.name.replace(
        "_seg", ""))).shape

    # another checkpoint's outputs are not "finished": refused unless --overwrite
    other = _checkpoint(tmp_path / "other.pt", seed=1)
    capsys.readouterr()
    assert _infer(other, inputs, out, "--resume") == 2
    assert "does not record it as written whole by this checkpoint" in _error(capsys.readouterr().err)


def test_a_write_killed_midway_leaves_a_temporary_the_next_run_removes(inputs, checkpoint, tmp_path, capsys):
    out = tmp_path / "pred"
    env = dict(os.environ, VOL_TRANSFER_KILL_BEFORE_RENAME="hippocampus_003_seg.nii.gz",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    code = ("import sys; import tests.inference.pointwise; from vol_transfer.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    killed = subprocess.run([sys.executable, "-c", code, "infer", "--checkpoint", str(checkpoint), str(inputs),
                             "--out", str(out), "--no-progress"], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = _files(out)
    assert "hippocampus_001_seg.nii.gz" in left and LOCK_NAME in left
    assert [n for n in left if n.startswith(".hippocampus_003_seg.") and n.endswith(".tmp.nii.gz")]

    assert _infer(checkpoint, inputs, out, "--resume") == 0
    err = capsys.readouterr().err
    assert "removed 1 temporary file(s)" in err and "taking over the lock" in err
    assert _files(out) == [f"{n}_seg.nii.gz" for n in NAMES] + [TIMINGS_FILE]


# ------------------------------------------------------------------------------ test-time flips


def _augmentation(enabled: bool, flip_axes: list[int]) -> dict:
    return {"sampler": {"augmentation": {"enabled": enabled, "flip_axes": flip_axes}}}


def test_tta_is_refused_for_a_model_trained_without_flips(inputs, tmp_path, capsys, predictions):
    for name, recipe in (("noflip", _augmentation(True, [])), ("off", _augmentation(False, [0, 1]))):
        checkpoint = _checkpoint(tmp_path / f"{name}.pt", recipe)
        assert _infer(checkpoint, inputs, tmp_path / name, "--tta") == 2
        error = _error(capsys.readouterr().err)
        assert error.startswith(f"error: {checkpoint}: was trained without flips") and "drop --tta" in error
    assert predictions == []


def test_tta_uses_only_the_flips_of_training(inputs, tmp_path, capsys, predictions):
    checkpoint = _checkpoint(tmp_path / "flip0.pt", _augmentation(True, [0]))
    assert _infer(checkpoint, inputs / "hippocampus_001.nii.gz", tmp_path / "a", "--tta") == 0
    assert "trained with flips along axis 0" in capsys.readouterr().err
    assert [(o.tta, o.flip_axes) for o in predictions] == [(True, (0,))]


def test_tta_with_a_checkpoint_that_does_not_say_warns_and_flips_every_axis(inputs, checkpoint, tmp_path, capsys,
                                                                           predictions):
    assert _infer(checkpoint, inputs / "hippocampus_001.nii.gz", tmp_path / "a", "--tta") == 0
    assert "warning: " in capsys.readouterr().err
    assert [o.flip_axes for o in predictions] == [(0, 1, 2)]


# ----------------------------------------------------------------------------------------- --debug


def test_debug_is_accepted_after_the_subcommand(inputs, checkpoint, tmp_path, capsys):
    out = tmp_path / "pred.nii.gz"
    out.write_text("a file")
    assert _infer(checkpoint, inputs, out, "--debug") == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
