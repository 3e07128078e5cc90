"""Resumable, checksum-verified downloads and safe archive extraction.

A partial download is kept as ``<file>.part`` and continued with an HTTP ``Range`` request; the
finished file is verified against its MD5 before it is renamed into place, so a corrupt or
truncated archive is never mistaken for a good one.

Example (needs the network, so not run here)::

    path = download_file(url, dest_dir, md5="9d24...")   # resumes a partial <file>.part
    extract_archive(path, dest_dir)
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from vol_transfer.errors import InputDataError, PathLike

CHUNK = 1 << 20


def md5_of(path: PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, start: int, timeout: float):
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (https/http only, checked by caller)


def download_file(
    url: str,
    dest_dir: PathLike,
    *,
    md5: str | None = None,
    filename: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    opener: Callable[[str, int, float], object] = _open,
) -> Path:
    """Download ``url`` into ``dest_dir``, resuming a ``.part`` file; verify ``md5``; return the path.

    An existing complete file with the right checksum is not downloaded again.
    """
    if not url.startswith(("http://", "https://")):
        raise InputDataError(url, "only http(s) addresses can be downloaded", "give an http:// or https:// URL")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / (filename or url.rsplit("/", 1)[-1])
    if target.exists() and (md5 is None or md5_of(target) == md5):
        return target
    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    try:
        response = opener(url, start, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the .part is already complete
            response = None
        else:
            raise InputDataError(url, f"download failed with HTTP {exc.code}", "check the address or try later") from None
    except (urllib.error.URLError, OSError) as exc:
        raise InputDataError(url, f"cannot connect ({exc})", "check the network and rerun; the download resumes") from None
    if response is not None:
        status = getattr(response, "status", 200)
        if start and status != 206:
            start = 0  # server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        mode = "ab" if start else "wb"
        with open(part, mode) as handle, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, desc=target.name, disable=not progress
        ) as bar:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    handle.write(block)
                    bar.update(len(block))
            except (OSError, urllib.error.URLError) as exc:
                raise InputDataError(
                    url, f"connection lost after {handle.tell()} bytes ({exc})", "rerun the same command to resume"
                ) from None
            finally:
                response.close()
        if total is not None and part.stat().st_size < total:
            raise InputDataError(
                url, f"download stopped at {part.stat().st_size} of {total} bytes", "rerun the same command to resume"
            )
    if md5 is not None:
        actual = md5_of(part)
        if actual != md5:
            part.unlink()
            raise InputDataError(
                target, f"checksum mismatch (md5 {actual}, expected {md5}); the partial file was removed",
                "rerun to download again",
            )
    os.replace(part, target)
    return target


def _inside(root: Path, member_name: str) -> bool:
    destination = (root / member_name).resolve()
    return destination == root or root in destination.parents


def extract_archive(archive: PathLike, dest_dir: PathLike) -> Path:
    """Extract a .tar(.gz) or .zip into ``dest_dir``, refusing members that escape it."""
    archive, dest_dir = Path(archive), Path(dest_dir).resolve()
    dest_dir.mkdir(parents=True, exist_ok=True)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            bad = [m.name for m in tar.getmembers() if not _inside(dest_dir, m.name) or m.issym() or m.islnk()]
            if bad:
                raise InputDataError(archive, f"archive has unsafe members {bad[:3]}", "do not use this archive")
            tar.extractall(dest_dir, filter="data")
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            bad = [n for n in zipped.namelist() if not _inside(dest_dir, n)]
            if bad:
                raise InputDataError(archive, f"archive has unsafe members {bad[:3]}", "do not use this archive")
            zipped.extractall(dest_dir)
    else:
        raise InputDataError(archive, "not a tar or zip archive", "delete it and rerun the download")
    return dest_dir
