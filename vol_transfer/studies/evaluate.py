"""Evaluate a checkpoint on manifest splits: per-subject foreground Dice in the original geometry.

Each subject is predicted exactly as ``vol-transfer infer`` would (the checkpoint's stored
preprocessing, whole-volume or tiled inference, the result put back onto the input's grid) and
compared with its label mapped through the checkpoint's label mapping.

Example:
    >>> evaluate_checkpoint("runs/x/checkpoints/best.pt", "data_manifests/brats2015_flair_t1c.csv",
    ...                     None, ["validation"])                      # doctest: +SKIP
    {'validation': [0.61]}
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

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
    options: Any = None,
) -> dict[str, list[float]]:
    """Split → per-subject mean foreground Dice (subjects without a label are skipped)."""
    from vol_transfer.evaluation.report import evaluate_case
    from vol_transfer.inference.predict import InferenceOptions
    from vol_transfer.inference.predictor import Predictor
    from vol_transfer.io.data_root import resolve_data_root
    from vol_transfer.io.manifest import load_subject, read_manifest

    predictor = Predictor.from_checkpoint(checkpoint, options or InferenceOptions(progress=False))
    truth_values, predicted_values = class_values(predictor.metadata)
    loaded = read_manifest(manifest, data_root=resolve_data_root(data_root))
    wanted = predictor.channels
    results: dict[str, list[float]] = {}
    for split in splits:
        scores = []
        for subject in loaded.subjects(split):
            image, label = load_subject(subject)
            if label is None:
                continue
            if list(subject.channels) != list(wanted) and set(wanted) <= set(subject.channels):
                order = [list(subject.channels).index(c) for c in wanted]
                image.array = image.array[order]
            prediction = predictor.predict_volume(image)
            rows = evaluate_case(subject.subject_id, split, prediction, np.asarray(label.array[0]),
                                 truth_values, image.spacing, predicted_values)
            scores.append(float(np.mean([row["dice"] for row in rows])))
        results[split] = scores
    return results

