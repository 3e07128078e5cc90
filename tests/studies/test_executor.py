"""Study arms as submitit jobs: the cluster section and its CLI flags, Slurm submission and re-attachment
(with stand-ins for sbatch/sacct on PATH), the preemption checkpoint, and the missing-extra error."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from vol_transfer.cli import main
from vol_transfer.commands.study import _cluster_overrides
from vol_transfer.errors import RecipeError
from vol_transfer.recipes import from_dict, resolve_recipe
from vol_transfer.studies import executors
from vol_transfer.studies.executors import ArmJob, ClusterSection, time_minutes
from vol_transfer.studies.plan import StudyConfig, plan_study

submitit = pytest.importorskip("submitit")


def _study_yaml(tmp_path: Path, cluster: str = "") -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(f"""
        task: study
        kind: freeze_ablation
        recipe: target.yaml
        arms: [scratch, model_1]
    """) + cluster)
    return path


@pytest.mark.parametrize("text, minutes", [("4:00:00", 240), ("240", 240), ("30:00", 30), ("0:30", 1),
                                           ("1-12", 2160), ("2-00:30:00", 2910)])
def test_slurm_times_read_as_sbatch_reads_them(text: str, minutes: int) -> None:
    assert time_minutes(text) == minutes


def test_cli_flags_become_cluster_keys_checked_like_the_recipe(tmp_path: Path) -> None:
    study = _study_yaml(tmp_path, "cluster: {partition: cpu, time: '1:00:00', mem: 8G}\n")
    flags = argparse.Namespace(executor="slurm", partition="gpu", time="4:00:00", gpus=1, cpus=8, mem=None)
    _, config = resolve_recipe(study, _cluster_overrides(flags), command="study")
    cluster = config.cluster
    assert (cluster.executor, cluster.partition, cluster.time, cluster.gpus, cluster.cpus, cluster.mem) == \
        ("slurm", "gpu", "4:00:00", 1, 8, "8G")  # flags win; the recipe's other keys stay
    _, default = resolve_recipe(_study_yaml(tmp_path / "..", ""), [], command="study")
    assert default.cluster.executor == "inline"


@pytest.mark.parametrize("cluster, key", [
    ("{time: 4:00:00}", "cluster.time"),  # unquoted: YAML's base-60 number 14400, not a time
    ("{time: soon}", "cluster.time"),
    ("{mem: 32X}", "cluster.mem"),
    ("{partition: 'gpu a100'}", "cluster.partition"),
    ("{gpus: -1}", "cluster.gpus"),
    ("{executor: slrum}", "cluster.executor"),
])
def test_bad_cluster_settings_are_one_line_recipe_errors(tmp_path: Path, cluster: str, key: str, capsys) -> None:
    study = _study_yaml(tmp_path, f"cluster: {cluster}\n")
    assert main(["study", str(study), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {study}: {key}:") and "\n" not in error and "Traceback" not in error


def test_missing_submitit_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit → ImportError
    with pytest.raises(RecipeError, match=r"submitit.*\[cluster\]"):
        executors.require_submitit()


def test_slurm_without_sbatch_says_where_to_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(RecipeError, match="sbatch and srun not on PATH.*--executor local"):
        executors.make_executor(ClusterSection(executor="slurm"), tmp_path)


# ---------------------------------------------------------------------------------------------- Slurm


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch):
    """sbatch records each script and answers a job id; sacct reports the states in ``states.txt``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys, pathlib
        calls = pathlib.Path({str(tmp_path / 'sbatch_calls')!r})
        calls.mkdir(exist_ok=True)
        n = len(list(calls.iterdir()))
        (calls / f"{{n}}.sh").write_text(pathlib.Path(sys.argv[1]).read_text())
        print(f"Submitted batch job {{4242 + n}}")
    """))
    (bin_dir / "sacct").write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import pathlib
        print("JobID|State|NodeList")
        print(pathlib.Path({str(tmp_path / 'states.txt')!r}).read_text().strip())
    """))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks it is there; the jobs never start
    for tool in ("sbatch", "sacct", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    submitit.SlurmJob.watcher.clear()
    yield tmp_path
    submitit.SlurmJob.watcher.clear()


def test_slurm_submits_one_array_with_the_resources_and_reattaches_instead_of_resubmitting(fake_slurm) -> None:
    root = fake_slurm
    config = from_dict(StudyConfig, {"kind": "freeze_ablation", "recipe": "target.yaml", "arms": ["scratch", "model_1"],
                                     "seeds": [0, 1]})
    plan = plan_study(config, root / "study", None)
    cluster = from_dict(ClusterSection, {"executor": "slurm", "partition": "gpu", "time": "2:00:00", "gpus": 1,
                                         "cpus": 8, "mem": "32G", "max_running": 2, "sbatch": {"constraint": "a100"}})
    said: list[str] = []
    executor = executors.make_executor(cluster, plan.folder)
    jobs = executors.attach_or_submit(executor, cluster, plan.arms, plan.folder, Path("target.yaml"), None, said.append)

    scripts = sorted((root / "sbatch_calls").iterdir())
    assert len(scripts) == 1  # one sbatch: a job array of the four arms
    script = scripts[0].read_text()
    for line in ("--partition=gpu", "--time=120", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32G",
                 "--constraint=a100", "--array=0-3%2", "--signal=USR2@"):
        assert f"#SBATCH {line}" in script, line
    record = json.loads((plan.folder / "jobs" / "jobs.json").read_text())["arms"]
    assert {label: entry["job_id"] for label, entry in record.items()} == {
        "scratch/seed0": "4242_0", "scratch/seed1": "4242_1", "model_1/seed0": "4242_2", "model_1/seed1": "4242_3"}
    # each job's pickle is the arm's standalone training command, in the study folder's jobs/<id>/
    submitted = plan.folder / "jobs" / "4242_2" / "4242_2_submitted.pkl"
    with open(submitted, "rb") as handle:
        job_fn = pickle.load(handle).function
    assert isinstance(job_fn, ArmJob) and job_fn.run_dir == plan.arms[2].run_dir
    assert "transfer.freezing.k=1" in job_fn.command and job_fn.train_command()[-1] == "--overwrite"
    assert jobs["model_1/seed0"][1].job_id == "4242_2"

    # the study command is rerun while three jobs are still queued or running and one was cancelled
    (root / "states.txt").write_text("4242_0|RUNNING|n1\n4242_1|PENDING|\n4242_2|CANCELLED by 7|\n4242_3|REQUEUED|\n")
    submitit.SlurmJob.watcher.clear()
    said.clear()
    jobs = executors.attach_or_submit(executor, cluster, plan.arms, plan.folder, Path("target.yaml"), None, said.append)
    scripts = sorted((root / "sbatch_calls").iterdir())
    assert len(scripts) == 2 and "--array" not in scripts[1].read_text()  # only the cancelled arm, alone
    assert {label: job.job_id for label, (_, job) in jobs.items()} == {
        "scratch/seed0": "4242_0", "scratch/seed1": "4242_1", "model_1/seed0": "4243", "model_1/seed1": "4242_3"}
    assert json.loads((plan.folder / "jobs" / "jobs.json").read_text())["arms"]["model_1/seed0"]["job_id"] == "4243"
    assert any("3 arm(s) already queued or running" in line for line in said)


def test_refused_submission_is_a_one_line_error(fake_slurm) -> None:
    sbatch = Path(os.environ["PATH"].split(os.pathsep)[0]) / "sbatch"
    sbatch.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write('sbatch: error: invalid partition specified: gpux\\n')\n"
                      "sys.exit(1)\n")
    plan = plan_study(from_dict(StudyConfig, {"kind": "freeze_ablation", "recipe": "t.yaml", "arms": ["scratch"]}),
                      fake_slurm / "study", None)
    cluster = ClusterSection(executor="slurm", partition="gpux")
    executor = executors.make_executor(cluster, plan.folder)
    with pytest.raises(RecipeError, match="submission refused: sbatch: error: invalid partition specified: gpux") as error:
        executors.attach_or_submit(executor, cluster, plan.arms, plan.folder, Path("t.yaml"), None, lambda _: None)
    assert "\n" not in error.value.message


# ---------------------------------------------------------------------------------------------- preemption


FAKE_TRAINING = textwrap.dedent("""
    import pathlib, sys, time
    run = pathlib.Path(sys.argv[sys.argv.index("--run-dir") + 1])
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    print("resuming" if "--resume" in sys.argv else "fresh", flush=True)
    if "--resume" not in sys.argv:
        (run / "checkpoints" / "last.pt").write_text("iteration 5")
        time.sleep(60)  # preempted here
    (run / "summary.json").write_text("{}")
""")


def test_checkpoint_stops_the_training_and_requeues_the_same_arm_which_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "arms" / "scratch_seed0"
    training = tmp_path / "train.py"
    training.write_text(FAKE_TRAINING)
    job = ArmJob("scratch/seed0", run_dir, [sys.executable, str(training), "--run-dir", str(run_dir)])
    job.grace_s = 0  # (on Slurm the wrapper waits to be killed and requeued)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(job()))
    thread.start()
    deadline = time.time() + 15
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    requeued = job.checkpoint()  # what submitit calls on USR2 (preemption, or the time limit near)
    thread.join(timeout=40)
    assert not thread.is_alive() and codes and codes[0] != 0  # the training was stopped, not finished
    assert not (run_dir / "summary.json").exists()
    # the requeued submission is the same arm; pickled (as submitit stores it) and run, it resumes
    again = pickle.loads(pickle.dumps(requeued))
    assert isinstance(again.function, ArmJob) and again.function.run_dir == run_dir
    assert again.result() == 0
    log = (run_dir / "train.log").read_text()
    assert log.count("$ ") == 2 and "--overwrite" in log.splitlines()[0] and "--resume" in log.splitlines()[2]
    assert log.splitlines()[1] == "fresh" and log.splitlines()[3] == "resuming"
    assert (run_dir / "summary.json").exists()
