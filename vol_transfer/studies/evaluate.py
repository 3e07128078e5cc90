"""Evaluate a checkpoint on manifest splits: per-subject foreground Dice in the original geometry.

Each subject is predicted exactly as ``vol-transfer infer`` would (the checkpoint's stored
preprocessing, whole-volume or tiled inference, the result put back onto the input's grid) and
compared with its label mapped through the checkpoint's label mapping. The case is loaded by the
checkpoint's channel names (:func:`vol_transfer.io.case.load_case`), as ``infer`` loads it. A
subject's score is the :func:`~vol_transfer.evaluation.metrics.mean_dice` (nanmean) of its
classes' Dice: NaN when every class is absent from both prediction and truth, and then left out
of the split's mean (:meth:`vol_transfer.studies.results.ArmResult.mean_dice`).

Example::

    evaluate_checkpoint("runs/x/checkpoints/best.pt", "data_manifests/brats2015_flair_t1c.csv", None, ["validation"])
    # {'validation': {'brats_2013_pat0006_1': 0.61}}
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from vol_transfer.errors import PathLike


def class_values(metadata: Mapping[str, Any]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Foreground classes as (truth label values, predicted class index) per class name."""
    classes = list(metadata.get("classes") or [])
    mapping = {int(k): int(v) for k, v in (metadata.get("label_mapping") or {}).items()}
    truth, predicted = {}, {}
    for index, name in enumerate(classes[1:], start=1):
        truth[name] = [source for source, target in mapping.items() if target == index] if mapping else [index]
        predicted[name] = [index]
    return truth, predicted


def evaluate_checkpoint(
    checkpoint: PathLike, manifest: PathLike, data_root: PathLike | None, splits: Sequence[str],
    options: Any = None, fold: int | None = None,
) -> dict[str, dict[str, float]]:
    """Split → subject ID → mean foreground Dice, in manifest order (no label: skipped; NaN: nothing to score).

    With ``fold`` (a cross-validated run), ``validation`` is that fold of the training split — the
    cases the run held out — exactly as training chose them (``data.fold``).
    """
    from vol_transfer.evaluation.metrics import mean_dice
    from vol_transfer.evaluation.report import evaluate_case
    from vol_transfer.inference.predict import InferenceOptions
    from vol_transfer.inference.predictor import Predictor
    from vol_transfer.io.case import label_array, load_case
    from vol_transfer.io.data_root import resolve_data_root
    from vol_transfer.io.manifest import read_manifest
    from vol_transfer.training.segmentation_data import split_subjects

    predictor = Predictor.from_checkpoint(checkpoint, options or InferenceOptions(progress=False))
    truth_values, predicted_values = class_values(predictor.metadata)
    loaded = read_manifest(manifest, data_root=resolve_data_root(data_root))
    results: dict[str, dict[str, float]] = {}
    for split in splits:
        scores: dict[str, float] = {}
        for subject in split_subjects(loaded, split, fold):
            if subject.label is None:
                continue
            image, label = load_case(subject, predictor.channels)
            prediction = predictor.predict_volume(image)
            rows = evaluate_case(subject.subject_id, split, prediction, label_array(label, subject.label),
                                 truth_values, image.spacing, predicted_values)
            scores[subject.subject_id] = mean_dice([row["dice"] for row in rows])
        results[split] = scores
    return results

