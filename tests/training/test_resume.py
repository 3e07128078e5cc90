"""``--resume`` is exact: a run SIGKILLed mid-way and resumed ends with the same weights and metrics
as the same run left alone."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.training.test_segmentation import make_dataset, tiny_recipe
from vol_transfer.errors import CheckpointError
from vol_transfer.training.engine import KILL_AFTER_CHECKPOINT_ENV
from vol_transfer.transfer.checkpoint import load_checkpoint

ITERATIONS = 40
TIMING_COLUMNS = ("perf_samples_per_s", "perf_step_time_s", "perf_data_wait_s")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _train(recipe: Path, run_dir: Path, *extra: str, kill_after: int | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "vol_transfer", "train", str(recipe), "--run-dir", str(run_dir), "--no-progress", *extra]
    env = _env()
    if kill_after is not None:  # the engine SIGKILLs itself right after writing this iteration's checkpoint
        env[KILL_AFTER_CHECKPOINT_ENV] = str(kill_after)
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = 600) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err}"


def _checkpoint_iteration(path: Path) -> int:
    try:
        return int(load_checkpoint(path).extra["iteration"])
    except (CheckpointError, FileNotFoundError):
        return -1


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    manifest = make_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    data = tiny_recipe(manifest, iterations=ITERATIONS,
                       sampler={"augmentation": {"enabled": True}},
                       optim={"schedule": {"kind": "cosine", "warmup_iterations": 3}},
                       training={"log_every": 1}, validation={"every": 5}, checkpoint={"every": 2})
    recipe.write_text(yaml.safe_dump({"task": "segmentation", **data}))

    straight = tmp_path / "straight"
    _finish(_train(recipe, straight))

    interrupted = tmp_path / "interrupted"
    process = _train(recipe, interrupted, kill_after=14)  # between validations (every 5), mid-way
    out, err = process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL, f"exit {process.returncode}\n{out}\n{err}"
    assert _checkpoint_iteration(interrupted / "checkpoints" / "last.pt") == 14

    _finish(_train(recipe, interrupted, "--resume"))

    assert _metrics(interrupted) == _metrics(straight)
    for name in ("last.pt", "best.pt"):
        a = load_checkpoint(straight / "checkpoints" / name)
        b = load_checkpoint(interrupted / "checkpoints" / name)
        assert a.metadata["iteration"] == b.metadata["iteration"]
        for key, tensor in a.state_dict.items():
            assert torch.equal(tensor, b.state_dict[key]), f"{name}: {key} differs"
    assert _checkpoint_iteration(interrupted / "checkpoints" / "last.pt") == ITERATIONS


@pytest.mark.slow
def test_sigterm_saves_the_current_iteration_and_resume_matches_an_uninterrupted_run(tmp_path):
    manifest = make_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    data = tiny_recipe(manifest, iterations=ITERATIONS, training={"log_every": 1}, validation={"every": 5},
                       checkpoint={"every": 1000})  # no scheduled checkpoint before the end
    recipe.write_text(yaml.safe_dump({"task": "segmentation", **data}))
    straight = tmp_path / "straight"
    _finish(_train(recipe, straight))

    interrupted = tmp_path / "interrupted"
    process = _train(recipe, interrupted)
    metrics = interrupted / "metrics.csv"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 6) and process.poll() is None:
        assert time.monotonic() < deadline, "the run logged nothing"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 128 + signal.SIGTERM, f"exit {process.returncode}\n{out}\n{err}"
    saved = _checkpoint_iteration(interrupted / "checkpoints" / "last.pt")
    assert 6 <= saved < ITERATIONS
    assert f"saved at iteration {saved} after SIGTERM" in err and "--resume" in err and "Traceback" not in err
    assert not (interrupted / "summary.json").exists()  # a study sees the arm as unfinished

    _finish(_train(recipe, interrupted, "--resume"))
    assert _metrics(interrupted) == _metrics(straight)
    a, b = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(interrupted / "checkpoints" / "last.pt")
    for key, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[key]), f"{key} differs"
