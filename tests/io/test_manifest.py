"""Manifests: structure checks (read_manifest) and data checks (validate_manifest) report every
problem at once; load_case stacks channels and puts the label on the image grid."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vol_transfer.errors import InputDataError, ManifestError
from vol_transfer.io.case import load_case, onto_grid
from vol_transfer.io.manifest import parse_label_values, read_manifest, validate_manifest
from vol_transfer.io.volumes import Volume

MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path.name


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A tiny two-channel dataset: good cases a, b and assorted broken files."""
    rng = np.random.default_rng(0)
    shape = (6, 7, 5)
    label = np.zeros(shape, np.float32)
    label[2:4, 2:5, 1:3] = 1
    label[3, 3, 3] = 2
    for case in ("a", "b"):
        _nifti(tmp_path / f"{case}_t1.nii.gz", rng.random(shape).astype(np.float32))
        _nifti(tmp_path / f"{case}_t2.nii.gz", rng.random(shape).astype(np.float32))
        _nifti(tmp_path / f"{case}_seg.nii.gz", label)
    _nifti(tmp_path / "small_t2.nii.gz", rng.random((6, 7, 4)).astype(np.float32))
    shifted = np.eye(4)
    shifted[0, 3] = 5.0  # 5 mm along x
    _nifti(tmp_path / "shifted_t2.nii.gz", rng.random(shape).astype(np.float32), shifted)
    bad_values = label.copy()
    bad_values[0, 0, 0] = 7
    _nifti(tmp_path / "seven_seg.nii.gz", bad_values)
    _nifti(tmp_path / "empty_seg.nii.gz", np.zeros(shape, np.uint8))
    nan = rng.random(shape).astype(np.float32)
    nan[1, 1, 1] = np.nan
    _nifti(tmp_path / "nan_t1.nii.gz", nan)
    whole = gzip.compress((tmp_path / "a_t1.nii.gz").read_bytes())
    (tmp_path / "truncated_t1.nii.gz").write_bytes(gzip.decompress(whole)[:200])
    return tmp_path


GOOD = """# kind: segmentation
# labels: 0,1,2
# label_names: background,head,body
subject_id,split,t1,t2,label
a,train,a_t1.nii.gz,a_t2.nii.gz,a_seg.nii.gz
b,validation,b_t1.nii.gz,b_t2.nii.gz,b_seg.nii.gz
"""


def test_read_good_manifest_and_load_case(root):
    manifest = read_manifest(_write(root / "m.csv", GOOD), data_root=root)
    assert manifest.channel_names == ("t1", "t2")
    assert manifest.splits == ["train", "validation"]
    assert [s.subject_id for s in manifest.subjects("validation")] == ["b"]
    assert manifest.label_values == (0, 1, 2) and manifest.label_names == ("background", "head", "body")
    subject = manifest.subjects("train")[0]
    assert list(subject.channels) == ["t1", "t2"] and subject.channels["t1"] == root / "a_t1.nii.gz"
    image, label = load_case(subject)
    assert image.array.shape == (2, 6, 7, 5) and image.array.dtype == np.float32
    assert image.channel_names == ("t1", "t2")
    assert label.array.dtype == np.uint8 and set(np.unique(label.array)) == {0, 1, 2}
    report = validate_manifest(manifest)
    assert report.ok and report.checked == 2
    assert "[train] cases" in report.table() and "0, 1, 2" in report.table()


def test_structural_problems_are_all_reported_at_once(root):
    text = """# labels: 0,1,2
subject_id,split,t1,t2,label
a,train,a_t1.nii.gz,a_t2.nii.gz,a_seg.nii.gz
a,train,b_t1.nii.gz,b_t2.nii.gz,b_seg.nii.gz
c,training,missing_t1.nii.gz,a_t2.nii.gz,a_seg.nii.gz
d,test,a_t1.nii.gz,,
e,test,a_t1.nii.gz,a_t2.nii.gz
"""
    with pytest.raises(ManifestError) as caught:
        read_manifest(_write(root / "bad.csv", text), data_root=root)
    problems = caught.value.problems
    joined = " | ".join(problems)
    assert "line 4 (a): duplicate subject_id (first on line 3)" in joined
    assert "line 5 (c): unknown split 'training'" in joined
    assert "line 5 (c): t1 file missing_t1.nii.gz not found" in joined
    assert "line 6 (d): empty 't2' cell" in joined
    assert "line 6 (d): empty label cell" in joined
    assert "line 7: has 4 cells, the header has 5" in joined
    assert len(problems) == 6
    message = caught.value.message
    assert "\n" not in message and str(root / "bad.csv") in message and "6 problem(s)" in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("split,t1\ntrain,a_t1.nii.gz\n", "no 'subject_id' column"),
        ("subject_id,split,label\na,train,a_seg.nii.gz\n", "no image channel column"),
        ("subject_id,split,t1,label\na,train,a_t1.nii.gz,a_seg.nii.gz\n", "no '# labels: 0,1,...' declaration"),
        ("# lables: 0,1\nsubject_id,split,t1\na,train,a_t1.nii.gz\n", "unknown declaration '# lables:'"),
        ("# labels: 0,x\nsubject_id,split,t1\na,train,a_t1.nii.gz\n", "not a list of integers"),
        ("# labels: 0,1\n# label_names: bg\nsubject_id,split,t1\na,train,a_t1.nii.gz\n", "1 names for 2"),
        ("# kind: regression\nsubject_id,split,t1\na,train,a_t1.nii.gz\n", "kind: regression"),
        ("subject_id,split,t1\n", "no subjects listed"),
    ],
)
def test_header_problems(root, text, expected):
    with pytest.raises(ManifestError, match=expected):
        read_manifest(_write(root / "h.csv", text), data_root=root)


def test_missing_manifest_and_unknown_split_query(root):
    with pytest.raises(ManifestError, match="manifest file not found"):
        read_manifest(root / "nope.csv", data_root=root)
    manifest = read_manifest(_write(root / "m.csv", GOOD), data_root=root)
    with pytest.raises(ManifestError, match="unknown split 'val'"):
        manifest.subjects("val")


def test_deep_problems_are_all_reported_at_once(root):
    text = """# labels: 0,1,2
subject_id,split,t1,t2,label
shape,train,a_t1.nii.gz,small_t2.nii.gz,a_seg.nii.gz
affine,train,a_t1.nii.gz,shifted_t2.nii.gz,a_seg.nii.gz
values,train,a_t1.nii.gz,a_t2.nii.gz,seven_seg.nii.gz
empty,validation,a_t1.nii.gz,a_t2.nii.gz,empty_seg.nii.gz
nan,validation,nan_t1.nii.gz,a_t2.nii.gz,a_seg.nii.gz
truncated,test,truncated_t1.nii.gz,a_t2.nii.gz,a_seg.nii.gz
labelgrid,test,small_t2.nii.gz,small_t2.nii.gz,a_seg.nii.gz
good,test,b_t1.nii.gz,b_t2.nii.gz,b_seg.nii.gz
"""
    manifest = read_manifest(_write(root / "deep.csv", text), data_root=root)  # structure is fine
    report = validate_manifest(manifest)
    assert report.checked == 8 and not report.ok
    by_case = {p.split(")")[0].split("(")[1]: p for p in report.problems}
    assert set(by_case) == {"shape", "affine", "values", "empty", "nan", "truncated", "labelgrid"}
    assert "channel 't2' shape (6, 7, 4) differs" in by_case["shape"]
    assert "channel 't2' affine differs" in by_case["affine"] and "5 mm" in by_case["affine"]
    assert "value(s) [7] outside the declared labels [0, 1, 2]" in by_case["values"]
    assert "is empty (background only)" in by_case["empty"]
    assert "NaN/Inf" in by_case["nan"] and "nan_t1.nii.gz" in by_case["nan"]
    assert "corrupt or truncated" in by_case["truncated"]
    assert "label shape (6, 7, 5) differs" in by_case["labelgrid"]
    with pytest.raises(ManifestError) as caught:
        report.raise_if_invalid()
    assert len(caught.value.problems) == 7 and "\n" not in caught.value.message


def test_msd_outliers_are_caught(dataset, tmp_path):
    root = dataset("msd_hippocampus").parent
    text = """# labels: 0,1,2
subject_id,split,image,label
hippocampus_118,train,msd_hippocampus/outliers/hippocampus_118_image_nolabel.nii.gz,msd_hippocampus/labelsTr/hippocampus_118.nii.gz
hippocampus_010,train,msd_hippocampus/imagesTr/hippocampus_010.nii.gz,msd_hippocampus/outliers/hippocampus_010_label_noimage.nii.gz
hippocampus_281,train,msd_hippocampus/imagesTr/hippocampus_001.nii.gz,msd_hippocampus/outliers/hippocampus_281_label_noimage.nii.gz
"""
    with pytest.raises(ManifestError) as caught:
        read_manifest(_write(tmp_path / "outliers.csv", text), data_root=root)
    assert [p.split(":")[0] for p in caught.value.problems] == ["line 3 (hippocampus_118)", "line 4 (hippocampus_010)"]
    deep = read_manifest(_write(tmp_path / "281.csv", text.splitlines()[0] + "\n" + text.splitlines()[1] + "\n"
                                + text.splitlines()[4] + "\n"), data_root=root)
    report = validate_manifest(deep)
    assert len(report.problems) == 1 and "(512, 512, 94) differs" in report.problems[0]
    with pytest.raises(InputDataError, match="512, 512, 94"):
        load_case(deep.subjects()[0])


def test_classification_manifest(root):
    for name in ("x1.png", "x2.png", "x3.png"):
        (root / name).write_bytes(b"not really an image")
    text = """# kind: classification
# classes: NORMAL,PNEUMONIA
subject_id,split,patient_id,image,label
x1,train,p1,x1.png,NORMAL
x2,validation,p1,x2.png,PNEUMONIA
x3,train,p2,x3.png,COVID
"""
    with pytest.raises(ManifestError) as caught:
        read_manifest(_write(root / "c.csv", text), data_root=root)
    joined = " | ".join(caught.value.problems)
    assert "patient p1 is in split 'validation' here but 'train' on line 4" in joined
    assert "class 'COVID' is not declared" in joined
    good = read_manifest(_write(root / "c.csv", text.replace("validation,p1", "train,p1").replace("COVID", "NORMAL")),
                         data_root=root)
    assert good.kind == "classification" and good.classes == ("NORMAL", "PNEUMONIA")
    assert good.subjects()[1].label == "PNEUMONIA" and good.subjects()[1].patient_id == "p1"
    report = validate_manifest(good)
    assert len(report.problems) == 3 and "cannot read image" in report.problems[0]
    with pytest.raises(InputDataError, match="classification case"):
        load_case(good.subjects()[0])


def test_label_in_another_axis_order_is_put_on_the_image_grid():
    image = Volume(np.zeros((1, 4, 3, 2), np.float32), np.diag([-2.0, -1.0, 1.0, 1.0]))
    flipped_affine = np.diag([-2.0, 1.0, 1.0, 1.0])
    flipped_affine[1, 3] = -2.0  # the same three y positions (0, -1, -2), in reverse order
    label_array = np.zeros((1, 4, 3, 2), np.uint8)
    label_array[0, 1, 0, 1] = 1  # y index 0 here is world y = -2 = image y index 2
    moved = onto_grid(Volume(label_array, flipped_affine), image)
    assert moved.array[0, 1, 2, 1] == 1 and moved.array.sum() == 1
    np.testing.assert_array_equal(moved.affine, image.affine)
    with pytest.raises(InputDataError, match="affine differs"):
        onto_grid(Volume(label_array, np.diag([-2.0, 1.0, 1.0, 1.0])), image)


def test_parse_label_values():
    assert parse_label_values("0-3, 7") == (0, 1, 2, 3, 7)
    assert parse_label_values("2,1,1") == (1, 2)


SHIPPED = sorted(p.name for p in MANIFESTS.glob("*.csv"))


def test_every_dataset_has_a_shipped_manifest():
    assert {"msd_hippocampus.csv", "brats2015_flair_t1c.csv", "brats2023_4mod.csv", "chest_xray_kermany.csv",
            "ct_abdomen_totalsegmentator.csv", "lung_ct_dicom.csv", "mr_brain_tumor_progression_study3.csv",
            "mr_hippocrop_dicom.csv"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_manifest_is_valid_on_the_real_data(shared_data, name):
    manifest = read_manifest(MANIFESTS / name, data_root=shared_data)
    sample = 40 if manifest.kind == "classification" else None
    report = validate_manifest(manifest, sample=sample)
    assert report.ok, report.problems
    assert report.checked == (sample or len(manifest.subjects()))


def test_shipped_hippocampus_split_and_contents(shared_data):
    manifest = read_manifest(MANIFESTS / "msd_hippocampus.csv", data_root=shared_data)
    counts = {s: len(manifest.subjects(s)) for s in manifest.splits}
    assert counts == {"train": 140, "validation": 30, "test": 30}
    images = sorted(p.name for p in (shared_data / "msd_hippocampus" / "imagesTr").glob("*.nii.gz"))
    assert sorted(s.channels["image"].name for s in manifest.subjects()) == images
    assert not any("outliers" in str(s.channels["image"]) for s in manifest.subjects())


def test_shipped_ct_label_lines_up_with_the_dicom_series(shared_data):
    manifest = read_manifest(MANIFESTS / "ct_abdomen_totalsegmentator.csv", data_root=shared_data)
    image, label = load_case(manifest.subjects()[0])
    assert image.spatial_shape == label.spatial_shape == (512, 512, 20)
    liver_hu = float(np.median(image.array[0][label.array[0] == 5]))
    assert 30 < liver_hu < 120  # liver parenchyma, so the label sits on the right voxels


def test_shipped_kermany_split_is_by_patient(shared_data):
    manifest = read_manifest(MANIFESTS / "chest_xray_kermany.csv", data_root=shared_data)
    assert manifest.kind == "classification" and manifest.splits == ["train", "validation"]
    assert len(manifest.subjects()) == 5216
    train = {s.patient_id for s in manifest.subjects("train")}
    validation = {s.patient_id for s in manifest.subjects("validation")}
    assert train and validation and not train & validation


def test_a_path_climbing_out_of_the_data_root_is_refused_unless_declared(tmp_path):
    """Issue 15: ``../x`` in a manifest reads outside --data-root only when the manifest opts in."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    for folder in (root / "sub", outside):
        (folder / "x.nii.gz").write_bytes(b"")
    rows = "subject_id,split,image\na,train,../outside/x.nii.gz\nb,train,sub/../sub/x.nii.gz\n" \
           f"c,train,{outside / 'x.nii.gz'}\n"
    manifest = tmp_path / "m.csv"
    manifest.write_text(rows)
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest, data_root=root)
    assert info.value.problems == [
        f"line 2 (a): image path ../outside/x.nii.gz leads outside the data root {root} (refused, so a manifest "
        "cannot read files elsewhere by accident; to allow it, declare '# allow_outside_data_root: yes' above the header)"
    ]  # b stays inside; c is an absolute path, taken as written
    manifest.write_text("# allow_outside_data_root: yes\n" + rows)
    subjects = read_manifest(manifest, data_root=root).subjects()
    assert [s.channels["image"].resolve() for s in subjects] == [outside / "x.nii.gz", root / "sub" / "x.nii.gz",
                                                                 outside / "x.nii.gz"]
