"""Candidate-centred patches: world coordinates (LUNA16 ``candidates.csv``) → voxels → 2D/3D patches.

LUNA16 lists candidates as ``seriesuid, coordX, coordY, coordZ, class`` in **world millimetres of
ITK's physical space, which is LPS** (x grows to the patient's Left, y to Posterior, z to
Superior). Our :class:`~vol_transfer.io.volumes.Volume` affines map voxels to **RAS**, so a LUNA16
point ``(x, y, z)`` is the RAS point ``(-x, -y, z)``; :func:`world_to_voxel` takes the coordinate
system explicitly and never guesses.

Patches are cut in the three orthogonal anatomical planes through the candidate (which array
axes they span follows the image's orientation, see :func:`plane_axes`) and as 3D cubes; parts
outside the image are filled with ``pad_value`` (default: the image minimum, e.g. air in CT).
Sizes are in voxels: resample first (``Preprocessor`` spacing) for patches of a fixed size in mm.

Example (needs a CT series, so not run here)::

    ct = load_dicom_series("lung_ct_dicom/series_B40f")
    candidates = read_candidates("candidates.csv")
    patches = extract_candidate_patches(ct, candidates, size=64, cube=32)
    patches[0].planes["axial"].shape, patches[0].cube.shape   # ((64, 64), (32, 32, 32))
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import nibabel as nib
import numpy as np

from vol_transfer.errors import InputDataError, ManifestError, PathLike
from vol_transfer.io.volumes import Volume

CoordinateSystem = Literal["LPS", "RAS"]
PLANES = ("axial", "coronal", "sagittal")
# the anatomical axis each plane is perpendicular to (axcodes letters of both directions)
_PLANE_NORMAL = {"axial": "SI", "coronal": "AP", "sagittal": "LR"}
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")


@dataclass(frozen=True)
class Candidate:
    """One LUNA16-style candidate: a world point (in ``system`` coordinates) and its class."""

    series_uid: str
    world: tuple[float, float, float]
    label: int = 1
    system: CoordinateSystem = "LPS"
    line: int = 0


def read_candidates(path: PathLike, system: CoordinateSystem = "LPS") -> list[Candidate]:
    """Read a LUNA16 ``candidates.csv`` (or ``annotations.csv``: no ``class`` → 1).

    Raises :class:`ManifestError` listing every bad row at once.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, ["candidates file not found"], "check the path")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CANDIDATE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(path, [f"header lacks column(s) {missing}"],
                                "use the LUNA16 layout: seriesuid,coordX,coordY,coordZ,class")
        candidates, problems = [], []
        for line, row in enumerate(reader, start=2):
            try:
                world = tuple(float(row[c]) for c in ("coordX", "coordY", "coordZ"))
                label = int(float(row["class"])) if row.get("class") not in (None, "") else 1
            except (TypeError, ValueError):
                problems.append(f"line {line}: coordinates/class are not numbers")
                continue
            if not all(np.isfinite(world)):
                problems.append(f"line {line}: non-finite coordinate")
                continue
            candidates.append(Candidate(row["seriesuid"].strip(), world, label, system, line))  # type: ignore[arg-type]
    if problems:
        raise ManifestError(path, problems, "fix those rows (coordinates in mm, class 0 or 1)")
    return candidates


def to_ras(world: Sequence[float], system: CoordinateSystem) -> np.ndarray:
    """A world point in RAS: LPS points have x and y negated."""
    point = np.asarray(world, dtype=float)
    if system == "LPS":
        return point * np.array([-1.0, -1.0, 1.0])
    if system == "RAS":
        return point
    raise ValueError(f"unknown coordinate system {system!r}; use 'LPS' (ITK, DICOM, LUNA16) or 'RAS' (NIfTI)")


def world_to_voxel(affine: np.ndarray, world: Sequence[float], system: CoordinateSystem) -> np.ndarray:
    """Continuous voxel index ``(i, j, k)`` of a world point through a voxel → RAS affine."""
    ras = to_ras(world, system)
    return (np.linalg.inv(affine) @ np.r_[ras, 1.0])[:3]


def voxel_to_world(affine: np.ndarray, voxel: Sequence[float], system: CoordinateSystem = "RAS") -> np.ndarray:
    """World point of a (continuous) voxel index, in RAS or LPS."""
    ras = (affine @ np.r_[np.asarray(voxel, dtype=float), 1.0])[:3]
    return to_ras(ras, system)  # the LPS↔RAS flip is its own inverse


def plane_axes(affine: np.ndarray, plane: str) -> tuple[int, int]:
    """The two array axes (ascending) a plane spans; the third is closest to the plane's normal."""
    if plane not in _PLANE_NORMAL:
        raise ValueError(f"unknown plane {plane!r}; use one of {PLANES}")
    codes = nib.aff2axcodes(affine)
    normal_axis = next(axis for axis, code in enumerate(codes) if code in _PLANE_NORMAL[plane])
    return tuple(a for a in range(3) if a != normal_axis)  # type: ignore[return-value]


def crop_padded(array: np.ndarray, centre: Sequence[int], size: Sequence[int], pad_value: float) -> np.ndarray:
    """The ``size`` block of ``array`` whose element ``size // 2`` is ``centre``; outside → ``pad_value``."""
    out = np.full(tuple(size), pad_value, dtype=array.dtype)
    source, target = [], []
    for c, s, extent in zip(centre, size, array.shape):
        start = int(c) - s // 2
        low, high = max(start, 0), min(start + s, extent)
        if high <= low:
            return out  # entirely outside
        source.append(slice(low, high))
        target.append(slice(low - start, high - start))
    out[tuple(target)] = array[tuple(source)]
    return out


def take_slice(array: np.ndarray, index: int, axis: int) -> np.ndarray:
    """``array``'s slice ``index`` along ``axis`` as a view (``np.take`` first copies a non-contiguous array whole)."""
    selector = [slice(None)] * array.ndim
    selector[axis] = index
    return array[tuple(selector)]


def extract_plane(
    image: np.ndarray, affine: np.ndarray, centre: Sequence[int], plane: str, size: int | Sequence[int],
    pad_value: float, axes: tuple[int, int] | None = None,
) -> np.ndarray:
    """A 2D patch of a 3D array in an anatomical plane, centred on the voxel ``centre``.

    ``axes`` (from :func:`plane_axes`) may be passed to skip recomputing them per candidate.
    """
    axes = plane_axes(affine, plane) if axes is None else axes
    normal = ({0, 1, 2} - set(axes)).pop()
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    if not 0 <= centre[normal] < image.shape[normal]:
        return np.full(sizes, pad_value, dtype=image.dtype)
    section = take_slice(image, int(centre[normal]), normal)
    return crop_padded(section, [centre[a] for a in axes], sizes, pad_value)


@dataclass
class CandidatePatch:
    """Patches cut around one candidate: ``planes[name]`` (2D) and ``cube`` (3D or None)."""

    candidate: Candidate
    voxel: np.ndarray
    inside: bool
    planes: dict[str, np.ndarray] = field(default_factory=dict)
    cube: np.ndarray | None = None


def extract_candidate_patches(
    volume: Volume,
    candidates: Sequence[Candidate],
    size: int | Sequence[int] = 64,
    planes: Sequence[str] = PLANES,
    cube: int | Sequence[int] | None = None,
    pad_value: float | None = None,
    channel: int = 0,
    skip_outside: bool = False,
) -> list[CandidatePatch]:
    """Cut 2D patches (and optionally cubes) around each candidate of ``volume``.

    Candidates outside the image get all-padding patches (``inside=False``), or are dropped with
    ``skip_outside``. Raises :class:`InputDataError` if a candidate's series UID names another series
    (when the volume's header knows its own).
    """
    image = volume.array[channel]
    pad = float(image.min()) if pad_value is None else float(pad_value)
    own_uid = volume.header.get("series_uid") if isinstance(volume.header, dict) else None
    axes_of = {plane: plane_axes(volume.affine, plane) for plane in planes}
    results = []
    for candidate in candidates:
        if own_uid and candidate.series_uid and candidate.series_uid != own_uid:
            raise InputDataError(volume.name, f"candidate on line {candidate.line} is for series {candidate.series_uid}, "
                                 f"not {own_uid}", "select the candidates of this series (seriesuid column)")
        voxel = world_to_voxel(volume.affine, candidate.world, candidate.system)
        centre = np.rint(voxel).astype(int)
        inside = bool(np.all(centre >= 0) and np.all(centre < np.asarray(image.shape)))
        if skip_outside and not inside:
            continue
        patch = CandidatePatch(candidate, voxel, inside)
        for plane in planes:
            patch.planes[plane] = extract_plane(image, volume.affine, centre, plane, size, pad, axes_of[plane])
        if cube is not None:
            cube_size = (cube,) * 3 if isinstance(cube, int) else tuple(cube)
            patch.cube = crop_padded(image, centre, cube_size, pad)
        results.append(patch)
    return results


def write_candidate_patches(
    volume: Volume, candidates: Sequence[Candidate], out_dir: PathLike, size: int = 64, cube: int | None = None,
    planes: Sequence[str] = PLANES, overwrite: bool = False,
) -> Path:
    """Cut patches for the candidates of ``volume`` into ``out_dir/patches/*.npz`` + ``patches.csv``.

    Each NPZ holds one array per plane (``axial``, …) and ``cube`` when asked for. The index lists
    the candidate, its class, world point, voxel and whether it lies inside the image; it is
    written last and atomically, and an existing one is kept unless ``overwrite``.
    """
    import io

    from vol_transfer.errors import OutputExistsError
    from vol_transfer.io.atomic import atomic_path, atomic_write_text

    out_dir = Path(out_dir)
    index_path = out_dir / "patches.csv"
    if index_path.exists() and not overwrite:
        raise OutputExistsError(index_path, "a patch dataset is already there", "pass --overwrite or choose another --out")
    own_uid = volume.header.get("series_uid", "") if isinstance(volume.header, dict) else ""
    mine = [c for c in candidates if not own_uid or not c.series_uid or c.series_uid == own_uid]
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["patch_id", "seriesuid", "class", "coordX", "coordY", "coordZ", "system", "voxel_i", "voxel_j",
                     "voxel_k", "inside", "file"])
    for number, patch in enumerate(extract_candidate_patches(volume, mine, size, planes, cube)):
        patch_id = f"candidate{number:05d}"
        arrays = dict(patch.planes)
        if patch.cube is not None:
            arrays["cube"] = patch.cube
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        target = out_dir / "patches" / f"{patch_id}.npz"
        with atomic_path(target) as tmp:
            tmp.write_bytes(buffer.getvalue())
        c = patch.candidate
        writer.writerow([patch_id, c.series_uid, c.label, *c.world, c.system, *np.round(patch.voxel, 3),
                         int(patch.inside), target.relative_to(out_dir).as_posix()])
    atomic_write_text(index_path, rows.getvalue())
    return index_path
