"""Learning-rate schedules as pure functions of the iteration: constant, poly, cosine, step, with warm-up.

Because the rate is a function of the iteration alone, resuming only needs the iteration; each
optimizer group keeps its own base rate (``group["base_lr"]``), so discriminative (per-group)
learning rates are scaled together.

Example (the cosine runs from 1 after the warm-up to 0 at the last iteration, 99; its midpoint
is iteration 54.5):
    >>> schedule = LRSchedule("cosine", total_iterations=100, warmup_iterations=10)
    >>> [round(schedule.factor(i), 3) for i in (0, 9, 10, 54, 55, 99)]
    [0.1, 1.0, 1.0, 0.509, 0.491, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

ScheduleKind = Literal["constant", "poly", "cosine", "step"]


@dataclass(frozen=True)
class LRSchedule:
    """Multiplier of each group's base learning rate at iteration ``i`` (0-based).

    Args:
        kind: ``constant``; ``poly`` ``(1 - t)^power``; ``cosine`` half-cosine to ``min_factor``;
            ``step`` × ``gamma`` at each of ``milestones`` (or every ``step_size`` iterations).
        total_iterations: length of the run (t = progress after warm-up, 0 → 1).
        warmup_iterations: linear ramp from ``1/warmup`` to 1 over the first iterations.
        min_factor: floor of ``poly``/``cosine``.
    """

    kind: ScheduleKind = "constant"
    total_iterations: int = 1
    warmup_iterations: int = 0
    power: float = 0.9
    min_factor: float = 0.0
    gamma: float = 0.1
    milestones: Sequence[int] = field(default_factory=tuple)
    step_size: int | None = None

    def factor(self, iteration: int) -> float:
        if self.warmup_iterations > 0 and iteration < self.warmup_iterations:
            return (iteration + 1) / self.warmup_iterations
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            if self.step_size:
                steps = iteration // self.step_size
            else:
                steps = sum(1 for m in self.milestones if iteration >= m)
            return self.gamma**steps
        span = max(1, self.total_iterations - self.warmup_iterations - 1)
        t = min(1.0, max(0.0, (iteration - self.warmup_iterations) / span))
        if self.kind == "poly":
            return self.min_factor + (1 - self.min_factor) * (1 - t) ** self.power
        if self.kind == "cosine":
            return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        raise ValueError(f"unknown schedule kind {self.kind!r}")

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every group's ``lr`` for ``iteration``; return the factor."""
        factor = self.factor(iteration)
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * factor
        return factor
