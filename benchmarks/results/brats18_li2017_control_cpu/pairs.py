"""Paired comparisons between any two arms of this report, from its per_case.csv (same cases, same statistics).

The report compares every arm with scratch; the Li 2017 question needs the full-width arms against each
other too. From the repository root:

    .venv/bin/python benchmarks/results/brats18_li2017_control_cpu/pairs.py
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from vol_transfer.evaluation.statistics import paired_comparison

PAIRS = [("li2017_rescaled", "li2017_finetune"), ("li2017_rescaled", "li2017_scratch"),
         ("li2017_rescaled", "scratch"), ("li2017_finetune", "li2017_scratch")]


def main(per_case: Path = Path(__file__).with_name("per_case.csv")) -> None:
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    with open(per_case, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "test":  # the pooled held-out Dice of every case
                scores[row["arm"]][row["case"]] = float(row["dice"])
    for a, b in PAIRS:
        if a in scores and b in scores:
            cases = sorted(scores[a].keys() & scores[b].keys())
            result = paired_comparison([scores[a][c] for c in cases], [scores[b][c] for c in cases])
            print(f"{a} - {b}: {result.text()}")


if __name__ == "__main__":
    main()
