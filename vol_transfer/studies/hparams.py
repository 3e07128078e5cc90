"""TensorBoard's HParams tab for a study: each arm's settings and results, so arms compare side by side.

After an arm is evaluated, :func:`write_arm_hparams` writes its hyper-parameters (arm, subset, seed,
fold, freezing, frozen groups, trainable parameters, learning rate, iterations, training cases) and
its metrics (mean Dice per evaluated split, best iteration, minutes) into
``<arm>/tensorboard/hparams``; ``tensorboard --logdir <study folder>`` then lists every arm as one
row of the HParams tab.

Example (``arm`` from the study plan, ``result`` from :func:`vol_transfer.studies.runner.collect_arm`)::

    write_arm_hparams(arm, result)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from vol_transfer.studies.results import ArmResult


def arm_hparams(run_dir: Path, name: str, subset: str = "", seed: int = 0, fold: int | None = None) -> dict[str, Any]:
    """The hyper-parameters that tell an arm apart, read from its ``recipe.yaml`` and ``summary.json``."""
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) if (run_dir / "recipe.yaml").is_file() else {}
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    transfer = recipe.get("transfer") or {}
    freezing = transfer.get("freezing") or {}
    trainable = (summary.get("trainable") or [{}])[0]
    hparams: dict[str, Any] = {
        "arm": name, "subset": subset or "all", "seed": seed, "fold": -1 if fold is None else fold,
        "pretrained": bool(transfer.get("source")),
        "freezing": freezing.get("kind", "none") + (f" k={freezing['k']}" if "k" in freezing else ""),
        "frozen_groups": ", ".join(trainable.get("frozen_groups") or []) or "none",
        "trainable_parameters": int(trainable.get("trainable_parameters", 0)),
        "lr": float((recipe.get("optim") or {}).get("lr", math.nan)),
        "iterations": int((recipe.get("training") or {}).get("iterations", 0)),
        "train_cases": int(summary.get("train_cases", 0)),
    }
    return hparams


def arm_metrics(result: ArmResult) -> dict[str, float]:
    """``hparam/dice_<split>`` (mean over subjects), the best iteration and the arm's minutes."""
    metrics = {f"hparam/dice_{split}": result.mean_dice(split) for split in result.dice}
    metrics["hparam/best_iteration"] = float(result.best_iteration)
    metrics["hparam/minutes"] = result.wall_time / 60
    return metrics


def write_arm_hparams(arm: Any, result: ArmResult) -> Path:
    """Write one study arm's HParams record (see the module docstring); return its folder."""
    from vol_transfer.training.logging import write_hparams

    hparams = arm_hparams(arm.run_dir, arm.name, arm.subset, arm.seed, getattr(arm, "fold", None))
    return write_hparams(arm.run_dir / "tensorboard", hparams, arm_metrics(result))
