"""Checkpoint + input files → label maps (and probabilities) in each input's original geometry.

For every case: load the checkpoint's channels by name, in its order (NIfTI/MHA files, 4-D
files or DICOM series folders; :func:`vol_transfer.io.case.load_case`), apply the checkpoint's
stored preprocessing, predict (:mod:`vol_transfer.inference.predict`), undo the
spatial preprocessing, optionally renumber the classes to the dataset's label values, and write
``<case>_seg.nii.gz`` (uint8) and ``<case>_prob.nii.gz`` (float32, classes last) with the
original image's shape and affine — so ITK-SNAP, 3D Slicer, nibabel and SimpleITK overlay them on
the input. Outputs are written atomically, an input is never overwritten, one run at a time writes
an output folder (:mod:`vol_transfer.io.folder_lock`), and ``inference_timings.csv`` records per
case its timings and what produced it (:mod:`vol_transfer.inference.records`), so ``resume=True``
keeps the cases an interrupted run finished. Inputs whose grid a NIfTI cannot hold (a sheared
affine) are refused before any work.

Example::

    predictor = Predictor.from_checkpoint("model.pt", InferenceOptions(memory_budget_gb=8))
    cases = discover_cases(["brats2015_flair_t1c/test"], predictor.channels)   # vol_transfer.io.case_inputs
    predictor.run(cases, "predictions/")
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from vol_transfer.errors import CheckpointError, InputDataError, OutputExistsError, PathLike, RecipeError, WriteError
from vol_transfer.inference.predict import InferenceOptions, plan_inference, predict_logits
from vol_transfer.inference.records import (
    TIMING_COLUMNS,
    TIMINGS_FILE,
    file_identity,
    fingerprint,
    is_finished,
    read_timings,
    write_timings,
)
from vol_transfer.io.atomic import refuse_to_overwrite, remove_stale_temporaries
from vol_transfer.io.case_inputs import CHANNELS_FIX, Case
from vol_transfer.io.folder_lock import FolderLock
from vol_transfer.io.volumes import AFFINE_TOLERANCE, Volume, check_affine, header_geometry, nifti_placement_drift, save_volume

logger = logging.getLogger(__name__)

__all__ = ["Predictor", "parse_label_map", "check_writable_grid", "TIMINGS_FILE", "TIMING_COLUMNS", "write_timings"]


def parse_label_map(text: str | None, metadata: Mapping[str, Any], where: str = "--map-labels") -> dict[int, int] | None:
    """``"1:4,2:5"`` (class → written value) or ``"checkpoint"`` (invert the stored label mapping)."""
    if not text:
        return None
    if text == "checkpoint":
        stored = metadata.get("label_mapping")
        if not stored:
            raise RecipeError(where, "the checkpoint stores no label_mapping", "give the mapping, e.g. --map-labels 1:4")
        if isinstance(stored, str):
            from vol_transfer.preprocessing.labels import resolve_mapping

            stored = resolve_mapping(stored)
        inverse: dict[int, list[int]] = {}
        for source, target in stored.items():
            inverse.setdefault(int(target), []).append(int(source))
        ambiguous = {t: s for t, s in inverse.items() if len(s) > 1}
        if ambiguous:
            target, sources = sorted(ambiguous.items())[0]
            raise RecipeError(where, f"class {target} came from labels {sources}, so it cannot be mapped back uniquely",
                              f"give the value to write, e.g. --map-labels {target}:{sources[-1]}")
        return {t: s[0] for t, s in inverse.items()}
    mapping = {}
    for part in text.split(","):
        try:
            source, target = (int(v) for v in part.split(":"))
        except ValueError:
            raise RecipeError(where, f"{part!r} is not CLASS:VALUE", "write e.g. --map-labels 1:4,2:5") from None
        if not 0 <= target < 256:
            raise RecipeError(where, f"value {target} does not fit a uint8 label map", "use values 0..255")
        mapping[source] = target
    return mapping


def _apply_label_map(labels: np.ndarray, mapping: dict[int, int] | None) -> np.ndarray:
    if not mapping:
        return labels
    lookup = np.arange(256, dtype=np.uint8)
    for source, target in mapping.items():
        if 0 <= source < 256:
            lookup[source] = target
    return lookup[labels]


@dataclass
class Predictor:
    """A model with its channel names, preprocessing and inference options."""

    model: torch.nn.Module
    channels: list[str]
    preprocessing: dict[str, Any] | None = None
    options: InferenceOptions = field(default_factory=InferenceOptions)
    label_map: dict[int, int] | None = None
    name: str = "model"
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, path: PathLike, options: InferenceOptions | None = None,
                        map_labels: str | None = None, say: Callable[[str], None] | None = None) -> "Predictor":
        """Load a checkpoint; with ``options.tta`` only the flips its training used (:mod:`~vol_transfer.inference.tta`)."""
        from vol_transfer.inference.tta import tta_options
        from vol_transfer.transfer.checkpoint import build_from_checkpoint, load_checkpoint

        checkpoint = load_checkpoint(path)
        metadata = checkpoint.metadata or {}
        model = build_from_checkpoint(checkpoint)
        if options is not None and options.device is not None:
            model = model.to(options.device)
        architecture = metadata.get("architecture") or {}
        inputs = int(architecture.get("in_channels", 1))
        channels = list(metadata.get("channels") or [])
        if not channels:
            channels = [f"channel_{i}" for i in range(inputs)]
        elif len(channels) == 1 and inputs > 1:  # trained on a 4-D file before its volumes were named
            channels = [f"{channels[0]}_{i}" for i in range(inputs)]
        elif len(channels) != inputs:
            raise CheckpointError(path, f"its metadata names {len(channels)} channels ({', '.join(channels)}) for a "
                                        f"network with {inputs} input channels", "store one name per input channel")
        options = tta_options(options or InferenceOptions(), metadata, str(path),
                              say or logger.info)
        return cls(model=model, channels=channels, preprocessing=metadata.get("preprocessing"),
                   options=options, label_map=parse_label_map(map_labels, metadata),
                   name=str(path), metadata=dict(metadata))

    def load(self, case: Case) -> Volume:
        """The case's image with exactly the checkpoint's channels, in its order (picked by name)."""
        from vol_transfer.io.case import load_case

        where = case.where or (str(case.paths[0]) if len(case.paths) == 1 else case.name)
        return load_case(replace(case, where=where), self.channels,
                         fix=f"{self.name} expects channels {', '.join(self.channels)}: {CHANNELS_FIX}")[0]

    def output_paths(self, case: Case, out_dir: Path, probabilities: bool) -> list[Path]:
        paths = [out_dir / f"{case.name}_seg.nii.gz"]
        if probabilities:
            paths.append(out_dir / f"{case.name}_prob.nii.gz")
        return paths

    def _logits(self, prepared: Volume, label: str) -> torch.Tensor:
        progress = label if self.options.progress else False
        return predict_logits(self.model, prepared.array, self.options, progress=progress)

    def _labels(self, logits: torch.Tensor, inverse: Any) -> np.ndarray:
        labels = inverse.restore(logits.argmax(0).to(torch.uint8).numpy(), order="nearest").astype(np.uint8)
        return _apply_label_map(labels, self.label_map)

    def predict_volume(self, volume: Volume) -> np.ndarray:
        """Label map (uint8) of an in-memory volume, on the volume's own grid; nothing is written.

        The volume's channels must be the checkpoint's, in its order (checked by name when it has names).
        """
        from vol_transfer.io.case import canonical_channel
        from vol_transfer.preprocessing.pipeline import Preprocessor

        named = [canonical_channel(c) for c in volume.channel_names]
        if volume.num_channels != len(self.channels) or (named and named != [canonical_channel(c) for c in self.channels]):
            raise CheckpointError(volume.name, f"has {volume.num_channels} channel(s) "
                                  f"({', '.join(volume.channel_names) or 'unnamed'}) but {self.name} expects "
                                  f"{len(self.channels)} ({', '.join(self.channels)})",
                                  "load it with vol_transfer.io.case.load_case(case, predictor.channels)")
        prepared, inverse = Preprocessor.from_spec(self.preprocessing).apply(volume)
        return self._labels(self._logits(prepared, volume.name), inverse)

    def predict_case(self, case: Case, out_dir: PathLike, *, probabilities: bool = False,
                     overwrite: bool = False, say: Callable[[str], None] = logger.info) -> dict[str, Any]:
        """Segment one case, write its outputs, return its timing row."""
        from vol_transfer.preprocessing.pipeline import Preprocessor

        out_dir = Path(out_dir)
        start = time.perf_counter()
        volume = self.load(case)
        check_writable_grid(volume.affine, volume.spatial_shape, case.where or volume.name)
        loaded = time.perf_counter()
        prepared, inverse = Preprocessor.from_spec(self.preprocessing).apply(volume)
        prepped = time.perf_counter()
        plan = plan_inference(self.model, prepared.spatial_shape, self.options)
        say(f"{case.name}: {plan.describe()}")
        logits = self._logits(prepared, case.name)
        predicted = time.perf_counter()
        labels = self._labels(logits, inverse)
        seg_path, *prob_path = self.output_paths(case, out_dir, probabilities)
        save_volume(labels, seg_path, reference=volume, dtype=np.uint8, overwrite=overwrite)
        if prob_path:
            classes = torch.softmax(logits, dim=0).numpy()
            restored = inverse.restore(classes, order="linear").astype(np.float32)
            save_volume(restored, prob_path[0], reference=volume, dtype=np.float32, overwrite=overwrite)
        done = time.perf_counter()
        return {
            "case": case.name, "shape": "x".join(str(s) for s in volume.spatial_shape), "strategy": plan.strategy,
            "steps": plan.steps, "load_s": loaded - start, "preprocess_s": prepped - loaded,
            "predict_s": predicted - prepped, "write_s": done - predicted, "total_s": done - start,
        }

    def fingerprint(self) -> str:
        """What decides this predictor's outputs (weights, preprocessing, channels, labels, options)."""
        options = {k: getattr(self.options, k) for k in ("mode", "window", "overlap", "blend", "bf16", "tta",
                                                         "flip_axes", "halo", "fuse")}
        return fingerprint(self.model, {"preprocessing": self.preprocessing, "channels": self.channels,
                                        "label_map": self.label_map, "options": options})

    def run(self, cases: Sequence[Case], out_dir: PathLike, *, probabilities: bool = False,
            overwrite: bool = False, resume: bool = False,
            say: Callable[[str], None] = logger.info) -> list[dict[str, Any]]:
        """Segment every case into ``out_dir``; return the timing rows of the cases computed.

        Every refusal comes before any work: ``out_dir`` a file, an output that would replace an
        input or an existing output (without ``overwrite``), an input grid a NIfTI cannot hold, or
        another run writing ``out_dir``. With ``resume``, cases whose outputs this predictor
        already wrote whole (per ``inference_timings.csv``) are kept, not recomputed.
        """
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise OutputExistsError(out_dir, "is a file, not a folder", "choose an output folder (it is created if missing)")
        inputs = [p for case in cases for p in case.paths]
        for case in cases:
            for target in self.output_paths(case, out_dir, probabilities):
                refuse_to_overwrite(target, inputs, overwrite=True)
                for source in case.paths:
                    if source.is_dir() and target.resolve().is_relative_to(source.resolve()):
                        raise OutputExistsError(target, "output would be written inside an input DICOM folder",
                                                "choose an --out folder outside the inputs")
        for case in cases:
            for path in case.paths:
                geometry = header_geometry(path)
                if geometry is not None:
                    check_writable_grid(*geometry, path)
        created = not out_dir.exists()
        try:
            with FolderLock(out_dir, command=f"vol-transfer infer --out {out_dir}", say=say):
                return self._run_locked(cases, out_dir, probabilities, overwrite, resume, say)
        finally:
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a refusal leaves no empty folder behind

    def _run_locked(self, cases: Sequence[Case], out_dir: Path, probabilities: bool, overwrite: bool,
                    resume: bool, say: Callable[[str], None]) -> list[dict[str, Any]]:
        targets = {case.name: self.output_paths(case, out_dir, probabilities) for case in cases}
        stale = remove_stale_temporaries(out_dir, [TIMINGS_FILE] + [t.name for paths in targets.values() for t in paths])
        if stale:
            say(f"removed {len(stale)} temporary file(s) left by an interrupted run in {out_dir}")
        records = read_timings(out_dir / TIMINGS_FILE)
        key = self.fingerprint()
        todo = []
        for case in cases:
            ours = resume and records.get(case.name, {}).get("fingerprint") == key  # written by an equal run
            if ours and is_finished(records[case.name], targets[case.name], key):
                continue
            for target in targets[case.name]:
                if target.exists() and not overwrite and not ours:  # ours but broken: redone
                    why = (f"exists and {TIMINGS_FILE} does not record it as written whole by this checkpoint with "
                           "these options" if resume else "already exists")
                    raise OutputExistsError(target, why, "pass --overwrite (with --resume only unfinished cases are "
                                                         "recomputed), or choose another output folder")
            todo.append(case)
        if resume:
            say(f"resume: {len(cases) - len(todo)} of {len(cases)} case(s) already done in {out_dir}, "
                f"{len(todo)} to segment")
        rows: list[dict[str, Any]] = []
        written: dict[Path, tuple[int, int, int]] = {}
        for case in todo:
            row = self.predict_case(case, out_dir, probabilities=probabilities, overwrite=True, say=say)
            row.update(checkpoint=self.name, fingerprint=key)
            written.update({path: file_identity(path) for path in targets[case.name]})
            records[case.name] = row
            write_timings(list(records.values()), out_dir / TIMINGS_FILE)
            rows.append(row)
        replaced = [path for path, identity in written.items() if not path.is_file() or file_identity(path) != identity]
        if replaced:
            raise WriteError(replaced[0], f"was replaced by another process while this run wrote {out_dir} "
                                          f"({len(replaced)} file(s))",
                             "make sure one run at a time writes this folder, then rerun with --resume --overwrite")
        return rows


def check_writable_grid(affine: np.ndarray, shape: Sequence[int], where: PathLike) -> None:
    """Refuse an input grid whose segmentation a NIfTI cannot hold faithfully, before any work.

    A singular affine has no place in space; a sheared one is read differently by ITK-based tools
    (which fall back to the orthogonal qform) than by nibabel.
    """
    check_affine(affine, where)
    matrix = np.asarray(affine, dtype=float)[:3, :3]
    directions = matrix / np.sqrt((matrix ** 2).sum(axis=0))
    if np.allclose(directions.T @ directions, np.eye(3), atol=1e-7):
        return  # orthogonal: nothing to measure
    drift = nifti_placement_drift(affine, shape)
    if drift > AFFINE_TOLERANCE:
        raise InputDataError(where, f"the affine is sheared (non-orthogonal), so a segmentation on this grid would "
                                    f"be placed up to {drift:.3g} mm apart by ITK-based tools and by nibabel",
                             "resample the input onto an orthogonal grid (e.g. with SimpleITK or 3D Slicer), then rerun")
