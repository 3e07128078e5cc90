"""Classifier checkpoint + 2-D images → a predictions CSV (``vol-transfer infer`` for ``task: classification``).

Inputs (:func:`discover_images`): an image file (JPEG/PNG/BMP/TIFF or a DICOM X-ray), a folder
(``DIR/<class>/<image>``, where a folder named like one of the checkpoint's classes gives its images
their true label, or a flat folder), or a classification manifest (``# kind: classification``;
labels and patient ids from its columns). Every image is loaded as the training data path loads it —
the checkpoint's recorded ``preprocessing`` (image size, grey or RGB, resize, /255;
:func:`vol_transfer.training.image_data.image_preprocessing`) through the same functions — so
grey and RGB files mixed in one input are each turned into what the network was trained on, and
the probabilities equal the training validator's for the same images. DICOM headers are checked
first (:func:`vol_transfer.io.dicom.validate_xray_header`: an X-ray modality, a chest, a PA/AP
view). The CSV (``path, patient_id, label, prediction, p_<class>…``) is the format of a
classification run's ``predictions.csv``, which ``vol-transfer evaluate`` scores.

Example (needs a trained checkpoint, so not run here)::

    classifier = ImageClassifier.from_checkpoint("runs/pneumonia_scratch_cpu/checkpoints/best.pt")
    items = discover_images(["../shared/data/cxr_dicom_nih"], classifier.classes)
    kept, rejected = check_dicom_headers(items)
    classifier.predict(kept).probabilities.shape     # (3, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from vol_transfer.errors import CheckpointError, InputDataError, PathLike
from vol_transfer.evaluation.classification import Predictions
from vol_transfer.io.case_inputs import IMAGE_SUFFIXES as VOLUME_SUFFIXES
from vol_transfer.io.images2d import DICOM_SUFFIXES

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
XRAY_MODALITIES = ("DX", "CR", "MG", "RF", "XA", "PX")
# the preprocessing a classification checkpoint may record, and the values this module applies
KNOWN_PREPROCESSING = {"kind": ("image2d",), "resize": ("bilinear",), "intensity": ("scale_uint8",),
                       "channels": (1, 3)}
RETRAIN = ("retrain it with this version of vol-transfer (vol-transfer train <recipe>), which records every "
           "preprocessing step in the checkpoint")


def checkpoint_task(metadata: Mapping[str, Any]) -> str:
    """``classification``, ``segmentation`` or ``pretext``: what a checkpoint was trained for.

    >>> checkpoint_task({"task": "classification"}), checkpoint_task({"preprocessing": {"image_size": 64}})
    ('classification', 'classification')
    >>> checkpoint_task({"preprocessing": {"intensity": []}}), checkpoint_task({"recipe": {"task": "pretext"}})
    ('segmentation', 'pretext')
    """
    task = metadata.get("task") or (metadata.get("recipe") or {}).get("task")
    if task:
        return str(task)
    preprocessing = metadata.get("preprocessing") or {}
    return "classification" if isinstance(preprocessing, Mapping) and "image_size" in preprocessing else "segmentation"


def describe_checkpoint(path: PathLike, metadata: Mapping[str, Any]) -> str:
    """``runs/x/best.pt is a segmentation checkpoint (3-D volumes; channels flair, t1c; classes …)``."""
    task = checkpoint_task(metadata)
    what = {"classification": "2-D images", "segmentation": "3-D volumes"}.get(task, "pre-training, no classes")
    channels = ", ".join(metadata.get("channels") or []) or "unnamed"
    classes = ", ".join(map(str, metadata.get("classes") or [])) or "none"
    return f"{path} is a {task} checkpoint ({what}; channels {channels}; classes {classes})"


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix or not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def is_picture(path: Path) -> bool:
    """A 2-D image file this module reads: JPEG/PNG/BMP/TIFF or a DICOM file."""
    return path.is_file() and (path.suffix.lower() in PICTURE_SUFFIXES or _is_dicom_file(path))


def _is_volume(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def _dicom_modality(path: Path) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", "") or "").upper()
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is loaded
        return ""


def _folder_is_xrays(folder: Path) -> bool:
    """A folder (searched two levels deep) whose image files are 2-D pictures or X-ray DICOMs, no volumes."""
    files = [p for p in sorted(folder.glob("*")) + sorted(folder.glob("*/*")) if p.is_file()]
    if any(_is_volume(p) for p in files):
        return False
    dicoms = [p for p in files if _is_dicom_file(p)]
    return any(p.suffix.lower() in PICTURE_SUFFIXES for p in files) or (
        bool(dicoms) and _dicom_modality(dicoms[0]) in XRAY_MODALITIES)


def refuse_images_for_segmentation(inputs: Sequence[PathLike], checkpoint: PathLike, metadata: Mapping[str, Any]) -> None:
    """Raise one :class:`InputDataError` when a segmentation checkpoint is given 2-D images or X-rays."""
    from vol_transfer.io.manifest import _read_declarations

    for item in inputs:
        path = Path(item)
        if path.is_file() and path.suffix.lower() == ".csv":
            declared = _read_declarations(path.read_text(errors="replace").splitlines()[:50])[0]
            found = "a classification manifest" if declared.get("kind") == "classification" else ""
        elif path.is_file():
            found = "a 2-D image" if is_picture(path) and (path.suffix.lower() in PICTURE_SUFFIXES
                                                          or _dicom_modality(path) in XRAY_MODALITIES) else ""
        else:
            found = "a folder of 2-D images / X-rays" if path.is_dir() and _folder_is_xrays(path) else ""
        if found:
            raise InputDataError(path, f"is {found}, but {describe_checkpoint(checkpoint, metadata)}",
                                 "give it NIfTI/MHA volumes or DICOM series, or use a classification checkpoint "
                                 "(a task: classification run's checkpoints/best.pt) for 2-D images")


@dataclass(frozen=True)
class ImagePreprocessing:
    """How the checkpoint's training loaded an image: side length, 1 (grey) or 3 (RGB) channels, /255."""

    image_size: int
    channels: int

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], where: PathLike) -> "ImagePreprocessing":
        """Read and check the recorded preprocessing; one-line errors for missing or unknown steps.

        >>> ImagePreprocessing.from_metadata({"preprocessing": {"kind": "image2d", "image_size": 64, "channels": 1,
        ...     "resize": "bilinear", "intensity": "scale_uint8"}}, "best.pt")
        ImagePreprocessing(image_size=64, channels=1)
        """
        recorded = metadata.get("preprocessing")
        if not isinstance(recorded, Mapping) or "image_size" not in recorded:
            raise CheckpointError(where, "records no image preprocessing (image_size, channels, intensity), so how "
                                         "to load images for it is not known", RETRAIN)
        recorded = dict(recorded)
        if "channels" not in recorded:  # the first classification checkpoints: grey/RGB from the input channels
            inputs = (metadata.get("architecture") or {}).get("in_channels")
            if inputs not in (1, 3):
                raise CheckpointError(where, "records no image channels (grey or RGB)", RETRAIN)
            recorded.setdefault("channels", int(inputs))
        unknown = sorted(set(recorded) - set(KNOWN_PREPROCESSING) - {"image_size"})
        if unknown:
            raise CheckpointError(where, f"records preprocessing step(s) {unknown} that this version of vol-transfer "
                                         "cannot apply", "update vol-transfer to the version that trained it")
        for key, allowed in KNOWN_PREPROCESSING.items():
            if key in recorded and recorded[key] not in allowed:
                raise CheckpointError(where, f"records preprocessing {key}={recorded[key]!r}, which this version "
                                             f"cannot apply (known: {', '.join(map(str, allowed))})",
                                      "update vol-transfer to the version that trained it")
        size = recorded["image_size"]
        if not isinstance(size, int) or size < 1:
            raise CheckpointError(where, f"records image_size={size!r}, not a positive integer", RETRAIN)
        return cls(size, int(recorded["channels"]))

    def load(self, paths: Sequence[PathLike], progress: bool = False) -> np.ndarray:
        """The images as the training data path loads them: ``uint8`` ``(N, C, size, size)``."""
        from vol_transfer.io.images2d import load_image_stack

        return load_image_stack(paths, self.image_size, self.channels, progress=progress)


@dataclass
class ImageItem:
    """One image to classify: its file, true class name when known ("" otherwise), patient id ("" if unknown)."""

    path: Path
    label: str = ""
    patient_id: str = ""


def _class_of(folder: Path, root: Path, classes: Sequence[str]) -> str:
    """The innermost folder between ``root`` (included) and the image named like a class, else ""."""
    by_name = {c.lower(): c for c in classes}
    for part in reversed([root.name, *folder.relative_to(root).parts]):
        if part.lower() in by_name:
            return by_name[part.lower()]
    return ""


def _folder_items(root: Path, classes: Sequence[str], checkpoint: str) -> list[ImageItem]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(root).parts))
    pictures = [p for p in files if is_picture(p)]
    if not pictures:
        volumes = [p for p in files if _is_volume(p)]
        problem = (f"holds volumes ({volumes[0].name} …), not 2-D images, but {checkpoint}" if volumes
                   else "holds no JPEG/PNG/DICOM images")
        raise InputDataError(root, problem, "pass X-ray images (a file, DIR/<class>/<image>, or a classification "
                                            "manifest), or a segmentation checkpoint for volumes")
    return [ImageItem(p, _class_of(p.parent, root, classes)) for p in pictures]


def _manifest_items(path: Path, split: str | None, data_root: PathLike | None, checkpoint: str,
                    classes: Sequence[str]) -> list[ImageItem]:
    from vol_transfer.io.manifest import read_manifest

    manifest = read_manifest(path, data_root)
    if manifest.kind != "classification":
        raise InputDataError(path, f"is a {manifest.kind} manifest, but {checkpoint}",
                             "give a classification manifest (# kind: classification), images or a folder of them")
    declared = [c for c in (manifest.classes or ()) if c not in classes]
    if declared:
        raise InputDataError(path, f"declares classes {declared} that the checkpoint does not know ({', '.join(classes)})",
                             "use a manifest of the classes the model was trained on")
    column = manifest.channel_names[0]
    return [ImageItem(s.channels[column], str(s.label or ""), s.patient_id) for s in manifest.subjects(split)]


def discover_images(inputs: Sequence[PathLike], classes: Sequence[str], *, split: str | None = None,
                    data_root: PathLike | None = None, checkpoint: str = "the checkpoint is a classification checkpoint"
                    ) -> list[ImageItem]:
    """Turn ``infer`` inputs into images to classify (see the module docstring), each file once.

    ``checkpoint`` completes the message refusing a volume (:func:`describe_checkpoint`).
    """
    items: list[ImageItem] = []
    for item in inputs:
        path = Path(item)
        if path.is_file() and path.suffix.lower() == ".csv":
            items.extend(_manifest_items(path, split, data_root, checkpoint, classes))
        elif _is_volume(path):
            raise InputDataError(path, f"is a volume (NIfTI/MHA), but {checkpoint}",
                                 "pass 2-D images (JPEG/PNG/DICOM X-rays), or a segmentation checkpoint for volumes")
        elif path.is_dir():
            items.extend(_folder_items(path, classes, checkpoint))
        elif path.is_file():
            if not is_picture(path):
                raise InputDataError(path, "is not an image, manifest or folder",
                                     f"pass a {'/'.join(PICTURE_SUFFIXES + DICOM_SUFFIXES)} file, a manifest .csv "
                                     "or a folder")
            items.append(ImageItem(path))
        else:
            raise InputDataError(path, "not found", "check the path")
    seen: set[Path] = set()
    unique = []
    for image in items:
        key = image.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(image)
    return unique


def check_dicom_headers(items: Sequence[ImageItem], *, check: bool = True) -> tuple[list[ImageItem], list[tuple[Path, str]]]:
    """(the images to classify, the DICOM files refused with their problems).

    A DICOM must look like a chest X-ray (:func:`~vol_transfer.io.dicom.validate_xray_header`); its
    PatientID becomes the patient id of an image that has none. ``check=False`` skips the header check.
    """
    import pydicom

    from vol_transfer.io.dicom import validate_xray_header

    kept, rejected = [], []
    for item in items:
        if not _is_dicom_file(item.path):
            kept.append(item)
            continue
        try:
            header = pydicom.dcmread(item.path, stop_before_pixels=True)
        except Exception as error:  # noqa: BLE001 - any unreadable header is a refusal of this file
            rejected.append((item.path, f"not a readable DICOM file ({type(error).__name__})"))
            continue
        problems = validate_xray_header(header) if check else []
        if problems:
            rejected.append((item.path, "; ".join(problems)))
        else:
            kept.append(item if item.patient_id else ImageItem(item.path, item.label, str(header.get("PatientID", "") or "")))
    return kept, rejected


@dataclass
class ImageClassifier:
    """A classification network with its classes and recorded preprocessing."""

    model: torch.nn.Module
    classes: list[str]
    preprocessing: ImagePreprocessing
    name: str = "model"
    metadata: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    @classmethod
    def from_checkpoint(cls, path: PathLike, device: str = "cpu", checkpoint: Any = None) -> "ImageClassifier":
        """Load a ``task: classification`` checkpoint (``checkpoint``: the already loaded one, if any)."""
        from vol_transfer.transfer.checkpoint import (
            build_from_checkpoint,
            load_checkpoint,
        )

        checkpoint = checkpoint if checkpoint is not None else load_checkpoint(path)
        metadata = checkpoint.metadata or {}
        if checkpoint_task(metadata) != "classification":
            raise CheckpointError(path, f"is not a classification checkpoint: {describe_checkpoint(path, metadata)}",
                                  "pass the checkpoints/best.pt of a task: classification run")
        classes = [str(c) for c in metadata.get("classes") or []]
        if len(classes) < 2:
            raise CheckpointError(path, "records no class names", RETRAIN)
        preprocessing = ImagePreprocessing.from_metadata(metadata, path)
        model = build_from_checkpoint(checkpoint).to(device).eval()
        return cls(model, classes, preprocessing, str(path), dict(metadata), device)

    def predict(self, items: Sequence[ImageItem], batch_size: int = 64, progress: bool = False) -> Predictions:
        """Probabilities for every image (loaded and predicted ``batch_size`` at a time); absolute paths."""
        from vol_transfer.training.classification import predict

        chunks = []
        iterator = range(0, len(items), batch_size)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="classifying", unit="batch", leave=False)
        for first in iterator:
            images = self.preprocessing.load([i.path for i in items[first:first + batch_size]])
            chunks.append(predict(self.model, images, batch_size, self.device))
        probabilities = np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)), np.float32)
        return Predictions([str(i.path.absolute()) for i in items], probabilities, self.classes, [i.label for i in items],
                           [i.patient_id for i in items])
