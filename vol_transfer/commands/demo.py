"""``vol-transfer demo``: pre-train → fine-tune (frozen conv_0) vs scratch → inference → Dice, on synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the whole transfer story on synthetic data (no download, minutes on a CPU)",
        description="Write synthetic hippocampus-like and tumour-like volumes, pre-train HighRes3DNet, fine-tune it "
                    "with conv_0 frozen and from scratch, segment the test volumes (NIfTI out) and print the Dice table.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)")
    parser.add_argument("--pretrain-iterations", type=int, default=150)
    parser.add_argument("--finetune-iterations", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from vol_transfer.demo.pipeline import DemoSizes, run_demo

    sizes = DemoSizes(pretrain_iterations=args.pretrain_iterations, finetune_iterations=args.finetune_iterations,
                      threads=args.threads)
    run_demo(args.out, sizes)
    return 0
