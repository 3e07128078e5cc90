"""What a study says while its arms train: when each starts (and where its log is), its progress and ETA.

:func:`watch_arms` wraps the futures of the arms' training processes. It says when an arm starts,
with the path of its ``train.log``; every ``every`` seconds it prints one line per running arm —
iteration of total (from the arm's ``metrics.csv`` and ``recipe.yaml``), the arm's own minutes and
its ETA at the rate it has trained since it was first seen; and it yields each future when it
finishes, with that arm's own minutes (not the study's). When interrupted (Ctrl-C), the arms that
have not started yet are cancelled, so the study stops instead of training them afterwards.

Example (``futures`` maps each submitted future to its :class:`~vol_transfer.studies.plan.Arm`)::

    for future, minutes in watch_arms(futures, echo=print):
        arm, code = future.result()
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import yaml

MIN_RATE_SECONDS = 60.0  # an ETA needs this long a look at the arm's rate (validations pause it)


def arm_iterations(run_dir: Path) -> tuple[int, int | None]:
    """(last logged iteration, planned iterations) of a run folder; (0, None) before it has written them.

    >>> arm_iterations(Path("/nonexistent"))
    (0, None)
    """
    iteration, total = 0, None
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        lines = [line for line in metrics.read_text().splitlines()[1:] if line.strip()]
        if lines:
            try:
                iteration = int(float(lines[-1].split(",", 1)[0]))
            except ValueError:
                iteration = 0
    recipe = run_dir / "recipe.yaml"
    if recipe.is_file():
        try:
            total = int(((yaml.safe_load(recipe.read_text()) or {}).get("training") or {}).get("iterations"))
        except (TypeError, ValueError, yaml.YAMLError):
            total = None
    return iteration, total


@dataclass
class _Running:
    started: float
    first: tuple[float, int] | None = None  # (time, iteration) when an iteration was first seen
    extra: dict[str, Any] = field(default_factory=dict)


def progress_line(label: str, run_dir: Path, state: _Running, now: float) -> str:
    """``"model_1/seed0: iteration 120/400 (30%), 2.1 min so far, ETA 4.9 min"``."""
    iteration, total = arm_iterations(run_dir)
    minutes = (now - state.started) / 60
    if iteration and state.first is None:
        state.first = (now, iteration)
    if not iteration or not total:
        return f"{label}: loading data / starting, {minutes:.1f} min so far"
    eta = ""
    if state.first is not None and iteration > state.first[1] and now - state.first[0] >= MIN_RATE_SECONDS:
        rate = (iteration - state.first[1]) / (now - state.first[0])
        eta = f", ETA {max(total - iteration, 0) / rate / 60:.1f} min"
    return f"{label}: iteration {iteration}/{total} ({100 * iteration / total:.0f}%), {minutes:.1f} min so far{eta}"


def watch_arms(futures: Mapping[Future, Any], echo: Callable[[str], None] = print, every: float = 30.0,
               poll: float = 2.0) -> Iterator[tuple[Future, float]]:
    """Yield ``(future, the arm's minutes)`` as arms finish, saying starts, logs and progress meanwhile."""
    pending = set(futures)
    running: dict[Future, _Running] = {}
    last_report = time.perf_counter()
    try:
        while pending:
            finished, _ = wait(pending, timeout=poll, return_when=FIRST_COMPLETED)
            now = time.perf_counter()
            for future in pending:
                if future not in running and (future.running() or future.done()):
                    arm = futures[future]
                    running[future] = _Running(started=now)
                    echo(f"started {arm.label}: log {arm.run_dir / 'train.log'}")
            for future in finished:
                pending.discard(future)
                state = running.pop(future, _Running(started=now))
                yield future, (time.perf_counter() - state.started) / 60
            if running and now - last_report >= every:
                last_report = now
                for future, state in running.items():
                    arm = futures[future]
                    echo("  " + progress_line(arm.label, arm.run_dir, state, now))
    finally:  # interrupted (Ctrl-C) or abandoned: arms not started yet must not start afterwards
        for future in pending:
            future.cancel()
