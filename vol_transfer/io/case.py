"""One way to load a case: its channels by name, in the order asked for, and its label map.

A case maps channel names to files (NIfTI/MHA/NRRD, or a DICOM series folder) — a manifest row,
or an input of ``vol-transfer infer``. One file may hold several channels (a 4-D NIfTI, the MSD
Task01 layout): they are named by the manifest's ``# volumes: image=flair,t1,t1c,t2``
declaration (``vol-transfer data manifest --layout msd`` writes it from ``dataset.json``), else
``image_0 … image_{N-1}`` after the column.

Wanted names — a recipe's ``data.channels`` or a checkpoint's ``channels`` — are matched exactly
first, then through :data:`ALIASES` (BraTS 2023 ``t2f`` is ``flair``, ``t1ce``/``t1gd`` are
``t1c``, MSD ``T2w`` is ``t2`` …), so a model trained on ``[t1, t2]`` reads a four-sequence
manifest in any column order, BraTS 2023 files or a multi-series DICOM study alike. Only the
files of wanted channels are read.

:func:`label_array` is the one way a label map becomes an integer array (whole numbers, not
negative, one volume, only declared values); :func:`load_case` uses it.

Example:
    >>> canonical_channel("T2-FLAIR"), canonical_channel("t1gd"), canonical_channel("T1n")
    ('flair', 't1c', 't1')
    >>> label_array(np.array([[[0.0, 2.0]]]), "seg.nii.gz").tolist()
    [[[0, 2]]]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np

from vol_transfer.errors import InputDataError, PathLike
from vol_transfer.io.volumes import Volume, check_same_grid, load_volume, same_geometry

# A channel name (lower case, without spaces, '-' or '_') → the name it stands for.
ALIASES: dict[str, str] = {
    "flair": "flair", "t2f": "flair", "t2flair": "flair",
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1pre": "t1", "t1native": "t1",
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1post": "t1c", "t1wce": "t1c", "t1contrast": "t1c",
    "t2": "t2", "t2w": "t2",
}
_INDEXED = re.compile(r"^(?P<key>.+)_(?P<index>\d+)$")
DEFAULT_FIX = "name the channels in the manifest header (or with vol-transfer infer --channels)"


def canonical_channel(name: str) -> str:
    """The name ``name`` stands for: its :data:`ALIASES` entry, else itself in lower case.

    A trailing ``reg`` (co-registered series, ``FLAIRreg``) is ignored for known names.
    """
    key = re.sub(r"[\s_\-]+", "", name.lower())
    if key in ALIASES:
        return ALIASES[key]
    if key.endswith("reg") and key[:-3] in ALIASES:
        return ALIASES[key[:-3]]
    return key


# --------------------------------------------------------------------------------------------
# Labels


def label_dtype(max_value: int) -> type:
    return np.uint8 if max_value < 256 else np.int32


def label_array(label: Volume | np.ndarray, where: PathLike = "label",
                allowed: Sequence[int] | None = None, *, keep_shape: bool = False) -> np.ndarray:
    """A label map as a 3-D integer array (uint8, or int32 for values above 255).

    ``label`` is a :class:`Volume` or an ``(X, Y, Z)`` / ``(1, X, Y, Z)`` array (any shape with
    ``keep_shape``). Refused, with a one-line :class:`InputDataError` naming ``where``: several
    volumes (a 4-D image or probabilities), non-integer or negative values, and values outside
    ``allowed``.
    """
    data = np.asarray(label.array if isinstance(label, Volume) else label)
    if data.ndim == 4 and not keep_shape:
        if data.shape[0] != 1:
            raise InputDataError(where, f"label map holds {data.shape[0]} volumes (a 4-D file); a label map has one",
                                 "pass the label file (one integer value per voxel), not an image or probabilities")
        data = data[0]
    if data.size == 0:
        return data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise InputDataError(where, "label map holds non-integer values", "use an integer label map (or round it)")
        data = rounded
    low, high = int(data.min()), int(data.max())
    if low < 0:
        raise InputDataError(where, f"label map holds negative value {low}", "labels must be 0 (background) or positive")
    data = data.astype(label_dtype(high), copy=False)
    if allowed is not None:
        present = np.flatnonzero(np.bincount(data.ravel()))
        outside = sorted(set(int(v) for v in present) - set(int(v) for v in allowed))
        if outside:
            raise InputDataError(where, f"label map holds value(s) {outside} outside the declared labels "
                                        f"{sorted(int(v) for v in allowed)}",
                                 "fix the label map, or the manifest's '# labels:' declaration")
    return data


def onto_grid(volume: Volume, reference: Volume, what: str = "label") -> Volume:
    """``volume`` on ``reference``'s voxel grid: as is, or with its axes permuted/flipped when it
    covers the same voxel centres in another axis order (e.g. a dcm2niix NIfTI label of a DICOM
    series). Raises :class:`InputDataError` if the grids differ otherwise."""
    if volume.spatial_shape == reference.spatial_shape and same_geometry(volume.affine, reference.affine):
        return volume
    start = nib.orientations.io_orientation(volume.affine)
    end = nib.orientations.io_orientation(reference.affine)
    transform = nib.orientations.ornt_transform(start, end)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.spatial_shape)
    array = np.stack([nib.orientations.apply_orientation(c, transform) for c in volume.array])
    moved = Volume(np.ascontiguousarray(array), affine, volume.paths, volume.header, volume.channel_names)
    check_same_grid(reference, moved if moved.spatial_shape == reference.spatial_shape else volume, what)
    return moved


def read_label(path: PathLike, reference: Volume | None = None, allowed: Sequence[int] | None = None) -> Volume:
    """A label file as a one-volume integer :class:`Volume` (see :func:`label_array`), on ``reference``'s grid."""
    path = Path(path)
    volume = load_volume(path)
    volume = Volume(label_array(volume, path, allowed)[np.newaxis], volume.affine, (path,), volume.header)
    return volume if reference is None else onto_grid(volume, reference, "label")


# --------------------------------------------------------------------------------------------
# Images


def read_channel(path: PathLike) -> Volume:
    """One file as read: an image file, or a DICOM series folder (via :mod:`vol_transfer.io.dicom`)."""
    path = Path(path)
    if path.is_dir():
        from vol_transfer.io.dicom import load_dicom_series  # imported lazily: pydicom is slow to import

        return load_dicom_series(path)
    return load_volume(path)


def volume_count(path: PathLike) -> int | None:
    """Volumes in a file from its header alone (None when the header cannot tell cheaply)."""
    path = Path(path)
    if path.is_dir():
        return 1
    try:
        shape = nib.load(str(path)).shape
    except Exception:  # noqa: BLE001 - not NIfTI, or unreadable: the full read reports it
        return None
    return int(shape[-1]) if len(shape) in (4, 5) else 1


def _names_in(key: str, count: int, declared: Sequence[str] | None) -> list[str]:
    if declared is not None:
        return list(declared)
    return [key] if count == 1 else [f"{key}_{i}" for i in range(count)]


def _describe(channels: Mapping[str, Path], volume_names: Mapping[str, Sequence[str]]) -> list[str]:
    """Every channel name a case offers, reading headers to count the volumes of 4-D files."""
    names: list[str] = []
    for key, path in channels.items():
        count = volume_count(path) or 1
        names.extend(_names_in(key, count, volume_names.get(key)))
    return names


def _resolve(name: str, channels: Mapping[str, Path],
             volume_names: Mapping[str, Sequence[str]]) -> list[tuple[str, int | None]]:
    """The (file key, volume index or None for the whole file) pairs ``name`` may stand for."""
    exact = [(k, None) for k in channels if k == name and k not in volume_names]
    exact += [(k, i) for k, names in volume_names.items() if k in channels for i, n in enumerate(names) if n == name]
    if exact:
        return exact
    match = _INDEXED.match(name)
    if match and match["key"] in channels and match["key"] not in volume_names:
        return [(match["key"], int(match["index"]))]
    wanted = canonical_channel(name)
    hits = [(k, None) for k in channels if k not in volume_names and canonical_channel(k) == wanted]
    hits += [(k, i) for k, names in volume_names.items() if k in channels
             for i, n in enumerate(names) if canonical_channel(n) == wanted]
    return hits


def load_image(
    channels: Mapping[str, PathLike],
    wanted: Sequence[str] | None = None,
    *,
    volume_names: Mapping[str, Sequence[str]] | None = None,
    where: PathLike = "case",
    fix: str = DEFAULT_FIX,
) -> Volume:
    """The image of one case: exactly the ``wanted`` channels, in that order, as float32.

    Args:
        channels: channel name (manifest column) → file or DICOM series folder.
        wanted: channel names to return; None: every channel of the case, in its order.
        volume_names: names of the volumes of multi-volume files (file key → names).
        where: the case, for messages (e.g. ``"line 4 (pat1) of x.csv"``).
        fix: how to fix a missing channel, for messages.

    Returns:
        A :class:`Volume` whose ``channel_names`` are ``wanted`` (or every channel's name).
    """
    sources = {k: Path(p) for k, p in channels.items()}
    declared = {k: tuple(v) for k, v in (volume_names or {}).items()}
    loaded: dict[str, Volume] = {}

    def read(key: str) -> Volume:
        if key not in loaded:
            volume = read_channel(sources[key])
            names = declared.get(key)
            if names is not None and len(names) != volume.num_channels:
                raise InputDataError(sources[key], f"holds {volume.num_channels} volume(s) but {len(names)} channel "
                                                   f"names are declared for it ({', '.join(names)})",
                                     "declare one name per volume in '# volumes:'")
            loaded[key] = volume
        return loaded[key]

    if wanted is None:
        picks = []
        for key in sources:
            volume = read(key)
            names = _names_in(key, volume.num_channels, declared.get(key))
            picks.extend((name, key, index if volume.num_channels > 1 else None) for index, name in enumerate(names))
    else:
        picks = []
        for name in wanted:
            hits = _resolve(name, sources, declared)
            if len(hits) != 1:
                available = _describe(sources, declared)
                problem = (f"has no channel {name!r}" if not hits else
                           f"has {len(hits)} channels that could be {name!r}") + \
                          f" (its channels: {', '.join(available)}; wanted: {', '.join(wanted)})"
                raise InputDataError(where, problem, fix)
            picks.append((name, *hits[0]))
        used = [(key, index) for _, key, index in picks]
        if len(set(used)) != len(used):
            twice = [name for (name, *pick) in picks if used.count(tuple(pick)) > 1]
            raise InputDataError(where, f"channels {twice} name the same file", fix)

    chosen, reference, reference_name = [], None, ""
    for name, key, index in picks:
        volume = read(key)
        if index is None and volume.num_channels != 1:
            raise InputDataError(sources[key], f"holds {volume.num_channels} volumes but channel {name!r} names one",
                                 f"ask for {key}_0 … {key}_{volume.num_channels - 1}, or declare their names "
                                 f"('# volumes: {key}=a,b,…' in the manifest, --channels a,b,… for infer)")
        if index is not None and index >= volume.num_channels:
            raise InputDataError(sources[key], f"holds {volume.num_channels} volume(s), so it has no channel {name!r}",
                                 fix)
        if reference is None:
            reference, reference_name = volume, name
        else:
            check_same_grid(reference, volume, f"channel {name!r} (vs {reference_name!r})")
        chosen.append((volume, 0 if index is None else index))
    assert reference is not None
    array = np.empty((len(chosen), *reference.spatial_shape), dtype=np.float32)
    for position, (volume, index) in enumerate(chosen):
        array[position] = volume.array[index]  # one float32 copy per channel
    return Volume(array, reference.affine, tuple(sources[key] for _, key, _ in picks), reference.header,
                  tuple(name for name, _, _ in picks))


def load_case(case: Any, wanted: Sequence[str] | None = None, *,
              fix: str = DEFAULT_FIX) -> tuple[Volume, Volume | None]:
    """Image (:func:`load_image`) and label (:func:`read_label`, on the image grid) of one case.

    ``case`` is a manifest :class:`~vol_transfer.io.manifest.Subject` or anything with
    ``channels`` (name → path) and optionally ``volume_names``, ``label`` (a path or None),
    ``label_values`` (declared labels) and ``where`` (text for messages).

    Example::

        image, label = load_case(manifest.subjects("train")[0], ["t1", "t2"])
        image.channel_names, label.array.dtype      # (('t1', 't2'), dtype('uint8'))
    """
    where = getattr(case, "where", None) or getattr(case, "subject_id", None) or getattr(case, "name", "case")
    if isinstance(getattr(case, "label", None), str):
        raise InputDataError(where, "is a classification case (its label is a class name)",
                             "load its image with the 2D loader (vol_transfer.io.images2d)")
    image = load_image(case.channels, wanted, volume_names=getattr(case, "volume_names", None), where=where, fix=fix)
    label_path = getattr(case, "label", None)
    if label_path is None:
        return image, None
    return image, read_label(label_path, image, getattr(case, "label_values", None))
