"""A study recipe and the arms it expands to: each arm is an ordinary ``vol-transfer train`` run.

A study recipe (``task: study``) names one target recipe (the fine-tuning recipe, with
``transfer.source`` set) and the arms to train from it. Built-in arm names:

- ``scratch``: no transfer (``transfer.source=null``), same everything else;
- ``finetune``: transfer, nothing frozen;
- ``model_k`` (k = 1…5): the study's "model k", the first k layer groups frozen;
- ``gradual_k_N``: the first k groups frozen until iteration N, then all trained;
- ``discriminative_F``: nothing frozen, learning rate × F per group toward the input.

Any other arm is given as ``{name: ..., set: [key=value, ...]}``, optionally with its own target
recipe (``recipe: recipes/….yaml``, e.g. a second transfer source whose network or preprocessing
differs). ``only: [names]`` trains and reports a subset of the arms, by name, in that order
(``--set 'only=[scratch,li2017_finetune]'`` re-runs two arms of a recipe, custom ones included).
A ``dataset_size`` study trains
every arm on each nested subset S1 ⊂ S2 ⊂ … of the training split (written as subset manifests).

Example:
    >>> arm_overrides("model_3")
    ['transfer.freezing.kind=freeze_first', 'transfer.freezing.k=3']
    >>> arm_overrides("scratch")
    ['transfer.source=null', 'transfer.channel_adaptation=null', 'transfer.freezing={kind: none}']
    >>> config = StudyConfig("freeze_ablation", Path("r.yaml"), arms=["scratch", "model_1", CustomArm("other")],
    ...                      only=["other", "scratch"])
    >>> [arm_name(arm) for arm in selected_arms(config)]
    ['other', 'scratch']
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from vol_transfer.errors import RecipeError
from vol_transfer.io.atomic import atomic_path, atomic_write_text
from vol_transfer.nets.highres3dnet import HighRes3DNet
from vol_transfer.recipes import closest, option, register_task
from vol_transfer.studies.executors import ClusterSection
from vol_transfer.studies.subsets import nested_subsets

DEFAULT_ABLATION_ARMS = ["scratch", "model_1", "model_2", "model_3", "model_4", "model_5"]


@dataclass
class CustomArm:
    """An arm defined by its own recipe overrides."""

    name: str
    set: list[str] = option(default_factory=list)
    recipe: Optional[Path] = None  # default: the study's target recipe


@dataclass
class StudyConfig:
    """A ``task: study`` recipe."""

    kind: Literal["freeze_ablation", "dataset_size"]
    recipe: Path  # the target (fine-tuning) recipe every arm starts from
    arms: list[Union[str, CustomArm]] = option(list(DEFAULT_ABLATION_ARMS), min_len=1)
    only: Optional[list[str]] = option(None, min_len=1)  # train and report just these arms (names), in this order
    seeds: list[int] = option([0], min_len=1)
    # cross-validation: every arm is trained once per fold (data.fold=k), for a fixed budget (validation.select=last),
    # and scored on its held-out fold; the pooled held-out Dice covers every case of the manifest's folds
    folds: Optional[list[int]] = option(None, ge=0, min_len=2)
    subsets: Optional[list[Union[float, Literal["all"]]]] = option(None, gt=0, min_len=1)  # counts ≥ 1, fractions < 1, "all"
    subset_seed: int = 0
    set: list[str] = option(default_factory=list)  # overrides applied to every arm
    parallel: int = option(1, ge=1)  # arms trained at once (processes on this machine)
    threads_per_arm: Optional[int] = option(None, ge=1)
    cluster: ClusterSection = option(default_factory=ClusterSection)  # inline here, or each arm a local/Slurm job
    evaluate_splits: list[str] = option(["train", "validation", "test"], min_len=1)
    threshold: float = option(0.4, gt=0, le=1)  # validation Dice for the time-to-threshold column
    title: str = ""

    def validate(self, where: str) -> None:
        if self.kind == "dataset_size" and not self.subsets:
            raise RecipeError(f"{where}.subsets" if where else "subsets", "a dataset_size study needs subsets",
                              "list sizes, e.g. subsets: [26, 52, 79, 105] or [0.25, 0.5, 0.75, 1.0]")
        for arm in self.arms:
            if not isinstance(arm, CustomArm):
                arm_overrides(arm)  # raises for unknown names
        names = [arm_name(a) for a in self.arms]
        if len(set(names)) != len(names):
            raise RecipeError("arms", f"arm names repeat: {names}", "give every arm a distinct name")
        for name in self.only or []:
            if name not in names:
                raise RecipeError("only", f"no arm named {name!r} in this study",
                                  f"{closest(name, names)}pick from the recipe's arms: {', '.join(names)}")
        if self.only and len(set(self.only)) != len(self.only):
            raise RecipeError("only", f"arm names repeat: {self.only}", "name each arm once")


def arm_name(arm: Union[str, CustomArm]) -> str:
    """The name an arm is listed, selected (``only``) and reported by."""
    return arm.name if isinstance(arm, CustomArm) else arm


def selected_arms(config: StudyConfig) -> list[Union[str, CustomArm]]:
    """The arms a study trains: all of ``arms``, or those ``only`` names, in its order."""
    if not config.only:
        return list(config.arms)
    by_name = {arm_name(arm): arm for arm in config.arms}
    return [by_name[name] for name in config.only]


HIGHRES3DNET_GROUPS = tuple(HighRes3DNet.layer_groups)  # the study's network: conv_0, res_1, … conv_2
NO_FREEZING = "transfer.freezing={kind: none}"


def arm_overrides(name: str) -> list[str]:
    """The recipe overrides that make a built-in arm."""
    if name == "scratch":
        return ["transfer.source=null", "transfer.channel_adaptation=null", NO_FREEZING]
    if name == "finetune":
        return [NO_FREEZING]
    if match := re.fullmatch(r"model_(\d+)", name):
        k = int(match.group(1))
        if not 1 <= k <= 5:
            raise RecipeError("arms", f"{name}: k must be 1..5 (conv_2, the head, is never frozen)", "use model_1 … model_5")
        return ["transfer.freezing.kind=freeze_first", f"transfer.freezing.k={k}"]
    if match := re.fullmatch(r"gradual_(\d+)_(\d+)", name):
        k, release = int(match.group(1)), int(match.group(2))
        return ["transfer.freezing.kind=freeze_first", f"transfer.freezing.k={k}", f"transfer.freezing.until={release}"]
    if match := re.fullmatch(r"discriminative_(0?\.\d+|1(\.0*)?)", name):
        return [NO_FREEZING, f"transfer.lr_decay={float(match.group(1))}"]
    raise RecipeError(
        "arms", f"unknown arm {name!r}",
        "use scratch, finetune, model_K, gradual_K_ITER, discriminative_F, or {name: ..., set: [key=value]}; "
        "to run some of a recipe's named arms, keep its arms and set only=[NAME, ...]",
    )


@dataclass
class Arm:
    """One training run of a study."""

    name: str
    seed: int
    overrides: list[str]
    run_dir: Path
    subset: str = ""
    subset_size: int = 0
    fold: int | None = None
    recipe: Path | None = None  # this arm's own target recipe; None: the study's

    @property
    def label(self) -> str:
        fold = f"fold{self.fold}" if self.fold is not None else ""
        return "/".join(p for p in (self.subset, self.name, f"seed{self.seed}", fold) if p)

    def command(self, recipe: Path, data_root: Path | None = None) -> list[str]:
        """The standalone ``vol-transfer train`` command line of this arm (resumes if interrupted)."""
        # --no-progress: the log gets the validation lines, not a progress bar redrawn per step
        command = [sys.executable, "-m", "vol_transfer", "train", str(self.recipe or recipe),
                   "--run-dir", str(self.run_dir), "--no-progress"]
        if data_root is not None:
            command += ["--data-root", str(data_root)]
        for override in self.overrides:
            command += ["--set", override]
        return command


def shell_line(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


def write_subset_manifests(
    manifest_path: Path, train_split: str, sizes: list[float | str], seed: int, folder: Path,
    held_out_fold: int | None = None,
) -> list[tuple[str, Path, list[str]]]:
    """Write one manifest per nested subset (all non-training rows kept); return (name, path, ids).

    With ``held_out_fold = k`` the subsets are drawn from the training cases of the other folds
    and every case of fold k is kept, so each size is scored on the same held-out cases. The
    nesting is recorded in ``subsets.json`` beside them.
    """
    with open(manifest_path, newline="") as handle:
        lines = handle.read().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    if not rows:
        raise RecipeError(manifest_path, "manifest has no rows", "point the target recipe at a non-empty manifest")
    if held_out_fold is not None and "fold" not in rows[0]:
        raise RecipeError(manifest_path, "has no fold column for the study's folds",
                          "write the folds with vol-transfer data manifest --folds K, or drop folds:")
    held_out = {r["subject_id"] for r in rows if held_out_fold is not None and r["split"] == train_split
                and r["fold"] == str(held_out_fold)}
    train_ids = [r["subject_id"] for r in rows if r["split"] == train_split and r["subject_id"] not in held_out]
    subsets = nested_subsets(train_ids, sizes, seed)
    written = []
    for index, ids in enumerate(subsets, start=1):
        name = f"S{index}"
        keep = set(ids)
        path = folder / f"{name}.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            for comment in comments:
                handle.write(comment + "\n")
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if r["split"] != train_split or r["subject_id"] in keep | held_out)
        written.append((name, path, ids))
    record = {name: ids for name, _, ids in written}
    atomic_write_text(folder / "subsets.json", json.dumps({"seed": seed, "subsets": record}, indent=1) + "\n")
    return written


@dataclass
class StudyPlan:
    """Every arm of a study, with its run folder under the study folder."""

    config: StudyConfig
    folder: Path
    arms: list[Arm] = field(default_factory=list)


def _arm_list(config: StudyConfig) -> list[tuple[str, list[str], Path | None]]:
    out = []
    for arm in selected_arms(config):
        if isinstance(arm, CustomArm):
            out.append((arm.name, list(arm.set), arm.recipe))
        else:
            out.append((arm, arm_overrides(arm), None))
    return out


def arm_recipes(config: StudyConfig) -> list[Path]:
    """The distinct target recipes of a study's arms, the study's own first."""
    recipes = [Path(config.recipe)]
    for arm in selected_arms(config):
        if isinstance(arm, CustomArm) and arm.recipe is not None and Path(arm.recipe) not in recipes:
            recipes.append(Path(arm.recipe))
    return recipes


def plan_study(config: StudyConfig, folder: Path, manifest: Path | None, train_split: str = "train") -> StudyPlan:
    """Expand a study into arms; a dataset-size study also writes its subset manifests."""
    folder = Path(folder)
    plan = StudyPlan(config, folder)
    base = list(config.set)
    if config.threads_per_arm:
        base.append(f"training.threads={config.threads_per_arm}")
    if config.kind == "dataset_size":
        if manifest is None:
            raise RecipeError("recipe", "the target recipe names no data.manifest", "set data.manifest in it")
        # with folds: nested subsets inside each fold's training cases, the held-out fold whole
        by_fold = {fold: write_subset_manifests(manifest, train_split, list(config.subsets or []), config.subset_seed,
                                                folder / "subsets" / (f"fold{fold}" if fold is not None else ""),
                                                held_out_fold=fold)
                   for fold in config.folds or [None]}
    else:
        by_fold = {fold: [("", None, [])] for fold in config.folds or [None]}
    for index in range(len(next(iter(by_fold.values())))):
        for name, overrides, arm_recipe in _arm_list(config):
            for seed in config.seeds:
                for fold in config.folds or [None]:
                    subset_name, subset_manifest, ids = by_fold[fold][index]
                    extra = [f"training.seed={seed}"]
                    if subset_manifest is not None:
                        extra.append(f"data.manifest={subset_manifest}")
                    if fold is not None:
                        extra += [f"data.fold={fold}", "validation.select=last", "validation.patience=null"]
                    parts = (subset_name, name, f"seed{seed}", f"fold{fold}" if fold is not None else "")
                    run_dir = folder / "arms" / "_".join(p for p in parts if p)
                    plan.arms.append(Arm(name, seed, base + overrides + extra, run_dir, subset_name, len(ids), fold,
                                         arm_recipe))
    return plan


def _run_study(config: StudyConfig, run_dir: Path, data_root: Path | None = None) -> dict:
    from vol_transfer.studies.runner import run_study

    return run_study(config, run_dir, data_root)


register_task("study", StudyConfig, _run_study, command="study")
