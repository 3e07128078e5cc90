"""The Medical Segmentation Decathlon's ``dataset.json``, read whole: the ``msd`` layout's case list.

A Decathlon task folder (``Task04_Hippocampus/``) holds ``dataset.json``::

    {"name": "Hippocampus", "description": "...", "tensorImageSize": "3D",
     "modality": {"0": "MRI"},                      # Task01: {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
     "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
     "numTraining": 260, "numTest": 130,
     "training": [{"image": "./imagesTr/hippocampus_367.nii.gz", "label": "./labelsTr/hippocampus_367.nii.gz"}, ...],
     "test": ["./imagesTs/hippocampus_267.nii.gz", ...]}

:func:`scan_decathlon` takes the cases from ``training`` (labelled) and ``test`` (split
``unlabelled``) — not from a listing of ``imagesTr/``, which in the official archives also holds
macOS ``._`` files — checks that every listed file exists and that 4-D images hold one volume per
``modality``, and declares labels and the volumes' channel names exactly as the folder-listing
``msd`` scan of :mod:`vol_transfer.io.layouts` does (shared code). A ``dataset.json`` without a
``training`` list, or no ``dataset.json``, falls back to that scan. ``name``/``description`` go to
the manifest's ``# dataset:``/``# description:`` lines.

Example (needs a task folder, so not run here)::

    draft = scan_decathlon("Task01_BrainTumour")
    draft.metadata["volumes"]          # 'image=flair,t1,t1c,t2'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vol_transfer.errors import InputDataError, PathLike
from vol_transfer.io.case import volume_count
from vol_transfer.io.layouts import DraftRow, ManifestDraft, _msd_declarations, _strip_suffix, scan_msd

DATASET_JSON = "dataset.json"


@dataclass
class DecathlonDataset:
    """What a Decathlon ``dataset.json`` says (paths resolved against its folder)."""

    path: Path
    name: str = ""
    description: str = ""
    tensor_image_size: str = ""
    modality: dict[int, str] = field(default_factory=dict)
    training: list[tuple[Path, Path]] = field(default_factory=list)
    test: list[Path] = field(default_factory=list)
    num_training: int | None = None


def _resolve(folder: Path, entry: object, where: str, dataset_json: Path) -> Path:
    if not isinstance(entry, str) or not entry:
        raise InputDataError(dataset_json, f"{where} is {entry!r}, not a file path",
                             'write paths like "./imagesTr/case_001.nii.gz"')
    path = (folder / entry).resolve() if not Path(entry).is_absolute() else Path(entry)
    if not path.is_file():
        raise InputDataError(dataset_json, f"{where} names {entry}, which does not exist in {folder}",
                             "restore the file or remove the entry from dataset.json")
    return path


def read_json(path: Path, fix: str) -> Any:
    """A JSON file's content, or a one-line :class:`InputDataError` naming it and ``fix``."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputDataError(path, f"is not readable JSON ({error})", fix) from None


def read_decathlon_json(path: PathLike) -> DecathlonDataset:
    """Parse and check a Decathlon ``dataset.json`` (listed files must exist)."""
    path = Path(path)
    content = read_json(path, "fix or re-download dataset.json")
    if not isinstance(content, dict):
        raise InputDataError(path, "is not a JSON object", "fix or re-download dataset.json")
    folder = path.parent
    dataset = DecathlonDataset(path, str(content.get("name") or ""), str(content.get("description") or ""),
                               str(content.get("tensorImageSize") or ""))
    try:
        dataset.modality = {int(k): str(v) for k, v in (content.get("modality") or {}).items()}
        dataset.num_training = int(content["numTraining"]) if "numTraining" in content else None
    except (AttributeError, TypeError, ValueError):
        raise InputDataError(path, "has an unreadable 'modality' or 'numTraining'",
                             'write e.g. "modality": {"0": "MRI"}, "numTraining": 260') from None
    training = content.get("training") or []
    if not isinstance(training, list) or not all(isinstance(e, dict) for e in training):
        raise InputDataError(path, "'training' is not a list of {\"image\": ..., \"label\": ...}",
                             "fix or re-download dataset.json")
    for index, entry in enumerate(training):
        image = _resolve(folder, entry.get("image"), f"training[{index}].image", path)
        label = _resolve(folder, entry.get("label"), f"training[{index}].label", path)
        dataset.training.append((image, label))
    test = content.get("test") or []
    if not isinstance(test, list):
        raise InputDataError(path, "'test' is not a list of paths", "fix or re-download dataset.json")
    for index, entry in enumerate(test):
        image = entry.get("image") if isinstance(entry, dict) else entry
        dataset.test.append(_resolve(folder, image, f"test[{index}]", path))
    return dataset


def _check_volumes(dataset: DecathlonDataset) -> None:
    """A multi-modal task's images must hold one volume per modality (read from the first header)."""
    first = (dataset.training[0][0] if dataset.training else dataset.test[0] if dataset.test else None)
    if first is None or len(dataset.modality) <= 1:
        return
    count = volume_count(first)
    if count is not None and count != len(dataset.modality):
        raise InputDataError(first, f"holds {count} volume(s) but {dataset.path.name} names {len(dataset.modality)} "
                                    f"modalities ({', '.join(dataset.modality.values())})",
                             "use the task's 4-D images or fix 'modality' in dataset.json")


def scan_decathlon(folder: PathLike) -> ManifestDraft:
    """The ``msd`` layout: cases from ``dataset.json``'s lists, else from the folder listing."""
    folder = Path(folder)
    dataset_json = folder / DATASET_JSON
    if not dataset_json.is_file():
        return scan_msd(folder)
    dataset = read_decathlon_json(dataset_json)
    if not dataset.training:
        return scan_msd(folder)
    _check_volumes(dataset)
    metadata = _msd_declarations(dataset_json)
    metadata.update({key: value.replace("\n", " ") for key, value in
                     (("dataset", dataset.name), ("description", dataset.description)) if value})
    draft = ManifestDraft("segmentation", ["image"], metadata=metadata)
    for image, label in dataset.training:
        subject_id = _strip_suffix(image.name)
        draft.rows.append(DraftRow(subject_id, {"image": image}, label, subject_id))
    for image in dataset.test:
        subject_id = _strip_suffix(image.name)
        draft.rows.append(DraftRow(subject_id, {"image": image}, None, subject_id, split="unlabelled"))
    if dataset.num_training is not None and dataset.num_training != len(dataset.training):
        draft.notes.append(f"{dataset_json.name} says numTraining {dataset.num_training} but lists "
                           f"{len(dataset.training)} training cases (kept: the listed ones)")
    return draft


__all__ = ["DecathlonDataset", "read_decathlon_json", "read_json", "scan_decathlon", "DATASET_JSON"]
