"""2D slices from 3D volumes: a per-patient budget, empty/out-of-body slices skipped, normalised,
written as PNG or NPZ with a CSV index.

The studies pre-trained 2D networks on slices of many CT/MRI volumes: a fixed number of slices per
patient (evenly spaced through the useful part of the volume), CT clipped to [-1000, 1400] HU and
scaled to [0, 1], MRI slices divided by their maximum, X-rays divided by 255. This module does
that for any :class:`~vol_transfer.io.volumes.Volume` (NIfTI/MHA file, DICOM series folder or the
subjects of a manifest), reusing the shared intensity presets.

Example (needs a CT series, so not run here)::

    spec = SliceSpec(plane="axial", budget=8, normalise="hu:genesis", body_threshold=-500)
    ct = load_dicom_series("lung_ct_dicom/series_B40f")
    slices = select_slices(ct, spec)
    [s.index for s in slices]   # [0, 4, 8, 12, 17, 21, 25, 29]
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np

from vol_transfer.errors import OutputExistsError, PathLike, RecipeError
from vol_transfer.io.atomic import atomic_path, atomic_write_text
from vol_transfer.io.volumes import Volume
from vol_transfer.preprocessing import intensity
from vol_transfer.preprocessing.patches import plane_axes, take_slice

NORMALISE_PRESETS = ("none", "hu:<window>", "mri_max", "percentile", "xray")
INDEX_COLUMNS = ("slice_id", "patient_id", "split", "source", "plane", "axis", "index", "image", "label")


@dataclass
class SliceSpec:
    """How slices are chosen and normalised.

    Attributes:
        plane: ``axial``/``coronal``/``sagittal`` (found from the affine) or an array axis ``0``/``1``/``2``.
        budget: at most this many slices per volume, evenly spaced over the valid ones (None = all).
        skip_empty: drop slices whose label (or, without a label, whose image) is all zero.
        body_threshold: a slice is inside the body if at least ``min_body_fraction`` of it is above
            this value (e.g. -500 HU for CT); None = no body check.
        normalise: ``none``, ``hu:<window>`` (preset name from ``HU_WINDOWS`` or ``hu:-1000,1400``),
            ``mri_max`` (divide each slice by its maximum), ``percentile`` (0.5–99.5 % → [0, 1]) or
            ``xray`` (/255).
        clahe: contrast-limited adaptive histogram equalisation after normalising (values in [0, 1]).
    """

    plane: str = "axial"
    budget: int | None = None
    skip_empty: bool = False
    body_threshold: float | None = None
    min_body_fraction: float = 0.05
    normalise: str = "none"
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tiles: int = 8


@dataclass
class Slice2D:
    """One extracted slice: ``image`` ``(C, H, W)`` float32 and ``label`` ``(H, W)`` or None."""

    index: int
    axis: int
    image: np.ndarray
    label: np.ndarray | None = None


def slice_axis(volume: Volume, plane: str | int) -> int:
    """The array axis to step along for ``plane`` (an anatomical plane name or an axis number)."""
    if isinstance(plane, int) or str(plane).isdigit():
        axis = int(plane)
        if axis not in (0, 1, 2):
            raise RecipeError("plane", f"axis {axis} is not 0, 1 or 2", "use axial/coronal/sagittal or 0/1/2")
        return axis
    try:
        axes = plane_axes(volume.affine, str(plane))
    except ValueError:
        raise RecipeError("plane", f"unknown plane {plane!r}", "use axial, coronal, sagittal or 0/1/2") from None
    return ({0, 1, 2} - set(axes)).pop()


def evenly_spaced(candidates: Sequence[int], budget: int | None) -> list[int]:
    """``budget`` items spread evenly over ``candidates`` (first and last included), or all of them."""
    candidates = list(candidates)
    if budget is None or budget >= len(candidates):
        return candidates
    if budget <= 0:
        return []
    if budget == 1:
        return [candidates[len(candidates) // 2]]
    positions = np.round(np.linspace(0, len(candidates) - 1, budget)).astype(int)
    return [candidates[p] for p in positions]


def valid_slice_mask(volume: Volume, axis: int, spec: SliceSpec, label: np.ndarray | None = None) -> np.ndarray:
    """Per slice along ``axis``: True if it passes the foreground and body checks."""
    image = volume.array
    other = tuple(a for a in range(4) if a != axis + 1)
    valid = np.ones(image.shape[axis + 1], dtype=bool)
    if spec.skip_empty:
        if label is not None:
            valid &= np.any(label != 0, axis=tuple(a for a in range(3) if a != axis))
        else:
            valid &= np.any(image != 0, axis=other)
    if spec.body_threshold is not None:
        inside = np.mean(image > spec.body_threshold, axis=other)
        valid &= inside >= spec.min_body_fraction
    return valid


def normalise_slice(image: np.ndarray, preset: str) -> np.ndarray:
    """Apply one normalisation preset (see :class:`SliceSpec`) to a ``(C, H, W)`` slice, per channel."""
    if preset == "none":
        return np.asarray(image, dtype=np.float32)
    if preset.startswith("hu:"):
        window_text = preset[3:]
        window = window_text if window_text in intensity.HU_WINDOWS else [float(v) for v in window_text.split(",")]
        return intensity.hu_window(image, window)
    if preset == "mri_max":
        return np.stack([intensity.scale_by_max(channel) for channel in image])
    if preset == "percentile":
        clipped = [intensity.percentile_clip(channel) for channel in image]
        return np.stack([_min_max(channel) for channel in clipped])
    if preset == "xray":
        return intensity.scale_uint8(image)
    raise RecipeError("normalise", f"unknown preset {preset!r}", f"use one of {', '.join(NORMALISE_PRESETS)}")


def _min_max(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    return ((array - low) / (high - low) if high > low else np.zeros_like(array)).astype(np.float32)


def clahe(image: np.ndarray, clip_limit: float = 2.0, tiles: int = 8, bins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a 2D image in ``[0, 1]``.

    Each of ``tiles × tiles`` regions gets its own equalising map from a histogram clipped at
    ``clip_limit`` × the mean bin count (the excess spread over all bins, so contrast gain is
    bounded); pixels blend the maps of the four nearest tile centres bilinearly (no tile seams).
    """
    values = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    height, width = values.shape
    levels = np.rint(values * (bins - 1)).astype(np.int64)
    tile_h, tile_w = -(-height // tiles), -(-width // tiles)
    padded = np.pad(levels, ((0, tile_h * tiles - height), (0, tile_w * tiles - width)), mode="reflect")
    blocks = padded.reshape(tiles, tile_h, tiles, tile_w).transpose(0, 2, 1, 3).reshape(tiles, tiles, -1)
    maps = np.empty((tiles, tiles, bins), dtype=np.float32)
    ceiling = max(1.0, clip_limit * blocks.shape[-1] / bins)
    for row in range(tiles):
        for column in range(tiles):
            histogram = np.bincount(blocks[row, column], minlength=bins).astype(np.float64)
            excess = np.maximum(histogram - ceiling, 0).sum()
            histogram = np.minimum(histogram, ceiling) + excess / bins
            cdf = np.cumsum(histogram)
            maps[row, column] = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1e-12)

    def weights(size: int, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(size) + 0.5) / tile - 0.5, 0, tiles - 1)
        low = np.floor(position).astype(int)
        return low, np.minimum(low + 1, tiles - 1), (position - low).astype(np.float32)

    y0, y1, wy = weights(height, tile_h)
    x0, x1, wx = weights(width, tile_w)
    wy, wx = wy[:, None], wx[None, :]
    top = (1 - wx) * maps[y0[:, None], x0[None, :], levels] + wx * maps[y0[:, None], x1[None, :], levels]
    bottom = (1 - wx) * maps[y1[:, None], x0[None, :], levels] + wx * maps[y1[:, None], x1[None, :], levels]
    return ((1 - wy) * top + wy * bottom).astype(np.float32)


def select_slices(volume: Volume, spec: SliceSpec, label: Volume | None = None) -> list[Slice2D]:
    """The slices of ``volume`` chosen by ``spec``, normalised (and CLAHE'd) as ``spec`` says."""
    axis = slice_axis(volume, spec.plane)
    label_array = None if label is None else label.array[0]
    valid = valid_slice_mask(volume, axis, spec, label_array)
    chosen = evenly_spaced(np.flatnonzero(valid).tolist(), spec.budget)
    slices = []
    for index in chosen:
        image = normalise_slice(take_slice(volume.array, index, axis + 1), spec.normalise)
        if spec.clahe:
            image = np.stack([clahe(channel, spec.clahe_clip_limit, spec.clahe_tiles) for channel in image])
        label_slice = None if label_array is None else take_slice(label_array, index, axis).copy()
        slices.append(Slice2D(index, axis, image.astype(np.float32, copy=False), label_slice))
    return slices


def _png_bytes(pixels: np.ndarray, scale: bool) -> bytes:
    from PIL import Image

    data = np.clip(np.rint(pixels * 255), 0, 255) if scale else np.clip(pixels, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(data.astype(np.uint8))).save(buffer, format="PNG")
    return buffer.getvalue()


def write_slice(slice2d: Slice2D, stem: Path, file_format: Literal["png", "npz"]) -> tuple[Path, Path | None]:
    """Write one slice (and its label) atomically; return the image and label paths.

    NPZ: ``image`` float32 ``(C, A, B)`` in array order and ``label`` ``(A, B)``. PNG: 8-bit grey (one
    channel) or RGB (three) of the [0, 1] values and an 8-bit label PNG beside it; PNG rows follow
    the slice's second array axis (transposed), which shows RAS/LPS axial slices the usual way
    (anterior up). Other channel counts need NPZ.
    """
    if file_format == "npz":
        path = stem.with_suffix(".npz")
        arrays = {"image": slice2d.image}
        if slice2d.label is not None:
            arrays["label"] = slice2d.label
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return path, None
    channels = slice2d.image.shape[0]
    if channels not in (1, 3):
        raise RecipeError("format", f"{channels} channels cannot be one PNG", "use --format npz")
    pixels = slice2d.image[0].T if channels == 1 else slice2d.image.transpose(2, 1, 0)
    path = stem.with_suffix(".png")
    with atomic_path(path) as tmp:
        tmp.write_bytes(_png_bytes(pixels, scale=True))
    label_path = None
    if slice2d.label is not None:
        label_path = stem.with_name(stem.name + "_label.png")
        with atomic_path(label_path) as tmp:
            tmp.write_bytes(_png_bytes(slice2d.label.T, scale=False))
    return path, label_path


@dataclass
class SliceSource:
    """One volume to slice: its id, patient, split and where it came from."""

    subject_id: str
    volume: Volume
    label: Volume | None = None
    patient_id: str = ""
    split: str = ""
    source: str = ""


def write_slice_dataset(
    sources: Iterable[SliceSource], out_dir: PathLike, spec: SliceSpec,
    file_format: Literal["png", "npz"] = "png", overwrite: bool = False,
) -> Path:
    """Slice every source into ``out_dir`` and write ``out_dir/slices.csv`` (last, atomically).

    Refuses to write into a folder that already has a ``slices.csv`` unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    index_path = out_dir / "slices.csv"
    if index_path.exists() and not overwrite:
        raise OutputExistsError(index_path, "a slice dataset is already there", "pass --overwrite or choose another --out")
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(INDEX_COLUMNS)
    for item in sources:
        for slice2d in select_slices(item.volume, spec, item.label):
            slice_id = f"{item.subject_id}_{spec.plane}{slice2d.index:04d}"
            image_path, label_path = write_slice(slice2d, out_dir / "images" / slice_id, file_format)
            writer.writerow([
                slice_id, item.patient_id or item.subject_id, item.split, item.source, spec.plane, slice2d.axis,
                slice2d.index, image_path.relative_to(out_dir).as_posix(),
                label_path.relative_to(out_dir).as_posix() if label_path else "",
            ])
    atomic_write_text(index_path, rows.getvalue())
    return index_path


def sources_from_paths(paths: Sequence[PathLike], data_root: PathLike | None = None,
                       split: str | None = None) -> Iterator[SliceSource]:
    """Volumes to slice from image files, DICOM series folders and manifests (``.csv``)."""
    from vol_transfer.io.dicom import load_dicom_series
    from vol_transfer.io.case import load_case as load_subject
    from vol_transfer.io.manifest import read_manifest
    from vol_transfer.io.volumes import load_volume

    for raw in paths:
        path = Path(raw)
        if path.suffix.lower() == ".csv":
            manifest = read_manifest(path, data_root=data_root)
            for subject in manifest.subjects(split):
                image, label = load_subject(subject)
                yield SliceSource(subject.subject_id, image, label, subject.patient_id, subject.split, str(path))
        elif path.is_dir():
            volume = load_dicom_series(path)
            patient = volume.header.get("patient_id", "") if isinstance(volume.header, dict) else ""
            yield SliceSource(path.name, volume, None, patient, "", str(path))
        else:
            volume = load_volume(path, dtype=np.float32)
            yield SliceSource(path.name.split(".")[0], volume, None, "", "", str(path))
