"""Dataset manifests: one CSV per dataset listing subjects, splits, channel files and labels.

Format (paths relative to the data root; ``#`` lines before the header declare facts)::

    # kind: segmentation
    # labels: 0,1,2
    # label_names: background,anterior,posterior
    subject_id,split,image,label
    hippocampus_001,train,msd_hippocampus/imagesTr/hippocampus_001.nii.gz,msd_hippocampus/labelsTr/hippocampus_001.nii.gz

- Columns: ``subject_id``, ``split`` (train | validation | test | unlabelled), one column per image
  channel named by modality (``image``; ``flair,t1c``; …) and optionally ``label``. An optional
  ``patient_id`` column groups several subjects of one patient (they must share a split).
- A channel cell is an image file (NIfTI/MHA/NRRD) or a DICOM series folder. A cell may be a
  4-D file holding several channels (the MSD Task01 layout): ``# volumes: image=flair,t1,t1c,t2``
  names its volumes, else they are ``image_0 … image_3`` (see :mod:`vol_transfer.io.case`).
- Relative paths stay inside the data root: ``../x.nii.gz`` climbing out of it is refused unless
  the manifest declares ``# allow_outside_data_root: yes`` (absolute paths are taken as written).
- ``# labels:`` declares the allowed label values (``0,1,2`` or ranges ``0-117``); required when a
  segmentation manifest has a label column. ``# kind: classification`` manifests instead declare
  ``# classes: NORMAL,PNEUMONIA`` and their label cell is the class name.

:func:`read_manifest` checks structure only (fast): columns, unique IDs, known splits, files exist.
:func:`validate_manifest` opens every file and checks what only the data can tell (grids agree,
label values allowed, labels not empty, no NaNs). Both report every problem at once.

Cases are loaded, by channel name, with :func:`vol_transfer.io.case.load_case`::

    manifest = read_manifest("data_manifests/msd_hippocampus.csv")
    image, label = load_case(manifest.subjects("train")[0], ["image"])
    image.array.shape, label.array.dtype        # ((1, 35, 51, 35), dtype('uint8'))
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from vol_transfer.errors import ManifestError, PathLike, VolTransferError
from vol_transfer.io.case import label_array, onto_grid, read_channel
from vol_transfer.io.data_root import resolve_data_root
from vol_transfer.io.volumes import Volume, check_same_grid, load_volume

SPLITS = ("train", "validation", "test", "unlabelled")
KINDS = ("segmentation", "classification")
RESERVED_COLUMNS = ("subject_id", "split", "patient_id", "fold", "label")
METADATA_KEYS = ("kind", "labels", "label_names", "classes", "volumes", "dataset", "description",
                 "allow_outside_data_root")
OUTSIDE_ROOT_OPTION = "# allow_outside_data_root: yes"
FIX = "edit the listed manifest rows (paths are relative to --data-root / $VOL_TRANSFER_DATA)"


@dataclass
class Subject:
    """One case of a manifest.

    Attributes:
        subject_id: unique within the manifest.
        split: one of :data:`SPLITS`.
        channels: channel name → absolute path (file or DICOM folder), in channel order.
        label: absolute label-map path (segmentation), class name (classification) or None.
        patient_id: the patient the case belongs to (defaults to ``subject_id``).
        line: the manifest line it came from (for messages).
        volume_names: channel names of the volumes of 4-D files (column → names), from ``# volumes:``.
        label_values: the declared label values (``# labels:``), or None.
        manifest: the manifest file (for messages).
        fold: the cross-validation fold (``fold`` column, 0…K-1), or None.
    """

    subject_id: str
    split: str
    channels: dict[str, Path]
    label: Path | str | None = None
    patient_id: str = ""
    line: int = 0
    volume_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    label_values: tuple[int, ...] | None = None
    manifest: Path | None = None
    fold: int | None = None

    def __post_init__(self) -> None:
        if not self.patient_id:
            self.patient_id = self.subject_id

    @property
    def where(self) -> str:
        """``x.csv line 4 (pat1)``: where the case is, for messages."""
        return f"{self.manifest.name + ' ' if self.manifest else ''}line {self.line} ({self.subject_id})"


@dataclass
class Manifest:
    """A parsed manifest. ``subjects(split)`` lists cases; ``channel_names`` the image channels."""

    path: Path
    data_root: Path
    channel_names: tuple[str, ...]
    all_subjects: list[Subject] = field(default_factory=list)
    kind: str = "segmentation"
    label_values: tuple[int, ...] | None = None
    label_names: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    volume_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def subjects(self, split: str | None = None) -> list[Subject]:
        """All subjects, or those of one split (an unknown split name raises)."""
        if split is None:
            return list(self.all_subjects)
        if split not in SPLITS:
            raise ManifestError(self.path, [f"unknown split {split!r}"], f"use one of {', '.join(SPLITS)}")
        return [s for s in self.all_subjects if s.split == split]

    @property
    def splits(self) -> list[str]:
        """The splits present, in the order train, validation, test, unlabelled."""
        present = {s.split for s in self.all_subjects}
        return [s for s in SPLITS if s in present]

    @property
    def has_labels(self) -> bool:
        return any(s.label is not None for s in self.all_subjects)


def parse_label_values(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` or ``"0-3,5"`` → sorted unique integers."""
    values: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "-" in part[1:]:
            low, high = part.split("-", 1) if not part.startswith("-") else part[1:].split("-", 1)
            values.update(range(int(low), int(high) + 1))
        else:
            values.add(int(part))
    return tuple(sorted(values))


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_volume_names(text: str) -> dict[str, tuple[str, ...]]:
    """``"image=flair,t1,t1c,t2"`` (columns separated by ``;``) → ``{"image": ("flair", "t1", "t1c", "t2")}``."""
    names: dict[str, tuple[str, ...]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        column, sep, values = part.partition("=")
        if not sep or not column.strip() or not _split_list(values):
            raise ValueError(part)
        names[column.strip()] = _split_list(values)
    return names


def _resolve(cell: str, data_root: Path) -> Path:
    path = Path(os.path.expanduser(cell))
    return path if path.is_absolute() else data_root / path


def _escapes_root(cell: str) -> bool:
    """True for a relative path that climbs out of the data root (``../x``, ``a/../../x``)."""
    path = os.path.expanduser(cell)
    return not os.path.isabs(path) and Path(os.path.normpath(path)).parts[:1] == ("..",)


def _outside_root(where: str, what: str, cell: str, root: Path) -> str:
    return (f"{where}: {what} path {cell} leads outside the data root {root} (refused, so a manifest cannot read "
            f"files elsewhere by accident; to allow it, declare '{OUTSIDE_ROOT_OPTION}' above the header)")


def _read_declarations(lines: list[str]) -> tuple[dict[str, str], int, list[str]]:
    """The ``# key: value`` lines before the header → (declarations, index of the header line, problems)."""
    metadata: dict[str, str] = {}
    problems: list[str] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return metadata, index, problems
        key, sep, value = stripped.lstrip("#").partition(":")
        key = key.strip().lower()
        if not sep:
            continue  # a blank line or a plain comment
        if key not in METADATA_KEYS:
            problems.append(f"line {index + 1}: unknown declaration '# {key}:' (known: {', '.join(METADATA_KEYS)})")
        metadata[key] = value.strip()
    return metadata, len(lines), problems


def read_manifest(path: PathLike, data_root: PathLike | None = None) -> Manifest:
    """Parse a manifest CSV and check its structure; raise one :class:`ManifestError` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, ["manifest file not found"], "check the path (shipped manifests are in data_manifests/)")
    root = resolve_data_root(data_root)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(path, [f"cannot read the manifest ({type(exc).__name__})"], "save it as UTF-8 CSV") from None

    lines = text.splitlines()
    metadata, first_data, problems = _read_declarations(lines)
    rows = list(csv.reader(io.StringIO("\n".join(lines[first_data:]))))
    if not rows:
        raise ManifestError(path, ["no header row"], "start with a header: subject_id,split,<channels...>,label")
    header = [h.strip() for h in rows[0]]
    header_line = first_data + 1

    kind = metadata.get("kind", "segmentation")
    if kind not in KINDS:
        problems.append(f"'# kind: {kind}' is unknown (use {' or '.join(KINDS)})")
    for required in ("subject_id", "split"):
        if required not in header:
            problems.append(f"line {header_line}: header has no '{required}' column")
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        problems.append(f"line {header_line}: duplicate column(s) {duplicates}")
    if any(not h for h in header):
        problems.append(f"line {header_line}: a column has no name")
    channel_names = tuple(h for h in header if h and h not in RESERVED_COLUMNS)
    if not channel_names:
        problems.append(f"line {header_line}: no image channel column (e.g. 'image' or 'flair,t1c')")
    has_label_column = "label" in header

    label_values = label_names = classes = None
    try:
        label_values = parse_label_values(metadata["labels"]) if "labels" in metadata else None
    except ValueError:
        problems.append(f"'# labels: {metadata['labels']}' is not a list of integers like 0,1,2 or 0-4")
    if "label_names" in metadata:
        label_names = _split_list(metadata["label_names"])
    if label_names and label_values and len(label_names) != len(label_values):
        problems.append(f"'# label_names:' has {len(label_names)} names for {len(label_values)} declared label values")
    if "classes" in metadata:
        classes = _split_list(metadata["classes"])
    volume_names: dict[str, tuple[str, ...]] = {}
    if "volumes" in metadata:
        try:
            volume_names = parse_volume_names(metadata["volumes"])
        except ValueError:
            problems.append(f"'# volumes: {metadata['volumes']}' is not COLUMN=NAME,NAME,... (e.g. image=flair,t1,t1c,t2)")
        for column, names in volume_names.items():
            if column not in channel_names:
                problems.append(f"'# volumes:' names the volumes of {column!r}, which is not a channel column "
                                f"({', '.join(channel_names)})")
            clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & (set(channel_names) - {column})))
            if clash:
                problems.append(f"'# volumes:' channel name(s) {clash} of {column!r} occur twice")
    outside_allowed = metadata.get("allow_outside_data_root", "no").strip().lower() in ("yes", "true", "1")
    if has_label_column and kind == "segmentation" and label_values is None and "labels" not in metadata:
        problems.append("the manifest has a label column but no '# labels: 0,1,...' declaration of allowed values")
    if has_label_column and kind == "classification" and not classes:
        problems.append("a classification manifest needs a '# classes: A,B,...' declaration")

    subjects: list[Subject] = []
    seen_ids: dict[str, int] = {}
    patient_split: dict[str, tuple[str, int]] = {}
    for offset, row in enumerate(rows[1:], start=1):
        line = header_line + offset
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append(f"line {line}: has {len(row)} cells, the header has {len(header)}")
            continue
        cells = {h: c.strip() for h, c in zip(header, row)}
        subject_id = cells.get("subject_id", "")
        where = f"line {line} ({subject_id or 'no id'})"
        if not subject_id:
            problems.append(f"line {line}: empty subject_id")
        elif subject_id in seen_ids:
            problems.append(f"{where}: duplicate subject_id (first on line {seen_ids[subject_id]})")
        else:
            seen_ids[subject_id] = line
        split = cells.get("split", "")
        if split not in SPLITS:
            problems.append(f"{where}: unknown split {split!r} (use {', '.join(SPLITS)})")
        channels: dict[str, Path] = {}
        for name in channel_names:
            if not cells[name]:
                problems.append(f"{where}: empty '{name}' cell")
                continue
            if not outside_allowed and _escapes_root(cells[name]):
                problems.append(_outside_root(where, name, cells[name], root))
                continue
            channel_path = _resolve(cells[name], root)
            if not channel_path.exists():
                problems.append(f"{where}: {name} file {cells[name]} not found")
            channels[name] = channel_path
        label: Path | str | None = None
        if has_label_column:
            cell = cells["label"]
            if kind == "classification":
                if not cell and split != "unlabelled":
                    problems.append(f"{where}: empty class label")
                elif cell and classes and cell not in classes:
                    problems.append(f"{where}: class {cell!r} is not declared (classes: {', '.join(classes)})")
                label = cell or None
            elif cell and not outside_allowed and _escapes_root(cell):
                problems.append(_outside_root(where, "label", cell, root))
            elif cell:
                label = _resolve(cell, root)
                if not label.exists():
                    problems.append(f"{where}: label file {cell} not found")
            elif split != "unlabelled":
                problems.append(f"{where}: empty label cell (leave labels out only in the 'unlabelled' split)")
        fold: int | None = None
        if cells.get("fold", ""):
            try:
                fold = int(cells["fold"])
            except ValueError:
                problems.append(f"{where}: fold {cells['fold']!r} is not a whole number (use 0, 1, …)")
        patient_id = cells.get("patient_id", "") or subject_id
        if "patient_id" in header and patient_id in patient_split and patient_split[patient_id][0] != split:
            first_split, first_line = patient_split[patient_id]
            problems.append(f"{where}: patient {patient_id} is in split {split!r} here but {first_split!r} on line {first_line}")
        patient_split.setdefault(patient_id, (split, line))
        subjects.append(Subject(subject_id, split, channels, label, patient_id, line, volume_names, label_values, path,
                                fold))

    if not subjects and not problems:
        problems.append("no subjects listed")
    if problems:
        raise ManifestError(path, problems, FIX)
    return Manifest(
        path=path, data_root=root, channel_names=channel_names, all_subjects=subjects, kind=kind,
        label_values=label_values, label_names=label_names, classes=classes, metadata=metadata,
        volume_names=volume_names,
    )


# --------------------------------------------------------------------------------------------
# Deep validation


@dataclass
class CaseSummary:
    """What one subject's files hold (for the summary table)."""

    subject_id: str
    split: str
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    channel_ranges: list[tuple[float, float]] = field(default_factory=list)
    label_counts: dict[Any, int] = field(default_factory=dict)


@dataclass
class ValidationReport:
    """Every problem found in a manifest's data, plus per-case facts."""

    manifest: Manifest
    problems: list[str] = field(default_factory=list)
    cases: list[CaseSummary] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_invalid(self) -> None:
        if self.problems:
            raise ManifestError(self.manifest.path, self.problems, FIX)

    def table(self) -> str:
        """A plain-text summary: per split the cases, shapes, spacings, intensities and labels."""
        from vol_transfer.io.manifest_summary import format_summary

        return format_summary(self)


def _where(subject: Subject) -> str:
    return f"line {subject.line} ({subject.subject_id})"


def _message(error: VolTransferError, subject: Subject) -> str:
    return f"{_where(subject)}: {error.message}"


def _check_segmentation_case(manifest: Manifest, subject: Subject, report: ValidationReport) -> None:
    case = CaseSummary(subject.subject_id, subject.split)
    reference: Volume | None = None
    for name, path in subject.channels.items():
        try:
            volume = read_channel(path)
        except VolTransferError as error:
            report.problems.append(_message(error, subject))
            continue
        declared = subject.volume_names.get(name)
        if declared is not None and len(declared) != volume.num_channels:
            report.problems.append(f"{_where(subject)}: {name} file {path} holds {volume.num_channels} volume(s) but "
                                   f"'# volumes:' names {len(declared)}")
        data = volume.array
        case.channel_ranges.append((float(np.min(data)), float(np.max(data))))
        if reference is None:
            reference = volume
            case.shape, case.spacing = volume.spatial_shape, tuple(round(s, 4) for s in volume.spacing)
            continue
        try:
            check_same_grid(reference, volume, f"channel '{name}'")
        except VolTransferError as error:
            report.problems.append(_message(error, subject))
    if not isinstance(subject.label, Path):
        report.cases.append(case)
        return
    try:
        label = load_volume(subject.label)
        values = label_array(label, subject.label)
        label = Volume(values[np.newaxis], label.affine, label.paths, label.header)
    except VolTransferError as error:
        report.problems.append(_message(error, subject))
        report.cases.append(case)
        return
    counts = np.bincount(values.ravel().astype(np.int64))
    case.label_counts = {int(v): int(c) for v, c in enumerate(counts) if c}
    if reference is not None:
        try:
            onto_grid(label, reference, "label")
        except VolTransferError as error:
            report.problems.append(_message(error, subject))
    allowed = set(manifest.label_values or ())
    outside = sorted(set(case.label_counts) - allowed) if manifest.label_values is not None else []
    if outside:
        report.problems.append(f"{_where(subject)}: label {subject.label} holds value(s) {outside} outside the declared "
                               f"labels {list(manifest.label_values or ())}")
    if not any(v != 0 for v in case.label_counts):
        report.problems.append(f"{_where(subject)}: label {subject.label} is empty (background only)")
    report.cases.append(case)


def _check_classification_case(subject: Subject, report: ValidationReport) -> None:
    from PIL import Image, UnidentifiedImageError

    case = CaseSummary(subject.subject_id, subject.split)
    path = next(iter(subject.channels.values()))
    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        report.problems.append(f"{_where(subject)}: cannot read image {path} ({type(exc).__name__})")
        report.cases.append(case)
        return
    case.shape = tuple(int(s) for s in array.shape)
    case.channel_ranges.append((float(array.min()), float(array.max())))
    if subject.label is not None:
        case.label_counts = {subject.label: 1}
    report.cases.append(case)


def validate_manifest(manifest: Manifest, deep: bool = True, *, sample: int | None = None,
                      seed: int = 0, progress: bool = False) -> ValidationReport:
    """Open the files of every subject (or a seeded random ``sample`` of them) and collect problems.

    Checks: files load (not corrupt, no NaN/Inf), channels share one grid, the label shares it,
    label values are declared, labels are not empty. ``deep=False`` returns an empty report
    (the structural checks already ran in :func:`read_manifest`).
    """
    report = ValidationReport(manifest)
    if not deep:
        return report
    subjects: Iterable[Subject] = manifest.subjects()
    if sample is not None and sample < len(manifest.all_subjects):
        chosen = np.random.default_rng(seed).choice(len(manifest.all_subjects), size=sample, replace=False)
        subjects = [manifest.all_subjects[i] for i in sorted(chosen)]
    subjects = list(subjects)
    if progress:
        import sys

        from tqdm import tqdm

        subjects = tqdm(subjects, desc=f"checking {manifest.path.name}", unit="case", file=sys.stderr)
    for subject in subjects:
        if manifest.kind == "classification":
            _check_classification_case(subject, report)
        else:
            _check_segmentation_case(manifest, subject, report)
        report.checked += 1
    return report
