"""Study planning: arms, seeds, subset manifests, commands, resumability."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import from_dict, resolve_recipe
from vol_transfer.studies import runner
from vol_transfer.studies.plan import StudyConfig, arm_overrides, arm_recipes, plan_study

MANIFEST_ROWS = [
    ("subject_id", "split", "image", "label"),
    *[(f"c{i}", "train", f"c{i}.nii.gz", f"c{i}_seg.nii.gz") for i in range(10)],
    ("v0", "validation", "v0.nii.gz", "v0_seg.nii.gz"),
    ("t0", "test", "t0.nii.gz", "t0_seg.nii.gz"),
]


def _manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as handle:
        handle.write("# labels: 0,1\n")
        csv.writer(handle).writerows(MANIFEST_ROWS)
    return path


def _config(**values) -> StudyConfig:
    return from_dict(StudyConfig, {"kind": "freeze_ablation", "recipe": "r.yaml", **values})


def test_ablation_expands_every_arm_and_seed_with_same_seed_overrides(tmp_path: Path) -> None:
    plan = plan_study(_config(seeds=[0, 7]), tmp_path, None)
    assert len(plan.arms) == 12
    by_seed = {}
    for arm in plan.arms:
        assert f"training.seed={arm.seed}" in arm.overrides
        by_seed.setdefault(arm.seed, []).append(arm.name)
    assert by_seed[0] == by_seed[7] == ["scratch", "model_1", "model_2", "model_3", "model_4", "model_5"]
    assert len({arm.run_dir for arm in plan.arms}) == 12


def test_dataset_size_writes_nested_subset_manifests_and_records_them(tmp_path: Path) -> None:
    config = _config(kind="dataset_size", subsets=[3, 0.6, "all"], arms=["scratch", "model_1"])
    plan = plan_study(config, tmp_path / "study", _manifest(tmp_path))
    record = json.loads((tmp_path / "study/subsets/subsets.json").read_text())["subsets"]
    assert [len(record[s]) for s in ("S1", "S2", "S3")] == [3, 6, 10]
    assert set(record["S1"]) < set(record["S2"]) < set(record["S3"])
    s1 = list(csv.DictReader(line for line in open(tmp_path / "study/subsets/S1.csv") if not line.startswith("#")))
    assert {r["subject_id"] for r in s1 if r["split"] == "train"} == set(record["S1"])
    assert {r["split"] for r in s1} == {"train", "validation", "test"}  # evaluation splits kept whole
    assert "# labels: 0,1" in (tmp_path / "study/subsets/S1.csv").read_text()
    assert len(plan.arms) == 6 and {a.subset_size for a in plan.arms} == {3, 6, 10}


def test_dataset_size_with_folds_nests_inside_each_training_fold_and_keeps_the_held_out_fold(tmp_path: Path) -> None:
    path = tmp_path / "folds.csv"
    with open(path, "w", newline="") as handle:
        handle.write("# labels: 0,1\n")
        csv.writer(handle).writerows([("subject_id", "split", "fold", "image", "label"),
                                      *[(f"c{i}", "train", i % 2, f"c{i}.nii.gz", f"c{i}_seg.nii.gz") for i in range(12)]])
    config = _config(kind="dataset_size", subsets=[2, 4, "all"], arms=["scratch", "model_1"], folds=[0, 1])
    plan = plan_study(config, tmp_path / "study", path)
    for fold in (0, 1):
        record = json.loads((tmp_path / f"study/subsets/fold{fold}/subsets.json").read_text())["subsets"]
        held_out = {f"c{i}" for i in range(12) if i % 2 == fold}
        assert [len(record[s]) for s in ("S1", "S2", "S3")] == [2, 4, 6]
        assert set(record["S1"]) < set(record["S2"]) < set(record["S3"]) and not set(record["S3"]) & held_out
        for subset in ("S1", "S3"):
            rows = list(csv.DictReader(line for line in open(tmp_path / f"study/subsets/fold{fold}/{subset}.csv")
                                       if not line.startswith("#")))
            ids = {r["subject_id"] for r in rows}
            assert held_out <= ids and ids - held_out == set(record[subset])  # every size scored on the same cases
    assert len(plan.arms) == 12
    s1_fold1 = [a for a in plan.arms if a.subset == "S1" and a.fold == 1]
    assert all("data.manifest=" + str(tmp_path / "study/subsets/fold1/S1.csv") in a.overrides for a in s1_fold1)
    assert all("data.fold=1" in a.overrides for a in s1_fold1)


def test_arm_commands_are_reproducible_standalone_lines(tmp_path: Path) -> None:
    first = plan_study(_config(), tmp_path, None)
    second = plan_study(_config(), tmp_path, None)
    assert [a.command(Path("r.yaml")) for a in first.arms] == [a.command(Path("r.yaml")) for a in second.arms]
    command = first.arms[2].command(Path("r.yaml"))
    assert command[1:4] == ["-m", "vol_transfer", "train"]
    assert "transfer.freezing.k=2" in command and "--run-dir" in command


@pytest.mark.parametrize("name", ["model_0", "model_6", "frozen", "gradual_x"])
def test_unknown_arms_are_recipe_errors(name: str) -> None:
    with pytest.raises(RecipeError):
        arm_overrides(name)


def test_dataset_size_needs_subsets() -> None:
    with pytest.raises(RecipeError, match="subsets"):
        _config(kind="dataset_size")


def test_finished_arms_are_not_retrained_and_interrupted_ones_resume(tmp_path: Path, monkeypatch) -> None:
    plan = plan_study(_config(arms=["scratch", "model_1", "model_2"]), tmp_path, None)
    finished, interrupted, fresh = plan.arms
    (finished.run_dir).mkdir(parents=True)
    (finished.run_dir / "summary.json").write_text("{}")
    (interrupted.run_dir / "checkpoints").mkdir(parents=True)
    (interrupted.run_dir / "checkpoints/last.pt").write_bytes(b"x")
    calls = []

    class FakeProcess:
        pid = -1

        def __init__(self, command, **kwargs):
            calls.append(command)

        def wait(self):
            return 0

    monkeypatch.setattr(runner.subprocess, "Popen", FakeProcess)
    failed = runner.train_arms(plan, Path("r.yaml"), None, parallel=2, echo=lambda *_: None)
    assert failed == []
    run_dirs = sorted(c[c.index("--run-dir") + 1] for c in calls)
    assert run_dirs == sorted([str(interrupted.run_dir), str(fresh.run_dir)])
    resumed = next(c for c in calls if str(interrupted.run_dir) in c)
    assert "--resume" in resumed and "--resume" not in next(c for c in calls if str(fresh.run_dir) in c)


def test_a_custom_arm_trains_from_its_own_recipe_and_the_others_from_the_study_recipe(tmp_path: Path) -> None:
    config = _config(recipe="study.yaml", arms=["scratch", {"name": "other_source", "recipe": "other.yaml",
                                                            "set": ["transfer.freezing.k=0"]}])
    plan = plan_study(config, tmp_path, None)
    commands = {arm.name: arm.command(Path(config.recipe)) for arm in plan.arms}
    assert commands["scratch"][4] == "study.yaml" and commands["other_source"][4] == "other.yaml"
    assert "transfer.freezing.k=0" in commands["other_source"]


def test_a_custom_arm_recipe_on_another_manifest_is_refused_before_training(tmp_path: Path) -> None:
    base = "task: segmentation\ndata: {{manifest: {}, classes: [background, fg]}}\ntraining: {{iterations: 1}}\n"
    (tmp_path / "study.yaml").write_text(base.format(_manifest(tmp_path)))
    (tmp_path / "other.yaml").write_text(base.format(tmp_path / "another.csv"))
    config = _config(recipe=str(tmp_path / "study.yaml"),
                     arms=["scratch", {"name": "other_source", "recipe": str(tmp_path / "other.yaml")}])
    with pytest.raises(RecipeError, match="pair case by case"):
        runner.run_study(config, tmp_path / "study", report_only=True)
    assert not (tmp_path / "study" / "arms").exists()


def test_only_selects_named_arms_custom_ones_included_in_its_order(tmp_path: Path) -> None:
    custom = {"name": "other_source", "recipe": "other.yaml", "set": ["validation.every=300"]}
    config = _config(arms=["scratch", "model_1", custom], only=["other_source", "scratch"], seeds=[0])
    plan = plan_study(config, tmp_path, None)
    assert [arm.name for arm in plan.arms] == ["other_source", "scratch"]
    assert plan.arms[0].recipe == Path("other.yaml") and "validation.every=300" in plan.arms[0].overrides
    assert arm_recipes(config) == [Path("r.yaml"), Path("other.yaml")]


def test_only_names_an_arm_the_study_lacks_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="no arm named 'model_9'"):
        _config(arms=["scratch", "model_1"], only=["model_9"])
    with pytest.raises(RecipeError, match="repeat"):
        _config(arms=["scratch", "model_1"], only=["scratch", "scratch"])


def test_a_shipped_recipes_custom_arms_are_selected_from_the_command_line(monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # shipped recipes name paths relative to the project root
    _, config = resolve_recipe("recipes/brats18_freeze_ablation_cpu.yaml", ["only=[scratch,li2017_finetune]"],
                               command="study")
    plan = plan_study(config, Path("runs/x"), None)
    li = [arm for arm in plan.arms if arm.name == "li2017_finetune"]
    assert {arm.name for arm in plan.arms} == {"scratch", "li2017_finetune"} and len(li) == 2
    assert li[0].recipe == Path("recipes/brats18_tc_li2017_finetune_cpu.yaml")
    with pytest.raises(RecipeError, match="only=") as error:  # naming a custom arm in arms= loses its definition
        resolve_recipe("recipes/brats18_freeze_ablation_cpu.yaml", ["arms=[li2017_finetune]"], command="study")
    assert "unknown arm 'li2017_finetune'" in str(error.value)


STOPPABLE_ARM = """
import pathlib, signal, sys, time
run_dir = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    (run_dir / "stopped").write_text(str(signum))
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
(run_dir / "started").write_text("")
time.sleep(60)
"""


def test_a_signal_to_the_study_stops_its_running_arms_and_starts_no_more(tmp_path: Path, monkeypatch) -> None:
    """`kill STUDY_PID` reaches the arms (each saves last.pt on SIGTERM) instead of leaving them orphaned."""
    import os
    import signal
    import sys
    import threading
    import time

    from vol_transfer.errors import StudyInterrupted

    plan = plan_study(_config(arms=["scratch", "model_1", "model_2"]), tmp_path, None)
    monkeypatch.setattr(runner, "arm_command", lambda arm, recipe, root: [sys.executable, "-c", STOPPABLE_ARM,
                                                                          str(arm.run_dir)])

    def signal_when_two_run() -> None:
        deadline = time.monotonic() + 30
        while sum((a.run_dir / "started").exists() for a in plan.arms) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_when_two_run, daemon=True).start()
    with pytest.raises(StudyInterrupted, match="rerun the same command") as error:
        runner.train_arms(plan, Path("r.yaml"), None, parallel=2, echo=lambda *_: None)
    assert error.value.exit_code == 128 + signal.SIGTERM
    first, second, third = plan.arms
    assert (first.run_dir / "stopped").read_text() == str(int(signal.SIGTERM))
    assert (second.run_dir / "stopped").read_text() == str(int(signal.SIGTERM))
    assert not third.run_dir.exists()  # never started
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
