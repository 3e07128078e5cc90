"""``inference_timings.csv``: one row per case of an output folder, saying what wrote its outputs.

Every ``vol-transfer infer`` run into a folder adds its cases' rows and keeps the rows of the
other cases, so the file never loses a record. A row names the checkpoint and a fingerprint of
everything that decides the output (weights, preprocessing, channels, label map, inference
options): ``infer --resume`` keeps a case only when its row carries this run's fingerprint and
its files are whole.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / TIMINGS_FILE
    >>> _ = write_timings([{"case": "a", "total_s": 1.25, "fingerprint": "f00"}], path)
    >>> read_timings(path)["a"]["total_s"], read_timings(path.with_name("none.csv"))
    ('1.250', {})
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vol_transfer.errors import InputDataError, PathLike
from vol_transfer.io.atomic import atomic_write_text

TIMINGS_FILE = "inference_timings.csv"
TIMING_COLUMNS = ("case", "shape", "strategy", "steps", "load_s", "preprocess_s", "predict_s", "write_s", "total_s",
                  "checkpoint", "fingerprint")


def read_timings(path: PathLike) -> dict[str, dict[str, str]]:
    """The rows of an existing timings file by case (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputDataError(path, f"cannot be read ({type(error).__name__}), so its records would be lost",
                             "repair or move it away, then rerun") from None
    if rows and "case" not in rows[0]:
        raise InputDataError(path, "has no 'case' column, so its records would be lost",
                             "move it away (it is not a vol-transfer timings file), then rerun")
    return {row["case"]: row for row in rows if row.get("case")}


def write_timings(rows: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Per-case rows as CSV (seconds with 3 decimals), written atomically; extra columns kept."""
    columns = list(TIMING_COLUMNS) + sorted({k for row in rows for k in row} - set(TIMING_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def fingerprint(model: torch.nn.Module, settings: Mapping[str, Any]) -> str:
    """16 hex digits identifying the weights and the output-deciding ``settings``."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def is_finished(record: Mapping[str, str] | None, outputs: Sequence[Path], key: str) -> bool:
    """True when ``record`` carries ``key`` and every output file is whole, on the recorded grid."""
    from vol_transfer.errors import VolTransferError
    from vol_transfer.io.volumes import load_volume

    if not record or record.get("fingerprint") != key:
        return False
    for path in outputs:
        try:
            volume = load_volume(path)  # reads to the end: checks the gzip CRC and length
        except VolTransferError:
            return False
        if "x".join(str(s) for s in volume.spatial_shape) != record.get("shape"):
            return False
    return True


def file_identity(path: Path) -> tuple[int, int, int]:
    """(inode, size, modification time): changes when another process replaces the file."""
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns
