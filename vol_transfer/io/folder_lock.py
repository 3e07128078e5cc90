"""One writer per output folder: a lock file naming its holder (pid, host, start time, command).

``vol-transfer infer`` and ``train`` hold their output folder's lock while they write, so a second
run into the same folder is refused up front (naming the run that holds it) instead of
interleaving its outputs with the first one's. The lock is an ``flock`` on ``.vol-transfer.lock``:
the kernel releases it when its process ends, however it ends, so the lock file a killed run
leaves behind is stale and the next run takes it over (and says so).

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with FolderLock(folder, "vol-transfer infer") as lock:
    ...     holder = read_holder(lock.path)
    ...     try:
    ...         FolderLock(folder, "a second run").acquire()
    ...     except OutputExistsError as error:
    ...         print("refused:", "is in use by" in error.message)
    refused: True
    >>> holder["command"], holder["pid"] == os.getpid(), (folder / LOCK_NAME).exists()
    ('vol-transfer infer', True, False)
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from vol_transfer.errors import OutputExistsError, PathLike
from vol_transfer.io.atomic import write_error

LOCK_NAME = ".vol-transfer.lock"

logger = logging.getLogger(__name__)


def read_holder(path: PathLike) -> dict[str, Any]:
    """What a lock file says about its holder (empty if unreadable or still being written)."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host-a since 2024-05-01T10:00:00 (vol-transfer infer …)``."""
    if not holder:
        return "a run that is starting"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')} "
            f"({holder.get('command', '?')})")


def current_command() -> str:
    """This process's command line, for the lock file."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return " ".join([name, *sys.argv[1:]])[:500]


class FolderLock:
    """Hold ``folder``'s lock (:data:`LOCK_NAME`) between :meth:`acquire` and :meth:`release`.

    Raises :class:`OutputExistsError` in :meth:`acquire` when a live process holds it. A lock file
    left by a process that has ended is taken over; ``say`` is told whose it was.
    """

    def __init__(self, folder: PathLike, command: str | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command or current_command()
        self.say = say or logger.warning
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_error(self.folder, error) from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise write_error(self.path, error) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputExistsError(
                    self.folder, f"is in use by another run: {describe_holder(read_holder(self.path))}",
                    f"wait for that run to end, or choose another output folder (the lock is {self.path})",
                ) from None
            except OSError as error:  # a filesystem without locks (some network mounts)
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    os.close(fd)
                    raise write_error(self.path, error) from None
                self.say(f"note: {self.folder}: its filesystem cannot lock files ({error.strerror}); make sure one run "
                         "at a time writes here")
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
        previous = read_holder(self.path)
        if previous:
            self.say(f"note: {self.path}: taking over the lock left by {describe_holder(previous)}, "
                     "which is no longer running")
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": self.command}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as error:
            os.close(fd)
            raise write_error(self.path, error) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still locked, so a waiting process sees a new file
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
