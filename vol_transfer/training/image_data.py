"""2D image sets for classification and pre-training: a manifest split → in-memory uint8 arrays.

A classification manifest (``# kind: classification``, image column ``image``, label = class
name, ``patient_id``) is read with :func:`vol_transfer.io.manifest.read_manifest`; a split is
optionally cut to a seeded, class-stratified subset (so CPU-sized experiments stay reproducible)
and loaded at a fixed side length. Batches are scaled to ``[0, 1]`` with the shared /255 preset.

Example (needs the chest X-ray data, so not run here)::

    data = ImageDataConfig(image_size=128, max_train=1000)
    train = load_image_set(data, "train")
    train.images.shape, train.classes   # ((1000, 1, 128, 128), ['NORMAL', 'PNEUMONIA'])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from vol_transfer.errors import ManifestError
from vol_transfer.io.images2d import load_image_stack
from vol_transfer.preprocessing.intensity import scale_uint8
from vol_transfer.recipes import option
from vol_transfer.training.image_augmentation import ImageAugmentation, augment_images


@dataclass
class ImageDataConfig:
    """Where the images are and how they are loaded (a recipe's ``data:`` section)."""

    manifest: str = "data_manifests/chest_xray_kermany.csv"
    data_root: str | None = None
    image_size: int = option(128, ge=16, help="images are resized to image_size × image_size")
    channels: int = option(1, choices=(1, 3), help="1 = grey, 3 = RGB")
    max_train: int | None = option(None, ge=1, help="seeded class-stratified subset of the train split")
    max_validation: int | None = option(None, ge=1, help="seeded class-stratified subset of the validation split")
    subset_seed: int = 0
    hflip: bool = option(True, help="random horizontal flips while training")
    augment: ImageAugmentation | None = option(None, help="random pose/exposure/blur/noise while training (off when unset)")


@dataclass
class ImageSet:
    """Images ``(N, C, H, W)`` uint8 with integer labels, patient ids and paths."""

    images: np.ndarray
    labels: np.ndarray
    patients: list[str]
    paths: list[Path]
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()


def stratified_subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``limit`` items keeping the class proportions."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    classes, counts = np.unique(labels, return_counts=True)
    quotas = np.floor(counts / counts.sum() * limit).astype(int)
    quotas[np.argmax(counts)] += limit - quotas.sum()
    for value, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == value)
        chosen.append(rng.choice(members, size=min(quota, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def load_image_set(config: ImageDataConfig, split: str | Sequence[str], progress: bool = True) -> ImageSet:
    """Load one split (or several) of the manifest, cut to the configured subset size."""
    from vol_transfer.io.manifest import read_manifest

    manifest = read_manifest(config.manifest, data_root=config.data_root)
    if manifest.kind != "classification" or not manifest.classes:
        raise ManifestError(manifest.path, ["is not a classification manifest"],
                            "add '# kind: classification' and '# classes: A,B' before the header")
    splits = [split] if isinstance(split, str) else list(split)
    subjects = [s for name in splits for s in manifest.subjects(name)]
    if not subjects:
        raise ManifestError(manifest.path, [f"split(s) {splits} are empty"], f"use one of {manifest.splits}")
    classes = list(manifest.classes)
    image_column = manifest.channel_names[0]
    labels = np.array([classes.index(str(s.label)) if s.label is not None else -1 for s in subjects], dtype=np.int64)
    limit = config.max_train if "train" in splits else config.max_validation
    keep = stratified_subset(labels, limit, config.subset_seed)
    paths = [subjects[i].channels[image_column] for i in keep]
    images = load_image_stack(paths, config.image_size, config.channels, progress=progress)
    return ImageSet(images, labels[keep], [subjects[i].patient_id for i in keep], paths, classes)


def with_data_root(config: ImageDataConfig, data_root: str | Path | None) -> ImageDataConfig:
    """``config`` with ``data_root`` filled in from the command line when the recipe leaves it unset."""
    if config.data_root or not data_root:
        return config
    return dataclasses.replace(config, data_root=str(data_root))


def image_preprocessing(data: ImageDataConfig) -> dict[str, Any]:
    """What a classification checkpoint records so inference loads images exactly as training did.

    Every image goes through :func:`vol_transfer.io.images2d.load_image` (grey or RGB, bilinear resize to
    ``image_size``², uint8; 8-bit DICOM pixels as stored, deeper ones through their window) and
    :func:`~vol_transfer.training.image_data.to_batch` (/255). A step added to that path must be recorded
    here and applied by :mod:`vol_transfer.inference.classify`, which refuses keys it does not know.

    >>> image_preprocessing(ImageDataConfig(image_size=64))
    {'kind': 'image2d', 'image_size': 64, 'channels': 1, 'resize': 'bilinear', 'intensity': 'scale_uint8'}
    """
    return {"kind": "image2d", "image_size": data.image_size, "channels": data.channels, "resize": "bilinear",
            "intensity": "scale_uint8"}


class ImageBatches:
    """The engine's batch source for 2D images: epochs of balanced, shuffled batches.

    Batch ``b`` is a pure function of ``(seed, b)``: its epoch's order comes from
    ``epoch_indices(labels, balance, default_rng([seed, epoch]))`` and its flips from
    ``default_rng([seed, b])``, so the state is the next batch number and resuming is exact. The
    last partial batch of an epoch is dropped (batch norm needs two samples). ``make_batch``
    turns ``(uint8 images, labels, rng)`` into the batch dict (default: images in [0, 1] with
    optional flips, and their labels).

    >>> batches = ImageBatches(np.zeros((10, 1, 8, 8), np.uint8), np.array([0] * 7 + [1] * 3), batch_size=4)
    >>> batches.per_epoch, next(batches)["image"].shape
    (2, torch.Size([4, 1, 8, 8]))
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, balance: BalanceMethod = "none",
                 seed: int = 0, hflip: bool = False, make_batch=None, augment: ImageAugmentation | None = None) -> None:
        self.images, self.labels = images, np.asarray(labels)
        self.balance, self.seed, self.hflip, self.augment = balance, int(seed), hflip, augment
        length = len(epoch_indices(self.labels, balance, np.random.default_rng(0)))
        self.batch_size = min(batch_size, length)
        self.per_epoch = max(1, length // self.batch_size)
        self.make_batch = make_batch or self._classification_batch
        self.next_batch = 0
        self._order: tuple[int, np.ndarray] | None = None

    def _classification_batch(self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> dict:
        return {"image": to_batch(images, hflip=self.hflip, rng=rng, augment=self.augment),
                "label": torch.from_numpy(labels)}

    def __iter__(self) -> "ImageBatches":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        epoch, position = divmod(self.next_batch, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_indices(self.labels, self.balance, np.random.default_rng([self.seed, epoch])))
        index = np.sort(self._order[1][position * self.batch_size:(position + 1) * self.batch_size])
        rng = np.random.default_rng([self.seed, self.next_batch, 1])
        self.next_batch += 1
        return self.make_batch(self.images[index], self.labels[index], rng)

    def state_dict(self) -> dict[str, int]:
        return {"next_batch": self.next_batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.next_batch = int(state["next_batch"])


def to_batch(images: np.ndarray, hflip: bool = False, rng: np.random.Generator | None = None,
             augment: ImageAugmentation | None = None) -> torch.Tensor:
    """uint8 images → float32 tensor in [0, 1]; with ``rng``: each image flipped left-right with
    probability ½ (``hflip``) and randomly augmented (``augment``, see :mod:`.image_augmentation`)."""
    batch = scale_uint8(images)
    if hflip and rng is not None:
        flip = rng.random(len(batch)) < 0.5
        batch[flip] = batch[flip][..., ::-1]
    if augment is not None and rng is not None:
        batch = augment_images(batch, augment, rng)
    return torch.from_numpy(np.ascontiguousarray(batch))


BalanceMethod = Literal["none", "oversample", "undersample", "weighted_sampler", "class_weighted_loss"]


def epoch_indices(labels: np.ndarray, method: BalanceMethod, rng: np.random.Generator) -> np.ndarray:
    """One epoch's sample order with the class balance ``method``.

    - ``none`` and ``class_weighted_loss`` (the loss, not the order, balances): every index once, shuffled.
    - ``oversample``: minority classes duplicated up to the majority count (each index at most
      one copy more than any other of its class), shuffled.
    - ``undersample``: every class cut to the minority count, shuffled.
    - ``weighted_sampler``: ``len(labels)`` draws with replacement, probability ∝ 1 / class count
      (torch's ``WeightedRandomSampler``), so classes are equally likely.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if method in ("none", "class_weighted_loss"):
        return rng.permutation(len(labels))
    if method == "weighted_sampler":
        weights = 1.0 / counts[np.searchsorted(classes, labels)]
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                                         generator=generator)
        return np.fromiter(iter(sampler), dtype=np.int64, count=len(labels))
    parts = []
    target = counts.max() if method == "oversample" else counts.min()
    for value in classes:
        members = rng.permutation(np.flatnonzero(labels == value))
        if method == "oversample":
            repeats, remainder = divmod(int(target), len(members))
            parts.append(np.concatenate([np.tile(members, repeats), members[:remainder]]))
        elif method == "undersample":
            parts.append(members[:target])
        else:
            raise ValueError(f"unknown balance method {method!r}")
    return rng.permutation(np.concatenate(parts))
