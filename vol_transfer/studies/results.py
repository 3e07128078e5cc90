"""What one study arm produced, in one plain form the report reads.

Example:
    >>> arm = ArmResult(name="model_1", dice={"test": [0.5, 0.6]}, best_iteration=500)
    >>> round(arm.mean_dice("test"), 3)
    0.55
    >>> ArmResult(name="scratch", dice={"test": [0.5, float("nan")]}).mean_dice("test")  # NaN: nothing to score
    0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vol_transfer.evaluation.metrics import mean_dice


@dataclass
class CurvePoint:
    """One logged point of a training run."""

    iteration: int
    wall_time: float  # seconds since the run started
    train_loss: float = math.nan
    val_loss: float = math.nan
    val_dice: float = math.nan


@dataclass
class ArmResult:
    """One arm (a training run) of a study.

    Attributes:
        name: the arm, e.g. ``scratch`` or ``model_2``.
        subset: the training subset's name (``S1`` …) for data-size studies, else ``""``.
        subset_size: number of training cases used.
        seed: the run's seed.
        best_iteration: iteration of the checkpoint chosen on validation Dice.
        dice: split → per-subject mean foreground Dice of the chosen checkpoint (NaN: a subject
            with no class in prediction or truth, left out of the means).
        cases: split → the subject IDs of ``dice``'s scores, in the same order (empty when unknown);
            arms are paired on them.
        curve: the logged training curve.
        step_time: mean seconds per training iteration.
        wall_time: seconds the whole run took.
    """

    name: str
    subset: str = ""
    subset_size: int = 0
    seed: int = 0
    best_iteration: int = 0
    dice: dict[str, list[float]] = field(default_factory=dict)
    curve: list[CurvePoint] = field(default_factory=list)
    step_time: float = math.nan
    wall_time: float = math.nan
    cases: dict[str, list[str]] = field(default_factory=dict)

    def mean_dice(self, split: str) -> float:
        """:func:`~vol_transfer.evaluation.metrics.mean_dice` of the subjects' scores (NaN ones left out)."""
        return mean_dice(self.dice.get(split, []))

    def scored(self, split: str) -> list[float]:
        """The subjects' scores on ``split`` that are not NaN."""
        return [d for d in self.dice.get(split, []) if not math.isnan(d)]

    def time_to_threshold(self, threshold: float) -> tuple[int, float] | None:
        """(iteration, wall seconds) when validation Dice first reached ``threshold``, else None."""
        for point in self.curve:
            if not math.isnan(point.val_dice) and point.val_dice >= threshold:
                return point.iteration, point.wall_time
        return None


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average that skips NaNs (TensorBoard-style smoothing, debiased)."""
    out, average, norm = [], 0.0, 0.0
    for value in values:
        if math.isnan(value):
            out.append(math.nan)
            continue
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(average / norm)
    return out
