"""``benchmarks/gpu_check.py``: the prepared GPU measurement must keep working, so it runs here on CPU.

``--tiny`` runs every section end to end on real data (24³ windows, quarter-width networks, a few
steps); the JSON must hold every measurement with positive figures and the ours-vs-MONAI ratios.
The guards (a failing measurement is recorded, the others kept) and the deadline hook on the
engine are checked in-process.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    """The script as a module (registered first: its dataclasses look their module up)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def _positive(row: dict, *keys: str) -> None:
    for key in keys:
        value = row[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, row)


@pytest.mark.slow
@pytest.mark.real_data
def test_tiny_run_on_cpu_fills_every_section(dataset, tmp_path):
    dataset("brats2015_flair_t1c")
    root = dataset("msd_hippocampus").parent
    out = tmp_path / "x.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out),
                           "--data-root", str(root)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["tiny"] and data["meta"]["complete"]

    training = data["training"]
    for side in ("ours", "monai"):
        for precision in ("fp32", "bf16", "compile"):
            row = training["rows"][f"{side}/{precision}"]
            assert "error" not in row and "skipped" not in row, row
            _positive(row, "patches_per_s", "step_s", "batch")
            assert 0 <= row["wait_fraction"] < 1 and row["timed_steps"] == 3 and not row["truncated"]
            assert row["window"] == [24, 24, 24]
        _positive(training["rows"][f"{side}/compile"], "compile_s")
    assert training["rows"]["ours/fp32"]["parameters"] == training["rows"]["monai/fp32"]["parameters"]  # same width
    assert set(training["ratios"]) == {"fp32", "bf16", "compile"}
    for precision, ratio in training["ratios"].items():
        rows = training["rows"]
        ours, peer = rows[f"ours/{precision}"], rows[f"monai/{precision}"]
        assert ratio == pytest.approx(ours["patches_per_s"] / peer["patches_per_s"])

    inference = data["inference"]
    for name, row in inference["rows"].items():
        assert "error" not in row and "skipped" not in row and "end_to_end_error" not in row, (name, row)
    for tag in ("fp32", "bf16"):
        _positive(inference["rows"][f"ours/{tag}"], "predict_s", "end_to_end_s", "load_s", "write_s")
        row = inference["rows"][f"ours/{tag}"]
        assert row["end_to_end_s"] > row["end_to_end_predict_s"]  # load, preprocessing and writing on top
        for where in ("full", "crop"):
            _positive(inference["rows"][f"monai/{tag}/{where}"], "predict_s")
            _positive(inference["ratios"], f"{tag}/monai_{where}_over_ours_predict",
                      f"{tag}/monai_{where}_over_ours_end_to_end")
    _positive(inference["rows"]["ours/cli"], "wall_s", "end_to_end_s")
    assert inference["volume_shape"] == [2, 32, 32, 32]  # the cropped real case

    hippocampus = data["hippocampus"]["rows"]["slice"]
    assert "error" not in hippocampus, hippocampus
    assert hippocampus["iterations"] == 6 and len(hippocampus["curve"]) == 2  # validated every 3 iterations
    assert [point["iteration"] for point in hippocampus["curve"]] == [3, 6]
    assert math.isfinite(hippocampus["dice_mean"]) and hippocampus["train_cases"] == 8
    assert "| training fp32 | patches/s |" in done.stdout and "| hippocampus |" in done.stdout


def test_a_failing_measurement_is_recorded_and_the_json_kept(tmp_path):
    gpu_check = _module()
    report = gpu_check.Report(tmp_path / "r.json", {"device": "cpu"})

    def broken() -> dict:
        raise RuntimeError("CUDA out of memory\nsecond line")

    gpu_check.guarded(report, "training", "ours/fp32", broken)
    gpu_check.guarded(report, "training", "monai/fp32", lambda: {"patches_per_s": 2.0, "step_s": 1.0,
                                                               "wait_fraction": 0.01})
    saved = json.loads((tmp_path / "r.json").read_text())  # written after each measurement
    assert saved["training"]["rows"]["ours/fp32"]["error"] == "RuntimeError: CUDA out of memory"
    assert saved["training"]["rows"]["monai/fp32"]["patches_per_s"] == 2.0
    assert gpu_check.training_ratios(saved["training"]["rows"]) == {}  # no ratio from a failed side
    saved["meta"] = {"device": "cpu", "device_name": "x", "torch": "t", "tiny": True}
    rows = gpu_check.table_rows(saved)
    assert ("training fp32", "ours", "ERROR RuntimeError: CUDA out of memory", "", "", "") in rows


def test_deadline_ends_an_engine_run_with_a_final_validation(tmp_path):
    from vol_transfer.training.engine import EngineSettings, Trainer, TrainingTask, ValidationResult
    from vol_transfer.training.schedules import LRSchedule

    gpu_check = _module()

    class Pairs:
        def __next__(self) -> dict:
            return {"x": torch.ones(4, 2), "y": torch.full((4, 1), 3.0)}

        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, state: dict) -> None:
            pass

    validations = []
    batches = gpu_check.DeadlineBatches(Pairs(), deadline=time.perf_counter() - 1.0)  # already past
    model = torch.nn.Linear(2, 1)
    task = TrainingTask(model=model, batches=batches,
                        loss=lambda net, b: torch.nn.functional.mse_loss(net(b["x"]), b["y"]),
                        validate=lambda net: validations.append(1) or ValidationResult({"val/dice_mean": 0.5}),
                        make_optimizer=lambda net, previous: torch.optim.SGD(net.parameters(), lr=0.1),
                        schedule=LRSchedule(), metadata={})
    trainer = Trainer(task, EngineSettings(iterations=1000, validate_every=10**6, checkpoint_every=10**6,
                                           progress=False), tmp_path / "run")
    batches.trainer = trainer
    summary = trainer.run()
    assert summary["iterations"] == 1 and batches.truncated
    assert validations == [1] and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
