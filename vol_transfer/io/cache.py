"""A disk cache of decoded volumes: decompress once, then memory-map on every later read.

A gzipped 240×240×155 NIfTI costs ~0.1–0.3 s to inflate on every read; training reads the same
few files thousands of times. The first :meth:`VolumeCache.load` of a file decodes it with
:func:`~vol_transfer.io.volumes.load_volume` (or a DICOM folder with
:func:`~vol_transfer.io.dicom.load_dicom_series`) and stores the channels-first array as ``.npy``
plus a small JSON sidecar (affine, header, NaN count). Later loads memory-map the ``.npy``
copy-on-write: callers may modify the array, the cache file never changes.

Entries are keyed by the source's resolved path, modification time and size, so an edited source
is decoded afresh. Every file is written atomically (temporary file + rename) and the sidecar is
written last, so processes sharing one cache folder never see half an entry.

Example:
    >>> cache = VolumeCache("~/.cache/vol_transfer/volumes")          # doctest: +SKIP
    >>> flair = cache.load("Flair_subtrMeanDivStd.nii.gz")            # doctest: +SKIP
    >>> flair.array.shape                                             # doctest: +SKIP
    (1, 240, 240, 155)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from vol_transfer.errors import InputDataError, PathLike
from vol_transfer.io.atomic import atomic_path, atomic_write_text
from vol_transfer.io.volumes import Volume, check_same_grid, load_volume

CACHE_ENV_VAR = "VOL_TRANSFER_CACHE"
_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$VOL_TRANSFER_CACHE``, else ``$XDG_CACHE_HOME/vol_transfer/volumes`` (``~/.cache`` by default)."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "vol_transfer" / "volumes"


def _fingerprint(source: Path) -> dict[str, Any]:
    """What identifies this version of a file, or of every file in a DICOM folder."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for p in files:
            stat = p.stat()
            digest.update(f"{p.relative_to(source)}|{stat.st_mtime_ns}|{stat.st_size}\n".encode())
        return {"files": len(files), "contents": digest.hexdigest()}
    stat = source.stat()
    return {"mtime_ns": stat.st_mtime_ns, "size": stat.st_size}


def _encode_header(header: Any) -> dict[str, Any] | None:
    if isinstance(header, nib.Nifti2Header):
        return {"kind": "nifti2", "bytes": base64.b64encode(header.binaryblock).decode()}
    if isinstance(header, nib.Nifti1Header):
        return {"kind": "nifti1", "bytes": base64.b64encode(header.binaryblock).decode()}
    if isinstance(header, dict):
        return {"kind": "dict", "value": header}
    return None


def _decode_header(stored: dict[str, Any] | None) -> Any:
    if stored is None:
        return None
    if stored["kind"] == "dict":
        return stored["value"]
    header_type = nib.Nifti2Header if stored["kind"] == "nifti2" else nib.Nifti1Header
    return header_type(binaryblock=base64.b64decode(stored["bytes"]))


class VolumeCache:
    """Decoded volumes kept as memory-mappable ``.npy`` files in ``directory``.

    Args:
        directory: where entries live (created on first write); default :func:`default_cache_dir`.
    """

    def __init__(self, directory: PathLike | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()

    # -- keys ------------------------------------------------------------------------------------

    def key(self, source: PathLike, series_uid: str | None = None) -> str:
        """The entry name for the current version of ``source``."""
        resolved = Path(source).resolve()
        identity = {"path": str(resolved), "series_uid": series_uid, "v": _FORMAT_VERSION, **_fingerprint(resolved)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.npy", self.directory / f"{key}.json"

    # -- reading ---------------------------------------------------------------------------------

    def load(
        self,
        source: PathLike,
        *,
        dtype: np.dtype | type | None = None,
        allow_nonfinite: bool = False,
        series_uid: str | None = None,
    ) -> Volume:
        """Like :func:`~vol_transfer.io.volumes.load_volume` (a folder: a DICOM series), through the cache.

        The array is memory-mapped copy-on-write unless ``dtype`` asks for a conversion.
        """
        source = Path(source)
        if not source.exists():
            raise InputDataError(source, "file not found", "check the path (and --data-root)")
        key = self.key(source, series_uid)
        found = self._read_entry(key, source)
        volume, nonfinite = found if found is not None else self._build_entry(key, source, series_uid)
        if nonfinite and not allow_nonfinite:
            raise InputDataError(
                source, f"contains {nonfinite} NaN/Inf voxels", "replace them (e.g. with 0) or mask them before use"
            )
        if dtype is not None and volume.array.dtype != np.dtype(dtype):
            volume.array = volume.array.astype(dtype)
        return volume

    def load_channels(
        self, paths: Sequence[PathLike], *, names: Sequence[str] = (), dtype: np.dtype | type | None = np.float32
    ) -> Volume:
        """Like :func:`~vol_transfer.io.volumes.load_channels`, each channel through the cache."""
        if not paths:
            raise InputDataError("<channels>", "no channel files given", "list at least one image file")
        volumes = [self.load(p, dtype=dtype) for p in paths]
        for other in volumes[1:]:
            check_same_grid(volumes[0], other, "channel")
        array = volumes[0].array if len(volumes) == 1 else np.concatenate([v.array for v in volumes], axis=0)
        return Volume(array=array, affine=volumes[0].affine, paths=tuple(v.paths[0] for v in volumes),
                      header=volumes[0].header, channel_names=tuple(names))

    def _read_entry(self, key: str, source: Path) -> tuple[Volume, int] | None:
        array_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            array = np.load(array_path, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError, json.JSONDecodeError):
            return None  # absent, or damaged by something other than us: rebuild it
        if list(array.shape) != meta["shape"]:
            return None
        volume = Volume(array=array, affine=np.asarray(meta["affine"], dtype=float), paths=(source,),
                        header=_decode_header(meta.get("header")))
        return volume, int(meta.get("nonfinite", 0))

    # -- writing ---------------------------------------------------------------------------------

    def _build_entry(self, key: str, source: Path, series_uid: str | None) -> tuple[Volume, int]:
        if source.is_dir():
            from vol_transfer.io.dicom import load_dicom_series

            volume = load_dicom_series(source, series_uid=series_uid)
        else:
            volume = load_volume(source, allow_nonfinite=True)
        array = np.asarray(volume.array)
        nonfinite = 0
        if np.issubdtype(array.dtype, np.floating):
            nonfinite = int(array.size - np.count_nonzero(np.isfinite(array)))
        array_path, meta_path = self._paths(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(array_path) as tmp:
            np.save(tmp, array, allow_pickle=False)
        meta = {
            "source": str(source.resolve()),
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "affine": np.asarray(volume.affine, dtype=float).tolist(),
            "header": _encode_header(volume.header),
            "nonfinite": nonfinite,
            **_fingerprint(source.resolve()),
        }
        atomic_write_text(meta_path, json.dumps(meta))  # written last: its presence marks a complete entry
        return volume, nonfinite

    # -- housekeeping ----------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """The sidecar of every complete entry (``source``, ``shape``, ``dtype`` …)."""
        found = []
        for meta_path in sorted(self.directory.glob("*.json")):
            try:
                found.append({"key": meta_path.stem, **json.loads(meta_path.read_text())})
            except (OSError, json.JSONDecodeError):
                continue
        return found

    def prune(self) -> int:
        """Delete entries whose source is gone or has changed; return how many were removed."""
        removed = 0
        for entry in self.entries():
            source = Path(entry["source"])
            current = source.exists() and all(entry.get(k) == v for k, v in _fingerprint(source).items())
            if not current:
                for path in self._paths(entry["key"]):
                    path.unlink(missing_ok=True)
                removed += 1
        return removed
