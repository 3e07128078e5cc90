"""Atomic writes: a target is either the old file or the complete new one, never half of either."""

from __future__ import annotations

from pathlib import Path

import pytest

from vol_transfer.errors import OutputExistsError
from vol_transfer.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text, refuse_to_overwrite


def test_write_creates_parent_folders_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "report.txt"
    assert atomic_write_text(target, "hello") == target
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["report.txt"]
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def test_failure_inside_the_block_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "seg.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_temporary_keeps_every_suffix_for_extension_dispatch(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "seg.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_text("x")
    assert (tmp_path / "seg.nii.gz").read_text() == "x"


def test_refuse_to_overwrite(tmp_path: Path) -> None:
    source = tmp_path / "image.nii.gz"
    source.write_text("input")
    with pytest.raises(OutputExistsError, match="overwrite an input"):
        refuse_to_overwrite(tmp_path / "." / "image.nii.gz", [source])  # same file by another spelling
    with pytest.raises(OutputExistsError, match="already exists"):
        refuse_to_overwrite(source, [], overwrite=False)
    refuse_to_overwrite(source, [], overwrite=True)
    refuse_to_overwrite(tmp_path / "new.nii.gz", [source], overwrite=False)


def test_a_full_disk_is_a_one_line_write_error_and_the_old_file_stays(tmp_path: Path, monkeypatch) -> None:
    import errno
    import os

    from vol_transfer.errors import WriteError

    target = tmp_path / "seg.nii.gz"
    target.write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError) as info:
        atomic_write_text(target, "new")
    assert info.value.message == (f"{target}: cannot be written (No space left on device); any previous version is "
                                  "unchanged — free disk space (or write to another disk), then rerun")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_a_library_error_on_a_nearly_full_disk_is_a_write_error(tmp_path: Path, monkeypatch) -> None:
    """torch.save on a full disk raises RuntimeError('... unexpected pos 576 vs 534'), not OSError."""
    from vol_transfer.errors import WriteError
    from vol_transfer.io import atomic

    monkeypatch.setattr(atomic, "_free_bytes", lambda folder: 0)
    with pytest.raises(WriteError, match="the disk is full: 0 bytes free"):
        with atomic_path(tmp_path / "last.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(atomic, "_free_bytes", lambda folder: 10 * atomic.NEARLY_FULL_BYTES)
    with pytest.raises(RuntimeError):  # with space left it is the library's own error
        with atomic_path(tmp_path / "last.pt"):
            raise RuntimeError("a bug")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_the_named_targets_only_are_removed(tmp_path: Path) -> None:
    from vol_transfer.io.atomic import remove_stale_temporaries

    names = [".last.a1b2c3d4.tmp.pt", ".best.x_y9zz00.tmp.pt", ".last.notes.txt", "last.pt", ".other.a1b2c3d4.tmp.pt",
             ".last.a1b2c3d4.tmp.pth"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(tmp_path, ["last.pt", "best.pt"])
    assert [p.name for p in removed] == [".best.x_y9zz00.tmp.pt", ".last.a1b2c3d4.tmp.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.a1b2c3d4.tmp.pth", ".last.notes.txt",
                                                          ".other.a1b2c3d4.tmp.pt", "last.pt"]
