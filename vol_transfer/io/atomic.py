"""Atomic file writes: write to a temporary file beside the target, then rename.

A reader never sees a half-written file and an interrupted run leaves the old file intact. A
write that fails for want of disk space or permission is a one-line :class:`WriteError` naming
the target (the temporary is removed); a temporary left by a killed process
(``.<name>.<random>.tmp<suffixes>``) is removed by :func:`remove_stale_temporaries` when the
next run of the same command starts.

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
import errno
import fnmatch
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from vol_transfer.errors import OutputExistsError, PathLike, WriteError

# Fault injection for the tests: SIGKILL this process after a temporary whose target name matches
# this shell pattern (e.g. ``last.pt``) is written, before it is renamed onto the target.
KILL_BEFORE_RENAME_ENV = "VOL_TRANSFER_KILL_BEFORE_RENAME"
# A library error (e.g. torch.save's RuntimeError) while less than this is free means a full disk.
NEARLY_FULL_BYTES = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _suffixes(path: Path) -> str:
    # keep every suffix (".nii.gz") so libraries that dispatch on the extension still work
    return "".join(path.suffixes) if path.suffixes else ""


def _affixes(target: Path) -> tuple[str, str]:
    """The prefix and suffix of ``target``'s temporaries: ``.<stem>.`` and ``.tmp<suffixes>``."""
    return f".{target.name.split('.')[0]}.", f".tmp{_suffixes(target)}"


def write_error(target: PathLike, error: OSError) -> WriteError:
    """The one-line :class:`WriteError` for an ``OSError`` met while writing ``target``."""
    code = error.errno
    reason = error.strerror or str(error) or type(error).__name__
    if code in _FULL:
        fix = "free disk space (or write to another disk), then rerun"
    elif code in _NOT_WRITABLE:
        fix = "choose a folder you can write to, then rerun"
    else:
        fix = "check the output folder, then rerun"
    return WriteError(target, f"cannot be written ({reason}); any previous version is unchanged", fix)


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _kill_if_asked(target: Path) -> None:
    pattern = os.environ.get(KILL_BEFORE_RENAME_ENV)
    if pattern and fnmatch.fnmatchcase(target.name, pattern):
        os.kill(os.getpid(), signal.SIGKILL)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``target``."""
    target = Path(target)
    prefix, suffix = _affixes(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    except OSError as error:
        raise write_error(target, error) from None
    os.close(handle)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        _kill_if_asked(target)
        os.replace(tmp, target)
    except OSError as error:
        if error.errno is None:
            raise
        raise write_error(target, error) from None
    except RuntimeError:
        free = _free_bytes(target.parent)  # measured before the temporary is removed
        if free is not None and free < NEARLY_FULL_BYTES:  # e.g. torch.save: "unexpected pos 576 vs 534"
            raise write_error(target, OSError(errno.ENOSPC, f"the disk is full: {free} bytes free")) from None
        raise
    finally:
        with contextlib.suppress(OSError):
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


def remove_stale_temporaries(folder: PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries :func:`atomic_path` left in ``folder`` for targets named ``names``.

    Call it only while no other process writes those targets (e.g. holding the folder's lock):
    a temporary is then a leftover of a killed write. Returns the removed paths.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".seg.k3j_x9a2.tmp.nii.gz").write_text("half"), (folder / ".other.ab12cd34.tmp.txt").write_text("")
    >>> [p.name for p in remove_stale_temporaries(folder, ["seg.nii.gz"])], sorted(p.name for p in folder.iterdir())
    (['.seg.k3j_x9a2.tmp.nii.gz'], ['.other.ab12cd34.tmp.txt'])
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = []
    for name in names:
        prefix, suffix = _affixes(Path(name))
        patterns.append(re.compile(re.escape(prefix) + r"[A-Za-z0-9_]+" + re.escape(suffix)))
    removed = []
    for path in folder.iterdir():
        if path.name.startswith(".") and any(p.fullmatch(path.name) for p in patterns) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return sorted(removed)
