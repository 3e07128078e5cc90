"""A tiny classifier trained for one epoch on real chest X-rays (shared by the classification CLI tests)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"


@dataclass
class TrainedRun:
    run: Path
    checkpoint: Path
    rows: list[dict[str, str]]  # the run's predictions.csv (validation images, best checkpoint)
    data_root: Path
    summary: dict


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, dataset) -> TrainedRun:
    """16 training / 12 validation images (seeded class-stratified subsets of the real manifest), 32 px grey."""
    from vol_transfer.training.classification import (
        ClassificationConfig,
        OptimConfig,
        run_classification,
    )
    from vol_transfer.training.image_data import ImageDataConfig

    torch.set_num_threads(2)
    data_root = dataset("chest_xray_kermany_224").parent
    data = ImageDataConfig(manifest=str(MANIFESTS / "chest_xray_kermany.csv"), data_root=str(data_root),
                           image_size=32, max_train=16, max_validation=12)
    config = ClassificationConfig(data=data, epochs=1, batch_size=8, bn_recalibration=16,
                                  optim=OptimConfig(name="adam", lr=1e-3), threads=2)
    run = tmp_path_factory.mktemp("classifier") / "run"
    summary = run_classification(config, run, progress=False)
    with open(run / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return TrainedRun(run, run / "checkpoints" / "best.pt", rows, data_root, summary)


def write_manifest(rows: list[dict[str, str]], target: Path, split: str = "validation") -> Path:
    """A classification manifest of ``rows`` (path, patient_id, label) with absolute image paths."""
    lines = ["# kind: classification", "# classes: NORMAL,PNEUMONIA", "subject_id,split,patient_id,image,label"]
    lines += [f"{Path(r['path']).stem},{split},{r['patient_id']},{r['path']},{r['label']}" for r in rows]
    target.write_text("\n".join(lines) + "\n")
    return target


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
