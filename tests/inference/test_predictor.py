from __future__ import annotations

import numpy as np
import pytest

from vol_transfer.errors import InputDataError, RecipeError
from vol_transfer.inference.predictor import discover_cases, parse_label_map
from vol_transfer.io.volumes import save_volume


def _image(path):
    save_volume(np.zeros((4, 5, 6), np.float32), path, affine=np.diag([-1.0, -1.0, 2.0, 1.0]))
    return path


def test_folder_semantics(tmp_path):
    case = tmp_path / "cases" / "pat1"
    case.mkdir(parents=True)
    flair, t1c = _image(case / "Flair_x.nii.gz"), _image(case / "T1c_x.nii.gz")
    (case / "notes.txt").write_text("ignored")
    found = discover_cases([tmp_path / "cases"], ["flair", "t1c"])
    assert [(c.name, c.channels) for c in found] == [("pat1", [flair, t1c])]
    single = discover_cases([case], ["image"])
    assert sorted(c.name for c in single) == ["Flair_x", "T1c_x"]
    assert discover_cases([flair], ["image"])[0].name == "Flair_x"


def test_unmatched_channel_is_one_line(tmp_path):
    _image(tmp_path / "Flair_x.nii.gz")
    with pytest.raises(InputDataError, match="no file named like channel 't2'"):
        discover_cases([tmp_path], ["flair", "t2"])
    with pytest.raises(InputDataError, match="not found"):
        discover_cases([tmp_path / "missing.nii.gz"], ["image"])


def test_duplicate_case_names_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with pytest.raises(InputDataError, match="occur twice"):
        discover_cases([_image(a / "x.nii.gz"), _image(b / "x.nii.gz")], ["image"])


def test_parse_label_map():
    assert parse_label_map("1:4,2:5", {}) == {1: 4, 2: 5}
    assert parse_label_map("checkpoint", {"label_mapping": {"1": 1, "2": 2}}) == {1: 1, 2: 2}
    assert parse_label_map(None, {}) is None
    with pytest.raises(RecipeError, match="CLASS:VALUE"):
        parse_label_map("1-4", {})
    with pytest.raises(RecipeError, match="stores no label_mapping"):
        parse_label_map("checkpoint", {})
