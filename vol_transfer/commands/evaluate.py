"""``vol-transfer evaluate``: compare predicted label maps with a manifest's labels.

Which classes are scored, first that applies: ``--labels`` (with ``--pred-labels`` when the
prediction's values differ); the checkpoint's classes and label mapping (``--checkpoint``, or the one
``vol-transfer infer`` recorded in ``<pred>/inference_timings.csv``); the manifest's declared labels
when the predictions hold exactly those values. Otherwise ``--labels`` is required: a tumour-core
prediction (values 0, 1) against a BraTS manifest (labels 1, 2, 4) is not scored as "necrosis".

Classification: ``--pred`` is a predictions CSV (``vol-transfer infer``'s ``<out>/predictions.csv`` or a
classification run's ``predictions.csv``), or the folder holding it. The true labels and patient ids
come from its ``label`` / ``patient_id`` columns, or from ``--manifest`` by image path. Reported:
accuracy and ROC AUC with 95 % bootstrap CIs, per-class precision / recall / F1, the confusion matrix,
and the same per patient when a patient has several images (positive if any image is); written:
metrics.json, summary.md, roc.png, confusion_matrix.png (and *_patients.png).

Examples:
    vol-transfer evaluate --pred pred/predictions.csv --out report/
    vol-transfer evaluate --pred pred/ --manifest data_manifests/chest_xray_kermany.csv --split validation --out report/
    vol-transfer evaluate --pred pred/ --manifest data_manifests/brats2015_flair_t1c.csv --split test \\
        --labels tumour_core=1,3,4 --pred-labels tumour_core=1 --out report/
    vol-transfer evaluate --pred pred/ --manifest data_manifests/msd_hippocampus.csv --checkpoint hippo.pt --out report/
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vol_transfer.commands import examples

OUTPUTS = ("metrics_per_subject.csv", "summary.csv", "summary.md", "dice_boxplot.png")
CLASSIFICATION_OUTPUTS = ("metrics.json", "summary.md", "roc.png", "confusion_matrix.png", "roc_patients.png",
                          "confusion_matrix_patients.png")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="segmentation: Dice, HD95, ASD, volumes … per subject and class; classification: accuracy, "
                         "AUC with CIs, precision/recall/F1, confusion matrix; report + plots",
        description="Reads <pred>/<subject_id>_seg.nii.gz for each labelled subject of the manifest (split). "
                    "Dice is NaN where a class is absent from both prediction and truth, and left out of the "
                    "means (nnU-Net's convention; the training validator and study reports use the same). "
                    "Classes: --labels, else the checkpoint's (--checkpoint, or the one infer recorded in "
                    "<pred>/inference_timings.csv), else the manifest's declared labels when the predictions hold exactly "
                    "those values; otherwise --labels is required. A classification predictions CSV (from infer or a "
                    "classification run) gets accuracy and ROC AUC with 95 % bootstrap CIs, per-class precision/recall/"
                    "F1, the confusion matrix and patient-wise scores, with roc.png and confusion_matrix.png.",
        **examples(
            "vol-transfer evaluate --pred pred/predictions.csv --out report/   # classification, labels in the CSV",
            "vol-transfer evaluate --pred pred/ --manifest data_manifests/chest_xray_kermany.csv --split validation "
            "--out report/   # classification, labels from the manifest",
            "vol-transfer evaluate --pred runs/pneumonia_scratch_cpu/predictions.csv --out report/   # a run's validation",
            "vol-transfer evaluate --pred runs/predictions --manifest data_manifests/brats2015_flair_t1c.csv "
            "--split test --out runs/eval   # classes from the checkpoint infer used",
            "vol-transfer evaluate --pred runs/predictions --manifest data_manifests/brats2015_flair_t1c.csv "
            "--split test --labels tumour_core=1,3,4 --pred-labels tumour_core=1 --out runs/eval",
            "vol-transfer evaluate --pred pred/ --manifest data_manifests/msd_hippocampus.csv "
            "--checkpoint runs/hippocampus_pretrain_cpu/checkpoints/best.pt --out report/"),
    )
    parser.add_argument("--pred", required=True,
                        help="folder of predictions (<subject_id>_seg.nii.gz), or a classification predictions CSV "
                             "(or the folder holding its predictions.csv)")
    parser.add_argument("--manifest", default=None,
                        help="manifest CSV with a label column (required for segmentation; for classification it "
                             "gives labels and patient ids by image path)")
    parser.add_argument("--data-root", default=None, help="folder manifest paths are relative to")
    parser.add_argument("--split", default=None, help="only this split (default: every labelled subject)")
    parser.add_argument("--labels", nargs="+", default=None, metavar="NAME=VALUES",
                        help="classes as label-value sets of the truth, e.g. tumour_core=1,3,4 "
                             "(default: the checkpoint's classes, else the manifest's labels when the predictions hold exactly those "
                             "values)")
    parser.add_argument("--pred-labels", nargs="+", default=None, metavar="NAME=VALUES",
                        help="the same classes in the prediction's values when they differ, e.g. tumour_core=1")
    parser.add_argument("--checkpoint", default=None,
                        help="the checkpoint that made the predictions: its classes and label mapping say what to score "
                             "(default: the one recorded in <pred>/inference_timings.csv)")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--overlays", type=int, default=10, metavar="N", help="overlay PNGs for the first N subjects (default 10)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--resamples", type=int, default=2000, metavar="N",
                        help="classification: bootstrap resamples for the 95 %% CIs (default 2000)")
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


def _describe(classes: dict[str, list[int]], prediction_classes: dict[str, list[int]] | None) -> str:
    def values(v: list[int]) -> str:
        return ",".join(map(str, v))

    return "; ".join(f"{name} = truth {values(v)}" + (f" / prediction {values(prediction_classes[name])}"
                                                      if prediction_classes and prediction_classes[name] != v else "")
                     for name, v in classes.items())


def checkpoint_classes(checkpoint: Any) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(truth values, prediction values) per class from a checkpoint's stored classes and label mapping."""
    from vol_transfer.errors import CheckpointError
    from vol_transfer.studies.evaluate import class_values
    from vol_transfer.transfer.checkpoint import load_checkpoint

    metadata = load_checkpoint(checkpoint).metadata or {}
    truth, predicted = class_values(metadata)
    if not truth:
        raise CheckpointError(checkpoint, "stores no class names", "pass --labels NAME=VALUES")
    return truth, predicted


def recorded_checkpoint(pred_dir: Path) -> Path | None:
    """The checkpoint ``vol-transfer infer`` recorded in ``<pred>/inference_timings.csv``, when it names one that exists."""
    from vol_transfer.inference.records import TIMINGS_FILE, read_timings

    names = {row.get("checkpoint") for row in read_timings(pred_dir / TIMINGS_FILE).values()} - {None, ""}
    if len(names) != 1:
        return None
    path = Path(names.pop())
    return path if path.is_file() else None


def prediction_values(paths: list[Path], limit: int = 3) -> set[int]:
    """The nonzero values in the first ``limit`` prediction files."""
    import numpy as np

    from vol_transfer.io.case import label_array
    from vol_transfer.io.volumes import load_volume

    found: set[int] = set()
    for path in paths[:limit]:
        found.update(int(v) for v in np.unique(label_array(load_volume(path), path)) if v != 0)
    return found


def resolve_classes(args: argparse.Namespace, manifest: Any, predictions: list[Path]
                    ) -> tuple[dict[str, list[int]], dict[str, list[int]] | None, str]:
    """The classes to score (truth values), the prediction's values when they differ, and where they came from.

    The manifest's declared labels are used only when the predictions hold exactly those values (a
    tumour-core prediction, values {0, 1}, is never scored as BraTS label 1 "necrosis").
    """
    from vol_transfer.errors import RecipeError

    classes = parse_classes(args.labels)
    prediction_classes = parse_classes(args.pred_labels, "--pred-labels")
    if classes is not None:
        if prediction_classes is not None and set(prediction_classes) != set(classes):
            raise RecipeError("--pred-labels", f"names {sorted(prediction_classes)} differ from --labels "
                                               f"{sorted(classes)}", "give the same class names to both")
        return classes, prediction_classes, _describe(classes, prediction_classes) + " (--labels)"
    if prediction_classes is not None:
        raise RecipeError("--pred-labels", "needs --labels", "give the truth's values too, e.g. --labels tumour_core=1,3,4")
    checkpoint = Path(args.checkpoint) if args.checkpoint else recorded_checkpoint(Path(args.pred))
    if checkpoint is not None:
        classes, prediction_classes = checkpoint_classes(checkpoint)
        how = "--checkpoint" if args.checkpoint else "recorded in inference_timings.csv"
        return classes, prediction_classes, f"{_describe(classes, prediction_classes)} (from {checkpoint}, {how})"
    values = [v for v in (manifest.label_values or ()) if v != 0]
    names = list(manifest.label_names or ())
    all_values = list(manifest.label_values or ())

    def name(value: int) -> str:
        return names[all_values.index(value)] if names else f"label_{value}"

    seen = prediction_values(predictions) if values else set()
    if values and seen == set(values):
        classes = {name(v): [v] for v in values}
        return classes, None, (f"{_describe(classes, None)} (the manifest's declared labels; the predictions hold "
                               "the same values)")
    declared = ", ".join(f"{name(v)}={v}" for v in values) or "none"
    raise RecipeError(
        "--labels", f"no checkpoint is known and the predictions' values ({', '.join(map(str, sorted(seen))) or 'none'}) "
                    f"are not the manifest's declared labels ({declared}), so what they mean is not known",
        "give the classes, e.g. --labels tumour_core=1,3,4 --pred-labels tumour_core=1, or --checkpoint the model "
        "that wrote them")


def run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from vol_transfer.errors import InputDataError
    from vol_transfer.evaluation import plots, report
    from vol_transfer.io.atomic import refuse_to_overwrite
    from vol_transfer.io.case import label_array, read_channel
    from vol_transfer.io.manifest import read_manifest
    from vol_transfer.io.volumes import load_volume

    if is_classification(args):
        return run_classification_evaluate(args)
    if not args.manifest:
        from vol_transfer.errors import RecipeError

        raise RecipeError("--manifest", "is required to score segmentations", "give the manifest with the labels, "
                                                                              "e.g. --manifest data_manifests/msd_hippocampus.csv")
    manifest = read_manifest(args.manifest, args.data_root)
    subjects = [s for s in manifest.subjects(args.split) if s.label is not None]
    if not subjects:
        raise InputDataError(args.manifest, f"has no labelled subjects{' in split ' + args.split if args.split else ''}",
                             "choose a manifest/split with a label column")
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
    classes, prediction_classes, origin = resolve_classes(args, manifest, [p.prediction for p in pairs])
    out = Path(args.out)
    inputs = [p.prediction for p in pairs] + [p.truth for p in pairs]
    for name in OUTPUTS:
        refuse_to_overwrite(out / name, inputs, overwrite=args.overwrite)

    by_id = {s.subject_id: s for s in subjects}
    # read once, before any output is written, so a broken overlay image fails first
    overlay_images = {pair.subject_id: read_channel(next(iter(by_id[pair.subject_id].channels.values()))).array[0]
                      for pair in pairs[: max(0, args.overlays)]}
    rows = report.evaluate_pairs(pairs, classes, prediction_classes=prediction_classes, progress=not args.no_progress,
                                 truth_values=manifest.label_values)
    summary = report.summarise(rows)
    report.write_rows_csv(rows, out / "metrics_per_subject.csv")
    report.write_summary_csv(summary, out / "summary.csv")
    from vol_transfer.io.atomic import atomic_write_text

    title = f"Evaluation of {pred_dir} against {Path(args.manifest).name}" + (f" ({args.split})" if args.split else "")
    atomic_write_text(out / "summary.md", report.summary_markdown(summary, title))
    plots.dice_boxplot(rows, out / "dice_boxplot.png")
    first_class, truth_values = next(iter(classes.items()))
    predicted_values = (prediction_classes or classes)[first_class]
    for pair in pairs[: max(0, args.overlays)]:
        image = overlay_images[pair.subject_id]
        truth = np.isin(label_array(load_volume(pair.truth), pair.truth), truth_values)
        prediction = np.isin(label_array(load_volume(pair.prediction), pair.prediction), predicted_values)
        plots.overlay_slice(image, truth, prediction, out / "overlays" / f"{pair.subject_id}.png",
                            title=f"{pair.subject_id} {first_class}")
    print(f"classes: {origin}")
    print(report.dice_table(summary))
    print(f"wrote {len(rows)} rows for {len(pairs)} subject(s) to {out}: summary.md (every metric), summary.csv, "
          f"metrics_per_subject.csv, dice_boxplot.png" + (", overlays/" if pairs[: max(0, args.overlays)] else ""))
    return 0


def is_classification(args: argparse.Namespace) -> bool:
    """``--pred`` is a predictions CSV (or a folder with predictions.csv and no segmentations), or the manifest
    is a classification manifest."""
    from vol_transfer.io.manifest import _read_declarations

    pred = Path(args.pred)
    if pred.suffix.lower() == ".csv" or (pred.is_dir() and (pred / "predictions.csv").is_file()
                                          and not any(pred.glob("*_seg.nii.gz"))):
        return True
    manifest = Path(args.manifest) if args.manifest else None
    return bool(manifest and manifest.is_file() and _read_declarations(
        manifest.read_text(errors="replace").splitlines()[:50])[0].get("kind") == "classification")


def _labels_from_manifest(predictions: Any, args: argparse.Namespace) -> Any:
    """The predictions of the manifest's labelled images (``--split``), labels and patient ids from the manifest."""
    from vol_transfer.errors import InputDataError
    from vol_transfer.evaluation.classification import Predictions
    from vol_transfer.io.manifest import read_manifest

    manifest = read_manifest(args.manifest, args.data_root)
    if manifest.kind != "classification":
        raise InputDataError(args.manifest, f"is a {manifest.kind} manifest, but {args.pred} holds class predictions",
                             "give the classification manifest the images came from")
    column = manifest.channel_names[0]
    subjects = [s for s in manifest.subjects(args.split) if s.label is not None]
    row_of = {Path(p).resolve(): i for i, p in enumerate(predictions.paths)}
    missing = [s.subject_id for s in subjects if s.channels[column].resolve() not in row_of]
    if missing or not subjects:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise InputDataError(args.pred, f"has no prediction for {len(missing)} labelled image(s) of {args.manifest}"
                                        f"{' split ' + args.split if args.split else ''}: {shown or 'none labelled'}",
                             "run vol-transfer infer on the same manifest (and --split) first")
    rows = [row_of[s.channels[column].resolve()] for s in subjects]
    conflicts = [s.subject_id for s, i in zip(subjects, rows) if predictions.labels[i] not in ("", s.label)]
    if conflicts:
        raise InputDataError(args.pred, f"labels {len(conflicts)} image(s) differently from {args.manifest} "
                                        f"(first: {conflicts[0]})", "check that both describe the same images")
    return Predictions([predictions.paths[i] for i in rows], predictions.probabilities[rows], predictions.classes,
                       [str(s.label) for s in subjects], [s.patient_id for s in subjects])


def run_classification_evaluate(args: argparse.Namespace) -> int:
    """``evaluate`` of a classification predictions CSV: metrics.json, summary.md, ROC and confusion-matrix PNGs."""
    import json

    import numpy as np

    from vol_transfer.errors import InputDataError, RecipeError
    from vol_transfer.evaluation.classification import (
        evaluate_predictions,
        plot_confusion_matrix,
        plot_roc,
        read_predictions,
        report_markdown,
        study_wise,
    )
    from vol_transfer.io.atomic import atomic_write_text, refuse_to_overwrite

    given = [flag for flag, value in (("--labels", args.labels), ("--pred-labels", args.pred_labels),
                                      ("--checkpoint", args.checkpoint)) if value]
    if given:
        raise RecipeError(given[0], "applies to segmentations; the classes of a predictions CSV are its p_<class> "
                                    "columns", f"drop {', '.join(given)}")
    pred = Path(args.pred)
    source = pred / "predictions.csv" if pred.is_dir() else pred
    predictions = read_predictions(source)
    if args.manifest:
        predictions = _labels_from_manifest(predictions, args)
    elif args.split:
        raise RecipeError("--split", "needs --manifest (a predictions CSV has no split column)", "add --manifest")
    if not any(predictions.labels):
        raise InputDataError(source, "has no true labels (its label column is empty)",
                             "give --manifest with the labels, or infer on DIR/<class>/<image> folders or a manifest")
    out = Path(args.out)
    for name in CLASSIFICATION_OUTPUTS:
        refuse_to_overwrite(out / name, [source] + ([Path(args.manifest)] if args.manifest else []),
                            overwrite=args.overwrite)
    report = evaluate_predictions(predictions, resamples=args.resamples)
    classes = predictions.classes
    written = ["metrics.json", "summary.md"]
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2, default=float) + "\n")
    title = f"Evaluation of {source}" + (f" against {Path(args.manifest).name}" if args.manifest else "") + (
        f" ({args.split})" if args.split else "")
    atomic_write_text(out / "summary.md", report_markdown(report, title))
    keep = [i for i, label in enumerate(predictions.labels) if label]
    truth = [classes.index(predictions.labels[i]) for i in keep]
    parts = [("", "images", report, (truth, predictions.probabilities[keep, -1]))]
    if report["patient_wise"]:
        _, patient_truth, patient_scores = study_wise([predictions.patients[i] for i in keep], truth,
                                                      predictions.probabilities[keep, -1])
        parts.append(("_patients", "patients", report["patient_wise"], (patient_truth, patient_scores)))
    for suffix, what, part, (labels, scores) in parts:
        plot_confusion_matrix(part["confusion_matrix"], classes, out / f"confusion_matrix{suffix}.png",
                              title=f"Confusion matrix ({part['count']} {what})")
        written.append(f"confusion_matrix{suffix}.png")
        if len(classes) == 2:
            plot_roc(np.asarray(labels) == 1, scores, out / f"roc{suffix}.png", title=f"ROC, {classes[1]} ({what})")
            written.append(f"roc{suffix}.png")
    print(report_markdown(report, title).split("\n", 2)[2].rstrip())
    print(f"wrote {', '.join(written)} to {out}")
    return 0
