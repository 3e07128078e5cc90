"""Write manifests from standard dataset layouts, with a seeded patient-level split.

Layouts:
    ``msd``      Medical Segmentation Decathlon: ``imagesTr/X.nii.gz`` + ``labelsTr/X.nii.gz``
                 (``imagesTs/`` → split ``unlabelled``); labels declared from ``dataset.json`` if present,
                 and for a multi-modal task (4-D images, e.g. Task01) its ``modality`` names as the
                 channel names of the volumes (``# volumes: image=flair,t1,t1c,t2``).
    ``brats``    one folder per case with one file per modality (BRATS 2015 ``Flair*``/``T1c*``/
                 ``OTMultiClass*``; BraTS 2020 ``*_flair``/``*_t1ce``/``*_seg``; BraTS 2023
                 ``*-t2f``/``*-t1c``/``*-t1n``/``*-t2w``/``*-seg``). Channels are named flair, t1, t1c,
                 t2. Cases under ``train/``, ``validation/``, ``test/`` keep that split.
    ``nnunet``   nnU-Net v2 raw: ``imagesTr/<case>_0000.nii.gz`` …, ``channel_names``/``labels`` from
                 ``dataset.json``, ``splits_final.json`` folds → ``fold`` column (:mod:`vol_transfer.io.nnunet`).
                 ``msd`` reads ``dataset.json``'s ``training``/``test`` lists when it has them
                 (:mod:`vol_transfer.io.decathlon`).
    ``folders``  classification: ``DIR/<class>/<image>``; the patient id is parsed from the file
                 name (``person1234_bacteria_1.jpeg`` → ``person1234``, ``NORMAL2-IM-0123-0001.jpeg``
                 → ``NORMAL2-IM-0123``) so all images of one patient land in one split.

Splits are drawn per stratum (the class, for ``folders``) over patients, with a seeded RNG, so
the same seed and files always give the same manifest.

Example (needs a dataset folder, so not run here)::

    draft = scan_layout("msd", "/data/msd_hippocampus")
    assign_splits(draft, (0.7, 0.15, 0.15), seed=0)
    write_manifest(draft, "hippo.csv", data_root="/data")
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vol_transfer.errors import InputDataError, ManifestError, PathLike
from vol_transfer.io.atomic import atomic_write_text, refuse_to_overwrite
from vol_transfer.io.case import canonical_channel, label_array
from vol_transfer.io.manifest import SPLITS
from vol_transfer.io.volumes import NIFTI_SUFFIXES, load_volume

LAYOUTS = ("msd", "brats", "folders", "nnunet")
BRATS_CHANNEL_ORDER = ("flair", "t1", "t1c", "t2")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".bmp", ".tif", ".tiff")
SPLIT_FOLDERS = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                 "test": "test", "testing": "test"}


@dataclass
class DraftRow:
    subject_id: str
    channels: dict[str, Path]
    label: Path | str | None = None
    patient_id: str = ""
    split: str | None = None
    stratum: str = ""
    fold: int | None = None


@dataclass
class ManifestDraft:
    """Rows found in a layout, before (or after) splitting; ``notes`` lists what was skipped and why."""

    kind: str
    channel_names: list[str]
    rows: list[DraftRow] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _strip_suffix(name: str) -> str:
    for suffix in (*NIFTI_SUFFIXES[::-1], *IMAGE_SUFFIXES, ".mha", ".nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _format_values(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


def _scan_label_values(paths: Sequence[Path]) -> list[int]:
    found: set[int] = set()
    for path in paths:
        values = label_array(load_volume(path), path)
        found.update(int(v) for v in np.flatnonzero(np.bincount(values.ravel().astype(np.int64))))
    return sorted(found)


# ------------------------------------------------------------------------------------------ msd


def _msd_declarations(dataset_json: Path) -> dict[str, str]:
    """From an MSD ``dataset.json``: ``labels`` and ``label_names`` (``{"labels": {"0": "background", ...}}``)
    and, for several modalities (``{"modality": {"0": "FLAIR", "1": "T1w", ...}}``), the channel
    names of the 4-D images' volumes (``volumes: image=flair,t1,...``, through the channel aliases)."""
    if not dataset_json.is_file():
        return {}
    try:
        content = json.loads(dataset_json.read_text())
        labels = content.get("labels") or {}
        pairs = sorted((int(value), str(name)) for value, name in labels.items())
        modalities = sorted((int(index), str(name)) for index, name in (content.get("modality") or {}).items())
    except (ValueError, AttributeError, TypeError):
        raise InputDataError(dataset_json, "has no readable 'labels' or 'modality' mapping",
                             'fix it or pass --labels 0,1,...') from None
    declarations = {}
    if pairs:
        declarations = {"labels": _format_values([v for v, _ in pairs]),
                        "label_names": ",".join(n.replace(",", " ") for _, n in pairs)}
    names = [canonical_channel(re.sub(r"[^\w-]+", "_", name)) for _, name in modalities]
    if len(names) > 1 and [i for i, _ in modalities] == list(range(len(names))) and len(set(names)) == len(names):
        declarations["volumes"] = "image=" + ",".join(names)
    return declarations


def scan_msd(folder: Path) -> ManifestDraft:
    images = folder / "imagesTr"
    if not images.is_dir():
        raise InputDataError(folder, "has no imagesTr/ folder (not an MSD layout)", "point at the task folder or use --layout brats|folders")
    draft = ManifestDraft("segmentation", ["image"], metadata=_msd_declarations(folder / "dataset.json"))
    for image in sorted(p for p in images.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".")):
        label = folder / "labelsTr" / image.name
        subject_id = _strip_suffix(image.name)
        if not label.is_file():
            draft.notes.append(f"skipped {image.name}: no labelsTr/{image.name}")
            continue
        draft.rows.append(DraftRow(subject_id, {"image": image}, label, subject_id))
    tests = folder / "imagesTs"
    if tests.is_dir():
        for image in sorted(p for p in tests.iterdir() if p.name.endswith(NIFTI_SUFFIXES)):
            subject_id = _strip_suffix(image.name)
            draft.rows.append(DraftRow(subject_id, {"image": image}, None, subject_id, split="unlabelled"))
    return draft


# ---------------------------------------------------------------------------------------- brats

_OTHER_TOKENS = {"seg": "label", "otmulticlass": "label", "label": "label", "brainmask": "skip", "mask": "skip"}


def _token_modality(token: str) -> str | None:
    lowered = token.lower()
    if lowered in _OTHER_TOKENS:
        return _OTHER_TOKENS[lowered]
    name = canonical_channel(token)
    return name if name in BRATS_CHANNEL_ORDER else None


def brats_modality(file_name: str) -> tuple[str | None, str]:
    """``"BraTS-GLI-00001-000-t2f.nii.gz"`` → ``("flair", "BraTS-GLI-00001-000")`` (None if unknown)."""
    stem = _strip_suffix(file_name)
    tokens = re.split(r"[-_.]", stem)
    for index, token in enumerate(tokens):
        modality = _token_modality(token)
        if modality:
            rest = [t for i, t in enumerate(tokens) if i != index]
            separator = "-" if "-" in stem else "_"
            return modality, separator.join(t for t in rest if t)
    return None, stem


def scan_brats(folder: Path) -> ManifestDraft:
    by_case: dict[Path, dict[str, Path]] = defaultdict(dict)
    case_names: dict[Path, str] = {}
    for path in sorted(folder.rglob("*")):
        if not path.name.endswith(NIFTI_SUFFIXES) or path.name.startswith("."):
            continue
        modality, rest = brats_modality(path.name)
        if modality in (None, "skip"):
            continue
        case = path.parent
        if modality in by_case[case]:
            raise InputDataError(path, f"is a second '{modality}' file in {case}", "keep one file per modality per case")
        by_case[case][modality] = path
        if any(ch.isdigit() for ch in rest):
            case_names.setdefault(case, rest)
    if not by_case:
        raise InputDataError(folder, "holds no BraTS modality files (flair/t1/t1c/t2/seg NIfTI)", "check the folder or the --layout")
    common = set.intersection(*(set(m) - {"label"} for m in by_case.values()))
    channels = [c for c in BRATS_CHANNEL_ORDER if c in common]
    if not channels:
        raise InputDataError(folder, "no modality is present in every case", "remove incomplete cases")
    draft = ManifestDraft("segmentation", channels)
    for case, files in sorted(by_case.items()):
        missing = [c for c in BRATS_CHANNEL_ORDER if c not in files and any(c in m for m in by_case.values())]
        if missing:
            draft.notes.append(f"{case}: has no {', '.join(missing)} (kept channels: {', '.join(channels)})")
        subject_id = case_names.get(case, case.name)
        relative = case.relative_to(folder).parts
        split = SPLIT_FOLDERS.get(relative[0].lower()) if len(relative) > 1 else None
        label = files.get("label")
        if label is None:
            split = "unlabelled"
        draft.rows.append(DraftRow(subject_id, {c: files[c] for c in channels}, label, subject_id, split))
    return draft


# -------------------------------------------------------------------------------------- folders

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # Kermany pneumonia: person1234_bacteria_5678
    re.compile(r"^((?:NORMAL\d*-)?IM-\d+)", re.IGNORECASE),  # Kermany normal: [NORMAL2-]IM-0123-0001
)


def patient_from_file_name(name: str) -> str:
    """The patient id encoded in an image file name, else the name without its extension."""
    stem = _strip_suffix(name)
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def scan_folders(folder: Path) -> ManifestDraft:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputDataError(folder, "has no class sub-folders", "arrange images as DIR/<class>/<image>")
    draft = ManifestDraft("classification", ["image"], metadata={"classes": ",".join(classes)})
    stems = Counter()
    found: list[tuple[str, Path]] = []
    for name in classes:
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                found.append((name, path))
                stems[_strip_suffix(path.name)] += 1
    for name, path in found:
        stem = _strip_suffix(path.name)
        subject_id = stem if stems[stem] == 1 else f"{name}/{stem}"
        patient = patient_from_file_name(path.name)
        draft.rows.append(DraftRow(subject_id, {"image": path}, name, patient, stratum=name))
    if not draft.rows:
        raise InputDataError(folder, "holds no images", f"use files ending in {', '.join(IMAGE_SUFFIXES)}")
    return draft


def scan_layout(layout: str, folder: PathLike, label_values: Sequence[int] | None = None) -> ManifestDraft:
    """Find the subjects of ``folder`` laid out as ``layout``.

    Declared segmentation labels: ``label_values`` if given, else the layout's own declaration
    (MSD ``dataset.json``), else the values found by reading every label file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(folder, "folder not found", "check the dataset path")
    from vol_transfer.io.decathlon import scan_decathlon  # both build on this module's drafts
    from vol_transfer.io.nnunet import scan_nnunet

    scanners = {"msd": scan_decathlon, "brats": scan_brats, "folders": scan_folders, "nnunet": scan_nnunet}
    if layout not in scanners:
        raise InputDataError(layout, "unknown layout", f"use one of {', '.join(LAYOUTS)}")
    draft = scanners[layout](folder)
    if label_values is not None:
        draft.metadata["labels"] = _format_values(label_values)
        draft.metadata.pop("label_names", None)  # names from dataset.json may not fit the values given
    elif draft.kind == "segmentation" and "labels" not in draft.metadata and any(isinstance(r.label, Path) for r in draft.rows):
        draft.metadata["labels"] = _format_values(_scan_label_values([r.label for r in draft.rows if isinstance(r.label, Path)]))
    return draft


# ---------------------------------------------------------------------------------------- split


def parse_fractions(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.7,0.15,0.15"`` → train/validation[/test] fractions that sum to 1."""
    try:
        values = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise InputDataError("--fractions", f"{text!r} is not a list of numbers", "write e.g. 0.7,0.15,0.15") from None
    if len(values) not in (2, 3) or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise InputDataError("--fractions", f"{text!r} must be 2 or 3 non-negative fractions summing to 1",
                             "write train,validation[,test], e.g. 0.7,0.15,0.15")
    return values


def assign_splits(draft: ManifestDraft, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> None:
    """Give every row without a split one, drawing whole patients per stratum with a seeded RNG."""
    fractions = parse_fractions(fractions)
    patients: dict[str, list[DraftRow]] = defaultdict(list)
    for row in draft.rows:
        if row.split is None:
            patients[row.patient_id or row.subject_id].append(row)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, rows in patients.items():
        strata[Counter(r.stratum for r in rows).most_common(1)[0][0]].append(patient)
    rng = np.random.default_rng(seed)
    for stratum in sorted(strata):
        ids = sorted(strata[stratum])
        order = [ids[i] for i in rng.permutation(len(ids))]
        counts = [int(round(f * len(ids))) for f in fractions[1:]]
        n_validation = counts[0]
        n_test = counts[1] if len(counts) > 1 else 0
        for position, patient in enumerate(order):
            split = "validation" if position < n_validation else "test" if position < n_validation + n_test else "train"
            for row in patients[patient]:
                row.split = split


def assign_folds(draft: ManifestDraft, folds: int, seed: int = 0) -> None:
    """Patient-level k-fold cross-validation over the rows in ``train`` or ``validation``.

    Those rows become split ``train`` with a ``fold`` in 0…K-1: whole patients, dealt round-robin
    after a seeded shuffle per stratum, so fold sizes differ by at most one patient per stratum.
    A recipe's ``data.fold: k`` then trains on the other folds and validates on fold k; ``test``
    rows stay outside every fold.
    """
    if folds < 2:
        raise ManifestError("--folds", [f"{folds} fold(s)"], "use at least 2 folds")
    patients: dict[str, list[DraftRow]] = defaultdict(list)
    for row in draft.rows:
        if row.split in ("train", "validation"):
            patients[row.patient_id or row.subject_id].append(row)
    if len(patients) < folds:
        raise ManifestError("--folds", [f"{folds} folds for {len(patients)} patients"], "use fewer folds")
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, rows in patients.items():
        strata[Counter(r.stratum for r in rows).most_common(1)[0][0]].append(patient)
    rng = np.random.default_rng(seed)
    position = 0
    for stratum in sorted(strata):
        ids = sorted(strata[stratum])
        for index in rng.permutation(len(ids)):
            for row in patients[ids[index]]:
                row.split, row.fold = "train", position % folds
            position += 1


# ---------------------------------------------------------------------------------------- write


def _cell(path: Path | str | None, data_root: Path | None) -> str:
    if path is None:
        return ""
    if isinstance(path, str):
        return path
    if data_root is not None:
        try:
            return Path(os.path.relpath(path.resolve(), data_root.resolve())).as_posix() \
                if path.resolve().is_relative_to(data_root.resolve()) else str(path.resolve())
        except ValueError:
            pass
    return str(path.resolve())


def format_manifest(draft: ManifestDraft, data_root: PathLike | None = None) -> str:
    """The manifest CSV text (paths relative to ``data_root`` where they lie inside it)."""
    root = Path(data_root) if data_root is not None else None
    unsplit = [r.subject_id for r in draft.rows if r.split not in SPLITS]
    if unsplit:
        raise ManifestError("<draft>", [f"{len(unsplit)} row(s) have no split, e.g. {unsplit[0]}"], "call assign_splits first")
    metadata = {"kind": draft.kind, **draft.metadata}
    lines = [f"# {key}: {value}" for key, value in metadata.items()]
    with_patients = any(r.patient_id and r.patient_id != r.subject_id for r in draft.rows)
    with_labels = any(r.label is not None for r in draft.rows)
    with_folds = any(r.fold is not None for r in draft.rows)
    header = ["subject_id", "split", *(["patient_id"] if with_patients else []), *(["fold"] if with_folds else []),
              *draft.channel_names, *(["label"] if with_labels else [])]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    order = {s: i for i, s in enumerate(SPLITS)}
    for row in sorted(draft.rows, key=lambda r: (order[r.split], r.subject_id)):  # type: ignore[index]
        writer.writerow([
            row.subject_id, row.split, *([row.patient_id] if with_patients else []),
            *([("" if row.fold is None else str(row.fold))] if with_folds else []),
            *(_cell(row.channels[c], root) for c in draft.channel_names),
            *([_cell(row.label, root)] if with_labels else []),
        ])
    return "\n".join(lines) + "\n" + buffer.getvalue()


def write_manifest(draft: ManifestDraft, out: PathLike, data_root: PathLike | None = None, overwrite: bool = False) -> Path:
    """Write the manifest atomically; refuse to replace an existing file unless ``overwrite``."""
    text = format_manifest(draft, data_root)
    refuse_to_overwrite(out, [p for r in draft.rows for p in r.channels.values()], overwrite=overwrite)
    return atomic_write_text(out, text)
