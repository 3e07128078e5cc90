"""Inference: run a model over whole volumes (exact tiles or blended windows) and write NIfTI.

The entry points for one ``(C, X, Y, Z)`` volume are :func:`predict_probabilities`,
:func:`predict_labels` and :func:`predict_logits` (see :mod:`vol_transfer.inference.predict`).
"""

from vol_transfer.inference.predict import (
    InferenceOptions,
    InferencePlan,
    logits_to_labels,
    plan_inference,
    predict_labels,
    predict_logits,
    predict_probabilities,
)

__all__ = [
    "InferenceOptions",
    "InferencePlan",
    "logits_to_labels",
    "plan_inference",
    "predict_labels",
    "predict_logits",
    "predict_probabilities",
]
