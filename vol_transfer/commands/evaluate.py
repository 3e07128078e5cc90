"""``vol-transfer evaluate``: compare predicted label maps with a manifest's labels.

Examples:
    vol-transfer evaluate --pred pred/ --manifest data_manifests/brats2015_flair_t1c.csv --split test \\
        --labels tumour_core=1,3,4 --out report/
    vol-transfer evaluate --pred pred/ --manifest data_manifests/msd_hippocampus.csv --out report/
"""

from __future__ import annotations

import argparse
from pathlib import Path

OUTPUTS = ("metrics_per_subject.csv", "summary.csv", "summary.md", "dice_boxplot.png")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Dice, HD95, ASD, volumes, sensitivity, precision per subject and class; report + plots",
        description="Reads <pred>/<subject_id>_seg.nii.gz for each labelled subject of the manifest (split). "
                    "Dice is NaN where a class is absent from both prediction and truth, and left out of the "
                    "means (nnU-Net's convention; the training validator and study reports use the same).",
    )
    parser.add_argument("--pred", required=True, help="folder of predictions (<subject_id>_seg.nii.gz)")
    parser.add_argument("--manifest", required=True, help="manifest CSV with a label column")
    parser.add_argument("--data-root", default=None, help="folder manifest paths are relative to")
    parser.add_argument("--split", default=None, help="only this split (default: every labelled subject)")
    parser.add_argument("--labels", nargs="+", default=None, metavar="NAME=VALUES",
                        help="classes as label-value sets of the truth, e.g. tumour_core=1,3,4 "
                             "(default: each declared nonzero label value)")
    parser.add_argument("--pred-labels", nargs="+", default=None, metavar="NAME=VALUES",
                        help="the same classes in the prediction's values when they differ, e.g. tumour_core=1")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--overlays", type=int, default=10, metavar="N", help="overlay PNGs for the first N subjects (default 10)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run_evaluate)


def parse_classes(items: list[str] | None, where: str = "--labels") -> dict[str, list[int]] | None:
    """``["core=1,3,4", "whole=1-4"]`` → ``{"core": [1, 3, 4], "whole": [1, 2, 3, 4]}``."""
    from vol_transfer.errors import RecipeError
    from vol_transfer.io.manifest import parse_label_values

    if not items:
        return None
    classes = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            parsed = list(parse_label_values(values))
        except ValueError:
            parsed = []
        if not name or not parsed:
            raise RecipeError(where, f"{item!r} is not NAME=VALUES", "write e.g. tumour_core=1,3,4")
        classes[name] = parsed
    return classes


def run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from vol_transfer.errors import InputDataError, RecipeError
    from vol_transfer.evaluation import plots, report
    from vol_transfer.io.atomic import refuse_to_overwrite
    from vol_transfer.io.case import label_array, read_channel
    from vol_transfer.io.manifest import read_manifest
    from vol_transfer.io.volumes import load_volume

    manifest = read_manifest(args.manifest, args.data_root)
    subjects = [s for s in manifest.subjects(args.split) if s.label is not None]
    if not subjects:
        raise InputDataError(args.manifest, f"has no labelled subjects{' in split ' + args.split if args.split else ''}",
                             "choose a manifest/split with a label column")
    classes = parse_classes(args.labels)
    if classes is None:
        values = [v for v in (manifest.label_values or ()) if v != 0]
        if not values:
            raise RecipeError("--labels", "the manifest declares no label values", "give classes, e.g. --labels core=1,3,4")
        names = list(manifest.label_names or ())
        all_values = list(manifest.label_values or ())
        classes = {(names[all_values.index(v)] if names else f"label_{v}"): [v] for v in values}
    prediction_classes = parse_classes(args.pred_labels, "--pred-labels")
    if prediction_classes is not None and set(prediction_classes) != set(classes):
        raise RecipeError("--pred-labels", f"names {sorted(prediction_classes)} differ from --labels {sorted(classes)}",
                          "give the same class names to both")
    pred_dir = Path(args.pred)
    pairs, missing = [], []
    for subject in subjects:
        candidates = [pred_dir / f"{subject.subject_id}_seg.nii.gz", pred_dir / f"{subject.subject_id}.nii.gz"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(subject.subject_id)
        else:
            pairs.append(report.Pair(subject.subject_id, subject.split, found, subject.label))
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise InputDataError(pred_dir, f"has no prediction for {len(missing)} subject(s): {shown}",
                             "run vol-transfer infer on the same manifest/split into this folder first")
    out = Path(args.out)
    inputs = [p.prediction for p in pairs] + [p.truth for p in pairs]
    for name in OUTPUTS:
        refuse_to_overwrite(out / name, inputs, overwrite=args.overwrite)

    rows = report.evaluate_pairs(pairs, classes, prediction_classes=prediction_classes, progress=not args.no_progress)
    summary = report.summarise(rows)
    report.write_rows_csv(rows, out / "metrics_per_subject.csv")
    report.write_summary_csv(summary, out / "summary.csv")
    from vol_transfer.io.atomic import atomic_write_text

    title = f"Evaluation of {pred_dir} against {Path(args.manifest).name}" + (f" ({args.split})" if args.split else "")
    atomic_write_text(out / "summary.md", report.summary_markdown(summary, title))
    plots.dice_boxplot(rows, out / "dice_boxplot.png")
    first_class, truth_values = next(iter(classes.items()))
    predicted_values = (prediction_classes or classes)[first_class]
    by_id = {s.subject_id: s for s in subjects}
    for pair in pairs[: max(0, args.overlays)]:
        image = read_channel(next(iter(by_id[pair.subject_id].channels.values()))).array[0]
        truth = np.isin(label_array(load_volume(pair.truth), pair.truth), truth_values)
        prediction = np.isin(label_array(load_volume(pair.prediction), pair.prediction), predicted_values)
        plots.overlay_slice(image, truth, prediction, out / "overlays" / f"{pair.subject_id}.png",
                            title=f"{pair.subject_id} {first_class}")
    for line in report.summary_markdown([s for s in summary if s["metric"] == "dice"], "Dice").splitlines()[2:6]:
        print(line)
    print(f"wrote {len(rows)} rows for {len(pairs)} subject(s) to {out}")
    return 0
