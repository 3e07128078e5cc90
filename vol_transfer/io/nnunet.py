"""The nnU-Net v2 raw dataset layout: a manifest from it, and its image folders as ``infer`` inputs.

A raw dataset folder (``Dataset004_Hippocampus/``)::

    dataset.json      {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1},
                       "numTraining": 14, "file_ending": ".nii.gz"}
    imagesTr/<case>_0000.nii.gz, <case>_0001.nii.gz …   one file per channel, 4-digit channel index
    labelsTr/<case>.nii.gz
    imagesTs/<case>_0000.nii.gz …                        optional, unlabelled
    splits_final.json                                    optional (nnU-Net writes it to nnUNet_preprocessed/)

:func:`scan_nnunet` turns it into a :class:`~vol_transfer.io.layouts.ManifestDraft` for
``vol-transfer data manifest --layout nnunet``: one column per channel, named by
``channel_names`` through the channel aliases (``T1`` → ``t1``, ``FLAIR`` → ``flair``); the
declared labels are the values of ``labels`` (region-based labels, lists of values, declare their
union); ``imagesTs`` cases are ``unlabelled``. nnU-Net's cross-validation folds
(``splits_final.json`` beside ``dataset.json``, else in ``$nnUNet_preprocessed/<dataset>/``)
become the manifest's ``fold`` column: a case is in fold k when fold k validates on it, so a
recipe's ``data.fold: k`` trains and validates exactly as nnU-Net's fold k.

:func:`nnunet_cases` reads an nnU-Net image folder (``imagesTs/``) as ``infer`` cases without
``--channels``: channel i is named by the ``dataset.json`` beside or above the folder, else it is
the checkpoint's channel i (nnU-Net's own convention). Outputs are named by the case
(``<case>_seg.nii.gz``).

Example (needs a dataset folder, so not run here)::

    draft = scan_nnunet("Dataset004_Hippocampus")
    draft.channel_names, draft.metadata["labels"], {r.fold for r in draft.rows}
    # (['t1'], '0,1,2', {0, 1, 2, 3, 4})
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vol_transfer.errors import InputDataError, PathLike
from vol_transfer.io.case import canonical_channel
from vol_transfer.io.decathlon import read_json
from vol_transfer.io.layouts import DraftRow, ManifestDraft
from vol_transfer.io.manifest import RESERVED_COLUMNS

DATASET_JSON = "dataset.json"
SPLITS_JSON = "splits_final.json"
PREPROCESSED_ENV = "nnUNet_preprocessed"
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")


@dataclass
class NnunetDataset:
    """What an nnU-Net v2 ``dataset.json`` says."""

    path: Path
    channel_names: list[str]
    label_values: list[int]
    label_names: list[str] | None
    file_ending: str
    num_training: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _column_names(raw: Sequence[str]) -> list[str]:
    """``channel_names`` values → manifest column names (aliases applied; unusable ones → ``channel_i``)."""
    names = [canonical_channel(re.sub(r"[^\w-]+", "_", name)) for name in raw]
    return [name if name and name not in RESERVED_COLUMNS and names.count(name) == 1 else f"channel_{i}"
            for i, name in enumerate(names)]


def read_nnunet_json(path: PathLike) -> NnunetDataset:
    """Parse and check an nnU-Net v2 ``dataset.json`` (one-line errors naming the key)."""
    path = Path(path)
    content = read_json(path, "fix the dataset.json")
    if not isinstance(content, dict) or not isinstance(content.get("channel_names"), dict):
        fix = ('this looks like a Decathlon dataset.json: use --layout msd' if isinstance(content, dict)
               and "modality" in content else 'add "channel_names": {"0": "T1", ...}')
        raise InputDataError(path, "has no 'channel_names' mapping (not an nnU-Net v2 dataset)", fix)
    try:
        channels = sorted((int(k), str(v)) for k, v in content["channel_names"].items())
    except ValueError:
        raise InputDataError(path, "'channel_names' keys are not channel indices", 'write "0", "1", ...') from None
    if [i for i, _ in channels] != list(range(len(channels))) or not channels:
        raise InputDataError(path, f"'channel_names' indices {[i for i, _ in channels]} are not 0, 1, ...",
                             "number the channels from 0 without gaps")
    labels = content.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputDataError(path, "has no 'labels' mapping", 'add "labels": {"background": 0, ...}')
    values: dict[str, list[int]] = {}
    for name, value in labels.items():
        members = value if isinstance(value, list) else [value]
        if not members or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in members):
            raise InputDataError(path, f"label {name!r} is {value!r}, not a label value or list of values",
                                 'write e.g. "tumour": 1 or "whole tumour": [1, 2, 3]')
        values[str(name)] = [int(v) for v in members]
    declared = sorted({v for members in values.values() for v in members})
    one_to_one = all(len(m) == 1 for m in values.values()) and len(values) == len(declared)
    names = [name.replace(",", " ") for name, _ in sorted(values.items(), key=lambda kv: kv[1][0])] if one_to_one else None
    file_ending = str(content.get("file_ending") or "")
    if not file_ending.startswith("."):
        raise InputDataError(path, f"'file_ending' is {file_ending!r}", 'write e.g. "file_ending": ".nii.gz"')
    num_training = content.get("numTraining")
    return NnunetDataset(path, _column_names([n for _, n in channels]), declared, names, file_ending,
                         int(num_training) if isinstance(num_training, int) else None,
                         {k: v for k, v in content.items() if k not in ("channel_names", "labels", "file_ending")})


def _channel_files(folder: Path, file_ending: str) -> dict[str, dict[int, Path]]:
    """``<case>_<XXXX><ending>`` files of a folder → case → channel index → file."""
    cases: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(file_ending) or path.name.startswith("."):
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(file_ending)])
        if match is None:
            raise InputDataError(path, f"is not named <case>_<XXXX>{file_ending}",
                                 "name channel files case_0000, case_0001, ... as nnU-Net does")
        cases[match["case"]][int(match["index"])] = path
    return cases


def _complete(cases: dict[str, dict[int, Path]], count: int, folder: Path, file_ending: str) -> None:
    for case, files in sorted(cases.items()):
        missing = [f"{case}_{i:04d}{file_ending}" for i in range(count) if i not in files]
        extra = [files[i].name for i in files if i >= count]
        if missing or extra:
            problem = f"lacks {', '.join(missing)}" if missing else f"has {', '.join(extra)} beyond the {count} channels"
            raise InputDataError(folder, f"case {case} {problem} (dataset.json names {count} channel(s))",
                                 "give every case one file per channel_names entry")


def find_splits(folder: Path) -> Path | None:
    """``splits_final.json`` beside ``dataset.json``, else in ``$nnUNet_preprocessed/<folder name>/``."""
    candidates = [folder / SPLITS_JSON]
    if os.environ.get(PREPROCESSED_ENV):
        candidates.append(Path(os.environ[PREPROCESSED_ENV]) / folder.name / SPLITS_JSON)
    return next((c for c in candidates if c.is_file()), None)


def read_splits(path: PathLike) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json``: ``[{"train": [case, ...], "val": [case, ...]}, ...]``, one per fold."""
    path = Path(path)
    content = read_json(path, "fix or regenerate splits_final.json")
    if not isinstance(content, list) or not content or not all(
            isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list) for f in content):
        raise InputDataError(path, 'is not a list of {"train": [...], "val": [...]} folds',
                             "use nnU-Net's splits_final.json")
    return [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]} for f in content]


def fold_of_cases(splits: list[dict[str, list[str]]], cases: Sequence[str], where: PathLike) -> dict[str, int]:
    """Case → the fold that validates on it; every case must be validated in exactly one fold."""
    folds: dict[str, list[int]] = defaultdict(list)
    for index, fold in enumerate(splits):
        for case in fold["val"]:
            folds[case].append(index)
    unknown = sorted(set(folds) - set(cases))
    if unknown:
        raise InputDataError(where, f"names case(s) not in imagesTr: {', '.join(unknown[:5])}",
                             "regenerate splits_final.json for this dataset")
    bad = [c for c in cases if len(folds.get(c, [])) != 1]
    if bad:
        count = len(folds.get(bad[0], []))
        raise InputDataError(where, f"validates case {bad[0]} in {count} folds (and {len(bad) - 1} more cases not in "
                                    "exactly one)", "use folds whose 'val' lists partition the training cases")
    return {case: found[0] for case, found in folds.items()}


def scan_nnunet(folder: PathLike) -> ManifestDraft:
    """A manifest draft from an nnU-Net v2 raw dataset folder (see the module docstring)."""
    folder = Path(folder)
    dataset_json = folder / DATASET_JSON
    if not dataset_json.is_file():
        raise InputDataError(folder, "has no dataset.json (not an nnU-Net raw dataset)",
                             "point at the DatasetXXX_Name folder or use --layout msd|brats|folders")
    dataset = read_nnunet_json(dataset_json)
    images = folder / "imagesTr"
    if not images.is_dir():
        raise InputDataError(folder, "has no imagesTr/ folder", "point at the DatasetXXX_Name folder")
    ending, count = dataset.file_ending, len(dataset.channel_names)
    metadata = {"labels": ",".join(str(v) for v in dataset.label_values)}
    if dataset.label_names:
        metadata["label_names"] = ",".join(dataset.label_names)
    if isinstance(dataset.extra.get("name"), str):
        metadata["dataset"] = dataset.extra["name"]
    draft = ManifestDraft("segmentation", list(dataset.channel_names), metadata=metadata)
    training = _channel_files(images, ending)
    _complete(training, count, images, ending)
    for case, files in sorted(training.items()):
        label = folder / "labelsTr" / f"{case}{ending}"
        if not label.is_file():
            raise InputDataError(label, f"is missing: case {case} has images but no label",
                                 "add the label or move the case's images to imagesTs/")
        draft.rows.append(DraftRow(case, {dataset.channel_names[i]: files[i] for i in range(count)}, label, case))
    tests = folder / "imagesTs"
    if tests.is_dir():
        unlabelled = _channel_files(tests, ending)
        _complete(unlabelled, count, tests, ending)
        for case, files in sorted(unlabelled.items()):
            draft.rows.append(DraftRow(case, {dataset.channel_names[i]: files[i] for i in range(count)}, None, case,
                                       split="unlabelled"))
    if dataset.num_training is not None and dataset.num_training != len(training):
        draft.notes.append(f"dataset.json says numTraining {dataset.num_training}, imagesTr holds {len(training)} cases")
    splits = find_splits(folder)
    if splits is not None:
        folds = fold_of_cases(read_splits(splits), sorted(training), splits)
        for row in draft.rows:
            if row.split is None:
                row.split, row.fold = "train", folds[row.subject_id]
        draft.notes.append(f"folds from {splits}: a recipe's data.fold: k validates on nnU-Net's fold k")
    return draft


def _dataset_json_near(folder: Path) -> Path | None:
    for candidate in (folder / DATASET_JSON, folder.parent / DATASET_JSON):
        if candidate.is_file():
            return candidate
    return None


def nnunet_cases(folder: PathLike, channels: Sequence[str]) -> list[Any] | None:
    """``infer`` cases of an nnU-Net image folder, or None when ``folder`` is not one for these channels.

    It is one when every image file is ``<case>_<XXXX><ending>`` and every case has the same
    channels 0…n-1; n must equal the ``channel_names`` of a nearby ``dataset.json`` (which then
    names them) or, without one, the checkpoint's channel count (channel i is the checkpoint's i).
    A one-channel checkpoint takes a one-channel folder's files as they are.
    """
    from vol_transfer.io.case_inputs import IMAGE_SUFFIXES, Case  # case_inputs imports this module lazily

    folder = Path(folder)
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
             and not p.name.startswith(".")]
    if not files:
        return None
    endings = {next(s for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True) if p.name.lower().endswith(s))
               for p in files}
    if len(endings) != 1:
        return None
    ending = endings.pop()
    cases: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in files:
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            return None
        cases[match["case"]][int(match["index"])] = path
    counts = {tuple(sorted(found)) for found in cases.values()}
    if len(counts) != 1 or counts != {tuple(range(len(next(iter(counts)))))}:
        return None
    count = len(next(iter(counts)))
    dataset_json = _dataset_json_near(folder)
    names: list[str] | None = list(channels) if count == 1 == len(channels) else None  # as infer takes one file
    if names is None and dataset_json is not None:
        try:
            names = read_nnunet_json(dataset_json).channel_names
        except InputDataError:
            names = None  # a Decathlon or other dataset.json: no nnU-Net channel names here
    if names is None or len(names) != count:
        if count != len(channels):
            return None
        names = list(channels)
    return [Case(case, {names[i]: found[i] for i in range(count)}, where=str(folder))
            for case, found in sorted(cases.items())]


__all__ = ["NnunetDataset", "read_nnunet_json", "scan_nnunet", "read_splits", "fold_of_cases", "find_splits",
           "nnunet_cases"]
