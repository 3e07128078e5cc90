"""The ``segmentation`` task's data: training and validation cases held in memory, and their batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vol_transfer.errors import InputDataError, RecipeError
from vol_transfer.training.segmentation_config import SegmentationConfig


@dataclass
class PreparedCase:
    """One preprocessed, relabelled case held in memory for sampling and validation."""

    subject_id: str
    image: np.ndarray  # (C, X, Y, Z) float32
    label: np.ndarray  # (X, Y, Z) int16
    channels: tuple[str, ...] = ()  # the image's channel names, in order (stored in the checkpoint)


def split_subjects(manifest: Any, split: str, fold: int | None = None, train_split: str = "train",
                   validation_split: str = "validation") -> list[Any]:
    """The subjects of ``split``; with ``fold = k`` the validation split is fold k of the training
    split and the training split its other folds (patient-level cross-validation)."""
    if fold is None:
        return manifest.subjects(split)
    pool = manifest.subjects(train_split)
    folds = sorted({s.fold for s in pool if s.fold is not None})
    if not pool or any(s.fold is None for s in pool):
        raise InputDataError(manifest.path, f"has no fold for every {train_split!r} case (data.fold: {fold})",
                             "write the folds with vol-transfer data manifest --folds K, or drop data.fold")
    if fold not in folds:
        raise RecipeError("data.fold", f"fold {fold} is not in {manifest.path.name} (folds {folds})",
                          f"choose one of {folds}")
    held_out = split == validation_split
    return [s for s in pool if (s.fold == fold) == held_out]


def case_subjects(config: SegmentationConfig, split: str, limit: int | None, manifest: Any) -> list[Any]:
    """The first ``limit`` subjects of ``split`` (a fold's part with ``data.fold``); none is an error."""
    data = config.data
    subjects = split_subjects(manifest, split, data.fold, data.train_split, data.validation_split)[:limit]
    if not subjects:
        raise InputDataError(manifest.path, f"has no cases in split {split!r}",
                             f"choose one of its splits {manifest.splits} in the recipe's data section")
    return subjects


def training_images(config: SegmentationConfig, manifest: Any) -> Iterator[Any]:
    """The raw images (channels by name, as :func:`load_cases` picks them) of the training cases, one by one."""
    from vol_transfer.io.case import load_case

    for subject in case_subjects(config, config.data.train_split, config.data.train_subjects, manifest):
        yield load_case(subject, config.data.channels)[0]


def load_cases(config: SegmentationConfig, split: str, limit: int | None, manifest: Any,
               preprocessor: Any, progress: bool = False) -> list[PreparedCase]:
    """Load, preprocess and relabel the first ``limit`` cases of ``split``.

    Channels are ``data.channels`` picked by name (:func:`vol_transfer.io.case.load_case`: exact
    names, then aliases; one 4-D file's volumes are ``image_0 …`` or its declared names), or every
    channel of the manifest; the label passes the one label-array path (declared values only).
    Preprocessing sees exactly the channels the network gets, as at inference.
    """
    from vol_transfer.io.case import label_array, load_case
    from vol_transfer.preprocessing.labels import remap_labels

    data = config.data
    subjects = case_subjects(config, split, limit, manifest)
    cases = []
    iterator = subjects
    if progress:
        from tqdm import tqdm

        iterator = tqdm(subjects, desc=f"load {split}", unit="case", leave=False)
    fix = (f"set data.channels to channels of {manifest.path.name} "
           f"({', '.join(manifest.channel_names)}; aliases such as t1ce=t1c, t2f=flair match)")
    for subject in iterator:
        if subject.label is None:
            raise InputDataError(manifest.path, f"subject {subject.subject_id} has no label",
                                 "give every training and validation case a label file")
        image, label = load_case(subject, config.data.channels, fix=fix)
        if cases and image.channel_names != cases[0].channels:
            raise InputDataError(subject.where, f"has channels {', '.join(image.channel_names)} but "
                                 f"{cases[0].subject_id} has {', '.join(cases[0].channels)}",
                                 "give every case the same channels, or choose them with data.channels")
        prepared, prepared_label, _ = preprocessor.apply_with_label(image, label)
        labels = label_array(prepared_label, subject.label)
        if config.data.label_mapping is not None:
            labels = remap_labels(labels, config.data.label_mapping)
        cases.append(PreparedCase(subject.subject_id, np.ascontiguousarray(prepared.array, dtype=np.float32),
                                  labels.astype(np.int16), tuple(image.channel_names)))
    return cases


class LoaderBatches:
    """The engine's batch source over a :class:`~vol_transfer.sampling.loader.PatchLoader`.

    The loader's stream is a pure function of ``(seed, batch number)``, so its state is the next
    batch number and resuming is exact whatever the number of workers.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self._iterator = None

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        return next(self._iterator)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._iterator = None


def make_batches(cases: Sequence[PreparedCase], config: SegmentationConfig, rank: int = 0,
                 pin_memory: bool = False) -> LoaderBatches:
    """Class-weighted, augmented windows from the in-memory training cases (seed offset per DDP rank)."""
    from vol_transfer.sampling.augment import Augmentation
    from vol_transfer.sampling.balanced import BalancedSampler
    from vol_transfer.sampling.loader import PatchLoader
    from vol_transfer.sampling.uniform import UniformSampler

    sampler_cfg, training = config.sampler, config.training
    if sampler_cfg.kind == "balanced":
        probabilities = None
        if sampler_cfg.class_probabilities is not None:
            probabilities = {k: p for k, p in enumerate(sampler_cfg.class_probabilities) if p > 0}
        sampler = BalancedSampler(training.window, probabilities, padding=sampler_cfg.padding)
    else:
        sampler = UniformSampler(training.window, padding=sampler_cfg.padding)
    aug = sampler_cfg.augmentation
    augmentation = None
    if aug.enabled:
        augmentation = Augmentation(rotation_degrees=aug.rotation_degrees, scaling=aug.scaling,
                                    flip_axes=tuple(aug.flip_axes), gamma=aug.gamma, noise_std=aug.noise_std,
                                    bias_field=aug.bias_field, torchio=tuple(aug.torchio))
    loader = PatchLoader(list(cases), _in_memory, sampler, batch_size=training.batch_size,
                         patches_per_volume=sampler_cfg.patches_per_volume,
                         volumes_per_block=sampler_cfg.volumes_per_block, augmentation=augmentation,
                         seed=training.seed + 100_003 * rank, num_workers=sampler_cfg.workers, padding_label=-1,
                         worker_transport=sampler_cfg.worker_transport, pin_memory=pin_memory)
    return LoaderBatches(loader)


def _in_memory(case: PreparedCase) -> tuple[np.ndarray, np.ndarray]:
    return case.image, case.label


def check_labels(cases: Sequence[PreparedCase], num_classes: int, where: Path) -> None:
    for case in cases:
        top = int(case.label.max())
        if top >= num_classes:
            raise InputDataError(where, f"{case.subject_id} has label value {top} but the recipe has "
                                        f"{num_classes} classes", "set data.label_mapping or data.classes to match")
