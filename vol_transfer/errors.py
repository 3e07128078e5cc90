"""The few exception types users see.

Every message is one line that names the file (or key), the problem and the fix. The CLI prints
``error: <message>`` and exits non-zero without a traceback unless ``--debug`` is given.

Example:
    >>> raise InputDataError("scan.nii.gz", "contains 12 NaN voxels", "replace them or mask them before use")
    Traceback (most recent call last):
    ...
    vol_transfer.errors.InputDataError: scan.nii.gz: contains 12 NaN voxels — replace them or mask them before use
"""

from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, os.PathLike]


class VolTransferError(Exception):
    """Base class: ``<where>: <problem> — <fix>`` on one line.

    Attributes:
        where: the file path, manifest row or recipe key the problem is in.
        problem: what is wrong.
        fix: what the user should do about it.
        details: every item of a long list the message only summarises (printed with ``--debug``).
    """

    exit_code = 2

    def __init__(self, where: PathLike, problem: str, fix: str) -> None:
        self.where = str(where)
        self.problem = problem
        self.fix = fix
        self.details: list[str] = []
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.where}: {self.problem} — {self.fix}"
        return " ".join(text.split())  # always one line


class InputDataError(VolTransferError):
    """An image, label or DICOM file that cannot be used: corrupt, truncated, NaNs, bad geometry."""


class DicomError(InputDataError):
    """A DICOM file or series that cannot be turned into a volume or image."""


class ManifestError(VolTransferError):
    """A dataset manifest that is broken. May carry many problems, reported at once."""

    def __init__(self, where: PathLike, problems: list[str], fix: str) -> None:
        self.problems = list(problems)
        summary = f"{len(self.problems)} problem(s): " + "; ".join(self.problems)
        super().__init__(where, summary, fix)


class RecipeError(VolTransferError):
    """A recipe key with an unknown name, a wrong type or an impossible value."""


class CheckpointError(VolTransferError):
    """A checkpoint that is unsafe (pickled code), corrupt, or incompatible with the model."""


class OutputExistsError(VolTransferError):
    """Refusal to overwrite an input file or an existing output without ``--overwrite``, or to write
    into a folder another run is writing (:mod:`vol_transfer.io.folder_lock`)."""


class WriteError(VolTransferError):
    """An output that could not be written: the disk is full, read-only, or not writable by the user.

    The target keeps its previous contents (writes are atomic, :mod:`vol_transfer.io.atomic`).
    """


class TrainingInterrupted(VolTransferError):
    """A training run stopped by SIGTERM or SIGINT after writing ``last.pt``; the exit code is
    128 + the signal number, as a shell reports a process the signal ended."""

    def __init__(self, checkpoint: PathLike, iteration: int, signum: int) -> None:
        import signal

        self.exit_code = 128 + signum
        self.iteration = iteration
        super().__init__(checkpoint, f"saved at iteration {iteration} after {signal.Signals(signum).name}",
                         "rerun the same command with --resume to continue from there")


class StudyInterrupted(VolTransferError):
    """A study stopped by SIGTERM or SIGINT: its running arms were told to stop and saved ``last.pt``."""

    def __init__(self, folder: PathLike, signum: int) -> None:
        import signal

        self.exit_code = 128 + signum
        super().__init__(folder, f"interrupted by {signal.Signals(signum).name}: the running arms saved their last "
                                 "checkpoint, the others did not start", "rerun the same command to resume")
