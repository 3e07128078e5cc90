"""A tiny synthetic study whose arms train as submitit LocalExecutor jobs: trained, reported, not resubmitted
when rerun; and an arm preempted mid-training (the submitit signal) requeued and resumed from last.pt."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from vol_transfer.cli import main
from vol_transfer.demo.synthetic import write_dataset
from vol_transfer.recipes import from_dict
from vol_transfer.studies import executors
from vol_transfer.studies.executors import ClusterSection
from vol_transfer.studies.plan import StudyConfig, plan_study

pytest.importorskip("submitit")


def _target(root: Path, iterations: int, checkpoint_every: int) -> Path:
    data = root / "data"
    manifest = write_dataset(data, "tumour", 4, seed=2, splits=(0.5, 0.25))
    path = root / "target.yaml"
    path.write_text(textwrap.dedent(f"""
        task: segmentation
        data: {{manifest: {manifest}, data_root: {data}, label_mapping: brats_tc_2017}}
        network: {{name: highres3dnet, options: {{width: 0.25}}}}
        preprocessing: {{orientation: RAS, intensity: [{{kind: zscore, mask: nonzero}}]}}
        training: {{iterations: {iterations}, batch_size: 1, window: [16, 16, 16], threads: 1, log_every: 1}}
        validation: {{every: {iterations}}}
        checkpoint: {{every: {checkpoint_every}}}
    """))
    return path


@pytest.mark.slow  # two arms' jobs, evaluation and report: ~40 s at load 8 on 2 cores
def test_study_arms_as_local_jobs_are_reported_and_not_resubmitted(tmp_path: Path, capsys) -> None:
    target = _target(tmp_path, iterations=3, checkpoint_every=3)
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(f"""
        task: study
        kind: freeze_ablation
        recipe: {target}
        arms: [scratch]
        seeds: [0, 1]
        evaluate_splits: [validation]
        threshold: 0.01
    """))
    out = tmp_path / "out"
    assert main(["study", str(study), "--out", str(out), "--executor", "local", "--set", "parallel=2"]) == 0
    said = capsys.readouterr().out
    assert "submitted 2 arm(s) as local jobs" in said and "[2/2] scratch/seed" in said
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(r["seed"] for r in rows) == ["0", "1"] and {r["split"] for r in rows} == {"validation"}
    record = json.loads((out / "jobs" / "jobs.json").read_text())["arms"]
    assert set(record) == {"scratch/seed0", "scratch/seed1"}
    for label, entry in record.items():
        assert entry["executor"] == "local"
        job_log = Path(entry["job_log"])  # the job's own log, in the study folder
        assert job_log.parent == out / "jobs" / entry["job_id"] and label in job_log.read_text()
        run_dir = Path(entry["run_dir"])
        assert (run_dir / "summary.json").is_file() and "--overwrite" in (run_dir / "train.log").read_text()
    assert (out / "report.md").is_file()

    assert main(["study", str(study), "--out", str(out), "--executor", "local"]) == 0
    said = capsys.readouterr().out
    assert "2 of 2 arms already finished; not rerun" in said and "submitted" not in said
    assert json.loads((out / "jobs" / "jobs.json").read_text())["arms"] == record


@pytest.mark.slow  # ~40 s at load 8 on 2 cores
def test_preempted_local_job_is_requeued_and_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    iterations = 60
    target = _target(tmp_path, iterations=iterations, checkpoint_every=2)
    config = from_dict(StudyConfig, {"kind": "freeze_ablation", "recipe": str(target), "arms": ["scratch"]})
    plan = plan_study(config, tmp_path / "out", None)
    (arm,) = plan.arms
    cluster = ClusterSection(executor="local", poll=0.2)
    said: list[str] = []
    failed: list = []
    thread = threading.Thread(target=lambda: failed.extend(
        executors.run_jobs(cluster, plan, target, None, parallel=1, echo=said.append)))
    thread.start()
    try:
        deadline = time.time() + 120
        last = arm.run_dir / "checkpoints" / "last.pt"
        while not last.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert last.exists(), "the arm never wrote a checkpoint"
        job_id = json.loads((plan.folder / "jobs" / "jobs.json").read_text())["arms"][arm.label]["job_id"]
        job_log = plan.folder / "jobs" / job_id / f"{job_id}_0_log.out"
        pid = int(re.search(r"\(pid (\d+)\)", job_log.read_text()).group(1))
        os.kill(pid, signal.SIGUSR2)  # what the LocalExecutor (and Slurm) send on preemption / near the time limit
    finally:
        thread.join(timeout=240)
    assert not thread.is_alive() and failed == []
    log = job_log.read_text()
    assert "requeued, resumes from" in log and log.count(f"{arm.label}: job {job_id}") == 2
    commands = [line for line in (arm.run_dir / "train.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "--overwrite" in commands[0] and "--resume" in commands[1]
    summary = json.loads((arm.run_dir / "summary.json").read_text())
    assert summary["iterations"] == iterations
    metrics = [int(r["iteration"]) for r in csv.DictReader(open(arm.run_dir / "metrics.csv"))]
    assert metrics == sorted(set(metrics)) and metrics[-1] == iterations  # resumed rows replace, never repeat
    assert any(line.startswith("[1/1] scratch/seed0: ok") for line in said)
