"""``vol-transfer export``: a checkpoint as TorchScript, ONNX or a MONAI bundle, checked on a volume.

Examples:
    vol-transfer export hippo.pt --format onnx --out export/ --check ../shared/data/msd_hippocampus/imagesTr/hippocampus_001.nii.gz
    vol-transfer export tc.pt --format monai-bundle --out tc_bundle/ --check ../shared/data/brats2018_4mod/Brats18_2013_11_1
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a checkpoint as TorchScript, ONNX or a MONAI bundle, checked against it",
        description="Write the BN-folded inference network as TorchScript (model.ts) or ONNX (model.onnx), or a\n"
                    "MONAI bundle folder (configs/, models/model.pt + model.ts, docs/README.md) that\n"
                    "`python -m monai.bundle run` executes. The export's logits are compared with the\n"
                    "checkpoint's on the --check volume (prepared as `infer` prepares it; a random volume\n"
                    "without --check) and the max |Δlogit| is printed and written to DIR/export.json.",
        epilog="examples:\n"
               "  vol-transfer export hippo.pt --format onnx --out export/ --check imagesTr/hippocampus_001.nii.gz\n"
               "  vol-transfer export tc.pt --format monai-bundle --out bundle/ --check Brats18_2013_11_1/\n"
               "  cd bundle && python -m monai.bundle run --config_file configs/inference.json --dataset_dir imagesTs/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint (.pt or .safetensors) with metadata")
    parser.add_argument("--format", required=True, choices=("torchscript", "onnx", "monai-bundle"))
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--check", default=None, metavar="INPUT",
                        help="image file or case folder (its first case) to compare the export's logits with the "
                             "checkpoint's on")
    parser.add_argument("--channels", default=None, metavar="SPEC",
                        help="name the --check input's channels, as for `vol-transfer infer --channels`")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from vol_transfer.export.exporter import REPORT, export_checkpoint

    check = [args.check] if args.check else None
    report = export_checkpoint(args.checkpoint, args.format, args.out, check_inputs=check, channels=args.channels,
                               overwrite=args.overwrite, say=lambda text: print(text, file=sys.stderr))
    worst = max((c["max_abs_diff"] for c in report["checks"] if "what" in c), default=float("nan"))
    print(f"wrote {args.format} export to {args.out}; max |Δlogit| {worst:.2g}; details in {args.out}/{REPORT}")
    return 0
