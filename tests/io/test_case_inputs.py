"""``infer`` inputs → cases with named channels: folders matched by name token and aliases,
manifests, 4-D files, and ``--channels`` patterns or order lists."""

from __future__ import annotations

import numpy as np
import pytest

from vol_transfer.errors import InputDataError, RecipeError
from vol_transfer.io.case_inputs import discover_cases, parse_channel_names
from vol_transfer.io.volumes import save_volume


def _image(path, channels: int = 1):
    array = np.zeros((4, 5, 6), np.float32) if channels == 1 else np.zeros((channels, 4, 5, 6), np.float32)
    save_volume(array, path, affine=np.diag([-1.0, -1.0, 2.0, 1.0]))
    return path


def test_folder_semantics(tmp_path):
    case = tmp_path / "cases" / "pat1"
    case.mkdir(parents=True)
    flair, t1c = _image(case / "Flair_x.nii.gz"), _image(case / "T1c_x.nii.gz")
    (case / "notes.txt").write_text("ignored")
    found = discover_cases([tmp_path / "cases"], ["flair", "t1c"])
    assert [(c.name, c.channels) for c in found] == [("pat1", {"flair": flair, "t1c": t1c})]
    single = discover_cases([case], ["image"])
    assert sorted(c.name for c in single) == ["Flair_x", "T1c_x"]
    assert discover_cases([flair], ["image"])[0].name == "Flair_x"


def test_name_tokens_and_aliases_pick_one_file_per_channel(tmp_path):
    brats18 = tmp_path / "Brats18_x"
    brats18.mkdir()
    files = {m: _image(brats18 / f"Brats18_x_{m}.nii.gz") for m in ("flair", "t1", "t1ce", "t2", "seg")}
    (case,) = discover_cases([brats18], ["t1", "t2"])  # 't1' is not fooled by t1ce (a substring match was)
    assert case.channels == {"t1": files["t1"], "t2": files["t2"]}
    brats23 = tmp_path / "BraTS-GLI-1"
    brats23.mkdir()
    new = {m: _image(brats23 / f"BraTS-GLI-1-{m}.nii.gz") for m in ("t2f", "t1n", "t1c", "t2w")}
    (case,) = discover_cases([brats23], ["t1", "t2", "flair", "t1ce"])
    assert case.channels == {"t1": new["t1n"], "t2": new["t2w"], "flair": new["t2f"], "t1ce": new["t1c"]}


def test_unmatched_channel_is_one_line(tmp_path):
    _image(tmp_path / "Flair_x.nii.gz")
    with pytest.raises(InputDataError, match="no file named like channel 't2'.*--channels"):
        discover_cases([tmp_path], ["flair", "t2"])
    with pytest.raises(InputDataError, match="not found"):
        discover_cases([tmp_path / "missing.nii.gz"], ["image"])


def test_duplicate_case_names_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with pytest.raises(InputDataError, match="occur twice"):
        discover_cases([_image(a / "x.nii.gz"), _image(b / "x.nii.gz")], ["image"])


def test_parse_channel_names():
    assert parse_channel_names("flair=*_0000.nii.gz, t1c=*_0001.nii.gz").patterns == {
        "flair": "*_0000.nii.gz", "t1c": "*_0001.nii.gz"}
    assert parse_channel_names("t1,t2").order == ("t1", "t2")
    assert parse_channel_names(None) is None
    for bad in ("flair=a.nii.gz,t1c", "t1,t1", "=x"):
        with pytest.raises(RecipeError, match="--channels"):
            parse_channel_names(bad)


def test_patterns_split_a_flat_nnunet_folder_into_cases(tmp_path):
    for case in ("c1", "c2"):
        for index in range(2):
            _image(tmp_path / f"{case}_{index:04d}.nii.gz")
    cases = discover_cases([tmp_path], ["flair", "t1c"], names="t1c=*_0001.nii.gz,flair=*_0000.nii.gz")
    assert [(c.name, c.channels["flair"].name, c.channels["t1c"].name) for c in cases] == [
        ("c1", "c1_0000.nii.gz", "c1_0001.nii.gz"), ("c2", "c2_0000.nii.gz", "c2_0001.nii.gz")]
    (tmp_path / "c2_0001.nii.gz").unlink()
    with pytest.raises(InputDataError, match="case 'c2' has no file matching t1c="):
        discover_cases([tmp_path], ["flair", "t1c"], names="t1c=*_0001.nii.gz,flair=*_0000.nii.gz")


def test_patterns_in_case_folders_and_manifest_columns(tmp_path):
    for case in ("p1", "p2"):
        (tmp_path / "all" / case).mkdir(parents=True)
        _image(tmp_path / "all" / case / "scan_a.nii.gz")
        _image(tmp_path / "all" / case / "scan_b.nii.gz")
    cases = discover_cases([tmp_path / "all"], ["t1", "t2"], names="t1=*_b.nii.gz,t2=*_a.nii.gz")
    assert [(c.name, c.channels["t1"].name) for c in cases] == [("p1", "scan_b.nii.gz"), ("p2", "scan_b.nii.gz")]
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id,split,mprage,space\np1,test,all/p1/scan_a.nii.gz,all/p1/scan_b.nii.gz\n")
    (case,) = discover_cases([manifest], ["t1"], data_root=tmp_path, names="t1=mprage")
    assert case.channels["t1"].name == "scan_a.nii.gz" and case.channels["space"].name == "scan_b.nii.gz"
    with pytest.raises(RecipeError, match="not channel columns"):
        discover_cases([manifest], ["t1"], data_root=tmp_path, names="t1=t1w")


def test_order_names_the_volumes_of_4d_files(tmp_path):
    _image(tmp_path / "BRATS_001.nii.gz", channels=4)
    _image(tmp_path / "BRATS_002.nii.gz", channels=4)
    cases = discover_cases([tmp_path], ["t1", "t2"], names="flair,t1,t1c,t2")
    assert [(c.name, c.volume_names) for c in cases] == [
        ("BRATS_001", {"image": ("flair", "t1", "t1c", "t2")}), ("BRATS_002", {"image": ("flair", "t1", "t1c", "t2")})]
    (bare,) = discover_cases([tmp_path / "BRATS_001.nii.gz"], ["image_0", "image_1", "image_2", "image_3"])
    assert bare.channels == {"image": tmp_path / "BRATS_001.nii.gz"} and bare.volume_names == {}
    with pytest.raises(InputDataError, match="cannot name"):
        discover_cases([tmp_path], ["t1", "t2"], names="t1,t2,flair")


def test_one_name_names_every_single_volume_file_of_a_folder(tmp_path):
    for name in ("a", "b"):
        _image(tmp_path / f"{name}.nii.gz")
    cases = discover_cases([tmp_path], ["ct"], names="ct")
    assert [(c.name, c.volume_names) for c in cases] == [("a", {"image": ("ct",)}), ("b", {"image": ("ct",)})]


def test_a_multi_series_dicom_study_folder_is_one_case_by_series_name(dataset):
    study = dataset("mr_dicom_brain_tumor_progression") / "Study3"
    (case,) = discover_cases([study], ["t1", "t2", "flair", "t1c"])
    assert {k: v.name for k, v in case.channels.items()} == {
        "t1": "26401-T1prereg-52906", "t2": "37830-T2reg-78532", "flair": "36468-FLAIRreg-58706",
        "t1c": "11-T1post-18670"}
    assert len(discover_cases([study], ["image"])) == 4  # a one-channel model: each series is a case
