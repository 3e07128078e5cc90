"""``vol-transfer study RECIPE``: a freezing-ablation or training-set-size study in one command.

Examples::

    vol-transfer study recipes/freeze_ablation_cpu.yaml --out runs/freeze_ablation
    vol-transfer study recipes/dataset_size.yaml --commands     # one line per arm, for a Slurm array
    vol-transfer study recipes/freeze_ablation_cpu.yaml --report-only
    vol-transfer study recipes/freeze_ablation.yaml --executor slurm --partition gpu --time 8:00:00 --gpus 1 --cpus 8 --mem 32G
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
                                       "--report-only",
                                       "vol-transfer study recipes/freeze_ablation.yaml --executor slurm --partition gpu "
                                       "--time 8:00:00 --gpus 1 --cpus 8 --mem 32G   # one job per arm"))
    parser.add_argument("recipe", type=Path, help="study recipe, e.g. recipes/freeze_ablation_cpu.yaml")
    parser.add_argument("--out", type=Path, help="study folder (default: runs/<recipe name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study key, e.g. --set parallel=2 (arms' recipe keys: --set set=[...])")
    parser.add_argument("--data-root", type=Path, help="folder holding the datasets")
    jobs = parser.add_argument_group("where the arms train (recipe section cluster:, see vol_transfer/studies/executors.py)")
    jobs.add_argument("--executor", choices=["inline", "local", "slurm"],
                      help="inline: here, `parallel` at a time (default); slurm: one Slurm job per arm through "
                           "submitit, requeued and resumed on preemption/timeout; local: those jobs on this machine")
    jobs.add_argument("--partition", help="Slurm partition of the arms' jobs")
    jobs.add_argument("--time", help="time limit per job, e.g. 4:00:00, 1-12:00 or 240 (minutes)")
    jobs.add_argument("--gpus", type=int, help="GPUs per arm")
    jobs.add_argument("--cpus", type=int, help="CPU cores per arm")
    jobs.add_argument("--mem", help="memory per arm, e.g. 32G")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--commands", action="store_true", help="only print (and write commands.sh) the arm commands")
    mode.add_argument("--report-only", action="store_true", help="do not train; evaluate and report finished arms")
    parser.set_defaults(handler=_study)


def _study(args: argparse.Namespace) -> int:
    from vol_transfer.recipes import resolve_recipe
    from vol_transfer.studies import plan  # noqa: F401  (registers the "study" task)
    from vol_transfer.studies.runner import run_study

    _, config = resolve_recipe(args.recipe, args.overrides + _cluster_overrides(args), command="study")
    folder = args.out or Path("runs") / args.recipe.name.split(".")[0]
    run_study(config, folder, args.data_root, commands_only=args.commands, report_only=args.report_only)
    return 0


def _cluster_overrides(args: argparse.Namespace) -> list[str]:
    """``--executor slurm --time 4:00:00`` → ``cluster.executor=slurm``, ``cluster.time="4:00:00"`` (checked as recipe keys)."""
    import json

    given = {key: getattr(args, key) for key in ("executor", "partition", "time", "gpus", "cpus", "mem")}
    # strings are quoted so that YAML keeps 4:00:00 a time (unquoted it reads a base-60 number)
    return [f"cluster.{key}={json.dumps(value)}" for key, value in given.items() if value is not None]
