"""A whole (tiny) study on synthetic volumes: arms trained, resumed work skipped, evaluated, reported."""

from __future__ import annotations

import csv
import textwrap

import pytest

from vol_transfer.cli import main
from vol_transfer.demo.synthetic import write_dataset


@pytest.fixture(scope="module")
def study_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    data = root / "data"
    hippocampus = write_dataset(data, "hippocampus", 6, seed=1)
    tumour = write_dataset(data, "tumour", 6, seed=2, splits=(0.5, 0.25))
    common = """
        network: {name: highres3dnet, options: {width: 0.25}}
        preprocessing: {orientation: RAS, intensity: [{kind: zscore, mask: nonzero}]}
        training: {iterations: 3, batch_size: 1, window: [16, 16, 16], threads: 2, log_every: 1}
        validation: {every: 3}
        checkpoint: {every: 3}
    """
    (root / "source.yaml").write_text(textwrap.dedent(f"""
        task: segmentation
        data: {{manifest: {hippocampus}, data_root: {data}, label_mapping: hippocampus}}
    """) + textwrap.dedent(common))
    assert main(["train", str(root / "source.yaml"), "--run-dir", str(root / "source"), "--no-progress"]) == 0
    (root / "target.yaml").write_text(textwrap.dedent(f"""
        task: segmentation
        data: {{manifest: {tumour}, data_root: {data}, label_mapping: brats_tc_2017}}
        transfer: {{source: {root / 'source/checkpoints/best.pt'}, channel_adaptation: mean,
                    freezing: {{kind: freeze_first, k: 1}}}}
    """) + textwrap.dedent(common))
    (root / "study.yaml").write_text(textwrap.dedent(f"""
        task: study
        kind: dataset_size
        recipe: {root / 'target.yaml'}
        arms: [scratch, model_2]
        subsets: [1, all]
        threshold: 0.01
    """))
    return root


def test_study_trains_evaluates_and_reports_then_skips_finished_arms(study_setup, capsys) -> None:
    root = study_setup
    out = root / "out"
    assert main(["study", str(root / "study.yaml"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["arm"], r["subset"]) for r in rows} == {("scratch", "S1"), ("scratch", "S2"), ("model_2", "S1"), ("model_2", "S2")}
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    assert all(0.0 <= float(r["mean_dice"]) <= 1.0 for r in rows)
    assert {r["subset_size"] for r in rows} == {"1", "3"}
    report = (out / "report.md").read_text()
    assert "| S1 (1) |" in report and "dice_vs_size.png" in report
    assert (out / "loss_curves.png").stat().st_size > 1000
    commands = (out / "commands.sh").read_text().splitlines()[2:]
    assert len(commands) == 4 and all(" train " in c and "training.seed=0" in c for c in commands)
    per_case = list(csv.DictReader(open(out / "per_case.csv")))
    test_cases = {r["case"] for r in per_case if r["split"] == "test"}
    assert test_cases and "" not in test_cases  # every score is named by its case
    assert len([r for r in per_case if r["split"] == "test"]) == 4 * len(test_cases)
    # the frozen arm really froze the first two groups
    frozen_recipe = (out / "arms" / "S1_model_2_seed0" / "recipe.yaml").read_text()
    assert "freeze_first" in frozen_recipe and "k: 2" in frozen_recipe

    capsys.readouterr()
    assert main(["study", str(root / "study.yaml"), "--out", str(out)]) == 0
    assert "4 of 4 arms already finished; not rerun" in capsys.readouterr().out


def test_commands_sh_names_a_python_inside_the_clone_relative_to_it(tmp_path, monkeypatch) -> None:
    from vol_transfer.studies.runner import portable_path

    monkeypatch.chdir(tmp_path)
    assert portable_path(str(tmp_path / ".venv" / "bin" / "python3")) == ".venv/bin/python3"
    assert portable_path("/usr/bin/python3") == "/usr/bin/python3"
