"""The bad-input corpus: every broken input found so far, made from copies of the real shared data.

Each :class:`BadCase` turns a fresh :class:`Workspace` (three MSD hippocampus cases copied into a
temporary data root, their manifest, a checkpoint, a recipe and "predictions") into one bad
input, and says which user commands read it and which words the one-line error must hold. Add a
case here for every new bug: ``test_corpus.py`` runs every listed command over it.
"""

from __future__ import annotations

import gzip
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import yaml

SUBJECTS = {"h1": "hippocampus_001", "h3": "hippocampus_003", "h4": "hippocampus_004"}
SPLITS = {"h1": "train", "h3": "train", "h4": "validation"}
COMMANDS = ("check", "train", "infer", "evaluate", "slices")
ZSCORE = [{"kind": "zscore", "mask": "nonzero"}]


@dataclass
class Workspace:
    """A temporary copy of real data and everything the commands need, plus where they write."""

    root: Path
    shared: Path  # the real data root the copies came from
    data: Path
    manifest: Path
    images: dict[str, Path]
    labels: dict[str, Path]
    checkpoint: Path
    predictions: Path
    infer_input: Path | None = None  # what `infer` and `slices` read (default: the manifest)
    transfer_source: Path | None = None  # a recipe's transfer.source (train)
    out_file: Path | None = None  # an --out that already exists as a file (infer)

    def outputs(self) -> dict[str, Path]:
        return {name: self.root / f"out_{name}" for name in COMMANDS}

    def recipe(self) -> Path:
        path = self.root / "recipe.yaml"
        recipe = {
            "task": "segmentation",
            "data": {"manifest": str(self.manifest), "data_root": str(self.data), "label_mapping": "hippocampus"},
            "network": {"options": {"width": 0.25}},
            "sampler": {"patches_per_volume": 2, "volumes_per_block": 2},
            "training": {"iterations": 2, "batch_size": 2, "window": [12, 12, 12], "threads": 1, "log_every": 2},
            "validation": {"every": 2},
            "checkpoint": {"every": 2},
        }
        if self.transfer_source is not None:
            recipe["transfer"] = {"source": str(self.transfer_source)}
        path.write_text(yaml.safe_dump(recipe))
        return path

    def argv(self, command: str) -> list[str]:
        out = self.outputs()[command]
        given = str(self.infer_input or self.manifest)
        if command == "check":
            return ["data", "check", str(self.manifest), "--data-root", str(self.data), "--no-progress"]
        if command == "train":
            return ["train", str(self.recipe()), "--run-dir", str(out), "--no-progress"]
        if command == "infer":
            return ["infer", "--checkpoint", str(self.checkpoint), given, "--data-root", str(self.data),
                    "--out", str(self.out_file or out), "--no-progress"]
        if command == "evaluate":
            return ["evaluate", "--pred", str(self.predictions), "--manifest", str(self.manifest), "--data-root",
                    str(self.data), "--out", str(out), "--no-progress", "--overlays", "1"]
        return ["slices", given, "--data-root", str(self.data), "--out", str(out)]


def make_workspace(shared: Path, root: Path, checkpoint: Path) -> Workspace:
    """Copy three real cases (image + label) into ``root/data`` and write their manifest."""
    hippocampus = shared / "msd_hippocampus"
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    predictions = root / "predictions"
    predictions.mkdir()
    images, labels, rows = {}, {}, []
    for short, name in SUBJECTS.items():
        images[short] = shutil.copy(hippocampus / "imagesTr" / f"{name}.nii.gz", data / "images")
        labels[short] = shutil.copy(hippocampus / "labelsTr" / f"{name}.nii.gz", data / "labels")
        shutil.copy(labels[short], predictions / f"{short}_seg.nii.gz")  # perfect "predictions"
        rows.append(f"{short},{SPLITS[short]},images/{name}.nii.gz,labels/{name}.nii.gz")
    manifest = data / "hippo.csv"
    manifest.write_text("# kind: segmentation\n# labels: 0,1,2\nsubject_id,split,image,label\n" + "\n".join(rows) + "\n")
    return Workspace(root, shared, data, manifest, {k: Path(v) for k, v in images.items()},
                     {k: Path(v) for k, v in labels.items()}, checkpoint, predictions)


# --------------------------------------------------------------------------------------------
# How each bad input is made (from the copies; the shared originals are never touched)


def _resave(path: Path, array: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    image = nib.load(str(path))
    data = np.asarray(image.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), str(path))


def truncated_image(ws: Workspace) -> Path:
    raw = ws.images["h1"].read_bytes()
    ws.images["h1"].write_bytes(raw[: len(raw) // 2])
    return ws.images["h1"]


def gzip_text_named_nifti(ws: Workspace) -> Path:
    readme = ws.shared / "msd_hippocampus" / "README.txt"
    ws.images["h1"].write_bytes(gzip.compress(readme.read_bytes()))
    return ws.images["h1"]


def gzip_png_named_nifti(ws: Workspace) -> Path:
    from PIL import Image

    slice_ = np.asarray(nib.load(str(ws.images["h1"])).dataobj)[:, :, 17]
    buffer = io.BytesIO()
    Image.fromarray((255 * slice_ / max(float(slice_.max()), 1.0)).astype(np.uint8)).save(buffer, format="PNG")
    ws.images["h1"].write_bytes(gzip.compress(buffer.getvalue()))
    return ws.images["h1"]


def uncompressed_named_gz(ws: Workspace) -> Path:
    ws.images["h1"].write_bytes(gzip.decompress(ws.images["h1"].read_bytes()))
    return ws.images["h1"]


def empty_image(ws: Workspace) -> Path:
    ws.images["h1"].write_bytes(b"")
    return ws.images["h1"]


def nan_voxels(ws: Workspace) -> Path:
    array = np.asarray(nib.load(str(ws.images["h1"])).dataobj).astype(np.float32)
    array[10:12, 20:22, 15:17] = np.nan
    _resave(ws.images["h1"], array)
    return ws.images["h1"]


def two_dimensional_image(ws: Workspace) -> Path:
    array = np.asarray(nib.load(str(ws.images["h1"])).dataobj)[:, :, 17]
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(ws.images["h1"]))
    return ws.images["h1"]


def two_dimensional_mha(ws: Workspace) -> Path:
    import SimpleITK as sitk

    array = np.asarray(nib.load(str(ws.images["h1"])).dataobj)[:, :, 17]
    path = ws.images["h1"].with_name("hippocampus_001_slice.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(array.T)), str(path))
    ws.manifest.write_text(ws.manifest.read_text().replace("images/hippocampus_001.nii.gz", f"images/{path.name}"))
    return path


def singular_affine(ws: Workspace) -> Path:
    image = nib.load(str(ws.images["h1"]))
    header = image.header.copy()
    affine = image.affine.copy()
    affine[:3, 2] = 0  # the third voxel axis has no length: a degenerate sform
    header.set_sform(affine, code=1)
    header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), None, header=header), str(ws.images["h1"]))
    return ws.images["h1"]


def sheared_affine(ws: Workspace) -> Path:
    affine = nib.load(str(ws.images["h1"])).affine.copy()
    affine[0, 1] = 0.3
    _resave(ws.images["h1"], affine=affine)
    return ws.images["h1"]


def _label(ws: Workspace, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    label = np.asarray(nib.load(str(ws.labels["h1"])).dataobj)
    _resave(ws.labels["h1"], change(label))
    return ws.labels["h1"]


def undeclared_label_value(ws: Workspace) -> Path:
    return _label(ws, lambda a: np.where(a == 2, 7, a).astype(np.uint8))


def four_d_label(ws: Workspace) -> Path:
    return _label(ws, lambda a: np.stack([a, a], axis=-1))


def non_integer_label(ws: Workspace) -> Path:
    return _label(ws, lambda a: np.where(a == 1, 1.5, a).astype(np.float32))


def negative_label(ws: Workspace) -> Path:
    return _label(ws, lambda a: np.where(a == 2, -1, a.astype(np.int16)).astype(np.int16))


def label_on_another_grid(ws: Workspace) -> Path:
    outlier = ws.shared / "msd_hippocampus" / "outliers" / "hippocampus_010_label_noimage.nii.gz"  # (36, 50, 31), not h1's grid
    shutil.copy(outlier, ws.labels["h1"])
    return ws.labels["h1"]


def path_outside_data_root(ws: Workspace) -> Path:
    outside = ws.root / "elsewhere"
    outside.mkdir()
    shutil.copy(ws.images["h1"], outside / "h1.nii.gz")
    text = ws.manifest.read_text().replace("images/hippocampus_001.nii.gz", "../elsewhere/h1.nii.gz")
    ws.manifest.write_text(text)
    return ws.manifest


def missing_image(ws: Workspace) -> Path:
    ws.images["h1"].unlink()
    return ws.images["h1"]


def truncated_dicom_slice(ws: Workspace) -> Path:
    series = ws.data / "series"
    shutil.copytree(ws.shared / "mr_dicom_brain_tumor_progression" / "hippocrop" / "Study1_13_HCropVolume",
                    series)
    bad = series / "5.dcm"
    raw = bad.read_bytes()
    bad.write_bytes(raw[:-2000])
    ws.manifest.write_text("# kind: segmentation\nsubject_id,split,image\nseries,unlabelled,series\n")
    ws.infer_input = series
    return bad


def truncated_compressed_dicom_slice(ws: Workspace) -> Path:
    series = ws.data / "ct"
    shutil.copytree(ws.shared / "ct_abdomen_totalsegmentator" / "example_ct_dicom", series)
    bad = sorted(series.iterdir())[3]
    raw = bad.read_bytes()
    bad.write_bytes(raw[:-20000])  # JPEG 2000 lossless: the encapsulated stream is cut short
    ws.manifest.write_text("# kind: segmentation\nsubject_id,split,image\nct,unlabelled,ct\n")
    ws.infer_input = series
    return bad


def truncated_prediction(ws: Workspace) -> Path:
    path = ws.predictions / "h1_seg.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _bad_checkpoint(ws: Workspace, data: bytes) -> Path:
    bad = ws.root / "model.pt"
    bad.write_bytes(data)
    ws.checkpoint = ws.transfer_source = bad
    ws.infer_input = ws.images["h1"]
    return bad


def text_named_checkpoint(ws: Workspace) -> Path:
    return _bad_checkpoint(ws, (ws.shared / "msd_hippocampus" / "README.txt").read_bytes())


def truncated_checkpoint(ws: Workspace) -> Path:
    raw = ws.checkpoint.read_bytes()
    return _bad_checkpoint(ws, raw[: len(raw) // 2])


def out_is_a_file(ws: Workspace) -> Path:
    ws.out_file = ws.root / "predictions.nii.gz"
    ws.out_file.write_bytes(b"a file the user keeps")
    ws.infer_input = ws.images["h1"]
    return ws.out_file


@dataclass(frozen=True)
class BadCase:
    """One bad input: how to make it, the commands that read it, words its error must hold."""

    name: str
    make: Callable[[Workspace], Path]
    commands: tuple[str, ...]
    words: tuple[str, ...]
    image_input: bool = field(default=False)  # infer/slices read the bad image file itself
    absent: tuple[str, ...] = ()  # advice the message must not give


IMAGE_COMMANDS = ("check", "train", "infer", "evaluate", "slices")
LABEL_COMMANDS = ("check", "train", "evaluate", "slices")

CASES = [
    BadCase("truncated_image", truncated_image, IMAGE_COMMANDS, ("truncated",), True),
    BadCase("gzip_text_named_nifti", gzip_text_named_nifti, IMAGE_COMMANDS, ("not a NIfTI image", "text"), True),
    BadCase("gzip_png_named_nifti", gzip_png_named_nifti, IMAGE_COMMANDS, ("not a NIfTI image", "PNG"), True),
    BadCase("uncompressed_named_gz", uncompressed_named_gz, IMAGE_COMMANDS, ("not gzip-compressed",), True),
    BadCase("empty_image", empty_image, IMAGE_COMMANDS, ("empty",), True),
    BadCase("nan_voxels", nan_voxels, IMAGE_COMMANDS, ("NaN",), True),
    BadCase("two_dimensional_image", two_dimensional_image, IMAGE_COMMANDS, ("2 dimensions",), True),
    BadCase("two_dimensional_mha", two_dimensional_mha, IMAGE_COMMANDS, ("2 dimensions",), True),
    BadCase("singular_affine", singular_affine, IMAGE_COMMANDS, ("singular",), True),
    BadCase("sheared_affine", sheared_affine, ("infer",), ("sheared", "resample"), True, absent=(".mha",)),
    BadCase("undeclared_label_value", undeclared_label_value, LABEL_COMMANDS, ("[7]", "declared")),
    BadCase("four_d_label", four_d_label, LABEL_COMMANDS, ("2 volumes",)),
    BadCase("non_integer_label", non_integer_label, LABEL_COMMANDS, ("non-integer",)),
    BadCase("negative_label", negative_label, LABEL_COMMANDS, ("negative",)),
    BadCase("label_on_another_grid", label_on_another_grid, LABEL_COMMANDS, ("(36, 50, 31)",)),
    BadCase("path_outside_data_root", path_outside_data_root, ("check", "train", "infer", "evaluate", "slices"),
            ("outside the data root", "allow_outside_data_root")),
    BadCase("missing_image", missing_image, ("check", "train", "infer", "evaluate", "slices"), ("not found",)),
    BadCase("truncated_dicom_slice", truncated_dicom_slice, ("check", "infer", "slices"), ("truncated",),
            absent=("install", "pylibjpeg")),
    BadCase("truncated_compressed_dicom_slice", truncated_compressed_dicom_slice, ("check", "infer", "slices"),
            ("truncated",), absent=("install", "pylibjpeg")),
    BadCase("truncated_prediction", truncated_prediction, ("evaluate",), ("truncated",)),
    BadCase("out_is_a_file", out_is_a_file, ("infer",), ("not a folder",)),
    BadCase("text_named_checkpoint", text_named_checkpoint, ("infer", "train"), ("not a PyTorch checkpoint",),
            absent=("pickled code",)),
    BadCase("truncated_checkpoint", truncated_checkpoint, ("infer", "train"), ("truncated",)),
]
