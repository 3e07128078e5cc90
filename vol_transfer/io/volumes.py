"""Volumes in one in-memory form: a channels-first array plus its geometry.

NIfTI (.nii, .nii.gz) is read with nibabel; MHA/NRRD/NRRD-like files with SimpleITK. Whatever
the file, the array is ``(C, X, Y, Z)`` in the file's voxel order and ``affine`` maps voxel
indices to RAS+ world millimetres (nibabel's convention), so one affine serves both readers.

One file per channel is stacked into a case's image by :func:`vol_transfer.io.case.load_image`.

Example (needs image files, so not run here)::

    flair = load_volume("Flair.nii.gz")
    flair.array.shape, flair.axcodes   # ((1, 240, 240, 155), ('L', 'P', 'S'))
    save_volume(prediction, "seg.nii.gz", reference=flair)
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from vol_transfer.errors import InputDataError, PathLike
from vol_transfer.io.atomic import atomic_path, refuse_to_overwrite

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
AFFINE_TOLERANCE = 1e-3  # mm; headers written by different tools differ in float rounding

# ITK's and DICOM's physical space is LPS; nibabel's (and every Volume affine) is RAS: flip the
# first two world axes. Its own inverse, so it also maps RAS to LPS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A channels-first image and its geometry.

    Attributes:
        array: ``(C, X, Y, Z)`` voxel data.
        affine: 4×4 voxel → RAS+ world (mm) matrix.
        paths: the file(s) it was read from, one per channel (empty if made in memory).
        header: the source NIfTI header (kept so saving can reuse codes and units), or None.
    """

    array: np.ndarray
    affine: np.ndarray
    paths: tuple[Path, ...] = ()
    header: Any = None
    channel_names: tuple[str, ...] = field(default=())

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[1:4])  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return str(self.paths[0]) if self.paths else "<in-memory volume>"


def is_nifti(path: PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_itk(path: PathLike) -> bool:
    return str(path).lower().endswith(ITK_SUFFIXES)


def _gunzip_verified(path: Path) -> bytes:
    """Decompress a whole .gz file, checking its CRC and length trailer.

    nibabel stops reading once it has the voxels it needs and so never sees the gzip trailer: a
    flipped bit in the compressed data then loads as silently wrong voxels. Reading to the end
    costs no extra decompression (the voxels are the end of the file) and catches it.
    """
    compressed = path.read_bytes()
    if not compressed:
        raise EOFError("the file is empty")
    if compressed[:2] != b"\x1f\x8b":
        raise ValueError("not gzip-compressed although named .gz")
    chunks: list[bytes] = []
    while compressed:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: header + CRC32/ISIZE check
        chunks.append(inflater.decompress(compressed))
        if not inflater.eof:
            raise EOFError("compressed data ends before the gzip end-of-stream marker (truncated file)")
        compressed = inflater.unused_data  # a further gzip member, if any
    return b"".join(chunks)


class _NotNifti(ValueError):
    """The bytes are readable but are not a NIfTI image."""


_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "gzip-compressed data"),
          (b"PK\x03\x04", "a zip archive"), (b"%PDF", "a PDF document"))


def _what_bytes_hold(raw: bytes) -> str:
    """A guess at what non-NIfTI bytes are, for messages."""
    for magic, what in _MAGIC:
        if raw.startswith(magic):
            return what
    if raw[128:132] == b"DICM":
        return "a DICOM file"
    head = raw[:256]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"text starting {head[:24].decode(errors='replace')!r}"
    return "unknown data"


def _header_size(raw: bytes) -> int:
    """``sizeof_hdr``, the first field of every NIfTI header: 348 (NIfTI-1) or 540 (NIfTI-2), either byte order."""
    header_size = int(np.frombuffer(raw[:4], dtype="<i4")[0]) if len(raw) >= 4 else 0
    if header_size not in (348, 348 << 24, 540, 540 << 24):
        raise _NotNifti(_what_bytes_hold(raw))
    return header_size


def _nifti_from_bytes(raw: bytes) -> nib.Nifti1Image:
    if _header_size(raw) in (540, 540 << 24):
        return nib.Nifti2Image.from_bytes(raw)
    return nib.Nifti1Image.from_bytes(raw)


_NIBABEL_ERRORS = (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError,
                   nib.wrapstruct.WrapStructError)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    try:
        if path.name.lower().endswith(".gz"):
            image = _nifti_from_bytes(_gunzip_verified(path))
        else:
            with open(path, "rb") as handle:
                start = handle.read(352)
            if len(start) >= 4:
                _header_size(start)
            image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except _NotNifti as exc:
        packed = "gzip-compressed, but " if path.name.lower().endswith(".gz") else ""
        raise InputDataError(
            path, f"is not a NIfTI image although named {''.join(path.suffixes[-2:]) or path.suffix}: it is {packed}"
                  f"{exc} (no NIfTI header)",
            "pass the NIfTI file itself, or convert the image to NIfTI first (e.g. with SimpleITK)",
        ) from None
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError, *_NIBABEL_ERRORS) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "incorrect data check" in reason:
            reason = "gzip CRC check failed: the compressed voxels are damaged"
        raise InputDataError(
            path, f"cannot read NIfTI ({reason}); the file is corrupt or truncated",
            "re-download or re-export the file",
        ) from None
    return data, image.affine.copy(), image.header.copy()


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise InputDataError(path, f"cannot read image ({first_line})", "re-export the file") from None
    spatial_dims = image.GetDimension()
    if spatial_dims < 3:
        raise InputDataError(path, f"has {spatial_dims} dimensions {tuple(image.GetSize())}; expected a 3D volume",
                             "pass a 3D image (2D images are read by the 2D tools, e.g. vol_transfer.io.images2d)")
    data = sitk.GetArrayFromImage(image)  # (Z, Y, X[, C])
    if image.GetNumberOfComponentsPerPixel() > 1:
        # (Z, Y, X, C) → (X, Y, Z, C): the NIfTI layout, so _as_channels_first treats both alike
        data = np.transpose(data, (*range(spatial_dims - 1, -1, -1), spatial_dims))
    else:
        data = np.transpose(data, tuple(range(spatial_dims - 1, -1, -1)))
    return data, itk_geometry_to_affine(image), None


def itk_geometry_to_affine(image: Any) -> np.ndarray:
    """RAS+ affine of a 3D (or 3D + channels) SimpleITK image or file reader; ITK's geometry is LPS."""
    dims = len(image.GetSpacing())  # 4 for a 4D NIfTI (channels as a 4th axis): keep the spatial part
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dims, dims)[:3, :3]
    spacing = np.asarray(image.GetSpacing(), dtype=float)[:3]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = np.asarray(image.GetOrigin(), dtype=float)[:3]
    return LPS_TO_RAS @ lps


def set_itk_geometry(image: Any, affine: np.ndarray) -> None:
    """Give a SimpleITK image the geometry of a RAS+ ``affine`` (the inverse of :func:`itk_geometry_to_affine`)."""
    lps = LPS_TO_RAS @ affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in (lps[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(float(o) for o in lps[:3, 3]))


def _as_channels_first(data: np.ndarray, path: Path) -> np.ndarray:
    if data.ndim == 3:
        return data[np.newaxis]
    if data.ndim == 4:
        return np.moveaxis(data, -1, 0)  # NIfTI stores extra components last
    if data.ndim == 5 and data.shape[3] == 1:
        return np.moveaxis(data[:, :, :, 0, :], -1, 0)
    raise InputDataError(path, f"has {data.ndim} dimensions {data.shape}; expected a 3D volume", "pass a 3D image")


def check_finite(array: np.ndarray, where: PathLike) -> None:
    """Raise if ``array`` holds NaN or infinite values."""
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputDataError(
                where, f"contains {bad} NaN/Inf voxels",
                "replace them (e.g. with 0) or mask them before use",
            )


def load_volume(path: PathLike, *, dtype: np.dtype | type | None = None, allow_nonfinite: bool = False) -> Volume:
    """Read one image file into a channels-first :class:`Volume`.

    Raises :class:`InputDataError` (one line, naming the file) for missing, corrupt or truncated
    files, unsupported formats, non-3D data and NaN/Inf voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "file not found", "check the path (and --data-root)")
    if is_nifti(path):
        data, affine, header = _read_nifti(path)
    elif is_itk(path):
        data, affine, header = _read_itk(path)
    else:
        raise InputDataError(
            path, "unsupported file type", f"use one of {', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)} (or a DICOM folder)"
        )
    array = _as_channels_first(np.asarray(data), path)
    check_affine(affine, path)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    if not allow_nonfinite:
        check_finite(array, path)
    return Volume(array=array, affine=affine, paths=(path,), header=header)


def check_affine(affine: np.ndarray, where: PathLike) -> None:
    """Raise if the voxel → world matrix is not finite or is singular (no position in space).

    >>> check_affine(np.diag([1.0, 1.0, 0.0, 1.0]), "scan.nii.gz")
    Traceback (most recent call last):
    ...
    vol_transfer.errors.InputDataError: scan.nii.gz: the affine (voxel → world mm) is singular: voxel axis 2 has length 0, so its voxels have no place in space — repair the header's sform/qform (e.g. re-export the file, or set them with nibabel) and rerun
    """
    matrix = np.asarray(affine, dtype=float)
    fix = "repair the header's sform/qform (e.g. re-export the file, or set them with nibabel) and rerun"
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputDataError(where, "the affine (voxel → world mm) holds NaN or infinite values", fix)
    lengths = np.sqrt((matrix[:3, :3] ** 2).sum(axis=0))
    if np.any(lengths == 0):
        axes = ", ".join(str(int(i)) for i in np.flatnonzero(lengths == 0))
        raise InputDataError(where, f"the affine (voxel → world mm) is singular: voxel axis {axes} has length 0, "
                                    "so its voxels have no place in space", fix)
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-6 * float(np.prod(lengths)):
        raise InputDataError(where, "the affine (voxel → world mm) is singular: its voxel axes are parallel, "
                                    "so its voxels have no place in space", fix)


def same_geometry(a: np.ndarray, b: np.ndarray, tolerance: float = AFFINE_TOLERANCE) -> bool:
    """True if two affines agree within ``tolerance`` (mm)."""
    return bool(np.allclose(a, b, atol=tolerance))


def check_same_grid(reference: Volume, other: Volume, what: str = "image") -> None:
    """Raise if ``other`` is not on ``reference``'s voxel grid (shape and affine)."""
    if other.spatial_shape != reference.spatial_shape:
        raise InputDataError(
            other.name,
            f"{what} shape {other.spatial_shape} differs from {reference.name} {reference.spatial_shape}",
            "resample both onto one grid before use",
        )
    if not same_geometry(other.affine, reference.affine):
        worst = float(np.abs(other.affine - reference.affine).max())
        raise InputDataError(
            other.name,
            f"{what} affine differs from {reference.name} by up to {worst:.4g} mm",
            "resample or re-register so both share one affine",
        )


def load_label(path: PathLike, reference: Volume | None = None) -> Volume:
    """Read a label map as integers (``int64``), checking it lies on ``reference``'s grid.

    Float-stored labels (common in BraTS) are accepted when every value is a whole number.
    """
    label = load_volume(path)
    values = label.array
    if not np.issubdtype(values.dtype, np.integer):
        if np.any(values != np.round(values)):
            raise InputDataError(path, "label map holds non-integer values", "pass the label map, not an image")
    label.array = values.astype(np.int64, copy=False)
    if label.num_channels != 1:
        raise InputDataError(path, f"label map has {label.num_channels} channels", "pass a single-channel label map")
    if reference is not None:
        check_same_grid(reference, label, "label")
    return label


def _nifti_image(array: np.ndarray, affine: np.ndarray, header: Any) -> nib.Nifti1Image:
    if header is not None and isinstance(header, nib.Nifti1Header):
        header = header.copy()
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(None, None)  # our values are final, never rescale them again
    image = nib.Nifti1Image(array, affine, header=header if isinstance(header, nib.Nifti1Header) else None)
    # Make both qform and sform carry the same affine so every reader (ITK reads the qform
    # first, nibabel the sform) sees the same geometry.
    sform_code = int(header["sform_code"]) if isinstance(header, nib.Nifti1Header) and header["sform_code"] > 0 else 1
    qform_code = int(header["qform_code"]) if isinstance(header, nib.Nifti1Header) and header["qform_code"] > 0 else sform_code
    image.set_sform(affine, code=sform_code)
    image.set_qform(affine, code=qform_code)
    return image


def save_volume(
    array: np.ndarray,
    path: PathLike,
    *,
    reference: Volume | None = None,
    affine: np.ndarray | None = None,
    dtype: np.dtype | type | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``array`` (``(X,Y,Z)`` or ``(C,X,Y,Z)``) with the reference's geometry, atomically.

    The output never replaces one of the reference's input files. NIfTI outputs keep the
    reference header's codes and units; MHA/NRRD outputs get the equivalent LPS geometry.
    """
    path = Path(path)
    if reference is None and affine is None:
        raise ValueError("save_volume needs a reference volume or an affine")
    geometry = np.asarray(affine if affine is not None else reference.affine, dtype=float)  # type: ignore[union-attr]
    refuse_to_overwrite(path, reference.paths if reference is not None else (), overwrite=overwrite)
    data = np.asarray(array)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if data.ndim == 4:
        data = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
    if is_nifti(path):
        header = reference.header if reference is not None else None
        image = _nifti_image(data, geometry, header)
        with atomic_path(path) as tmp:
            nib.save(image, str(tmp))
            _check_itk_reads_same_geometry(tmp, geometry, data.shape[:3], path)
    elif is_itk(path):
        _save_itk(data, geometry, path)
    else:
        raise InputDataError(path, "unsupported output type", f"use one of {', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)}")
    return path


def _itk_drift(written: Path, affine: np.ndarray, shape: tuple[int, ...]) -> float:
    """How far (mm, at the grid's corners) ITK places the voxels of a written NIfTI from ``affine``.

    nibabel reads the sform; ITK falls back to the qform, which cannot hold shear, when the sform
    is not orthonormal. Reading the written header back (no voxels) is the only sure test.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(written))
    reader.ReadImageInformation()
    if len(reader.GetSpacing()) < 3 or len(shape) < 3:
        return 0.0  # 2D: no third axis to disagree about
    itk_affine = itk_geometry_to_affine(reader)
    corners = np.array([[i, j, k, 1] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    corners[:, :3] *= np.maximum(np.asarray(shape[:3], dtype=float) - 1, 0)
    return float(np.abs((itk_affine - affine) @ corners.T).max())


def nifti_placement_drift(affine: np.ndarray, shape: Sequence[int]) -> float:
    """What :func:`_itk_drift` would be for a NIfTI written on this grid (sheared affines: > 0).

    Lets a command refuse a sheared input before any work, naming the input. Writes only a
    one-voxel header file to a temporary folder.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.nii"
        nib.save(_nifti_image(np.zeros((1, 1, 1), np.uint8), np.asarray(affine, dtype=float), None), str(probe))
        return _itk_drift(probe, np.asarray(affine, dtype=float), tuple(int(s) for s in shape))


def header_geometry(path: PathLike) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """(affine, spatial shape) of an image file from its header alone; None for folders or unreadable files."""
    path = Path(path)
    try:
        if is_nifti(path):
            image = nib.load(str(path))
            return image.affine.copy(), tuple(int(s) for s in image.shape[:3])
        if is_itk(path):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            return itk_geometry_to_affine(reader), tuple(int(s) for s in reader.GetSize()[:3])
    except Exception:  # noqa: BLE001 - the full read reports what is wrong with the file
        return None
    return None


def _check_itk_reads_same_geometry(written: Path, affine: np.ndarray, shape: tuple[int, ...], path: Path) -> None:
    """Refuse a NIfTI whose geometry ITK would read differently from nibabel (a sheared affine)."""
    drift = _itk_drift(written, affine, shape)
    if drift > AFFINE_TOLERANCE:
        raise InputDataError(
            path,
            f"affine is sheared (non-orthogonal), so ITK-based tools would place voxels up to {drift:.3g} mm "
            "away from where nibabel puts them",
            "resample onto an orthogonal grid first, or save as .mha/.nrrd",
        )


def _save_itk(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    vector = data.ndim == 4
    zyx = np.transpose(data, (2, 1, 0, 3) if vector else (2, 1, 0))
    image = sitk.GetImageFromArray(np.ascontiguousarray(zyx), isVector=vector)
    set_itk_geometry(image, affine)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
