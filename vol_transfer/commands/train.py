"""``vol-transfer train RECIPE``: train what a recipe describes; ``--resume`` continues a run exactly.

Examples::

    vol-transfer train recipes/hippocampus_pretrain_cpu.yaml --run-dir runs/hippo
    vol-transfer train recipes/hippocampus_pretrain_cpu.yaml --run-dir runs/hippo --resume
    vol-transfer train recipes/brats_tc_finetune_cpu.yaml --set training.iterations=500
    torchrun --nproc_per_node=2 -m vol_transfer train RECIPE --run-dir runs/ddp   # data-parallel

One run at a time writes a run folder (:mod:`vol_transfer.io.folder_lock`). A folder left by a run
that stopped before its first checkpoint (only ``recipe.yaml``, logs or temporaries) holds nothing
to resume or keep: a rerun replaces it. A refused ``--resume`` leaves ``recipe.yaml`` as it was.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from vol_transfer.errors import OutputExistsError, RecipeError
from vol_transfer.io.atomic import atomic_write_text, remove_stale_temporaries
from vol_transfer.io.folder_lock import LOCK_NAME, FolderLock
from vol_transfer.recipes import config_to_dict, get_task, recipe_to_yaml, resolve_recipe

RESOLVED_RECIPE = "recipe.yaml"
SUMMARY = "summary.json"
# keys that may change between a run and its resumption (they do not alter what was already computed)
RESUMABLE_CHANGES = ("training.iterations", "validation.patience", "checkpoint.every", "training.threads",
                     "training.log_every", "description")
_RUN_OUTPUTS = ("checkpoints", "tensorboard", "metrics.csv", RESOLVED_RECIPE, SUMMARY)
_CHECKPOINT_NAMES = ("last.pt", "best.pt")


def register(subparsers: argparse._SubParsersAction) -> None:
    from vol_transfer.commands import examples

    parser = subparsers.add_parser("train", help="train a network from a recipe (YAML)",
                                   description="Train from a recipe; the run folder keeps the resolved recipe, "
                                               "checkpoints, metrics.csv and TensorBoard logs.",
                                   **examples(
                                       "vol-transfer train recipes/hippocampus_pretrain_cpu.yaml "
                                       "--run-dir runs/hippocampus_pretrain_cpu",
                                       "vol-transfer train recipes/hippocampus_pretrain_cpu.yaml "
                                       "--run-dir runs/hippocampus_pretrain_cpu --resume   # after an interruption",
                                       "vol-transfer train recipes/brats_tc_finetune_cpu.yaml --set training.iterations=500",
                                       "vol-transfer train recipes/pneumonia_scratch_cpu.yaml --run-dir "
                                       "runs/pneumonia_scratch_cpu   # an X-ray classifier (then infer, evaluate)",
                                       "vol-transfer recipe keys recipes/brats_tc_finetune_cpu.yaml   # what --set can change",
                                       "torchrun --nproc_per_node=2 -m vol_transfer train RECIPE --run-dir runs/ddp"))
    parser.add_argument("recipe", help="recipe file, e.g. recipes/hippocampus_pretrain_cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (YAML value), e.g. --set optim.lr=3e-4; repeatable")
    parser.add_argument("--run-dir", type=Path, help="output folder (default: runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run in --run-dir and start over")
    parser.add_argument("--data-root", type=Path, help="folder holding the datasets (default: $VOL_TRANSFER_DATA "
                                                       "or ../shared/data)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_train)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _check_same_recipe(run_dir: Path, resolved: dict[str, Any]) -> None:
    saved_path = run_dir / RESOLVED_RECIPE
    if not saved_path.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    current = _flatten(resolved)
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k) and not k.startswith(RESUMABLE_CHANGES))
    if changed:
        raise RecipeError(saved_path, f"the recipe differs from the one this run started with ({', '.join(changed[:5])})",
                          "resume with the same recipe, or start a new --run-dir")


def _checkpoint_files(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    return sorted(p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []


def _remove(run_dir: Path, names: list[str]) -> None:
    for name in names:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _keep_orphans(run_dir: Path, orphans: list[Path]) -> Path:
    """Move the checkpoints of a run that cannot be resumed to ``stopped-run-<time>/`` (never deleted unasked)."""
    import datetime

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, number = run_dir / f"stopped-run-{stamp}", 1
    while folder.exists():
        number += 1
        folder = run_dir / f"stopped-run-{stamp}-{number}"
    folder.mkdir()
    for path in orphans:
        path.rename(folder / path.name)
    return folder


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, resolved: dict[str, Any]) -> None:
    """Refuse to clobber an existing run unless asked; on resume check the recipe is the same.

    A run is there to keep when it has ``checkpoints/last.pt`` (it can be resumed) or ``summary.json``
    (it finished). A folder with neither is what a run that stopped before its first checkpoint
    leaves: a new run replaces it (with a note; a ``best.pt`` it holds is moved to
    ``stopped-run-<time>/``), and ``--resume`` says to rerun without it.
    """
    last = run_dir / "checkpoints" / "last.pt"
    existing = [name for name in _RUN_OUTPUTS if (run_dir / name).exists()]
    resumable = last.is_file() or (run_dir / SUMMARY).exists()
    orphans = [] if resumable else _checkpoint_files(run_dir)
    if resume:
        if not last.is_file():
            if existing and not resumable:
                kept = (f"; {', '.join('checkpoints/' + p.name for p in orphans)} will be kept in stopped-run-<time>/"
                        if orphans else "; those leftovers are replaced")
                raise OutputExistsError(run_dir, "has no checkpoints/last.pt to resume from: its run stopped before "
                                                 f"its first checkpoint (it left {', '.join(existing)})",
                                        f"rerun without --resume to start it again{kept}")
            raise OutputExistsError(run_dir, "has no checkpoints/last.pt to resume from",
                                    "drop --resume to start a new run, or point --run-dir at an existing run")
        _check_same_recipe(run_dir, resolved)
        return
    if existing and resumable and not overwrite:
        raise OutputExistsError(run_dir, f"already holds a run ({', '.join(existing)})",
                                "pass --resume to continue it, --overwrite to start over, or choose another --run-dir")
    if existing and not overwrite:
        note = f"note: {run_dir}: replacing {', '.join(existing)} left by a run that stopped before its first checkpoint"
        if orphans:
            note += f"; its {', '.join(p.name for p in orphans)} moved to {_keep_orphans(run_dir, orphans).name}/"
        print(note, file=sys.stderr)
    _remove(run_dir, existing)


def _holds_only_recipe(run_dir: Path) -> bool:
    names = {p.name for p in run_dir.iterdir()} - {LOCK_NAME}
    return names == {RESOLVED_RECIPE}


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporaries a killed write left (``.last.<x>.tmp.pt`` …): no other run writes here now."""
    removed = remove_stale_temporaries(run_dir, [RESOLVED_RECIPE, SUMMARY, "metrics.csv"])
    removed += remove_stale_temporaries(run_dir / "checkpoints", _CHECKPOINT_NAMES)
    if removed:
        print(f"note: {run_dir}: removed {len(removed)} temporary file(s) left by an interrupted write "
              f"({', '.join(p.name for p in removed[:3])})", file=sys.stderr)


def _train(args: argparse.Namespace) -> int:
    task_name, config = resolve_recipe(args.recipe, args.overrides, command="train")
    task = get_task(task_name)
    run_dir = args.run_dir or Path("runs") / Path(args.recipe).name.split(".")[0]
    resolved = {"task": task_name, **config_to_dict(config)}
    # under torchrun only rank 0 checks and prepares the folder (the others would race with it)
    is_main = int(os.environ.get("RANK", "0")) == 0
    created = not run_dir.exists()
    lock = FolderLock(run_dir, command=f"vol-transfer train {args.recipe} --run-dir {run_dir}") if is_main else None
    if lock is not None:
        lock.acquire()
    try:
        if is_main:
            _remove_stale_temporaries(run_dir)
            prepare_run_dir(run_dir, args.resume, args.overwrite, resolved)
            if not args.resume:  # a resumed run's recipe.yaml is replaced only once the resume worked
                atomic_write_text(run_dir / RESOLVED_RECIPE, recipe_to_yaml(task_name, config))
        options = {"resume": args.resume, "data_root": args.data_root, "recipe": resolved,
                   "progress": not args.no_progress}
        try:
            summary = task.run(config, run_dir, **_accepted(task.run, options))
        except BaseException:
            if is_main and not args.resume and _holds_only_recipe(run_dir):
                (run_dir / RESOLVED_RECIPE).unlink()  # failed before training started: leave nothing behind
            raise
        if is_main:
            if args.resume:
                atomic_write_text(run_dir / RESOLVED_RECIPE, recipe_to_yaml(task_name, config))
            atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2, default=str) + "\n")
            _print_summary(summary, run_dir)
    finally:
        if lock is not None:
            lock.release()
            if created and not any(run_dir.iterdir()):
                run_dir.rmdir()  # a refusal leaves no empty folder behind
    return 0


def _accepted(function: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The options ``function`` takes (tasks registered by other modules may take fewer)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return options
    return {k: v for k, v in options.items() if k in parameters}


def _print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    """What the run reached, which metric chose ``best.pt`` and at which step, and where it is."""
    print(f"run folder: {run_dir}")
    print(f"iterations: {summary.get('iterations')}  wall time: {summary.get('wall_s', 0):.0f} s"
          + ("  (stopped early)" if summary.get("stopped_early") else ""))
    last = summary.get("last_validation") or {}
    for key, value in last.items():
        if isinstance(value, (int, float)):
            print(f"  last validation {key.removeprefix('val/'):>18s}: {value:.4f}")
    selection = summary.get("selection") or {}
    if selection:
        where = (f"at iteration {selection['iteration']}" if selection.get("iteration") is not None
                 else "NaN at every validation: the final weights")
        print(f"best checkpoint by {selection['metric']} ({selection['mode']}) = {selection['value']:.4f} {where} "
              f"→ {run_dir / 'checkpoints' / 'best.pt'}")
