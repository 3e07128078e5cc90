"""``vol-transfer data``: check a manifest against the data, or write one from a dataset layout.

Examples:
    vol-transfer data check data_manifests/msd_hippocampus.csv --data-root ../shared/data
    vol-transfer data manifest --layout msd ../shared/data/msd_hippocampus --out hippo.csv --seed 0
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from vol_transfer.errors import ManifestError


def register(subparsers: argparse._SubParsersAction) -> None:
    from vol_transfer.commands import examples

    parser = subparsers.add_parser("data", help="check manifests and write them from dataset layouts",
                                   **examples("vol-transfer data check data_manifests/msd_hippocampus.csv",
                                              "vol-transfer data manifest --layout msd ../shared/data/msd_hippocampus "
                                              "--out runs/hippocampus.csv"))
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(handler=lambda args: (parser.print_help(), 1)[1])

    check = actions.add_parser("check", help="validate a manifest on the real files and print a summary table",
                               **examples("vol-transfer data check data_manifests/msd_hippocampus.csv",
                                          "vol-transfer data check data_manifests/brats2015_flair_t1c.csv --sample 2"))
    check.add_argument("manifest", help="manifest CSV (e.g. data_manifests/msd_hippocampus.csv)")
    check.add_argument("--data-root", help="folder the manifest paths are relative to (default: $VOL_TRANSFER_DATA or ../shared/data)")
    check.add_argument("--sample", type=int, default=None, metavar="N", help="open only N randomly chosen cases (seeded)")
    check.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    check.add_argument("--structure-only", action="store_true", help="check columns, IDs, splits and paths without opening files")
    check.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    check.set_defaults(handler=run_check)

    write = actions.add_parser("manifest", help="write a manifest from a standard dataset layout with a seeded patient-level split",
                               **examples("vol-transfer data manifest --layout msd ../shared/data/msd_hippocampus "
                                          "--out runs/hippocampus.csv --seed 0"))
    write.add_argument("folder", help="dataset folder (msd: has imagesTr/; brats: case folders; folders: DIR/<class>/<image>; nnunet: DatasetXXX_Name/)")
    write.add_argument("--layout", required=True, choices=("msd", "brats", "folders", "nnunet"))
    write.add_argument("--out", required=True, help="manifest CSV to write")
    write.add_argument("--data-root", help="write paths relative to this folder (default: $VOL_TRANSFER_DATA or ../shared/data)")
    write.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    write.add_argument("--fractions", default="0.7,0.15,0.15", help="train,validation[,test] fractions (default 0.7,0.15,0.15)")
    write.add_argument("--folds", type=int, default=None, metavar="K",
                       help="patient-level K-fold cross-validation over the train+validation cases (a 'fold' column; "
                            "a recipe's data.fold: k validates on fold k)")
    write.add_argument("--labels", default=None, help="declared label values, e.g. 0,1,2 or 0-4 (default: scanned from the label files)")
    write.add_argument("--label-names", default=None, help="names of the label values in order, e.g. background,anterior,posterior")
    write.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    write.set_defaults(handler=run_manifest)


def _report_invalid(path: str, problems: list[str]) -> int:
    print(f"{len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    print(f"error: {path}: {len(problems)} problem(s), listed above — fix them in the manifest or the data", file=sys.stderr)
    return 2


def run_check(args: argparse.Namespace) -> int:
    from vol_transfer.io.manifest import read_manifest, validate_manifest

    try:
        manifest = read_manifest(args.manifest, data_root=args.data_root)
    except ManifestError as error:
        if len(error.problems) == 1:
            raise  # one line says it all, fix included
        return _report_invalid(error.where, error.problems)
    report = validate_manifest(manifest, deep=not args.structure_only, sample=args.sample, seed=args.seed,
                               progress=not args.no_progress)
    print(report.table())
    if not report.ok:
        return _report_invalid(str(manifest.path), report.problems)
    print(f"ok: {manifest.path} is valid ({report.checked} of {len(manifest.all_subjects)} cases opened)")
    return 0


def run_manifest(args: argparse.Namespace) -> int:
    from vol_transfer.io.data_root import resolve_data_root
    from vol_transfer.io.layouts import assign_folds, assign_splits, parse_fractions, scan_layout, write_manifest
    from vol_transfer.io.manifest import SPLITS, parse_label_values

    fractions = parse_fractions(args.fractions)
    labels = None
    if args.labels is not None:
        try:
            labels = parse_label_values(args.labels)
        except ValueError:
            raise ManifestError("--labels", [f"{args.labels!r} is not a list of integers"], "write e.g. 0,1,2 or 0-4") from None
    data_root = resolve_data_root(args.data_root) if args.data_root else _optional_root()
    draft = scan_layout(args.layout, args.folder, label_values=labels)
    if args.label_names:
        draft.metadata["label_names"] = args.label_names
    assign_splits(draft, fractions, seed=args.seed)
    if args.folds is not None:
        assign_folds(draft, args.folds, seed=args.seed)
    out = write_manifest(draft, args.out, data_root=data_root, overwrite=args.overwrite)
    found = Counter(r.split for r in draft.rows)
    counts = {s: found[s] for s in SPLITS if found[s]}
    patients = len({r.patient_id for r in draft.rows})
    print(f"wrote {out}: {len(draft.rows)} cases of {patients} patients ("
          + ", ".join(f"{s} {n}" for s, n in counts.items()) + ")")
    for note in draft.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _optional_root():
    from vol_transfer.io.data_root import default_data_root

    root = default_data_root()
    return root if root.is_dir() else None
