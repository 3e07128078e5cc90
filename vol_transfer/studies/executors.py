"""Where a study's arms train: here (``inline``), or each as a job through submitit (``local``, ``slurm``).

``vol-transfer study RECIPE`` trains the arms of :func:`~vol_transfer.studies.plan.plan_study` (every
arm × subset × seed × fold) in processes on this machine, ``parallel`` at a time (``inline``, the
default). ``--executor slurm`` submits each unfinished arm as a Slurm job (one job array) through
`submitit <https://github.com/facebookincubator/submitit>`_, with the resources of the recipe's
``cluster:`` section or the command line (``--partition --time --gpus --cpus --mem``);
``--executor local`` runs the same jobs with submitit's LocalExecutor on this machine (``parallel`` at
a time), which is also how the jobs are tested. When every job is done the study is evaluated and
reported exactly as an inline one.

A job trains its arm as the standalone ``vol-transfer train`` command of ``commands.sh`` (output in
the arm's ``train.log``), continuing from ``checkpoints/last.pt`` when the run folder has one. On
preemption or when the job nears its time limit, Slurm (or the LocalExecutor) signals the job and
submitit calls :meth:`ArmJob.checkpoint`: the training is stopped (its ``last.pt`` stays, the
engine resumes exactly from it) and the same arm is requeued; the requeued job resumes. An arm is
requeued after at most ``max_requeues`` timeouts (preemptions do not count).

Job ids go in ``jobs/jobs.json`` of the study folder and each job's submitit files and logs in
``jobs/<job id>/``. Rerunning the command submits nothing for finished arms (their run folder has
``summary.json``) and, with Slurm, waits for the jobs still queued or running instead of submitting
them again; interrupting the command (Ctrl-C) leaves Slurm jobs running (rerun it to wait for them
and write the report) and stops local ones.

Slurm times are strings (YAML reads an unquoted ``4:00:00`` as the base-60 number 14400):

    >>> time_minutes("4:00:00"), time_minutes("1-12"), time_minutes("90"), time_minutes("30:00")
    (240, 2160, 90, 30)
    >>> memory_text("32G"), memory_text(16), memory_text("500M")
    ('32G', '16G', '500M')
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Union

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import option

if TYPE_CHECKING:  # the job wrapper stays light: no torch import in the submitit process
    from vol_transfer.studies.plan import Arm, StudyPlan

EXECUTORS = ("inline", "local", "slurm")
JOBS = "jobs"  # the study folder's submitit folder: jobs.json and one folder per job
JOBS_RECORD = "jobs.json"
INSTALL_HINT = "install the cluster extra: pip install -e '.[cluster]' (or pip install submitit)"
# Slurm states of a job that will still run (sacct's first word: "CANCELLED by 123" → CANCELLED)
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "UNKNOWN"}
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.IGNORECASE)


def time_minutes(value: Union[int, str]) -> int:
    """A Slurm time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in whole minutes.

    Raises ``ValueError`` for anything else, including numbers (see the module docstring).
    """
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is a number, not a quoted time")
    match = _TIME.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Slurm time")
    days, first, second, third = match.groups()
    numbers = [int(x) for x in (first, second, third) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        total = int(days) * 1440 + hours * 60 + minutes + seconds / 60
    elif len(numbers) == 3:  # HH:MM:SS
        total = numbers[0] * 60 + numbers[1] + numbers[2] / 60
    else:  # MM or MM:SS
        total = numbers[0] + (numbers[1] / 60 if len(numbers) == 2 else 0)
    if total <= 0:
        raise ValueError(f"{value!r} is no time at all")
    return math.ceil(total)


def memory_text(value: Union[int, str]) -> str:
    """Memory per job for ``sbatch --mem``: ``"32G"``, ``"500M"``; a bare number is GB."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an amount of memory")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"{value!r} is not an amount of memory")
        return f"{value:g}G"
    match = _MEMORY.match(str(value).strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{value!r} is not an amount of memory")
    return f"{match.group(1)}{match.group(2).upper() or 'M'}"  # sbatch's unit without a suffix is MB


def _time_problem(value: Any) -> Optional[str]:
    try:
        time_minutes(value)
    except ValueError as error:
        return f"{error} (YAML reads an unquoted 4:00:00 as the base-60 number 14400)"
    return None


def _memory_problem(value: Any) -> Optional[str]:
    try:
        memory_text(value)
    except ValueError as error:
        return str(error)
    return None


def _name_problem(value: Any) -> Optional[str]:
    return None if value is None or re.fullmatch(r"[\w.,:@+-]+", str(value)) else f"{value!r} is not a Slurm name"


@dataclass
class ClusterSection:
    """How the arms run: ``inline`` (here, ``parallel`` at a time) or one submitit job each (``local``, ``slurm``)."""

    executor: Literal["inline", "local", "slurm"] = "inline"  # inline: here; local/slurm: one submitit job per arm
    partition: Optional[str] = option(None, check=_name_problem,
                                      help="Slurm partition of the jobs, e.g. gpu (null: the cluster's default)")
    time: Union[int, str] = option("24:00:00", check=_time_problem,
                                   help="time limit per job, quoted: '4:00:00', '1-12:00' (D-HH:MM) or '240' (minutes); "
                                        "an arm still training then is requeued and resumes")
    gpus: int = option(0, ge=0)  # GPUs per arm (local: the arm sees GPUs 0…gpus-1; 0: CPU only)
    cpus: int = option(4, ge=1)  # CPU cores per arm (sbatch --cpus-per-task)
    mem: Optional[Union[int, str]] = option(None, check=_memory_problem,
                                            help="memory per arm: 32G, 500M or 16 (GB); null: the partition's default")
    account: Optional[str] = option(None, check=_name_problem, help="Slurm account the jobs are charged to (null: yours)")
    qos: Optional[str] = option(None, check=_name_problem, help="Slurm quality of service (null: the default)")
    max_running: Optional[int] = option(None, ge=1)  # Slurm: at most this many arms at once (array throttle)
    max_requeues: int = option(3, ge=0)  # times an arm out of time is requeued to resume (preemptions are not counted)
    sbatch: dict[str, str] = option(default_factory=dict)  # any other sbatch option, e.g. {constraint: a100}
    poll: Optional[float] = option(None, gt=0)  # seconds between job-state checks (null: 30 Slurm, 1 local)


def require_submitit() -> Any:
    """The submitit module, or a one-line error naming the extra to install."""
    try:
        import submitit
    except ImportError:
        raise RecipeError("cluster.executor", "running arms as jobs needs submitit, which is not installed",
                          INSTALL_HINT) from None
    return submitit


# ---------------------------------------------------------------------------------------------- the job


def _job_log(text: str) -> None:
    """A line of the job's own log: the submitit job's stdout (``jobs/<id>/<id>_0_log.out``)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _ignore_preemption_signal() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # submitit's default (SUBMITIT_PREEMPT_SIGNAL)
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL")
    if name and hasattr(signal, f"SIG{name}"):
        signal.signal(getattr(signal, f"SIG{name}"), signal.SIG_IGN)


class ArmJob:
    """One arm as a submitit job: ``vol-transfer train`` of the arm in a child process → its exit code.

    Holds plain data only (the arm's label, run folder and standalone command), so the submitit
    process that runs it imports neither torch nor the study code. On preemption or timeout submitit
    calls :meth:`checkpoint`, which stops the training and returns the same arm to requeue.
    """

    grace_s = 120.0  # after a checkpoint, Slurm kills and requeues the job: wait for that, do not "finish"

    def __init__(self, label: str, run_dir: Path, command: list[str]) -> None:
        self.label, self.run_dir, self.command = label, Path(run_dir), list(command)
        self._process: Optional[subprocess.Popen] = None
        self.preempted = False

    def __getstate__(self) -> dict[str, Any]:
        return {"label": self.label, "run_dir": self.run_dir, "command": self.command}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["label"], state["run_dir"], state["command"])

    def train_command(self) -> list[str]:
        """The arm's command, resuming when the run folder has ``last.pt`` (as the inline runner's ``arm_command``)."""
        last = self.run_dir / "checkpoints" / "last.pt"
        return self.command + (["--resume"] if last.is_file() else ["--overwrite"])

    def __call__(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        command = self.train_command()
        job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or "?"
        _job_log(f"{self.label}: job {job_id} on {os.uname().nodename} (pid {os.getpid()}); log {self.run_dir / 'train.log'}")
        with open(self.run_dir / "train.log", "a") as log:
            log.write(f"$ {' '.join(shlex.quote(p) for p in command)}  # job {job_id}\n")
            log.flush()
            env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONUNBUFFERED": "1"}
            # Slurm signals every process of the job; the preemption signal is this wrapper's to handle
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             preexec_fn=_ignore_preemption_signal)
            try:
                # polled, not Popen.wait(): a signal handler that ran inside wait() would hold its lock
                while (code := self._process.poll()) is None:
                    time.sleep(0.5)
            finally:  # the job is being ended (local requeue exits from the signal handler): end the training too
                self._stop()
        if self.preempted and self.grace_s:
            time.sleep(self.grace_s)
        _job_log(f"{self.label}: training exited with code {code}")
        return code

    def _stop(self) -> None:
        """End the training (SIGTERM, then SIGKILL after 30 s); safe inside a signal handler: it never reaps
        the child (``waitid(WNOWAIT)``), so it takes no lock of the Popen the interrupted code is polling."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        for sig, patience in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline:
                try:
                    if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                        return
                except ChildProcessError:
                    return  # already reaped
                time.sleep(0.05)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's preemption/timeout hook: stop the training (``last.pt`` stays) and requeue this arm."""
        from submitit.helpers import DelayedSubmission

        self.preempted = True
        self._stop()
        last = self.run_dir / "checkpoints" / "last.pt"
        resume = f"resumes from {last}" if last.is_file() else "starts again (no checkpoint yet)"
        _job_log(f"{self.label}: preempted or out of time; requeued, {resume}")
        return DelayedSubmission(ArmJob(self.label, self.run_dir, self.command))


# ---------------------------------------------------------------------------------------------- submitting


def make_executor(cluster: ClusterSection, folder: Path) -> Any:
    """A submitit executor writing under ``folder/jobs/<job id>/``, with the section's resources."""
    submitit = require_submitit()
    jobs = Path(folder) / JOBS / "%j"
    minutes = time_minutes(cluster.time)
    if cluster.executor == "local":
        executor = submitit.LocalExecutor(folder=jobs, max_num_timeout=cluster.max_requeues)
        executor.update_parameters(timeout_min=minutes, gpus_per_node=cluster.gpus, stderr_to_stdout=True)
        return executor
    if cluster.executor != "slurm":
        raise RecipeError("cluster.executor", f"{cluster.executor!r} runs no jobs", "use local or slurm")
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise RecipeError("cluster.executor", f"slurm: {' and '.join(missing)} not on PATH",
                          "run the study on a Slurm login node, or use --executor local (this machine)")
    executor = submitit.SlurmExecutor(folder=jobs, max_num_timeout=cluster.max_requeues)
    parameters: dict[str, Any] = {"time": minutes, "cpus_per_task": cluster.cpus, "job_name": "vol-transfer-arm",
                                  "stderr_to_stdout": True, "ntasks_per_node": 1}
    if cluster.gpus:
        parameters["gpus_per_node"] = cluster.gpus
    for key in ("partition", "account", "qos"):
        if getattr(cluster, key) is not None:
            parameters[key] = getattr(cluster, key)
    if cluster.mem is not None:
        parameters["mem"] = memory_text(cluster.mem)
    if cluster.max_running is not None:
        parameters["array_parallelism"] = cluster.max_running
    if cluster.sbatch:
        parameters["additional_parameters"] = dict(cluster.sbatch)
    executor.update_parameters(**parameters)
    return executor


def arm_job(arm: Arm, recipe: Path, data_root: Optional[Path]) -> ArmJob:
    return ArmJob(arm.label, arm.run_dir, arm.command(recipe, data_root))


def read_jobs(folder: Path) -> dict[str, dict[str, Any]]:
    path = Path(folder) / JOBS / JOBS_RECORD
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("arms", {}))
    except (ValueError, AttributeError):
        return {}  # a damaged record only costs a resubmission


def _write_jobs(folder: Path, record: dict[str, dict[str, Any]]) -> None:
    from vol_transfer.io.atomic import atomic_write_text

    path = Path(folder) / JOBS / JOBS_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"arms": record}, indent=1, sort_keys=True) + "\n")


def job_state(job: Any) -> str:
    """A job's state, first word, upper case ("RUNNING", "PENDING", "FINISHED" …)."""
    try:
        return (str(job.state).split() or ["UNKNOWN"])[0].upper()
    except Exception:  # noqa: BLE001  (sacct unreachable for a moment)
        return "UNKNOWN"


def attach_or_submit(executor: Any, cluster: ClusterSection, arms: list[Arm], folder: Path, recipe: Path,
                     data_root: Optional[Path], echo: Callable[[str], None] = print) -> dict[str, tuple[Arm, Any]]:
    """Label → (arm, job): Slurm jobs recorded in ``jobs.json`` and still queued or running are waited
    for, not submitted again; every other arm is submitted (one array). ``jobs.json`` is updated."""
    submitit = require_submitit()
    record = read_jobs(folder)
    jobs: dict[str, tuple[Arm, Any]] = {}
    to_submit = []
    for arm in arms:
        entry = record.get(arm.label)
        if cluster.executor == "slurm" and entry and entry.get("executor") == "slurm":
            job = submitit.SlurmJob(folder=Path(folder) / JOBS / "%j", job_id=str(entry["job_id"]))
            if job_state(job) in ACTIVE_STATES:
                jobs[arm.label] = (arm, job)
                continue
        to_submit.append(arm)
    if jobs:
        echo(f"{len(jobs)} arm(s) already queued or running on the cluster; waiting for jobs "
             + ", ".join(job.job_id for _, job in jobs.values()))
    if to_submit:
        try:
            with executor.batch():
                submitted = [executor.submit(arm_job(arm, recipe, data_root)) for arm in to_submit]
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedSubmissionError) as error:
            line = next((s.strip() for s in str(error).splitlines() if s.strip()), type(error).__name__)
            raise RecipeError("cluster", f"{cluster.executor}: submission refused: {line}",
                              "fix the partition/time/gpus/cpus/mem settings (or --sbatch options) and rerun") from None
        now = datetime.datetime.now().isoformat(timespec="seconds")
        for arm, job in zip(to_submit, submitted):
            jobs[arm.label] = (arm, job)
            record[arm.label] = {"executor": cluster.executor, "job_id": job.job_id, "submitted": now,
                                 "run_dir": str(arm.run_dir), "job_log": str(job.paths.stdout)}
        echo(f"submitted {len(submitted)} arm(s) as {cluster.executor} jobs: "
             + ", ".join(f"{arm.label} {job.job_id}" for arm, job in zip(to_submit, submitted))
             + f"  (ids: {Path(folder) / JOBS / JOBS_RECORD})")
    _write_jobs(folder, record)
    return jobs


def _outcome(job: Any) -> tuple[Optional[int], str]:
    """(exit code of the training, or None when the job itself failed; a reason)."""
    try:
        code = job.result()
    except Exception as error:  # noqa: BLE001  submitit's FailedJobError/UncompletedJobError
        text = " ".join(str(error).split())
        return None, (text[:200] + "…") if len(text) > 200 else text
    return int(code), ""


def run_jobs(cluster: ClusterSection, plan: StudyPlan, recipe: Path, data_root: Optional[Path], parallel: int,
             echo: Callable[[str], None] = print, every: float = 30.0) -> list[Arm]:
    """Train every unfinished arm as a job, wait for all; return the arms that failed."""
    from vol_transfer.studies.progress import _Running, progress_line

    pending = [arm for arm in plan.arms if not (arm.run_dir / "summary.json").is_file()]
    done = len(plan.arms) - len(pending)
    if done:
        echo(f"{done} of {len(plan.arms)} arms already finished; not rerun")
    if not pending:
        return []
    local = cluster.executor == "local"
    poll = cluster.poll or (1.0 if local else 30.0)
    executor = make_executor(cluster, plan.folder)
    queue = list(pending)
    active: dict[str, tuple[Arm, Any]] = {}
    running: dict[str, _Running] = {}
    failed: list[Arm] = []
    last_report = time.perf_counter()
    try:
        while queue or active:
            slots = max(parallel - len(active), 0) if local else len(queue)
            if queue and slots:
                batch, queue = queue[:slots], queue[slots:]
                active.update(attach_or_submit(executor, cluster, batch, plan.folder, recipe, data_root, echo))
            now = time.perf_counter()
            for label, (arm, job) in list(active.items()):
                state = job_state(job)
                if label not in running and state == "RUNNING":
                    running[label] = _Running(started=now)
                    echo(f"started {label} (job {job.job_id}): log {arm.run_dir / 'train.log'}, "
                         f"job log {job.paths.stdout}")
                if not job.done():
                    continue
                del active[label]
                state_seen = running.pop(label, _Running(started=now))
                code, reason = _outcome(job)
                done += 1
                minutes = (time.perf_counter() - state_seen.started) / 60
                if code == 0 and (arm.run_dir / "summary.json").is_file():
                    status = "ok"
                else:
                    status = (f"FAILED (exit {code}, see {arm.run_dir / 'train.log'})" if code is not None
                              else f"FAILED (job {job.job_id}: {reason}; see {job.paths.stdout})")
                    failed.append(arm)
                echo(f"[{done}/{len(plan.arms)}] {label}: {status}  ({minutes:.1f} min)")
            if running and now - last_report >= every:
                last_report = now
                for label, state in running.items():
                    echo("  " + progress_line(label, active[label][0].run_dir, state, now))
            if queue or active:
                time.sleep(poll)
    finally:
        if active and local:  # local jobs belong to this command: they stop with it
            for _, job in active.values():
                job.cancel(check=False)
        elif active:
            ids = " ".join(job.job_id for _, job in active.values())
            echo(f"{len(active)} job(s) keep running on the cluster ({ids}): rerun this command to wait for them "
                 f"and write the report, or scancel {ids}")
    return failed


def run_arms(cluster: ClusterSection, plan: StudyPlan, recipe: Path, data_root: Optional[Path], parallel: int,
             echo: Callable[[str], None] = print) -> list[Arm]:
    """Train the study's unfinished arms with the chosen executor; return those that failed."""
    if cluster.executor == "inline":
        from vol_transfer.studies.runner import train_arms

        return train_arms(plan, recipe, data_root, parallel, echo)
    return run_jobs(cluster, plan, recipe, data_root, parallel, echo)


__all__ = ["ArmJob", "ClusterSection", "EXECUTORS", "attach_or_submit", "make_executor", "memory_text",
           "require_submitit", "run_arms", "run_jobs", "time_minutes"]
