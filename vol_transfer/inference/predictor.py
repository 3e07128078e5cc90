"""Checkpoint + input files → label maps (and probabilities) in each input's original geometry.

For every case: load the checkpoint's channels by name, in its order (NIfTI/MHA files, 4-D
files or DICOM series folders; :func:`vol_transfer.io.case.load_case`), apply the checkpoint's
stored preprocessing, predict (:mod:`vol_transfer.inference.predict`), undo the
spatial preprocessing, optionally renumber the classes to the dataset's label values, and write
``<case>_seg.nii.gz`` (uint8) and ``<case>_prob.nii.gz`` (float32, classes last) with the
original image's shape and affine — so ITK-SNAP, 3D Slicer, nibabel and SimpleITK overlay them on
the input. Outputs are written atomically, an input is never overwritten, and
``inference_timings.csv`` records per-case timings.

Example::

    predictor = Predictor.from_checkpoint("model.pt", InferenceOptions(memory_budget_gb=8))
    cases = discover_cases(["brats2015_flair_t1c/test"], predictor.channels)   # vol_transfer.io.case_inputs
    predictor.run(cases, "predictions/")
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from vol_transfer.errors import CheckpointError, OutputExistsError, PathLike, RecipeError
from vol_transfer.inference.predict import InferenceOptions, plan_inference, predict_logits
from vol_transfer.io.atomic import atomic_write_text, refuse_to_overwrite
from vol_transfer.io.case_inputs import CHANNELS_FIX, Case
from vol_transfer.io.volumes import Volume, save_volume

TIMINGS_FILE = "inference_timings.csv"
TIMING_COLUMNS = ("case", "shape", "strategy", "steps", "load_s", "preprocess_s", "predict_s", "write_s", "total_s")


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
                        map_labels: str | None = None) -> "Predictor":
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
        return cls(model=model, channels=channels, preprocessing=metadata.get("preprocessing"),
                   options=options or InferenceOptions(), label_map=parse_label_map(map_labels, metadata),
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
                     overwrite: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
        """Segment one case, write its outputs, return its timing row."""
        from vol_transfer.preprocessing.pipeline import Preprocessor

        out_dir = Path(out_dir)
        start = time.perf_counter()
        volume = self.load(case)
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

    def run(self, cases: Sequence[Case], out_dir: PathLike, *, probabilities: bool = False,
            overwrite: bool = False, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
        """Segment every case; check all outputs first so a refusal writes nothing."""
        out_dir = Path(out_dir)
        inputs = [p for case in cases for p in case.paths]
        for case in cases:
            for target in self.output_paths(case, out_dir, probabilities):
                refuse_to_overwrite(target, inputs, overwrite=overwrite)
                for source in case.paths:
                    if source.is_dir() and target.resolve().is_relative_to(source.resolve()):
                        raise OutputExistsError(target, "output would be written inside an input DICOM folder",
                                                "choose an --out folder outside the inputs")
        rows = []
        for case in cases:
            rows.append(self.predict_case(case, out_dir, probabilities=probabilities, overwrite=overwrite, say=say))
            write_timings(rows, out_dir / TIMINGS_FILE)
        return rows


def write_timings(rows: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Per-case timings as CSV (seconds with 3 decimals), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TIMING_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue())
