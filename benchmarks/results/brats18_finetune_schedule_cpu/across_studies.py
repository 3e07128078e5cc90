"""Compare this study's held-out scores with the channel-adaptation study's, case by case.

Both studies share data, folds, budget and seed; scratch is re-run in each, so its per-case
differences measure run-to-run noise, and each new arm is paired against the earlier
``finetune_first`` (same fine-tuning, default optimiser). Run from this folder:

    ../../../.venv/bin/python across_studies.py
"""
from __future__ import annotations

import csv
from pathlib import Path

from vol_transfer.evaluation.statistics import paired_comparison

HERE = Path(__file__).resolve().parent
EARLIER = HERE.parent / "brats18_channel_adaptation_cpu" / "per_case.csv"


def held_out_scores(path: Path) -> dict[str, dict[str, float]]:
    """arm → case → held-out Dice from a study's per_case.csv."""
    scores: dict[str, dict[str, float]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "test":
                scores.setdefault(row["arm"], {})[row["case"]] = float(row["dice"])
    return scores


def paired(a: dict[str, float], b: dict[str, float]) -> str:
    cases = sorted(set(a) & set(b))
    return paired_comparison([a[c] for c in cases], [b[c] for c in cases]).text()


def main() -> None:
    now, earlier = held_out_scores(HERE / "per_case.csv"), held_out_scores(EARLIER)
    gaps = [abs(now["scratch"][c] - earlier["scratch"][c]) for c in now["scratch"]]
    print(f"scratch, this study vs the channel-adaptation study: {paired(now['scratch'], earlier['scratch'])}; "
          f"largest per-case difference {max(gaps):.3f}")
    for arm in sorted(now):
        if arm != "scratch":
            print(f"{arm} vs earlier finetune_first: {paired(now[arm], earlier['finetune_first'])}")


if __name__ == "__main__":
    main()
