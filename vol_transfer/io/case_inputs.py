"""What ``vol-transfer infer`` is given → cases whose channels are named.

An input is an image file, a manifest ``.csv``, a DICOM series folder, or a folder of those (see
:func:`discover_cases`). Each case maps channel names to files; the checkpoint's channels are then
picked from it by name, in the checkpoint's order, by :func:`vol_transfer.io.case.load_case` —
so the column or file order of an input never matters. ``--channels`` (:data:`CHANNELS_HELP`)
names the channels of inputs whose files are not named by modality.

Example::

    cases = discover_cases(["imagesTs/"], ["flair", "t1c"], names="flair=*_0000.nii.gz,t1c=*_0001.nii.gz")
    [(c.name, sorted(c.channels)) for c in cases]      # [('case1', ['flair', 't1c']), ...]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from vol_transfer.errors import InputDataError, PathLike, RecipeError
from vol_transfer.io.case import canonical_channel, volume_count
from vol_transfer.io.volumes import ITK_SUFFIXES, NIFTI_SUFFIXES

IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


@dataclass
class Case:
    """One volume to segment: a name for its outputs and its files by channel name.

    Attributes:
        name: the outputs are ``<name>_seg.nii.gz`` …
        channels: channel name → file or DICOM series folder (a 4-D file may hold several channels).
        volume_names: names of the volumes of 4-D files (file key → names), see :mod:`vol_transfer.io.case`.
        where: where the case came from, for messages.
    """

    name: str
    channels: dict[str, Path]
    volume_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    where: str = ""

    @property
    def paths(self) -> list[Path]:
        return list(self.channels.values())


@dataclass(frozen=True)
class ChannelNames:
    """What ``infer --channels`` says: ``NAME=PATTERN`` pairs, or the input's channel names in order."""

    patterns: dict[str, str] = field(default_factory=dict)
    order: tuple[str, ...] = ()


CHANNELS_HELP = (
    "name the input's channels when its files are not named by modality. NAME=PATTERN,...: in each case "
    "folder the image file (or DICOM series folder) whose name matches the shell-style PATTERN is channel "
    "NAME; when a folder holds several cases (nnU-Net style), the part matched by the first '*' names the case; "
    "with a manifest, NAME=COLUMN reads channel NAME from that column. NAME,NAME,...: the input's channels "
    "in order (the volumes of a 4-D file, or a case folder's image files sorted by name). The checkpoint's "
    "channels are then picked by name. E.g. --channels flair=*_0000.nii.gz,t1c=*_0001.nii.gz  or  "
    "--channels flair,t1,t1c,t2"
)
CHANNELS_FIX = ("name them with --channels, e.g. --channels flair=*_0000.nii.gz,t1c=*_0001.nii.gz (files), "
                "NAME=COLUMN (a manifest) or --channels flair,t1,t1c,t2 (the volumes of a 4-D file)")


def parse_channel_names(text: str | None) -> ChannelNames | None:
    """``"flair=*_0000.nii.gz,t1c=*_0001.nii.gz"`` or ``"flair,t1,t1c,t2"`` → :class:`ChannelNames`.

    Example:
        >>> parse_channel_names("flair=*_0000.nii.gz,t1c=*_0001.nii.gz").patterns
        {'flair': '*_0000.nii.gz', 't1c': '*_0001.nii.gz'}
        >>> parse_channel_names("t1,t2").order
        ('t1', 't2')
    """
    if not text:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    pairs = [p.partition("=") for p in parts]
    if not parts or (any(sep for _, sep, _ in pairs) and not all(name and sep and value for name, sep, value in pairs)):
        raise RecipeError("--channels", f"{text!r} is neither NAME=PATTERN,... nor NAME,NAME,...",
                          "write e.g. --channels flair=*_0000.nii.gz,t1c=*_0001.nii.gz or --channels flair,t1c")
    names = [name.strip() for name, _, _ in pairs]
    if len(set(names)) != len(names):
        raise RecipeError("--channels", f"{text!r} names a channel twice", "give each channel once")
    if pairs[0][1]:
        return ChannelNames(patterns={name.strip(): value.strip() for name, _, value in pairs})
    return ChannelNames(order=tuple(names))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _is_dicom_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    for child in sorted(path.iterdir())[:20]:
        if child.is_file():
            if child.suffix.lower() == ".dcm":
                return True
            with open(child, "rb") as handle:
                if handle.read(132)[128:] == b"DICM":
                    return True
    return False


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _names_channel(entry: Path, channel: str) -> bool:
    """True if a file (or series folder) name has a token meaning ``channel`` (``Flair_x`` ↔ ``flair``)."""
    wanted = canonical_channel(channel)
    stem = _case_name(entry)
    tokens = [t for t in re.split(r"[^A-Za-z0-9]+", stem) if t]
    return canonical_channel(stem) == wanted or any(canonical_channel(t) == wanted for t in tokens)


def _volume_count(path: Path) -> int:
    return volume_count(path) or 1


def _bare(path: Path, channels: Sequence[str], names: ChannelNames | None) -> Case:
    """A case of one file or DICOM series given as is: its channels are the volumes it holds."""
    if names is not None and names.patterns:
        raise RecipeError("--channels", f"NAME=PATTERN matches files inside case folders, not the file {path.name}",
                          "pass the case folder, or name the file's volumes in order: --channels a,b,...")
    if names is not None:
        return Case(_case_name(path), {"image": path}, {"image": names.order})
    key = channels[0] if len(channels) == 1 else "image"  # a one-channel model takes a one-volume input as it is
    return Case(_case_name(path), {key: path})


def _pattern(pattern: str) -> re.Pattern:
    pieces = ["(.*)" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(pieces), re.IGNORECASE)


def _cases_by_pattern(folder: Path, entries: list[Path], patterns: Mapping[str, str]) -> list[Case]:
    found: dict[str, list[tuple[str, Path]]] = {name: [] for name in patterns}
    for name, pattern in patterns.items():
        regex = _pattern(pattern)
        for entry in entries:
            match = regex.fullmatch(entry.name)
            if match:
                found[name].append((match.group(1) if match.groups() else "", entry))
    if not any(found.values()):
        return []
    if all(len(hits) == 1 for hits in found.values()):
        return [Case(folder.name, {name: hits[0][1] for name, hits in found.items()}, where=str(folder))]
    groups: dict[str, dict[str, Path]] = {}
    for name, hits in found.items():
        for case, entry in hits:
            if not case or name in groups.setdefault(case, {}):
                raise InputDataError(folder, f"holds several files matching {name}={patterns[name]}",
                                     "put a '*' where the case name is, e.g. *_0000.nii.gz, or one case per folder")
            groups[case][name] = entry
    for case, channels in sorted(groups.items()):
        missing = [f"{n}={patterns[n]}" for n in patterns if n not in channels]
        if missing:
            raise InputDataError(folder, f"case {case!r} has no file matching {', '.join(missing)}",
                                 "add the file or fix the --channels pattern")
    return [Case(case, {n: groups[case][n] for n in patterns}, where=str(folder)) for case in sorted(groups)]


def _cases_by_order(folder: Path, files: list[Path], order: Sequence[str]) -> list[Case]:
    counts = [_volume_count(f) for f in files]
    if all(c == len(order) for c in counts):  # every file is a case whose volumes these names name
        return [Case(_case_name(f), {"image": f}, {"image": tuple(order)}, where=str(f)) for f in files]
    if len(files) == len(order) and all(c == 1 for c in counts):
        return [Case(folder.name, dict(zip(order, files)), where=str(folder))]
    raise InputDataError(folder, f"holds {len(files)} image file(s) with {counts} volume(s), which --channels "
                                 f"{','.join(order)} ({len(order)} names) cannot name",
                         "give one name per volume of each 4-D file, or per image file of the case folder")


def _cases_by_name(folder: Path, entries: list[Path], files: list[Path], channels: Sequence[str]) -> list[Case]:
    hits = {channel: [e for e in entries if _names_channel(e, channel)] for channel in channels}
    if all(len(h) == 1 for h in hits.values()):
        return [Case(folder.name, {channel: h[0] for channel, h in hits.items()}, where=str(folder))]
    if not any(hits.values()) and files and all(_volume_count(f) == len(channels) for f in files):
        return [Case(_case_name(f), {"image": f}, where=str(f)) for f in files]  # 4-D files: image_0, image_1 …
    channel = next(c for c, h in hits.items() if len(h) != 1)
    found = "no file" if not hits[channel] else f"{len(hits[channel])} files ({', '.join(h.name for h in hits[channel])})"
    raise InputDataError(folder, f"{found} named like channel {channel!r} of the checkpoint's channels {list(channels)}",
                         CHANNELS_FIX)


def _cases_in_folder(folder: Path, channels: Sequence[str], names: ChannelNames | None) -> list[Case]:
    if _is_dicom_folder(folder):
        return [_bare(folder, channels, names)] if not (names and names.patterns) else []
    if names is None:
        from vol_transfer.io.nnunet import nnunet_cases  # lazily: it builds on this module's Case

        nnunet = nnunet_cases(folder, channels)  # <case>_0000.nii.gz … (None when it is not such a folder)
        if nnunet is not None:
            return nnunet
    children = sorted(folder.iterdir())
    files = [p for p in children if _is_image(p)]
    folders = [p for p in children if p.is_dir() and not p.name.startswith(".")]
    if names is not None and names.patterns:
        series = [p for p in folders if _is_dicom_folder(p)]
        cases = _cases_by_pattern(folder, files + series, names.patterns)
        if cases:
            return cases
        folders = [p for p in folders if p not in series]
    elif names is not None and files:
        return _cases_by_order(folder, files, names.order)
    elif files and len(channels) <= 1:
        return [_bare(f, channels, names) for f in files]
    elif len(channels) > 1:
        series = [p for p in folders if _is_dicom_folder(p)]
        if files or any(_names_channel(s, c) for s in series for c in channels):
            return _cases_by_name(folder, files + series, files, channels)
    cases = []
    for child in folders:
        cases.extend(_cases_in_folder(child, channels, names))
    return cases


def _manifest_cases(path: Path, split: str | None, data_root: PathLike | None,
                    names: ChannelNames | None) -> list[Case]:
    from vol_transfer.io.manifest import read_manifest  # manifest imports case: keep this module light

    manifest = read_manifest(path, data_root)
    if names is not None and names.order:
        raise RecipeError("--channels", f"a list of names cannot rename the columns of {path.name}",
                          "map them by name: --channels NAME=COLUMN,...")
    renamed = dict(names.patterns) if names is not None else {}
    unknown = [column for column in renamed.values() if column not in manifest.channel_names]
    if unknown:
        raise RecipeError("--channels", f"{unknown} are not channel columns of {path} ({', '.join(manifest.channel_names)})",
                          "give NAME=COLUMN with the manifest's column names")
    cases = []
    for subject in manifest.subjects(split):
        channels = {name: subject.channels[column] for name, column in renamed.items()}
        channels.update({k: v for k, v in subject.channels.items() if k not in renamed.values() and k not in channels})
        volume_names = {next((n for n, c in renamed.items() if c == k), k): v for k, v in subject.volume_names.items()}
        cases.append(Case(subject.subject_id, channels, volume_names, where=subject.where))
    return cases


def discover_cases(
    inputs: Sequence[PathLike],
    channels: Sequence[str],
    *,
    split: str | None = None,
    data_root: PathLike | None = None,
    names: ChannelNames | str | None = None,
) -> list[Case]:
    """Turn CLI inputs into cases whose channels are named (the checkpoint's ``channels`` pick from them).

    Each input is an image file (one case; its volumes are its channels), a manifest ``.csv``
    (its subjects, optionally of one ``split``; channels named by its columns), a DICOM series
    folder (one single-channel case), or a folder: with one checkpoint channel, every image file
    in it is a case; with several, its image files (and DICOM series sub-folders) are matched to
    the checkpoint's channel names by name token through the channel aliases (``Flair_…`` ↔
    ``flair``, ``…-t2f`` ↔ ``flair``, ``T1prereg`` ↔ ``t1``) and form one case; a folder of
    folders is searched one level at a time. ``names`` (``infer --channels``, see
    :data:`CHANNELS_HELP`) names the channels of inputs whose files are not named by modality.
    """
    if isinstance(names, str):
        names = parse_channel_names(names)
    cases: list[Case] = []
    for item in inputs:
        path = Path(item)
        if path.is_file() and path.suffix.lower() == ".csv":
            cases.extend(_manifest_cases(path, split, data_root, names))
        elif _is_image(path):
            cases.append(_bare(path, channels, names))
        elif path.is_dir():
            found = _cases_in_folder(path, channels, names)
            if not found:
                raise InputDataError(path, "holds no image files or DICOM series" if names is None or not names.patterns
                                     else "holds no file matching the --channels patterns",
                                     "pass a folder of .nii.gz/.mha files or a DICOM series (or fix --channels)")
            cases.extend(found)
        elif path.exists():
            raise InputDataError(path, "is not an image, manifest or folder",
                                 f"pass a {'/'.join(IMAGE_SUFFIXES)} file, a manifest .csv or a folder")
        else:
            raise InputDataError(path, "not found", "check the path")
    names_seen = [c.name for c in cases]
    duplicates = sorted({n for n in names_seen if names_seen.count(n) > 1})
    if duplicates:
        raise InputDataError(duplicates[0], f"{len(duplicates)} case name(s) occur twice, so outputs would collide",
                             "run the duplicates into separate --out folders")
    return cases
