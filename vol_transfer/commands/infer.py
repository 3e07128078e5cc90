"""``vol-transfer infer``: segment NIfTI/MHA volumes, folders, manifests or DICOM series with a checkpoint,
or classify 2-D images (JPEG/PNG, DICOM X-rays, ``DIR/<class>/<image>`` folders, classification manifests)
with a classification checkpoint into ``<out>/predictions.csv`` (see :mod:`vol_transfer.inference.classify`).

Examples:
    vol-transfer infer --checkpoint runs/pneumonia_scratch_cpu/checkpoints/best.pt ../shared/data/cxr_dicom_nih --out pred/ --skip-invalid
    vol-transfer infer --checkpoint runs/pneumonia_scratch_cpu/checkpoints/best.pt data_manifests/chest_xray_kermany.csv --split validation --out pred/
    vol-transfer infer --checkpoint tc.pt ../shared/data/brats2015_flair_t1c/test --out pred/
    vol-transfer infer --checkpoint hippo.pt data_manifests/msd_hippocampus.csv --split test --out pred/ --tta
    vol-transfer infer --checkpoint hippo.pt ../shared/data/mr_dicom_brain_tumor_progression/hippocrop/Study1_13_HCropVolume --out pred/
    vol-transfer infer --checkpoint tc.pt imagesTs/ --channels flair=*_0000.nii.gz,t1c=*_0001.nii.gz --out pred/

Channels are picked by the checkpoint's channel names, in its order, whatever the column or file
order of the input (aliases: t2f = flair, t1n = t1, t1ce/t1gd = t1c, t2w = t2).
"""

from __future__ import annotations

import argparse
import sys

from vol_transfer.io.case_inputs import CHANNELS_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer", help="segment volumes, or classify 2-D images / X-rays, with a checkpoint",
        description="Segmentation checkpoint: write <case>_seg.nii.gz (uint8) and optionally <case>_prob.nii.gz for\n"
                    "every input case, on the input's own grid, plus inference_timings.csv. The checkpoint's channels\n"
                    "are picked from each case by name (manifest columns, file names, --channels), in the checkpoint's\n"
                    "order; known aliases match (t2f = flair, t1n = t1, t1ce/t1gd = t1c, t2w = t2).\n"
                    "Classification checkpoint (task: classification): write <out>/predictions.csv (path, patient_id,\n"
                    "label, prediction, p_<class>...) for JPEG/PNG/DICOM images, folders (DIR/<class>/<image> gives\n"
                    "the true label) or a classification manifest; each image is loaded as the checkpoint's training\n"
                    "loaded it (size, grey/RGB, intensity: all recorded in the checkpoint). Score it with evaluate.",
        epilog="examples:\n"
               "  vol-transfer infer --checkpoint runs/pneumonia_scratch_cpu/checkpoints/best.pt "
               "data_manifests/chest_xray_kermany.csv --split validation --out pred/   # classification\n"
               "  vol-transfer infer --checkpoint runs/pneumonia_scratch_cpu/checkpoints/best.pt "
               "../shared/data/cxr_dicom_nih xray.png --out pred/ --skip-invalid   # DICOM X-rays + a PNG\n"
               "  vol-transfer infer --checkpoint tc.pt data_manifests/brats2015_flair_t1c.csv --split test --out pred/\n"
               "  vol-transfer infer --checkpoint tc.pt imagesTs/ --channels flair=*_0000.nii.gz,t1c=*_0001.nii.gz "
               "--out pred/\n"
               "  vol-transfer infer --checkpoint brats4.pt BRATS_001.nii.gz --channels flair,t1,t1c,t2 --out pred/\n"
               "  vol-transfer infer --checkpoint tc.pt imagesTs/ --out pred/ --resume   # after an interruption",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image file, folder of images/case folders, manifest .csv, or DICOM series folder; "
                             "for a classification checkpoint: JPEG/PNG/DICOM images, folders of them "
                             "(DIR/<class>/<image> or flat) or a classification manifest")
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pt or .safetensors) with metadata")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", default=None, help="with a manifest input: only this split (e.g. test)")
    parser.add_argument("--data-root", default=None, help="folder manifest paths are relative to")
    parser.add_argument("--channels", default=None, metavar="SPEC", help=CHANNELS_HELP.replace("%", "%%"))
    parser.add_argument("--mode", default="auto", choices=("auto", "whole", "tiled", "window"),
                        help="auto (default): whole volume if it fits --memory-budget, else exact tiles, else windows")
    parser.add_argument("--memory-budget", type=float, default=None, metavar="GB",
                        help="memory one forward pass may use (default: 40%% of RAM, 80%% of free GPU memory)")
    parser.add_argument("--window", type=int, default=96, help="window size for --mode window (default 96)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap in [0, 1) (default 0.25)")
    parser.add_argument("--blend", default="gaussian", choices=("gaussian", "constant"), help="window blending")
    parser.add_argument("--batch-size", type=int, default=2, help="windows per forward pass (default 2)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on GPUs and AMX CPUs)")
    parser.add_argument("--no-channels-last", action="store_true", help="keep the default memory layout")
    parser.add_argument("--tta", action="store_true",
                        help="average over the flips the model was trained with (its recipe's "
                             "sampler.augmentation.flip_axes; refused for a model trained without flips)")
    parser.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    parser.add_argument("--map-labels", default=None, metavar="MAP",
                        help="renumber classes when writing: CLASS:VALUE,… (e.g. 1:4) or 'checkpoint'")
    parser.add_argument("--device", default="auto", help="auto (default: cuda when available, else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cases an interrupted run into --out finished (whole files written by this "
                             "checkpoint with these options, per inference_timings.csv); segment the others")
    parser.add_argument("--no-progress", action="store_true", help="hide the per-volume progress bar")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="classification: classify the other images when some DICOM headers are not a chest "
                             "X-ray (DX/CR, CHEST, PA/AP), listing each skipped file (default: refuse them all)")
    parser.add_argument("--no-header-check", action="store_true",
                        help="classification: do not check DICOM headers (modality, body part, view)")
    parser.set_defaults(handler=run_infer)


def run_infer(args: argparse.Namespace) -> int:
    import torch

    from pathlib import Path

    from vol_transfer.errors import CheckpointError, OutputExistsError, RecipeError
    from vol_transfer.inference.classify import checkpoint_task, refuse_images_for_segmentation
    from vol_transfer.inference.predict import InferenceOptions
    from vol_transfer.inference.predictor import TIMINGS_FILE, Predictor
    from vol_transfer.io.case_inputs import discover_cases, parse_channel_names
    from vol_transfer.transfer.checkpoint import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        options = InferenceOptions(
            mode=args.mode, window=args.window, overlap=args.overlap, blend=args.blend, batch_size=args.batch_size,
            memory_budget_gb=args.memory_budget, bf16=args.bf16, channels_last=not args.no_channels_last,
            tta=args.tta, device=("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device,
            progress=not args.no_progress,
        )
    except ValueError as error:
        raise RecipeError("infer options", str(error), "see vol-transfer infer --help") from None
    names = parse_channel_names(args.channels)  # a malformed --channels fails before the checkpoint loads
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise OutputExistsError(args.out, "is a file, not a folder", "give --out a folder (it is created if missing)")
    say = (lambda text: print(text, file=sys.stderr))
    checkpoint = load_checkpoint(args.checkpoint)
    task = checkpoint_task(checkpoint.metadata or {})
    if task == "classification":
        return run_classify(args, checkpoint, options.device, say)
    if task == "pretext":
        raise CheckpointError(args.checkpoint, "is a pre-training (pretext) checkpoint: it has no classes to predict",
                              "fine-tune it first (a classification recipe's init: or pretrain:), then infer with "
                              "that run's checkpoints/best.pt")
    refuse_images_for_segmentation(args.inputs, args.checkpoint, checkpoint.metadata or {})
    predictor = Predictor.from_checkpoint(args.checkpoint, options, map_labels=args.map_labels, say=say)
    cases = discover_cases(args.inputs, predictor.channels, split=args.split, data_root=args.data_root, names=names)
    if not cases:
        raise RecipeError("INPUT", "no cases found", "check the inputs (and --split for a manifest)")
    rows = predictor.run(cases, args.out, probabilities=args.probabilities, overwrite=args.overwrite,
                         resume=args.resume, say=say)
    total = sum(row["total_s"] for row in rows)
    kept = f" (kept {len(cases) - len(rows)} finished)" if args.resume else ""
    print(f"wrote {len(rows)} segmentation(s){kept} to {args.out} in {total:.1f} s; "
          f"timings in {args.out}/{TIMINGS_FILE}")
    return 0


SEGMENTATION_ONLY = {"tta": "--tta", "map_labels": "--map-labels", "channels": "--channels", "resume": "--resume",
                     "probabilities": "--probabilities"}


def run_classify(args: argparse.Namespace, checkpoint, device: str, say) -> int:
    """``infer`` with a classification checkpoint: every image's class probabilities → ``<out>/predictions.csv``."""
    import time
    from pathlib import Path

    from vol_transfer.errors import InputDataError, RecipeError
    from vol_transfer.evaluation.classification import write_predictions
    from vol_transfer.inference.classify import (
        ImageClassifier,
        check_dicom_headers,
        describe_checkpoint,
        discover_images,
    )
    from vol_transfer.io.atomic import refuse_to_overwrite

    given = [flag for key, flag in SEGMENTATION_ONLY.items() if getattr(args, key)]
    if given:
        raise RecipeError(given[0], f"applies to segmentation checkpoints; {describe_checkpoint(args.checkpoint, checkpoint.metadata)}",
                          f"drop {', '.join(given)}")
    start = time.perf_counter()
    classifier = ImageClassifier.from_checkpoint(args.checkpoint, device=device, checkpoint=checkpoint)
    items = discover_images(args.inputs, classifier.classes, split=args.split, data_root=args.data_root,
                            checkpoint=describe_checkpoint(args.checkpoint, classifier.metadata))
    items, rejected = check_dicom_headers(items, check=not args.no_header_check)
    if rejected and not args.skip_invalid:
        path, problem = rejected[0]
        others = f" (and {len(rejected) - 1} more DICOM file(s))" if len(rejected) > 1 else ""
        raise InputDataError(path, f"is not a chest X-ray DICOM: {problem}{others}",
                             "remove the file(s), or pass --skip-invalid to classify the others "
                             "(--no-header-check to ignore the headers)")
    for path, problem in rejected:
        say(f"skipped {path}: {problem}")
    if not items:
        raise InputDataError(" ".join(args.inputs), "holds no image to classify" + (
            f" ({len(rejected)} DICOM file(s) refused)" if rejected else ""), "check the inputs (and --split)")
    target = Path(args.out) / "predictions.csv"
    refuse_to_overwrite(target, [i.path for i in items], overwrite=args.overwrite)
    predictions = classifier.predict(items, progress=not args.no_progress)
    write_predictions(target, predictions)
    labelled = sum(bool(label) for label in predictions.labels)
    skipped = f", skipped {len(rejected)} invalid DICOM file(s)" if rejected else ""
    print(f"classified {len(items)} image(s) ({labelled} with a known label{skipped}) in "
          f"{time.perf_counter() - start:.1f} s: {target}")
    return 0
