"""Data-parallel training: ``torchrun --nproc_per_node=2`` on CPU (gloo) runs a tiny recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.training.test_segmentation import make_dataset, tiny_recipe
from vol_transfer.transfer.checkpoint import load_checkpoint


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    manifest = make_dataset(tmp_path / "data", cases=6)
    recipe = tmp_path / "recipe.yaml"
    data = tiny_recipe(manifest, iterations=4, training={"device": "cpu"}, validation={"every": 2})
    recipe.write_text(yaml.safe_dump({"task": "segmentation", **data}))
    run_dir = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vol_transfer", "train", str(recipe), "--run-dir", str(run_dir), "--no-progress"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 4
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    samplers = last.extra["samplers"]
    assert len(samplers) == 2 and samplers[0]["seed"] != samplers[1]["seed"]  # each rank its own stream
    assert all(s["next_batch"] == 4 for s in samplers)
    assert result.stdout.count("run folder:") == 1  # only rank 0 reports
