"""Data-parallel training: ``torchrun --nproc_per_node=2`` on CPU (gloo) with freezing schedules and resume.

DDP fixes the set of parameters it reduces when it wraps the model; a schedule that changes the
trainable set mid-run must be followed by a re-wrap, or the second iteration fails ("Expected to
have finished reduction") or, worse, newly unfrozen layers silently drift apart between processes.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.training.test_segmentation import make_dataset, tiny_recipe
from vol_transfer.training.engine import KILL_AFTER_CHECKPOINT_ENV
from vol_transfer.transfer.checkpoint import load_checkpoint

SCHEDULES = {
    "freeze_first": {"kind": "freeze_first", "k": 1},
    "warmup": {"kind": "warmup", "iterations": 2},
    "gradual": {"kind": "gradual", "every": 2},
}


def _torchrun(recipe: Path, run_dir: Path, *extra: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    if kill_after is not None:
        env[KILL_AFTER_CHECKPOINT_ENV] = str(kill_after)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vol_transfer", "train", str(recipe), "--run-dir", str(run_dir), "--no-progress", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _recipe(tmp_path: Path, freezing: dict, iterations: int) -> Path:
    manifest = make_dataset(tmp_path / "data", cases=6)
    recipe = tmp_path / "recipe.yaml"
    data = tiny_recipe(manifest, iterations=iterations, training={"device": "cpu", "log_every": 1},
                       validation={"every": 2}, transfer={"freezing": freezing})
    recipe.write_text(yaml.safe_dump({"task": "segmentation", **data}))
    return recipe


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["freeze_first", "warmup"])
def test_two_processes_train_through_a_freezing_schedule(tmp_path, schedule):
    recipe = _recipe(tmp_path, SCHEDULES[schedule], iterations=4)
    run_dir = tmp_path / "ddp"
    result = _torchrun(recipe, run_dir)
    _ok(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 4
    assert summary["replicas_in_sync"] is True  # every trainable set was reduced across both processes
    expected = [["conv_0"]] if schedule == "freeze_first" else [["conv_0", "res_1", "res_2", "res_3", "conv_1"], []]
    assert [entry["frozen_groups"] for entry in summary["trainable"]] == expected
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    samplers = last.extra["samplers"]
    assert len(samplers) == 2 and samplers[0]["seed"] != samplers[1]["seed"]  # each rank its own stream
    assert all(s["next_batch"] == 4 for s in samplers)
    assert result.stdout.count("run folder:") == 1  # only rank 0 reports


@pytest.mark.slow
def test_gradual_unfreezing_killed_and_resumed_under_ddp_matches_an_uninterrupted_run(tmp_path):
    recipe = _recipe(tmp_path, SCHEDULES["gradual"], iterations=8)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _ok(_torchrun(recipe, straight))
    killed = _torchrun(recipe, interrupted, kill_after=4)  # after the checkpoint of iteration 4
    assert killed.returncode != 0
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt").extra["iteration"] == 4
    _ok(_torchrun(recipe, interrupted, "--resume"))

    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (straight, interrupted))
    assert b.extra["iteration"] == 8
    for key, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[key]), key
    timing = ("perf_samples_per_s", "perf_step_time_s", "perf_data_wait_s")
    rows = [[{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader((run / "metrics.csv").open())]
            for run in (straight, interrupted)]
    assert rows[0] == rows[1]
    assert json.loads((interrupted / "summary.json").read_text())["replicas_in_sync"] is True


def test_sync_batchnorm_on_cpu_is_refused_with_the_key():
    from vol_transfer.errors import RecipeError
    from vol_transfer.training.distributed import DistInfo
    from vol_transfer.training.engine import EngineSettings, Trainer, TrainingTask

    task = TrainingTask(torch.nn.BatchNorm1d(2), None, None, None, None, None, {})
    with pytest.raises(RecipeError, match="training.sync_batchnorm"):
        Trainer(task, EngineSettings(iterations=1, sync_batchnorm=True), Path("unused"),
                DistInfo(rank=0, world_size=2, device=torch.device("cpu")))
