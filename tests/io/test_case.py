"""The one case loader: channels by name in the order asked (exact, then aliases), 4-D files,
only the wanted files read, and the one label-array path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vol_transfer.errors import InputDataError, ManifestError
from vol_transfer.io.case import canonical_channel, label_array, load_case, load_image
from vol_transfer.io.manifest import read_manifest
from vol_transfer.io.volumes import load_volume

MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"
SHAPE = (5, 6, 4)


def _nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


@pytest.fixture
def case(tmp_path: Path) -> Path:
    """Four channels whose voxels all equal their index (flair 0, t1 1, t1ce 2, t2 3), a 4-D file, a label."""
    for value, name in enumerate(("flair", "t1", "t1ce", "t2")):
        _nifti(tmp_path / f"{name}.nii.gz", np.full(SHAPE, float(value), np.float32))
    _nifti(tmp_path / "four.nii.gz", np.stack([np.full(SHAPE, float(v), np.float32) for v in range(4)], axis=-1))
    label = np.zeros(SHAPE, np.float32)
    label[1:3, 1:3, 1:3] = 4
    _nifti(tmp_path / "seg.nii.gz", label)
    return tmp_path


def _values(volume) -> list[float]:
    return [float(np.unique(c)[0]) for c in volume.array]


def _manifest(root: Path, columns: list[str], files: list[str], extra: str = "", labels: str = "0,1,2,4") -> Path:
    path = root / "m.csv"
    path.write_text(f"# labels: {labels}\n{extra}subject_id,split,{','.join(columns)},label\n"
                    f"a,train,{','.join(files)},seg.nii.gz\n")
    return path


def test_channels_come_by_name_in_the_order_asked_whatever_the_column_order(case):
    forward = read_manifest(_manifest(case, ["flair", "t1", "t1ce", "t2"],
                                      ["flair.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz"]), case)
    image, label = load_case(forward.subjects()[0], ["t2", "t1"])
    assert image.channel_names == ("t2", "t1") and _values(image) == [3.0, 1.0] and image.array.dtype == np.float32
    assert label.array.dtype == np.uint8 and label.array.shape == (1, *SHAPE)
    shuffled = read_manifest(_manifest(case, ["t2", "t1ce", "flair", "t1"],
                                       ["t2.nii.gz", "t1ce.nii.gz", "flair.nii.gz", "t1.nii.gz"]), case)
    again, _ = load_case(shuffled.subjects()[0], ["t2", "t1"])
    np.testing.assert_array_equal(again.array, image.array)
    everything, _ = load_case(shuffled.subjects()[0])
    assert everything.channel_names == ("t2", "t1ce", "flair", "t1") and _values(everything) == [3.0, 2.0, 0.0, 1.0]


def test_aliases_match_brats_2023_and_msd_names(case):
    manifest = read_manifest(_manifest(case, ["t2f", "t1n", "t1c", "t2w"],
                                       ["flair.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz"]), case)
    image, _ = load_case(manifest.subjects()[0], ["T1", "t2", "FLAIR", "t1gd"])
    assert _values(image) == [1.0, 3.0, 0.0, 2.0] and image.channel_names == ("T1", "t2", "FLAIR", "t1gd")
    assert [canonical_channel(n) for n in ("T1w", "t1ce", "T2-FLAIR", "FLAIRreg", "T1post", "adc")] == [
        "t1", "t1c", "flair", "flair", "t1c", "adc"]


def test_only_the_wanted_files_are_read(case):
    (case / "flair.nii.gz").write_bytes(b"not a NIfTI at all")
    image = load_image({"flair": case / "flair.nii.gz", "t1": case / "t1.nii.gz"}, ["t1"])
    assert _values(image) == [1.0]


def test_a_missing_channel_is_one_line_naming_case_channels_and_fix(case):
    manifest = read_manifest(_manifest(case, ["flair", "t1"], ["flair.nii.gz", "t1.nii.gz"]), case)
    with pytest.raises(InputDataError) as caught:
        load_case(manifest.subjects()[0], ["t1", "t2"], fix="pass --channels")
    message = caught.value.message
    assert "m.csv line 3 (a): has no channel 't2' (its channels: flair, t1; wanted: t1, t2)" in message
    assert message.endswith("pass --channels") and "\n" not in message
    ambiguous = {"t1c": case / "t1ce.nii.gz", "t1ce": case / "t1ce.nii.gz"}
    with pytest.raises(InputDataError, match="2 channels that could be 't1gd'"):
        load_image(ambiguous, ["t1gd"])


def test_4d_file_volumes_are_image_k_or_declared_names(case):
    image = load_image({"image": case / "four.nii.gz"}, ["image_3", "image_0"])
    assert _values(image) == [3.0, 0.0]
    assert load_image({"image": case / "four.nii.gz"}).channel_names == ("image_0", "image_1", "image_2", "image_3")
    with pytest.raises(InputDataError, match="holds 4 volumes but channel 'image' names one.*image_0 … image_3"):
        load_image({"image": case / "four.nii.gz"}, ["image"])
    with pytest.raises(InputDataError, match="no channel 'image_7'"):
        load_image({"image": case / "four.nii.gz"}, ["image_7"])
    declared = read_manifest(_manifest(case, ["image"], ["four.nii.gz"], "# volumes: image=t2f,t1n,t1c,t2w\n"), case)
    assert declared.volume_names == {"image": ("t2f", "t1n", "t1c", "t2w")}
    image, _ = load_case(declared.subjects()[0], ["t2", "flair"])
    assert _values(image) == [3.0, 0.0]
    wrong = read_manifest(_manifest(case, ["image"], ["four.nii.gz"], "# volumes: image=a,b\n"), case)
    with pytest.raises(InputDataError, match="holds 4 volume.*2 channel names are declared"):
        load_case(wrong.subjects()[0])
    with pytest.raises(ManifestError, match="not a channel column"):
        read_manifest(_manifest(case, ["image"], ["four.nii.gz"], "# volumes: img=a,b\n"), case)


def test_label_array_is_the_one_label_path(case):
    assert label_array(np.array([[[0.0, 4.0]]]), "x").dtype == np.uint8
    assert label_array(np.array([[[0, 300]]]), "x").dtype == np.int32
    with pytest.raises(InputDataError, match="x: label map holds non-integer values"):
        label_array(np.array([0.5]), "x")
    with pytest.raises(InputDataError, match="negative value -1"):
        label_array(np.array([-1, 0]), "x")
    with pytest.raises(InputDataError, match="holds 4 volumes"):
        label_array(np.zeros((4, 2, 2, 2)), "x")
    with pytest.raises(InputDataError, match=r"value\(s\) \[4\] outside the declared labels \[0, 1, 2\]"):
        label_array(np.array([0, 4]), "x", allowed=[0, 1, 2])


def test_load_case_refuses_undeclared_and_4d_labels(case):
    undeclared = read_manifest(_manifest(case, ["t1"], ["t1.nii.gz"], labels="0,1,2"), case)
    with pytest.raises(InputDataError, match=r"seg.nii.gz: label map holds value\(s\) \[4\] outside the declared"):
        load_case(undeclared.subjects()[0])
    four_d = case / "m4.csv"
    four_d.write_text("# labels: 0-3\nsubject_id,split,t1,label\na,train,t1.nii.gz,four.nii.gz\n")
    with pytest.raises(InputDataError, match="four.nii.gz: label map holds 4 volumes"):
        load_case(read_manifest(four_d, case).subjects()[0])


def test_real_brats2018_case_by_name_in_any_column_order(dataset, tmp_path):
    folder = dataset("brats2018_4mod") / "Brats18_2013_11_1"
    files = {m: f"brats2018_4mod/Brats18_2013_11_1/Brats18_2013_11_1_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2", "seg")}
    loaded = []
    for columns in (["flair", "t1", "t1ce", "t2"], ["t2", "t1ce", "t1", "flair"]):
        path = tmp_path / f"{columns[0]}.csv"
        path.write_text("# labels: 0,1,2,4\nsubject_id,split," + ",".join(columns) + ",label\n"
                        "Brats18_2013_11_1,train," + ",".join(files[c] for c in columns) + f",{files['seg']}\n")
        loaded.append(load_case(read_manifest(path, dataset("brats2018_4mod").parent).subjects()[0], ["t1", "t2"]))
    (first, label), (second, _) = loaded
    np.testing.assert_array_equal(first.array, second.array)
    np.testing.assert_array_equal(first.array[0], load_volume(folder / "Brats18_2013_11_1_t1.nii.gz").array[0])
    np.testing.assert_array_equal(first.array[1], load_volume(folder / "Brats18_2013_11_1_t2.nii.gz").array[0])
    assert first.spatial_shape == (240, 240, 155) and set(np.unique(label.array)) == {0, 1, 2, 4}


def test_real_brats2023_and_dicom_study_give_t1_t2(dataset, shared_data):
    from vol_transfer.io.dicom import load_dicom_series

    brats23 = dataset("brats2023_4mod_nolabel")
    image, label = load_case(read_manifest(MANIFESTS / "brats2023_4mod.csv", shared_data).subjects()[0], ["t1", "t2"])
    assert label is None
    np.testing.assert_array_equal(image.array[1], load_volume(brats23 / "BraTS-GLI-00001-000-t2w.nii.gz").array[0])
    study = read_manifest(MANIFESTS / "mr_brain_tumor_progression_study3.csv", shared_data).subjects()[0]
    image, _ = load_case(study, ["t1", "t2"])
    np.testing.assert_array_equal(image.array[0], load_dicom_series(study.channels["t1"]).array[0])
    np.testing.assert_array_equal(image.array[1], load_dicom_series(study.channels["t2"]).array[0])
