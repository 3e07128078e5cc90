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
