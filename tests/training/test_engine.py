"""The one training engine: every task gets the same run layout, exact resume, selection and logging."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.training.kermany_fixture import KERMANY, write_tiny_manifest
from tests.training.test_segmentation import make_dataset, tiny_recipe
from vol_transfer.cli import main
from vol_transfer.recipes import from_dict
from vol_transfer.training.engine import KILL_AFTER_CHECKPOINT_ENV, EngineSettings, PlateauDecay, Selection
from vol_transfer.training.engine import Trainer, TrainingTask, ValidationResult
from vol_transfer.training.schedules import LRSchedule
from vol_transfer.training.segmentation import SegmentationConfig, run_segmentation
from vol_transfer.transfer.checkpoint import load_checkpoint

RUN_LAYOUT = ("recipe.yaml", "summary.json", "metrics.csv", "checkpoints/best.pt", "checkpoints/last.pt")


class _Counter:
    """A batch source of constant regression pairs whose state is the batch count."""

    def __init__(self) -> None:
        self.n = 0

    def __next__(self) -> dict[str, torch.Tensor]:
        self.n += 1
        return {"image": torch.ones(4, 2), "target": torch.full((4, 1), 3.0)}

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.n = state["n"]


def _regression_task(validate) -> TrainingTask:
    model = torch.nn.Linear(2, 1)
    return TrainingTask(
        model=model, batches=_Counter(),
        loss=lambda net, batch: torch.nn.functional.mse_loss(net(batch["image"]), batch["target"]),
        validate=validate, make_optimizer=lambda net, _previous: torch.optim.SGD(net.parameters(), lr=0.05),
        schedule=LRSchedule(), metadata={"architecture": {"name": "linear"}}, selection=Selection("val/score", "max"),
    )


def test_a_selection_metric_that_is_nan_at_every_validation_still_ends_with_best_pt(tmp_path):
    task = _regression_task(lambda model: ValidationResult({"val/score": float("nan")}))
    summary = Trainer(task, EngineSettings(iterations=6, validate_every=2, checkpoint_every=2, progress=False),
                      tmp_path).run()
    assert summary["selection"]["iteration"] is None and math.isnan(summary["selection"]["value"])
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best.metadata["iteration"] == 6  # the final weights, said so in the summary
    assert torch.equal(best.state_dict["weight"], task.model.weight.detach())


def test_best_checkpoint_is_chosen_by_the_named_metric_and_direction(tmp_path):
    scores = iter([0.2, 0.9, 0.5])
    task = _regression_task(lambda model: ValidationResult({"val/score": next(scores)}))
    summary = Trainer(task, EngineSettings(iterations=6, validate_every=2, checkpoint_every=2, progress=False),
                      tmp_path).run()
    assert summary["selection"] == {"metric": "val/score", "mode": "max", "value": 0.9, "iteration": 4}
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt").metadata["iteration"] == 4


def test_plateau_decay_scales_the_learning_rate_after_patience_validations(tmp_path):
    losses = iter([1.0, 1.0, 1.0, 1.0])
    task = _regression_task(lambda model: ValidationResult({"val/score": 0.0, "val/loss": next(losses)}))
    task.plateau = PlateauDecay(Selection("val/loss", "min"), factor=0.5, patience=1)
    Trainer(task, EngineSettings(iterations=8, validate_every=2, checkpoint_every=2, log_every=1, progress=False),
            tmp_path).run()
    with (tmp_path / "metrics.csv").open() as handle:
        lrs = [float(row["train_lr"]) for row in csv.DictReader(handle)]
    # validations at 2, 4, 6: the loss stops improving at 4 and the patience of 1 is used up at 6
    assert lrs == pytest.approx([0.05] * 6 + [0.025] * 2)


@pytest.mark.slow
def test_training_learns_a_trivially_separable_task(tmp_path):
    """Bright boxes on a dark background: a few dozen iterations must segment them well."""
    manifest = make_dataset(tmp_path / "data", cases=5)
    recipe = tiny_recipe(manifest, iterations=60, optim={"lr": 1e-2}, validation={"every": 10},
                         checkpoint={"every": 20})
    summary = run_segmentation(from_dict(SegmentationConfig, recipe), tmp_path / "run", progress=False)
    assert summary["best_val_dice"] > 0.8, summary["history"] if "history" in summary else summary


def _cli_train(recipe: Path, run_dir: Path, *extra: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    if kill_after is not None:
        env[KILL_AFTER_CHECKPOINT_ENV] = str(kill_after)
    command = [sys.executable, "-m", "vol_transfer", "train", str(recipe), "--run-dir", str(run_dir),
               "--no-progress", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_classification_with_pretraining_killed_and_resumed_is_exact_and_uses_the_run_layout(dataset, tmp_path):
    data_root = dataset(KERMANY).parent
    manifest = write_tiny_manifest(data_root, tmp_path / "tiny.csv", per_class=4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "classification",
        "data": {"manifest": str(manifest), "data_root": str(data_root), "image_size": 32},
        "pretrain": {"method": "autoencoder", "epochs": 1, "batch_size": 4,
                     "data": {"manifest": str(manifest), "data_root": str(data_root), "image_size": 32}},
        "optim": {"name": "adam", "lr": 1e-3}, "epochs": 4, "batch_size": 4, "warmup_epochs": 1,
        "early_stopping": 10, "bn_recalibration": 8, "threads": 1,
    }))
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    result = _cli_train(recipe, straight)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best checkpoint by val/auc" in result.stdout
    per_epoch = json.loads((straight / "summary.json").read_text())["iterations_per_epoch"]
    killed = _cli_train(recipe, interrupted, kill_after=2 * per_epoch)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _cli_train(recipe, interrupted, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    for run in (straight, interrupted):
        for name in RUN_LAYOUT + ("predictions.csv", "pretrain/checkpoints/best.pt", "pretrain/summary.json"):
            assert (run / name).is_file(), f"{run.name}/{name}"
    timing = ("perf_samples_per_s", "perf_step_time_s", "perf_data_wait_s")
    rows = [[{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader((run / "metrics.csv").open())]
            for run in (straight, interrupted)]
    assert rows[0] == rows[1] and len([r for r in rows[0] if r.get("val_auc")]) == 4
    for name in ("best.pt", "last.pt"):
        a, b = (load_checkpoint(run / "checkpoints" / name) for run in (straight, interrupted))
        assert a.metadata["iteration"] == b.metadata["iteration"]
        assert all(torch.equal(t, b.state_dict[k]) for k, t in a.state_dict.items()), name


def test_a_classification_run_whose_auc_is_nan_every_epoch_finishes(dataset, tmp_path):
    """One class in the validation split: AUC is undefined at every epoch (it used to crash at the end)."""
    from vol_transfer.training.classification import ClassificationConfig, run_classification
    from vol_transfer.training.image_data import ImageDataConfig

    data_root = dataset(KERMANY).parent
    manifest = write_tiny_manifest(data_root, tmp_path / "tiny.csv", per_class=3)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(line for line in lines if not line.endswith("validation,PNEUMONIA")
                                  and ",validation,PNEUMONIA_" not in line) + "\n")
    config = ClassificationConfig(data=ImageDataConfig(manifest=str(manifest), data_root=str(data_root), image_size=32),
                                  epochs=2, batch_size=3, bn_recalibration=0, threads=1)
    summary = run_classification(config, tmp_path / "run", progress=False)
    assert summary["selection"]["metric"] == "val/auc" and summary["selection"]["iteration"] is None
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_a_study_recipe_given_to_train_points_to_the_study_command(capsys, tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "freeze_ablation_cpu.yaml"
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vol-transfer study" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written for a refused start


def test_image_batches_are_a_pure_function_of_the_batch_number():
    from vol_transfer.training.image_data import ImageBatches

    images = np.arange(20 * 4, dtype=np.uint8).reshape(20, 1, 2, 2)
    labels = np.array([0] * 15 + [1] * 5)
    straight = ImageBatches(images, labels, batch_size=4, balance="oversample", seed=7, hflip=True)
    expected = [next(straight) for _ in range(12)]  # 30 oversampled images → 7 batches per epoch
    resumed = ImageBatches(images, labels, batch_size=4, balance="oversample", seed=7, hflip=True)
    resumed.load_state_dict({"next_batch": 9})
    for batch in expected[9:]:
        other = next(resumed)
        assert torch.equal(batch["image"], other["image"]) and torch.equal(batch["label"], other["label"])
    first_epoch = torch.cat([b["label"] for b in expected[:straight.per_epoch]])
    assert straight.per_epoch == 7 and abs(float(first_epoch.float().mean()) - 0.5) <= 0.1  # balanced


def test_fp16_scales_the_loss_and_keeps_the_scaler_in_last_pt(tmp_path):
    """The fp16 path (GPUs without bf16, e.g. the study's V100) runs here through CPU autocast."""
    task = _regression_task(lambda model: ValidationResult({"val/score": 0.0}))
    initial = task.model.weight.detach().clone()
    summary = Trainer(task, EngineSettings(iterations=4, precision="fp16", validate_every=2, checkpoint_every=2,
                                           grad_clip=1.0, progress=False), tmp_path).run()
    assert summary["precision"] == "fp16"
    scaler = load_checkpoint(tmp_path / "checkpoints" / "last.pt").extra["grad_scaler"]
    # 9 × 2^16 overflows fp16: the scaler skips those steps and halves its scale until one fits
    assert 0 < scaler["scale"] < 2.0**16 and scaler["_growth_tracker"] >= 1
    assert not torch.equal(task.model.weight.detach(), initial)  # the step that fitted was taken


def test_auto_precision_and_layout_follow_the_device():
    from vol_transfer.training.accelerator import resolve_channels_last, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("fp16", cpu) == "fp16"
    assert resolve_channels_last("auto", cpu) is True and resolve_channels_last("auto", torch.device("cuda")) is False
    assert resolve_channels_last(False, cpu) is False


def test_selection_last_keeps_the_final_weights_whatever_the_validation_says(tmp_path):
    scores = iter([0.9, 0.2, 0.1])
    task = _regression_task(lambda model: ValidationResult({"val/score": next(scores)}))
    task.selection = Selection("val/score", "last")
    summary = Trainer(task, EngineSettings(iterations=6, validate_every=2, checkpoint_every=2, progress=False),
                      tmp_path).run()
    assert summary["selection"]["iteration"] == 6 and summary["selection"]["value"] == 0.1
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt").metadata["iteration"] == 6
