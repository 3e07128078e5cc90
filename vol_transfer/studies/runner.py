"""Run a study: train its arms (resuming, in parallel), evaluate each, write the report.

Finished arms (their run folder has ``summary.json``) are not trained again; an interrupted arm
resumes from its last checkpoint; an arm's evaluation is cached in ``evaluation.json`` beside
its checkpoints. ``commands.sh`` in the study folder holds every arm as a standalone command line,
for a cluster scheduler (one line per array task).

Example (trains every arm, so not run here; ``vol-transfer study RECIPE`` does the same)::

    _, config = resolve_recipe("recipes/freeze_ablation_cpu.yaml", command="study")
    run_study(config, Path("runs/freeze_ablation"))
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from vol_transfer.errors import InputDataError, RecipeError, StudyInterrupted
from vol_transfer.io.atomic import atomic_write_text
from vol_transfer.recipes import resolve_recipe
from vol_transfer.studies.cross_validation import HELD_OUT, comparison_table, pool_folds
from vol_transfer.studies.plan import Arm, StudyConfig, StudyPlan, arm_recipes, plan_study, shell_line
from vol_transfer.studies.hparams import write_arm_hparams
from vol_transfer.studies.progress import watch_arms
from vol_transfer.studies.report import write_report
from vol_transfer.studies.results import ArmResult, CurvePoint
from vol_transfer.training.interruption import StopOnSignal

SUMMARY = "summary.json"
# The published numbers (REFERENCE.md §1), printed beside ours for comparison.
STUDY_ABLATION_TABLE = """\
| arm | train | validation |
|---|---|---|
| scratch | 0.5334 | 0.4602 |
| model_1 | 0.6389 | 0.4785 |
| model_2 | 0.6748 | 0.4377 |
| model_3 | 0.6406 | 0.4071 |
| model_4 | 0.2371 | 0.2109 |
| model_5 | 0.0556 | 0.0447 |

(BraTS 2018 HGG, T1+T2, 105 training cases, full-size network, 96³ windows, V100.)"""
STUDY_SIZE_TABLE = """\
| subset | scratch | model_1 | model_2 | model_3 |
|---|---|---|---|---|
| S1 (26) | 0.4261 (500) | 0.4312 (500) | 0.3611 (500) | 0.3388 (500) |
| S2 | 0.4526 (1000) | 0.4819 (500) | 0.4708 (500) | 0.4677 (500) |
| S3 | 0.4175 (1000) | 0.4540 (1000) | 0.4918 (1000) | 0.4675 (1000) |
| S4 (105) | 0.5103 (5000) | 0.5565 (1500) | 0.4550 (1500) | 0.5019 (1500) |

(test Dice, iteration of the chosen checkpoint in brackets; BraTS 2018 HGG, T1+T2.)"""
EVALUATION = "evaluation.json"


def is_finished(arm: Arm) -> bool:
    return (arm.run_dir / SUMMARY).is_file()


def arm_command(arm: Arm, recipe: Path, data_root: Path | None) -> list[str]:
    """The arm's command, with ``--resume`` when it has a checkpoint to continue from."""
    command = arm.command(recipe, data_root)
    if (arm.run_dir / "checkpoints" / "last.pt").is_file():
        command.append("--resume")
    else:
        command.append("--overwrite")  # a folder with logs but no checkpoint holds nothing worth keeping
    return command


def portable_path(path: str) -> str:
    """``path`` relative to the working directory when it lies under it (``.venv/bin/python3``), else as given:
    ``commands.sh`` then works in any clone of the repository."""
    absolute, here = Path(path).absolute(), Path.cwd()
    return str(absolute.relative_to(here)) if absolute.is_relative_to(here) else path


def write_commands(plan: StudyPlan, recipe: Path, data_root: Path | None) -> Path:
    lines = ["#!/usr/bin/env bash", "# one arm per line; each resumes from its last checkpoint when rerun"]
    lines += [shell_line([portable_path(sys.executable), *arm.command(recipe, data_root)[1:]]) for arm in plan.arms]
    path = atomic_write_text(plan.folder / "commands.sh", "\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


class ArmProcesses:
    """The arms' training processes, so that a stop signal to the study reaches them.

    ``kill STUDY_PID`` reaches only the study; without this its arms would train on, orphaned. Each
    arm told to stop finishes its step, writes ``last.pt`` and exits; arms not started yet do not start.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen] = set()
        self.stopped = False

    def run(self, command: list[str], **options) -> int | None:
        """Run ``command`` to its end → its exit code; None when the study was stopped before it started."""
        with self._lock:
            if self.stopped:
                return None
            process = subprocess.Popen(command, **options)
            self._live.add(process)
        try:
            return process.wait()
        finally:
            with self._lock:
                self._live.discard(process)

    def stop(self, signum: int) -> None:
        """Tell every running arm to stop (SIGTERM: checkpoint and exit) and start no more."""
        with self._lock:
            self.stopped = True
            for process in self._live:
                os.kill(process.pid, signal.SIGTERM)  # SIGTERM whatever came: a second SIGINT would end an arm at once


def _train_arm(arm: Arm, recipe: Path, data_root: Path | None, processes: ArmProcesses) -> tuple[Arm, int | None]:
    if processes.stopped:
        return arm, None
    arm.run_dir.mkdir(parents=True, exist_ok=True)
    command = arm_command(arm, recipe, data_root) + ["--no-progress"]
    with open(arm.run_dir / "train.log", "a") as log:
        log.write(f"$ {shell_line(command)}\n")
        log.flush()
        # busy-waiting OpenMP threads of parallel arms starve each other on a shared CPU
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONUNBUFFERED": "1"}
        code = processes.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return arm, code


def train_arms(plan: StudyPlan, recipe: Path, data_root: Path | None, parallel: int, echo=print) -> list[Arm]:
    """Train every unfinished arm, ``parallel`` at a time; return the arms that failed."""
    pending = [arm for arm in plan.arms if not is_finished(arm)]
    done = len(plan.arms) - len(pending)
    if done:
        echo(f"{done} of {len(plan.arms)} arms already finished; not rerun")
    failed: list[Arm] = []
    processes = ArmProcesses()
    with StopOnSignal(on_signal=processes.stop) as stop, ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(_train_arm, arm, recipe, data_root, processes): arm for arm in pending}
        for future, minutes in watch_arms(futures, echo):  # starts, log paths, per-arm progress and ETA
            arm, code = future.result()
            if code is None:  # stopped before it started
                continue
            done += 1
            status = ("ok" if code == 0 else "stopped (resumes from last.pt)" if stop.signum is not None
                      else f"FAILED (exit {code}, see {arm.run_dir / 'train.log'})")
            echo(f"[{done}/{len(plan.arms)}] {arm.label}: {status}  ({minutes:.1f} min)")
            if code != 0:
                failed.append(arm)
    if stop.signum is not None:
        raise StudyInterrupted(plan.folder, stop.signum)
    return failed


def read_curve(metrics_csv: Path) -> list[CurvePoint]:
    """The training curve from an arm's ``metrics.csv`` (columns as the engine writes them).

    Wall time is the ``elapsed_s`` column; logs without it get the running sum of step times
    (which leaves out validation time).
    """
    if not metrics_csv.is_file():
        return []
    points: list[CurvePoint] = []
    elapsed, last_iteration = 0.0, 0
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            def number(*names: str) -> float:
                for name in names:
                    if row.get(name) not in (None, ""):
                        return float(row[name])
                return math.nan

            iteration = int(float(row["iteration"]))
            step = number("perf_step_time_s")
            if not math.isnan(step):
                elapsed += step * (iteration - last_iteration)
            last_iteration = iteration
            wall = number("elapsed_s")
            points.append(CurvePoint(
                iteration=iteration,
                wall_time=elapsed if math.isnan(wall) else wall,
                train_loss=number("train_loss"),
                val_loss=number("val_loss"),
                val_dice=number("val_dice_mean"),
            ))
    return points


def mean_step_time(metrics_csv: Path) -> float:
    """Mean of the logged ``perf_step_time_s`` values (seconds per iteration)."""
    if not metrics_csv.is_file():
        return math.nan
    with open(metrics_csv, newline="") as handle:
        values = [float(r["perf_step_time_s"]) for r in csv.DictReader(handle) if r.get("perf_step_time_s")]
    return float(sum(values) / len(values)) if values else math.nan


def collect_arm(arm: Arm, evaluation: dict[str, dict[str, float]]) -> ArmResult:
    summary = json.loads((arm.run_dir / SUMMARY).read_text())
    curve = read_curve(arm.run_dir / "metrics.csv")
    return ArmResult(
        name=arm.name, subset=arm.subset, subset_size=arm.subset_size or summary.get("train_cases", 0), seed=arm.seed,
        best_iteration=int(summary.get("best_iteration") or summary.get("iterations") or 0),
        dice={split: list(scores.values()) for split, scores in evaluation.items()},
        cases={split: list(scores) for split, scores in evaluation.items()}, curve=curve,
        step_time=mean_step_time(arm.run_dir / "metrics.csv"),
        wall_time=float(summary.get("wall_s", math.nan)),
    )


def evaluate_arm(arm: Arm, manifest: Path, data_root: Path | None,
                 splits: Sequence[str]) -> dict[str, dict[str, float]]:
    """Subject ID → mean foreground Dice of the arm's best checkpoint on each split (cached)."""
    from vol_transfer.studies.evaluate import evaluate_checkpoint

    cache = arm.run_dir / EVALUATION
    checkpoint = arm.run_dir / "checkpoints" / "best.pt"
    if not checkpoint.is_file():
        checkpoint = arm.run_dir / "checkpoints" / "last.pt"
    stamp = checkpoint.stat().st_mtime_ns
    if cache.is_file():
        cached = json.loads(cache.read_text())
        fresh = cached.get("checkpoint_mtime_ns") == stamp and set(splits) <= set(cached["dice"])
        if fresh and all(isinstance(cached["dice"][s], dict) for s in splits):  # older caches: scores without IDs
            return {s: cached["dice"][s] for s in splits}
    dice = evaluate_checkpoint(checkpoint, manifest, data_root, splits, fold=arm.fold)
    atomic_write_text(cache, json.dumps({"checkpoint_mtime_ns": stamp, "dice": dice}, indent=1) + "\n")
    return dice


def run_study(
    config: StudyConfig,
    folder: Path,
    data_root: Path | None = None,
    *,
    commands_only: bool = False,
    report_only: bool = False,
    echo=print,
) -> dict:
    """Train, evaluate and report a study in ``folder``; return a summary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    task, target = resolve_recipe(config.recipe, config.set)
    if task != "segmentation":
        raise RecipeError("recipe", f"a study's target recipe must be a segmentation recipe, not {task!r}",
                          "point 'recipe:' at e.g. recipes/brats_tc_finetune_cpu.yaml")
    manifest = Path(target.data.manifest)
    for arm_recipe in arm_recipes(config)[1:]:  # an arm's own recipe must score the same cases
        arm_task, arm_target = resolve_recipe(arm_recipe, config.set)
        if arm_task != "segmentation" or Path(arm_target.data.manifest) != manifest:
            raise RecipeError(f"arms: recipe {arm_recipe}", f"is not a segmentation recipe on {manifest}",
                              "give every arm a target recipe on the study's manifest, so the arms pair case by case")
    evaluation_root = data_root or target.data.data_root  # --data-root wins, as in `vol-transfer train`
    plan = plan_study(config, folder, manifest, target.data.train_split)
    commands = write_commands(plan, Path(config.recipe), data_root)
    if commands_only:
        echo(commands.read_text())
        return {"commands": str(commands), "arms": len(plan.arms)}
    started = time.perf_counter()
    if not report_only:
        from vol_transfer.studies.executors import run_arms  # here (inline) or as submitit jobs (local, slurm)

        failed = run_arms(config.cluster, plan, Path(config.recipe), data_root, config.parallel, echo)
        if failed:
            raise InputDataError(
                failed[0].run_dir / "train.log", f"{len(failed)} arm(s) failed ({', '.join(a.label for a in failed)})",
                "read the log, fix the cause and rerun the study: finished arms are kept",
            )
    results, folds = [], []
    # a cross-validated arm is scored on its held-out fold only (its validation split)
    splits = [HELD_OUT] if config.folds else config.evaluate_splits
    for arm in plan.arms:
        if not is_finished(arm):
            echo(f"{arm.label}: not finished, left out of the report")
            continue
        echo(f"evaluating {arm.label} on {', '.join(splits)}")
        arm_manifest = next((Path(o.split("=", 1)[1]) for o in arm.overrides if o.startswith("data.manifest=")), manifest)
        results.append(collect_arm(arm, evaluate_arm(arm, arm_manifest, evaluation_root, splits)))
        write_arm_hparams(arm, results[-1])  # TensorBoard's HParams tab compares the arms
        folds.append(arm.fold)
    if not results:
        raise InputDataError(folder, "no finished arm to report", "train the arms first (drop --report-only)")
    title = config.title or ("Layer-freezing ablation" if config.kind == "freeze_ablation" else "Training-set-size study")
    notes = (
        f"Target recipe `{config.recipe}`; seeds {config.seeds}; evaluation of each arm's best checkpoint "
        f"(validation Dice) on {', '.join(config.evaluate_splits)}. Arm commands: `commands.sh`."
    )
    if config.folds:
        results = pool_folds(results, folds)
        notes = (f"Target recipe `{config.recipe}`; seeds {config.seeds}; {len(config.folds)}-fold patient-level "
                 "cross-validation: each arm trained once per fold for a fixed budget (the final weights, nothing "
                 "chosen on the held-out cases) and scored on its held-out fold; 'test' below is the pooled "
                 f"held-out Dice of every case. Arm commands: `commands.sh`.\n\n## Held-out Dice, paired with scratch\n\n"
                 + comparison_table(results))
    reference = STUDY_ABLATION_TABLE if config.kind == "freeze_ablation" else STUDY_SIZE_TABLE
    report = write_report(results, folder, title=title, kind=config.kind, threshold=config.threshold, notes=notes,
                          reference_table=reference)
    echo(report.read_text())
    echo(f"report: {report}, {report.with_suffix('.html')} (self-contained, open in a browser); TensorBoard: "
         f"tensorboard --logdir {folder} (HParams tab: arms side by side)  ({(time.perf_counter() - started) / 60:.1f} min)")
    return {"report": str(report), "arms": len(results)}
