"""Diagnosis check: how much tumour core does an arm's checkpoint predict on one case, against the truth?

The case is the first of ``SPLIT`` under fold 0 ("validation": a held-out case, "train": one the
arm trained on), predicted exactly as ``vol-transfer infer`` would.

    python benchmarks/results/brats18_freeze_ablation_cpu/predicted_volume.py \
        runs/brats18_freeze_ablation_cpu/arms/li2017_finetune_seed0_fold0/checkpoints/last.pt validation
"""

from __future__ import annotations

import sys

import numpy as np

from vol_transfer.inference.predict import InferenceOptions
from vol_transfer.inference.predictor import Predictor
from vol_transfer.io.case import label_array, load_case
from vol_transfer.io.data_root import resolve_data_root
from vol_transfer.io.manifest import read_manifest
from vol_transfer.training.segmentation_data import split_subjects


def main(checkpoint: str, split: str) -> None:
    predictor = Predictor.from_checkpoint(checkpoint, InferenceOptions(progress=False))
    manifest = read_manifest("data_manifests/brats2018_4mod.csv", data_root=resolve_data_root(None))
    subject = split_subjects(manifest, split, 0)[0]
    image, label = load_case(subject, predictor.channels)
    truth = np.isin(label_array(label, subject.label), [1, 4])
    predicted = predictor.predict_volume(image) == 1
    print(f"{subject.subject_id} ({split} of fold 0): tumour-core voxels true {int(truth.sum())}, "
          f"predicted {int(predicted.sum())}, both {int((truth & predicted).sum())}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
