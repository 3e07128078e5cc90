"""`vol-transfer study` while arms train: each start with its log path, per-arm progress with ETA, per-arm minutes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vol_transfer.studies.progress import arm_iterations, progress_line, watch_arms, _Running


@dataclass
class FakeArm:
    label: str
    run_dir: Path


def _write_progress(run_dir: Path, iteration: int, total: int = 100) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(f"task: segmentation\ntraining: {{iterations: {total}}}\n")
    rows = "".join(f"{i},0.5\n" for i in range(10, iteration + 1, 10))
    (run_dir / "metrics.csv").write_text("iteration,train_loss\n" + rows)


def test_progress_line_reads_the_arm_folder_and_estimates_from_its_own_rate(tmp_path) -> None:
    run = tmp_path / "model_1"
    assert "loading data" in progress_line("model_1/seed0", run, _Running(started=0.0), now=30.0)
    _write_progress(run, 20)
    state = _Running(started=0.0)
    assert arm_iterations(run) == (20, 100)
    progress_line("model_1/seed0", run, state, now=60.0)  # first sight: 20 iterations at 60 s
    _write_progress(run, 40)
    line = progress_line("model_1/seed0", run, state, now=120.0)  # 20 iterations per minute since
    assert line == "model_1/seed0: iteration 40/100 (40%), 2.0 min so far, ETA 3.0 min"


def test_watch_says_when_each_arm_starts_where_its_log_is_and_gives_per_arm_minutes(tmp_path) -> None:
    arms = [FakeArm("scratch/seed0", tmp_path / "scratch"), FakeArm("model_1/seed0", tmp_path / "model_1")]
    release = threading.Event()

    def train(arm: FakeArm) -> tuple[FakeArm, int]:
        _write_progress(arm.run_dir, 50)
        if arm.label.startswith("scratch"):
            time.sleep(0.6)
        else:
            release.wait(5)
        return arm, 0

    lines: list[str] = []
    finished = []
    with ThreadPoolExecutor(max_workers=1) as pool:  # one at a time: the second starts after the first
        futures = {pool.submit(train, arm): arm for arm in arms}
        for future, minutes in watch_arms(futures, lines.append, every=0.0, poll=0.05):
            finished.append((future.result()[0].label, minutes))
            release.set()
    assert lines[0] == f"started scratch/seed0: log {arms[0].run_dir / 'train.log'}"
    assert f"started model_1/seed0: log {arms[1].run_dir / 'train.log'}" in lines
    assert any(line.startswith("  scratch/seed0: iteration 50/100 (50%)") for line in lines)
    assert [name for name, _ in finished] == ["scratch/seed0", "model_1/seed0"]
    # each arm's own minutes, not the time since the study started
    assert 0.5 <= finished[0][1] * 60 < 3  # seen running within one poll of its start
    assert finished[1][1] * 60 < 0.45  # model_1 ran right after scratch: its minutes do not include scratch's


def test_an_interrupted_study_does_not_start_the_arms_still_queued(tmp_path) -> None:
    arms = [FakeArm(f"arm{i}/seed0", tmp_path / f"arm{i}") for i in range(3)]
    started: list[str] = []

    def train(arm: FakeArm) -> tuple[FakeArm, int]:
        started.append(arm.label)
        time.sleep(0.2)
        return arm, 0

    def interrupt_at_first_progress(line: str) -> None:
        if line.startswith("started"):
            raise KeyboardInterrupt  # as Ctrl-C would, while the first arm trains

    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = {pool.submit(train, arm): arm for arm in arms}
        try:
            for _ in watch_arms(futures, interrupt_at_first_progress, poll=0.02):
                pass
        except KeyboardInterrupt:
            pass
    assert started == ["arm0/seed0"]
    assert [f.cancelled() for f in futures] == [False, True, True]
