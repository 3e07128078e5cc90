"""Where the real data lives: ``--data-root``, else ``$VOL_TRANSFER_DATA``, else ``../shared/data``.

Example (needs the data, so not run here)::

    root = resolve_data_root()            # InputDataError naming the fix when it is missing
    (root / "msd_hippocampus").is_dir()   # True
"""

from __future__ import annotations

import os
from pathlib import Path

from vol_transfer.errors import InputDataError

ENV_VAR = "VOL_TRANSFER_DATA"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_data_root() -> Path:
    """The data root used when none is given (may not exist)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    for candidate in (Path.cwd() / ".." / "shared" / "data", _PROJECT_ROOT.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return (_PROJECT_ROOT.parent / "shared" / "data").resolve()


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Return an existing data root directory or raise a one-line error saying how to set it."""
    root = Path(explicit).expanduser() if explicit else default_data_root()
    if not root.is_dir():
        raise InputDataError(
            root,
            "data root does not exist",
            f"pass --data-root DIR or set ${ENV_VAR} to the folder that holds the datasets",
        )
    return root.resolve()
