"""DICOM in: a folder of slices → one :class:`Volume` per series, and single 2D images (X-ray).

3D series are grouped by SeriesInstanceUID, sorted along the slice normal (the cross product of
the two ImageOrientationPatient vectors) by ImagePositionPatient, rescaled with
RescaleSlope/Intercept (CT → Hounsfield units) and given the RAS+ affine that
:mod:`vol_transfer.io.volumes` uses everywhere. Compressed transfer syntaxes (JPEG 2000 lossless,
JPEG-LS, RLE) are decoded by pydicom's pixel handlers (pylibjpeg / Pillow).

Example (needs DICOM files, so not run here)::

    [s.description for s in list_dicom_series("Study3")]   # ['T1post', 'T1pre_reg', 'FLAIR_reg', 'T2_reg']
    ct = load_dicom_series("example_ct_dicom")
    ct.spatial_shape, ct.spacing, ct.header["units"]       # ((512, 512, 20), (0.9765625, 0.9765625, 2.0), 'HU')
    xray = load_dicom_image("test1.dcm")
    validate_xray_header(xray)                             # []
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from vol_transfer.errors import DicomError, PathLike
from vol_transfer.io.volumes import LPS_TO_RAS, Volume

ORIENTATION_TOLERANCE = 1e-4  # direction cosines written by scanners differ in the last digits
POSITION_TOLERANCE = 0.01  # mm
SPACING_RELATIVE_TOLERANCE = 0.01  # a gap may differ from the typical one by 1 % (rounding)
TILT_TOLERANCE_DEGREES = 0.05

_DECODER_FIX = (
    "install pylibjpeg, pylibjpeg-openjpeg and pylibjpeg-libjpeg (or Pillow) so pydicom can decode it, "
    "or decompress it with `gdcmconv --raw`"
)


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder: its UID, what it is and which files hold it."""

    series_uid: str
    description: str
    modality: str
    series_number: int | None
    files: tuple[Path, ...]
    study_uid: str = ""

    @property
    def num_files(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        return f"{self.series_uid} ({self.modality} '{self.description}', {self.num_files} files)"


# ---------------------------------------------------------------------------------------------
# reading files


def _read_header(path: Path) -> Dataset | None:
    """The header of ``path`` without pixel data, or None if it is not a DICOM file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


_TRUNCATED_FIX = "re-export or re-download the file (or remove it from the series)"


def _read_full(path: Path) -> Dataset:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = pydicom.dcmread(path)
        ended = [w for w in caught if "End of file reached" in str(w.message)]
        for w in caught:
            if w not in ended:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if ended or len(dataset) == 0:  # pydicom gives up on an encapsulated stream cut short
            raise DicomError(path, "is truncated: the file ends before its last data element (the pixel data) is complete",
                             _TRUNCATED_FIX)
        return dataset
    except InvalidDicomError:
        raise DicomError(path, "is not a DICOM file (no 'DICM' marker)", "pass a DICOM file or folder") from None
    except (EOFError, OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DicomError(path, f"cannot read DICOM ({_first_line(exc)})", "re-export or re-download the file") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def list_dicom_series(folder: PathLike) -> list[SeriesInfo]:
    """Every DICOM series under ``folder`` (searched recursively), ordered by series number.

    Non-DICOM files (READMEs, thumbnails) are skipped. Raises :class:`DicomError` if the folder
    does not exist or holds no DICOM file at all.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "folder not found"
        raise DicomError(folder, what, "pass the folder that holds the series' .dcm files")
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped = 0
    for path in _candidate_files(folder):
        header = _read_header(path)
        if header is None:
            skipped += 1
            continue
        groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    if not groups:
        raise DicomError(
            folder, f"holds no DICOM files ({skipped} other files)", "pass the folder that holds the series' .dcm files"
        )
    series = []
    for uid, members in groups.items():
        first = members[0][1]
        number = first.get("SeriesNumber")
        series.append(
            SeriesInfo(
                series_uid=uid,
                description=str(first.get("SeriesDescription", "") or ""),
                modality=str(first.get("Modality", "") or ""),
                series_number=int(number) if number not in (None, "") else None,
                files=tuple(p for p, _ in members),
                study_uid=str(first.get("StudyInstanceUID", "") or ""),
            )
        )
    return sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))


def _choose_series(folder: Path, series: list[SeriesInfo], series_uid: str | None) -> SeriesInfo:
    if series_uid is not None:
        for info in series:
            if info.series_uid == series_uid:
                return info
        listing = "; ".join(s.summary() for s in series)
        raise DicomError(folder, f"has no series {series_uid}; found {listing}",
                         "pass one of the listed SeriesInstanceUIDs")
    if len(series) > 1:
        listing = "; ".join(s.summary() for s in series)
        raise DicomError(
            folder,
            f"holds {len(series)} series: {listing}",
            "pick one with series_uid=... (CLI: --series-uid UID) or give each series its own folder",
        )
    return series[0]


# ---------------------------------------------------------------------------------------------
# geometry


def _orientation(path: Path, ds: Dataset) -> np.ndarray:
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        raise DicomError(
            path,
            "has no ImageOrientationPatient/ImagePositionPatient, so it is not part of a 3D series",
            "read 2D images (X-ray, secondary capture) with load_dicom_image instead",
        )
    return np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)


def _check_consistent(slices: list[tuple[Path, Dataset]]) -> np.ndarray:
    """Check every slice shares orientation, matrix size and pixel spacing; return the IOP."""
    first_path, first = slices[0]
    iop = _orientation(first_path, first)
    size = (int(first.Rows), int(first.Columns))
    spacing = [float(v) for v in first.get("PixelSpacing", [1.0, 1.0])]
    for path, ds in slices[1:]:
        other = _orientation(path, ds)
        if not np.allclose(other, iop, atol=ORIENTATION_TOLERANCE):
            raise DicomError(
                path,
                f"mixed orientations: ImageOrientationPatient {np.round(other, 4).tolist()} differs from "
                f"{np.round(iop, 4).tolist()} in {first_path.name}",
                "remove localizer/scout images or slices from another acquisition, "
                "or give each orientation its own folder",
            )
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise DicomError(
                path,
                f"slice size {int(ds.Rows)}x{int(ds.Columns)} differs from {size[0]}x{size[1]} in {first_path.name}",
                "remove slices that belong to another acquisition",
            )
        other_spacing = [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])]
        if not np.allclose(other_spacing, spacing, atol=1e-4):
            raise DicomError(
                path, f"PixelSpacing {other_spacing} differs from {spacing} in {first_path.name}",
                "remove slices that belong to another acquisition",
            )
    return iop


def _slice_normal(iop: np.ndarray) -> np.ndarray:
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def _check_spacing(folder: Path, paths: list[Path], positions: np.ndarray, normal: np.ndarray) -> None:
    """Raise for duplicate slices, uneven gaps (missing slices) and gantry tilt."""
    along = positions @ normal
    gaps = np.diff(along)
    for i, gap in enumerate(gaps):
        if abs(gap) < POSITION_TOLERANCE:
            raise DicomError(
                paths[i + 1],
                f"duplicate slice: same position z={along[i]:.2f} mm as {paths[i].name}",
                "remove the duplicate file (or split the series if it holds several acquisitions)",
            )
    if len(gaps) >= 2:
        expected = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - expected) > max(POSITION_TOLERANCE, SPACING_RELATIVE_TOLERANCE * expected))
        if bad.size:
            i = int(bad[0])
            gap = float(gaps[i])
            ratio = gap / expected
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
                missing = int(round(ratio)) - 1
                cause = f"{missing} slice{' is' if missing == 1 else 's are'} missing"
                fix = "restore the missing file(s) or export the complete series"
            else:
                cause = "the slices are unevenly spaced"
                fix = "export an evenly spaced series (or resample it) before loading"
            others = f" ({bad.size - 1} more uneven gaps)" if bad.size > 1 else ""
            raise DicomError(
                folder,
                f"slice gap {gap:.4g} mm between z={along[i]:.4g} ({paths[i].name}) and z={along[i + 1]:.4g} "
                f"({paths[i + 1].name}), expected {expected:.4g} mm: {cause}{others}",
                fix,
            )
    if len(positions) >= 2:
        step = positions[-1] - positions[0]
        sideways = np.linalg.norm(step - (step @ normal) * normal)
        tilt = math.degrees(math.atan2(sideways, abs(float(step @ normal))))
        if tilt > TILT_TOLERANCE_DEGREES:
            raise DicomError(
                folder,
                f"gantry tilt: slices are sheared by {tilt:.2f}° "
                f"(positions drift {sideways:.2f} mm sideways across the series)",
                "correct the tilt first (e.g. dcm2niix, which resamples tilted CT) and load the result",
            )


def _affine(iop: np.ndarray, pixel_spacing: Sequence[float], positions: np.ndarray, normal: np.ndarray,
            fallback_spacing: float) -> np.ndarray:
    """RAS+ affine for an array indexed (column, row, slice)."""
    row_spacing, column_spacing = (float(v) for v in pixel_spacing)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * column_spacing  # moving along a row = to the next column
    lps[:3, 1] = iop[3:] * row_spacing  # moving down a column = to the next row
    if len(positions) >= 2:
        lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        lps[:3, 2] = normal * fallback_spacing
    lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ lps  # DICOM patient space is LPS; Volume affines are RAS


# ---------------------------------------------------------------------------------------------
# pixels


def _pixels(path: Path, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(stored values, values after the modality LUT / rescale as float32), each rows × columns."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(path, "has no pixel data (a report, structured report or presentation state?)",
                         "remove it from the folder or pass a file that holds an image")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError(path, f"is a multi-frame image ({int(ds.NumberOfFrames)} frames)",
                         "convert it to single-frame slices or NIfTI first (e.g. dcm2niix)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomError(path, f"is a colour image ({ds.get('PhotometricInterpretation')})",
                         "pass a greyscale image")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing decoders and broken streams
        raise _pixel_error(path, ds, exc) from None
    if "ModalityLUTSequence" in ds:
        return stored, np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    # the common case, done in float32 directly (pydicom's LUT goes through float64: 2x slower)
    values = stored.astype(np.float32)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return stored, values


def _pixel_error(path: Path, ds: Dataset, exc: Exception) -> DicomError:
    """Why the pixels cannot be had: a damaged or truncated file, or (only then) a missing decoder."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", str(syntax))
    detail = _first_line(exc)
    if syntax is None or not getattr(syntax, "is_compressed", False):
        return DicomError(path, f"pixel data is truncated or damaged ({name}: {detail})", _TRUNCATED_FIX)
    try:
        from pydicom.pixels import get_decoder

        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):  # no decoder exists for this syntax at all
        available = False
    if available:
        return DicomError(path, f"compressed pixel data ({name}) cannot be decoded, so the file is damaged or "
                                f"truncated ({detail})", _TRUNCATED_FIX)
    return DicomError(path, f"cannot decode pixel data ({name}: {detail})", _DECODER_FIX)


def _rescaled(path: Path, ds: Dataset) -> np.ndarray:
    return _pixels(path, ds)[1]


def load_dicom_series(folder: PathLike, series_uid: str | None = None) -> Volume:
    """Load one DICOM series from ``folder`` as a single-channel float32 :class:`Volume`.

    CT values come out in Hounsfield units (RescaleSlope/Intercept applied). The array is indexed
    (column, row, slice) with slices sorted along the slice normal, so ``affine`` maps it to RAS+
    world millimetres like every other volume. ``header`` is a dict of the series' facts.

    Raises :class:`DicomError` (one line) for: no DICOM files, several series when none was picked,
    missing pixel data, undecodable compression, mixed orientations, duplicate or missing slices
    (uneven spacing), and gantry tilt.
    """
    folder = Path(folder)
    info = _choose_series(folder, list_dicom_series(folder), series_uid)
    slices = [(path, _read_full(path)) for path in info.files]
    iop = _check_consistent(slices)
    normal = _slice_normal(iop)
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for _, ds in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    paths = [p for p, _ in slices]
    _check_spacing(folder, paths, positions, normal)
    first = slices[0][1]
    for path, ds in slices:
        tilt = float(ds.get("GantryDetectorTilt", 0) or 0)
        if abs(tilt) > TILT_TOLERANCE_DEGREES and len(slices) > 1:
            raise DicomError(path, f"gantry tilt of {tilt:g}° (GantryDetectorTilt)",
                             "correct the tilt first (e.g. dcm2niix) and load the result")
    # (rows, columns) per slice → (columns, rows, slices): the first array axis follows the row
    # vector. Filling a (slices, rows, columns) block and transposing it gives the Fortran layout
    # nibabel uses, without a strided copy.
    block = np.empty((len(slices), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for k, (path, ds) in enumerate(slices):
        block[k] = _rescaled(path, ds)
    array = block.transpose(2, 1, 0)[np.newaxis]
    fallback = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)
    affine = _affine(iop, first.get("PixelSpacing", [1.0, 1.0]), positions, normal, fallback)
    return Volume(array=array, affine=affine, paths=(folder,), header=_series_header(info, first, paths))


def _series_header(info: SeriesInfo, ds: Dataset, paths: list[Path]) -> dict[str, Any]:
    modality = str(ds.get("Modality", ""))
    return {
        "format": "dicom",
        "series_uid": info.series_uid,
        "study_uid": info.study_uid,
        "series_description": info.description,
        "modality": modality,
        "units": "HU" if modality == "CT" else str(ds.get("RescaleType", "") or ""),
        "manufacturer": str(ds.get("Manufacturer", "")),
        "patient_id": str(ds.get("PatientID", "")),
        "transfer_syntax": str(getattr(getattr(ds.file_meta, "TransferSyntaxUID", None), "name", "")),
        "rescale_slope": float(ds.get("RescaleSlope", 1) or 1),
        "rescale_intercept": float(ds.get("RescaleIntercept", 0) or 0),
        "window_center": _first_value(ds.get("WindowCenter")),
        "window_width": _first_value(ds.get("WindowWidth")),
        "files": [str(p) for p in paths],
    }


def _first_value(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0]) if len(value) else None
    return float(value)


# ---------------------------------------------------------------------------------------------
# 2D images (X-ray)


@dataclass
class DicomImage:
    """A single 2D DICOM image (X-ray, secondary capture) and the header facts that matter.

    ``array`` is ``(rows, columns)`` float32 after the modality LUT, with MONOCHROME1 images
    inverted so that higher always means brighter (the window centre is mirrored with them).
    """

    array: np.ndarray
    path: Path
    modality: str
    body_part: str
    view_position: str
    view_position_tag: str
    study_description: str
    photometric: str
    window_center: float | None
    window_width: float | None
    pixel_spacing: tuple[float, float] | None
    dataset: Dataset = field(repr=False)

    def windowed(self, center: float | None = None, width: float | None = None) -> np.ndarray:
        """Intensities mapped to [0, 1] through a window (the file's own window by default)."""
        center = self.window_center if center is None else center
        width = self.window_width if width is None else width
        if center is None or width is None:
            low, high = float(self.array.min()), float(self.array.max())
        else:
            low, high = center - width / 2.0, center + width / 2.0
        scale = high - low if high > low else 1.0
        return np.clip((self.array - low) / scale, 0.0, 1.0).astype(np.float32)


def load_dicom_image(path: PathLike) -> DicomImage:
    """Read a 2D DICOM image. MONOCHROME1 is inverted so that bone is bright in every image."""
    path = Path(path)
    if not path.is_file():
        raise DicomError(path, "file not found", "check the path (and --data-root)")
    ds = _read_full(path)
    stored, values = _pixels(path, ds)
    if values.ndim != 2:
        raise DicomError(path, f"pixel data has shape {values.shape}; expected one 2D image",
                         "pass a single-frame image")
    center = _first_value(ds.get("WindowCenter"))
    width = _first_value(ds.get("WindowWidth"))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "MONOCHROME1":
        low, high = _nominal_range(ds, stored)
        values = (low + high) - values
        if center is not None:
            center = (low + high) - center
    view, view_tag = _view_position(ds)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return DicomImage(
        array=values,
        path=path,
        modality=str(ds.get("Modality", "") or ""),
        body_part=str(ds.get("BodyPartExamined", "") or ""),
        view_position=view,
        view_position_tag=view_tag,
        study_description=str(ds.get("StudyDescription", "") or ""),
        photometric=photometric,
        window_center=center,
        window_width=width,
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
        dataset=ds,
    )


def _nominal_range(ds: Dataset, stored: np.ndarray) -> tuple[float, float]:
    """The value range the stored bits can hold, after the modality LUT (for inversion)."""
    bits = int(ds.get("BitsStored", stored.dtype.itemsize * 8))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    ends = np.asarray(apply_modality_lut(np.asarray([lo, hi], dtype=np.int64), ds), dtype=float)
    return float(ends.min()), float(ends.max())


def _view_position(ds: Dataset) -> tuple[str, str]:
    """The projection (PA/AP/LL...): ViewPosition, else PatientPosition, which some exporters misuse for it."""
    for tag in ("ViewPosition", "PatientPosition"):
        value = str(ds.get(tag, "") or "").strip()
        if value:
            return value, tag
    return "", ""


def validate_xray_header(
    source: DicomImage | Dataset | PathLike,
    expected_modality: Sequence[str] = ("DX", "CR"),
    expected_body_part: Sequence[str] = ("CHEST",),
    expected_views: Sequence[str] = ("PA", "AP"),
    *,
    strict: bool = False,
) -> list[str]:
    """List what is implausible in an X-ray's header (empty list = fine).

    Checks Modality, BodyPartExamined and the view (ViewPosition, or PatientPosition where the
    exporter put it there). With ``strict=True`` raises one :class:`DicomError` naming the file
    and every problem instead.

    Example (a CT slice given as an X-ray)::

        validate_xray_header("test5.dcm")   # ["Modality is 'CT', expected one of DX, CR"]
    """
    if isinstance(source, DicomImage):
        ds, where = source.dataset, source.path
    elif isinstance(source, Dataset):
        ds, where = source, Path(str(getattr(source, "filename", "") or "<dataset>"))
    else:
        where = Path(source)
        if not where.is_file():
            raise DicomError(where, "file not found", "check the path (and --data-root)")
        ds = _read_header(where)
        if ds is None:
            raise DicomError(where, "is not a DICOM file", "pass a DICOM file")
    view, view_tag = _view_position(ds)
    checks = (
        ("Modality", str(ds.get("Modality", "") or "").strip(), expected_modality),
        ("BodyPartExamined", str(ds.get("BodyPartExamined", "") or "").strip(), expected_body_part),
        (f"view position ({view_tag or 'ViewPosition/PatientPosition'})", view, expected_views),
    )
    problems = []
    for name, value, allowed in checks:
        allowed_upper = {a.upper() for a in allowed}
        if not value:
            problems.append(f"{name} is missing, expected one of {', '.join(allowed)}")
        elif allowed_upper and value.upper() not in allowed_upper:
            problems.append(f"{name} is '{value}', expected one of {', '.join(allowed)}")
    if strict and problems:
        raise DicomError(where, "implausible X-ray header: " + "; ".join(problems),
                         "exclude this file or correct its header")
    return problems
