"""``vol-transfer study RECIPE``: a freezing-ablation or training-set-size study in one command.

Examples::

    vol-transfer study recipes/freeze_ablation_cpu.yaml --out runs/freeze_ablation
    vol-transfer study recipes/dataset_size.yaml --commands     # one line per arm, for a Slurm array
    vol-transfer study recipes/freeze_ablation_cpu.yaml --report-only
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from vol_transfer.commands import examples

    parser = subparsers.add_parser("study", help="run a freezing-ablation or training-set-size study",
                                   description="Train every arm (resuming finished work), evaluate each arm's best "
                                               "checkpoint, and write report.md, report.html, results.csv and plots.",
                                   **examples(
                                       "vol-transfer study recipes/freeze_ablation_cpu.yaml --out runs/freeze_ablation_cpu",
                                       "vol-transfer study recipes/dataset_size_cpu.yaml --commands   # one line per arm",
                                       "vol-transfer study recipes/freeze_ablation_cpu.yaml --out runs/freeze_ablation_cpu "
                                       "--report-only"))
    parser.add_argument("recipe", type=Path, help="study recipe, e.g. recipes/freeze_ablation_cpu.yaml")
    parser.add_argument("--out", type=Path, help="study folder (default: runs/<recipe name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study key, e.g. --set parallel=2 (arms' recipe keys: --set set=[...])")
    parser.add_argument("--data-root", type=Path, help="folder holding the datasets")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--commands", action="store_true", help="only print (and write commands.sh) the arm commands")
    mode.add_argument("--report-only", action="store_true", help="do not train; evaluate and report finished arms")
    parser.set_defaults(handler=_study)


def _study(args: argparse.Namespace) -> int:
    from vol_transfer.recipes import resolve_recipe
    from vol_transfer.studies import plan  # noqa: F401  (registers the "study" task)
    from vol_transfer.studies.runner import run_study

    _, config = resolve_recipe(args.recipe, args.overrides, command="study")
    folder = args.out or Path("runs") / args.recipe.name.split(".")[0]
    run_study(config, folder, args.data_root, commands_only=args.commands, report_only=args.report_only)
    return 0
