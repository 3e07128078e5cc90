"""Cross-validated studies: pool each arm's held-out folds and compare arms on the same cases.

Every arm of a ``folds:`` study is trained once per fold and scored on that fold's held-out cases
(its ``validation`` split, never used to choose anything: ``validation.select: last``). Pooling the
folds gives one held-out Dice per case of the manifest, in the same case order for every arm, so
each arm is compared *paired* with the baseline on the same cases
(:func:`~vol_transfer.evaluation.statistics.paired_comparison`), and its mean comes with a 95 %
bootstrap interval over cases.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from vol_transfer.evaluation.statistics import mean_ci, paired_comparison
from vol_transfer.studies.results import ArmResult

HELD_OUT = "validation"  # the split a fold's run validates on: its held-out fold
POOLED = "test"  # the pooled held-out Dice is reported as test Dice


def pool_folds(results: Sequence[ArmResult], folds: Sequence[int | None]) -> list[ArmResult]:
    """One result per (subset, arm, seed): held-out Dice of every fold concatenated in fold order."""
    groups: dict[tuple[str, str, int], list[tuple[int, ArmResult]]] = defaultdict(list)
    for result, fold in zip(results, folds):
        groups[(result.subset, result.name, result.seed)].append((fold if fold is not None else 0, result))
    pooled = []
    for (subset, name, seed), members in groups.items():
        members.sort(key=lambda item: item[0])
        runs = [r for _, r in members]
        step_times = [r.step_time for r in runs if not math.isnan(r.step_time)]
        pooled.append(ArmResult(
            name=name, subset=subset, subset_size=runs[0].subset_size, seed=seed,
            best_iteration=runs[0].best_iteration,
            dice={POOLED: [d for r in runs for d in r.dice.get(HELD_OUT, [])]},
            cases={POOLED: [c for r in runs for c in r.cases.get(HELD_OUT, [])]},
            curve=runs[0].curve,  # the first fold's curve, for the time-to-threshold column
            step_time=sum(step_times) / len(step_times) if step_times else math.nan,
            wall_time=sum(r.wall_time for r in runs),
        ))
    return pooled


def comparison_table(results: Sequence[ArmResult], baseline: str = "scratch", split: str = POOLED) -> str:
    """Markdown: per arm the mean held-out Dice with its 95 % CI, and the paired comparison with the baseline."""
    base = {(r.subset, r.seed): r for r in results if r.name == baseline}
    lines = [f"| subset | arm | seed | cases | mean Dice [95 % CI] | vs {baseline}: Δ [95 % CI], Wilcoxon p, wins |",
             "|---|---|---|---|---|---|"]
    for result in results:
        values = result.dice.get(split, [])
        low, mean, high = mean_ci(values)
        scored = sum(1 for v in values if not math.isnan(v))
        reference = base.get((result.subset, result.seed))
        versus = "—"
        if reference is not None and reference is not result:
            versus = paired_comparison(values, aligned_scores(reference, result, split)).text()
        lines.append(f"| {result.subset or '—'} | {result.name} | {result.seed} | {scored} | "
                     f"{mean:.4f} [{low:.4f}, {high:.4f}] | {versus} |")
    return "\n".join(lines)


def aligned_scores(reference: ArmResult, result: ArmResult, split: str) -> list[float]:
    """``reference``'s scores on ``split`` in ``result``'s case order (by position where IDs are unknown).

    >>> a = ArmResult("scratch", dice={"test": [0.1, 0.2]}, cases={"test": ["x", "y"]})
    >>> aligned_scores(a, ArmResult("finetune", dice={"test": [0.3, 0.4]}, cases={"test": ["y", "x"]}), "test")
    [0.2, 0.1]
    """
    scores, ids, order = reference.dice.get(split, []), reference.cases.get(split), result.cases.get(split)
    if not ids or not order:
        return list(scores)
    by_case = dict(zip(ids, scores))
    if sorted(by_case) != sorted(order):
        raise ValueError(f"{result.name} and {reference.name} were scored on different cases of {split}: "
                         f"{sorted(set(order) ^ set(by_case))[:3]}")
    return [by_case[case] for case in order]
