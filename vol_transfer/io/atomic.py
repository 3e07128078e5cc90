"""Atomic file writes: write to a temporary file beside the target, then rename.

A reader never sees a half-written file and an interrupted run leaves the old file intact.

Example (``nib.save(image, tmp)`` works the same way):
    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> target = Path(folder.name) / "out" / "notes.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('done', ['notes.txt'])
    >>> folder.cleanup()
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from vol_transfer.errors import OutputExistsError, PathLike


def _suffixes(path: Path) -> str:
    # keep every suffix (".nii.gz") so libraries that dispatch on the extension still work
    return "".join(path.suffixes) if path.suffixes else ""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name.split('.')[0]}.", suffix=f".tmp{_suffixes(target)}", dir=target.parent
    )
    os.close(handle)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(target: PathLike, text: str) -> Path:
    """Write ``text`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def atomic_write_bytes(target: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def refuse_to_overwrite(target: PathLike, inputs: Iterable[PathLike] = (), overwrite: bool = True) -> None:
    """Raise if ``target`` is one of ``inputs`` (always) or exists and ``overwrite`` is False."""
    target_path = Path(target).resolve()
    for source in inputs:
        if Path(source).resolve() == target_path:
            raise OutputExistsError(target, "output would overwrite an input file", "choose another output path")
    if not overwrite and target_path.exists():
        raise OutputExistsError(target, "output already exists", "pass --overwrite or choose another output path")
