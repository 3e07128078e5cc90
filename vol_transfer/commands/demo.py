"""``vol-transfer demo``: pre-train → fine-tune (frozen conv_0) vs scratch → inference → Dice and figures, on synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path

from vol_transfer.commands import examples


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the transfer story on synthetic data (no download, about 3 minutes on 2 CPU cores)",
        description="Write synthetic source (T1c-like lesions) and target (FLAIR + T1c tumours) volumes, pre-train "
                    "HighRes3DNet on the source, train the target's tumour core from 2 labelled cases both from the "
                    "pre-trained network with conv_0 frozen and from scratch, segment the test volumes (NIfTI out), "
                    "and print the Dice table, the learning curves and where every output and figure is.",
        **examples("vol-transfer demo --out runs/demo",
                   "vol-transfer demo --out runs/demo_more --target-train-cases 6 --finetune-iterations 150"),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)")
    parser.add_argument("--pretrain-iterations", type=int, default=150, help="source training iterations (default 150)")
    parser.add_argument("--finetune-iterations", type=int, default=60,
                        help="iterations of each target arm (default 60)")
    parser.add_argument("--target-train-cases", type=int, default=2, help="labelled target training cases (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training runs (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training (default 2)")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from vol_transfer.demo.pipeline import DemoSizes, run_demo

    sizes = DemoSizes(pretrain_iterations=args.pretrain_iterations, finetune_iterations=args.finetune_iterations,
                      target_train_cases=args.target_train_cases, seed=args.seed, threads=args.threads)
    run_demo(args.out, sizes)
    return 0
