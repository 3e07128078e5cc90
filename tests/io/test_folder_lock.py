"""One writer per output folder: a live holder refuses others (named), a dead holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vol_transfer.errors import OutputExistsError
from vol_transfer.io.folder_lock import LOCK_NAME, FolderLock, read_holder

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from vol_transfer.io.folder_lock import FolderLock; "
        "lock = FolderLock(sys.argv[1], 'vol-transfer infer --out held').acquire(); print('held', flush=True); "
        "time.sleep(60)")


def test_a_live_holder_in_another_process_is_named_and_a_killed_one_is_taken_over(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputExistsError) as info:
            FolderLock(tmp_path, "second").acquire()
        message = info.value.message
        assert f"is in use by another run: pid {holder.pid} on " in message and "(vol-transfer infer --out held)" in message
        assert str(tmp_path / LOCK_NAME) in message  # says where the lock is
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    notes: list[str] = []
    with FolderLock(tmp_path, "third", say=notes.append) as lock:
        assert read_holder(lock.path)["command"] == "third" and read_holder(lock.path)["pid"] == os.getpid()
    assert len(notes) == 1 and f"taking over the lock left by pid {holder.pid}" in notes[0]
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_file_being_written_or_garbled_is_still_a_lock(tmp_path):
    (tmp_path / LOCK_NAME).write_text("not json")
    notes: list[str] = []
    with FolderLock(tmp_path, "x", say=notes.append):
        assert read_holder(tmp_path / LOCK_NAME)["command"] == "x"  # the garbled record is replaced
        with pytest.raises(OutputExistsError, match="pid .* since"):
            FolderLock(tmp_path, "y").acquire()
    assert notes == []  # an unreadable record names nobody to take over from


def test_a_filesystem_without_locks_is_written_with_a_note(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    notes: list[str] = []
    with FolderLock(tmp_path, "x", say=notes.append):
        assert read_holder(tmp_path / LOCK_NAME)["command"] == "x"
    assert len(notes) == 1 and "cannot lock files (No locks available)" in notes[0]
