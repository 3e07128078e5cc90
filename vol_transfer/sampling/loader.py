"""Patch loader: an endless, seeded stream of window batches ready for a 3D segmentation network.

API (what training code calls)::

    loader = PatchLoader(items, load, sampler, batch_size=2, patches_per_volume=8,
                         volumes_per_block=4, augmentation=Augmentation.study(), seed=0,
                         num_workers=2, dtype=torch.float32, padding_label=-1, cache=False)
    for batch in loader:              # endless; stop after your iteration count
        batch["image"]   # (B, C, X, Y, Z) float32 (or ``dtype``), channels first
        batch["label"]   # (B, X, Y, Z) int16; ``padding_label`` (-1) where the window left the volume
        batch["valid"]   # (B, X, Y, Z) bool; False on padding — multiply your loss by it
        batch["centre"]  # (B, 3) int64 window centres (voxel indices of the loaded volume)
        batch["item"]    # (B,) int64 index into ``items``
        batch["index"]   # the batch number in the stream
        # ("label" is absent when ``load`` returns no label)
    state = loader.state_dict()       # {"seed", "next_batch", "fingerprint"} — save with the checkpoint
    loader.load_state_dict(state)     # the next batch is exactly the one that would have come next

``items`` is any sequence (subjects, paths …); ``load(item)`` returns ``(image, label)`` — image
``(C, X, Y, Z)`` float array (3D is taken as one channel), label ``(X, Y, Z)`` int array or None —
or ``(image, label, weights)`` with a non-negative weight map for :class:`WeightedSampler`.
:meth:`PatchLoader.from_manifest` builds ``items``/``load`` from a manifest split.

How the stream is defined (why resume and worker counts do not change it): batch ``b`` is a pure
function of ``(seed, b)``. Volumes are visited in epochs, each in a seeded random order; a
*visit* draws ``patches_per_volume`` windows from one volume (centres seeded by ``(seed, visit)``,
augmentation by ``(seed, visit, draw)``). Visits are grouped in *blocks* of
``volumes_per_block`` — the bounded queue — whose patches are shuffled together (seeded by
``(seed, block)``); batch ``b`` is patches ``b·B … b·B + B - 1`` of that stream.

Workers share the work in one of two ways; both give exactly the stream above, for any ``W``:

* default: DataLoader worker ``w`` of ``W`` computes visits ``v ≡ w (mod W)`` — loading, sampler
  index, centres, extraction, augmentation — so each volume is read once per visit by one worker;
  the main process shuffles a block's patches into batches (one copy per batch). Memory: each
  worker reuses ``ceil(2·volumes_per_block / W) + prefetch_factor`` visit slots in shared memory
  (:mod:`vol_transfer.sampling.ring`), e.g. 2 workers, 4 volumes per block, prefetch 2: 12 visits.
* ``cache=True`` (volumes held in memory, as the training engine does): every worker keeps every
  volume and its sampler index, and worker ``w`` builds whole batches ``b ≡ w (mod W)`` in
  ``prefetch_factor + 1`` reused shared-memory slots; the main process copies each batch out.

DataLoader returns worker results round-robin, i.e. in stream order. Resuming recomputes at most
one block: the next batch number is the whole state.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vol_transfer.errors import InputDataError, VolTransferError
from vol_transfer.sampling.augment import Augmentation, extract_patch
from vol_transfer.sampling.base import PatchSampler, PreparedVolume, SamplingError
from vol_transfer.sampling.ring import BatchRing

LoadResult = tuple  # (image, label) or (image, label, weights)
_ORDER, _SHUFFLE, _CENTRES, _AUGMENT = 0, 1, 2, 3  # generator streams, kept apart by a tag
# Labels travel as int16 (−1 = padding fits): a quarter of int64's bytes between processes.
# Losses that need int64 (cross-entropy) convert on the training device.
LABEL_DTYPE = torch.int16


def _as_numpy(patch: np.ndarray | torch.Tensor) -> np.ndarray:
    return patch.numpy() if isinstance(patch, torch.Tensor) else patch


def _new_tensors(shapes: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Empty tensors for ``{name: (shape, dtype)}``."""
    return {name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}


def _shared_tensors(shapes: dict[str, Any]) -> dict[str, torch.Tensor]:
    """:func:`_new_tensors` in shared memory: filled in place by a worker, sent without a copy."""
    return {name: tensor.share_memory_() for name, tensor in _new_tensors(shapes).items()}


def _ring_allocator(ring: "BatchRing", worker: int, message: dict[str, Any]):
    """``allocate`` for :meth:`PatchStream.batch` that fills a ring slot; records where in ``message``.

    Falls back to ordinary shared tensors when a batch's shapes differ from the ring's (the batch
    then travels the usual way, and a channel-count error is raised later in the main process).
    """
    def allocate(shapes: dict[str, Any]) -> dict[str, torch.Tensor]:
        try:
            reserved = ring.reserve(worker, shapes)
        except ValueError:
            reserved = None
        else:
            if reserved is None:  # the loader was closed while this worker waited
                message["closed"] = True
        if reserved is None:
            return _shared_tensors(shapes)
        buffers, announcement = reserved
        message.update(announcement)
        return buffers
    return allocate


@dataclass
class LoadedVolume:
    image: np.ndarray
    label: np.ndarray | None
    prepared: PreparedVolume


class PatchStream(IterableDataset):
    """The seeded stream. As an IterableDataset it yields *visits* (N patches of one volume), which
    DataLoader workers compute in parallel; :class:`PatchLoader` shuffles them into batches."""

    def __init__(
        self,
        items: Sequence[Any],
        load: Callable[[Any], LoadResult],
        sampler: PatchSampler,
        batch_size: int = 2,
        patches_per_volume: int = 8,
        volumes_per_block: int = 4,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        shuffle_volumes: bool = True,
        image_fill: float = 0.0,
        padding_label: int = -1,
        dtype: torch.dtype = torch.float32,
        cache: bool = False,
    ) -> None:
        if len(items) == 0:
            raise SamplingError("items", "no volumes to sample from", "check the manifest split or the item list")
        for name, value in (("batch_size", batch_size), ("patches_per_volume", patches_per_volume),
                            ("volumes_per_block", volumes_per_block)):
            if int(value) < 1:
                raise SamplingError(name, f"must be a positive integer, got {value}", f"set {name} >= 1")
        self.items = list(items)
        self.load = load
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.patches_per_volume = int(patches_per_volume)
        self.volumes_per_block = int(volumes_per_block)
        self.augmentation = augmentation
        self.seed = int(seed)
        self.shuffle_volumes = shuffle_volumes
        self.image_fill = float(image_fill)
        self.padding_label = int(padding_label)
        self.dtype = dtype
        self.cache = cache
        self.first_visit = 0
        self.stop_visit: int | None = None
        self.first_batch = 0
        self.stop_batch: int | None = None
        self.ring: BatchRing | None = None  # set by PatchLoader while it starts worker processes
        self.reset()

    def reset(self) -> None:
        """Forget every cached volume and order (after changing the seed)."""
        self._volumes: dict[int, LoadedVolume] = {}
        self._orders: dict[int, np.ndarray] = {}
        self._shuffles: dict[int, np.ndarray] = {}
        self._centres: dict[int, np.ndarray] = {}

    # --- the pure stream -------------------------------------------------------------------------
    @property
    def patches_per_block(self) -> int:
        return self.volumes_per_block * self.patches_per_volume

    def item_of_visit(self, visit: int) -> int:
        epoch, position = divmod(visit, len(self.items))
        if not self.shuffle_volumes:
            return position
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, _ORDER, epoch]).permutation(len(self.items))}
        return int(self._orders[epoch][position])

    def block_order(self, block: int) -> np.ndarray:
        """Slot (visit_in_block · N + draw) of each position of a block's shuffled patches."""
        if block not in self._shuffles:
            if len(self._shuffles) > 8:
                self._shuffles.clear()
            self._shuffles[block] = np.random.default_rng([self.seed, _SHUFFLE, block]).permutation(
                self.patches_per_block)
        return self._shuffles[block]

    def locate(self, patch: int) -> tuple[int, int]:
        """Global patch number → (visit, draw within that visit)."""
        block, position = divmod(patch, self.patches_per_block)
        visit_in_block, draw = divmod(int(self.block_order(block)[position]), self.patches_per_volume)
        return block * self.volumes_per_block + visit_in_block, draw

    def centres(self, visit: int, volume: LoadedVolume) -> np.ndarray:
        """The window centres of one visit, ``(patches_per_volume, 3)``."""
        if visit not in self._centres:
            if len(self._centres) > 8 * self.volumes_per_block:
                self._centres.clear()
            rng = np.random.default_rng([self.seed, _CENTRES, visit])
            self._centres[visit] = self.sampler.draw(volume.prepared, self.patches_per_volume, rng)
        return self._centres[visit]

    def _patch(self, volume: LoadedVolume, visit: int, draw: int):
        params = None
        if self.augmentation is not None:
            params = self.augmentation.draw(np.random.default_rng([self.seed, _AUGMENT, visit, draw]))
        return extract_patch(volume.image, volume.label, self.centres(visit, volume)[draw], self.sampler.window,
                             params, self.image_fill, self.padding_label)

    def visit(self, visit: int) -> dict[str, Any]:
        """The ``patches_per_volume`` patches of one volume visit (deterministic; loads the volume)."""
        item = self.item_of_visit(visit)
        volume = self._volumes.get(item) or self._load(item)
        if self.cache:
            self._volumes[item] = volume
        n, window = self.patches_per_volume, tuple(self.sampler.window)
        centres = self.centres(visit, volume)
        result = {"visit": visit, "item": item, "centre": torch.from_numpy(centres.astype(np.int64))}
        patches = [self._patch(volume, visit, j) for j in range(n)]
        if get_worker_info() is None:  # in-process: batches copy straight from the patches
            result.update(image=[p.image for p in patches], valid=[p.valid for p in patches],
                          label=None if volume.label is None else [p.label for p in patches])
            return result
        # in a worker: filled in place in shared memory (a reused ring slot when there is a ring)
        shapes = {"image": ((n, volume.image.shape[0]) + window, torch.float32), "valid": ((n,) + window, torch.bool)}
        if volume.label is not None:
            shapes["label"] = ((n,) + window, LABEL_DTYPE)
        message: dict[str, Any] = {}
        allocate = _shared_tensors if self.ring is None else _ring_allocator(self.ring, get_worker_info().id, message)
        tensors = allocate(shapes)
        image, valid, label = tensors["image"], tensors["valid"], tensors.get("label")
        for j, patch in enumerate(patches):
            # numpy assignment, not Tensor.copy_: copy_ goes through the intra-op thread pool,
            # which measured 10× slower for these small copies on a busy machine
            image[j].numpy()[...] = patch.image
            valid[j].numpy()[...] = patch.valid
            if label is not None:
                label[j].numpy()[...] = patch.label
        if "ring_slot" in message:  # the patches wait in the ring: send only where they are
            message.update(visit=visit, item=item, centre=centres.astype(np.int64).tolist())
            if volume.label is None:
                message["label"] = None
            return message
        result.update(image=image, valid=valid, label=label)
        return result

    def patches_from(self, first_patch: int, visits: Iterator[dict[str, Any]]) -> Iterator[tuple[dict, int]]:
        """(visit, draw) of every patch from ``first_patch`` on; ``visits`` must start at its block."""
        block, position = divmod(first_patch, self.patches_per_block)
        while True:
            held = []
            for k in range(self.volumes_per_block):
                visit = _raise_error(next(visits))
                if visit["visit"] != block * self.volumes_per_block + k:
                    raise RuntimeError(f"visit {visit['visit']} arrived out of order")  # a bug, not user error
                held.append(visit)
            order = self.block_order(block)
            for slot in order[position:]:
                yield held[slot // self.patches_per_volume], int(slot % self.patches_per_volume)
            block, position = block + 1, 0

    def assemble(self, index: int, patches: Sequence[tuple[dict, int]]) -> dict[str, Any]:
        """One batch from ``batch_size`` (visit, draw) pairs."""
        first = patches[0][0]
        size = (len(patches),) + tuple(first["image"][patches[0][1]].shape)
        image = torch.empty(size, dtype=torch.float32)
        valid = torch.empty((len(patches),) + size[2:], dtype=torch.bool)
        has_labels = all(v["label"] is not None for v, _ in patches)
        label = torch.empty((len(patches),) + size[2:], dtype=LABEL_DTYPE) if has_labels else None
        for slot, (visit, draw) in enumerate(patches):
            if tuple(visit["image"][draw].shape) != size[1:]:
                raise InputDataError(_describe(self.items[visit["item"]]),
                                     f"has {visit['image'][draw].shape[0]} channels, others {size[1]}",
                                     "give every volume the same channels")
            image[slot].numpy()[...] = _as_numpy(visit["image"][draw])
            valid[slot].numpy()[...] = _as_numpy(visit["valid"][draw])
            if label is not None:
                label[slot].numpy()[...] = _as_numpy(visit["label"][draw])
        batch: dict[str, Any] = {
            "image": image if self.dtype == torch.float32 else image.to(self.dtype),
            "valid": valid,
            "centre": torch.stack([v["centre"][d] for v, d in patches]),
            "item": torch.tensor([v["item"] for v, _ in patches], dtype=torch.int64),
            "index": index,
        }
        if label is not None:
            batch["label"] = label
        return batch

    def batch(self, index: int, allocate: Callable[[dict[str, Any]], dict[str, torch.Tensor]] | None = None
              ) -> dict[str, Any]:
        """Batch ``index``, computed here from the volumes it needs (what workers do with ``cache``).

        ``allocate(shapes)`` may supply the tensors to fill (``{name: (shape, dtype)}`` → tensors).
        """
        located = [self.locate(p) for p in range(index * self.batch_size, (index + 1) * self.batch_size)]
        if not self.cache:  # keep only the volumes of the blocks in use
            blocks = {v // self.volumes_per_block for v, _ in located}
            needed = {self.item_of_visit(b * self.volumes_per_block + k)
                      for b in blocks for k in range(self.volumes_per_block)}
            self._volumes = {item: v for item, v in self._volumes.items() if item in needed}
        volumes = []
        for visit, _ in located:
            item = self.item_of_visit(visit)
            if item not in self._volumes:
                self._volumes[item] = self._load(item)
            volumes.append(self._volumes[item])
        window = tuple(self.sampler.window)
        channels = volumes[0].image.shape[0]
        has_labels = all(v.label is not None for v in volumes)
        shapes = {"image": ((len(located), channels) + window, torch.float32),
                  "valid": ((len(located),) + window, torch.bool)}
        if has_labels:
            shapes["label"] = ((len(located),) + window, LABEL_DTYPE)
        if allocate is None:
            allocate = _shared_tensors if get_worker_info() is not None else _new_tensors
        tensors = allocate(shapes)
        image, valid, label = tensors["image"], tensors["valid"], tensors.get("label")
        for slot, ((visit, draw), volume) in enumerate(zip(located, volumes)):
            if volume.image.shape[0] != channels:
                raise InputDataError(_describe(self.items[self.item_of_visit(visit)]),
                                     f"has {volume.image.shape[0]} channels, others {channels}",
                                     "give every volume the same channels")
            patch = self._patch(volume, visit, draw)
            image[slot].numpy()[...] = patch.image
            valid[slot].numpy()[...] = patch.valid
            if label is not None:
                label[slot].numpy()[...] = patch.label
        batch: dict[str, Any] = {
            "image": image if self.dtype == torch.float32 else image.to(self.dtype),
            "valid": valid,
            "centre": torch.from_numpy(np.stack([self.centres(v, vol)[d] for (v, d), vol in zip(located, volumes)])
                                       .astype(np.int64)),
            "item": torch.tensor([self.item_of_visit(v) for v, _ in located], dtype=torch.int64),
            "index": index,
        }
        if label is not None:
            batch["label"] = label
        return batch

    # --- as a dataset of visits, sharded over workers ----------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self.cache:  # every worker holds every volume: share out whole batches, nothing to assemble
            index = self.first_batch + worker
            ring = self.ring  # set only in worker processes
            while self.stop_batch is None or index < self.stop_batch:
                message: dict[str, Any] = {}
                try:
                    batch = self.batch(index, None if ring is None else _ring_allocator(ring, worker, message))
                except VolTransferError as error:
                    if info is None:
                        raise
                    yield {"index": index, "error": (type(error), error.where, error.problem, error.fix)}
                    return
                if message.get("closed"):
                    return
                if "ring_slot" in message:  # the tensors wait in the ring: send only where they are
                    message.update(index=batch["index"], centre=batch["centre"].tolist(), item=batch["item"].tolist())
                    batch = message
                yield batch
                index += workers
            return
        visit = self.first_visit + worker
        while self.stop_visit is None or visit < self.stop_visit:
            try:
                yield self.visit(visit)
            except VolTransferError as error:
                if info is None:
                    raise
                # DataLoader cannot rebuild our exceptions (their __init__ takes 3 fields): send the fields
                yield {"visit": visit, "error": (type(error), error.where, error.problem, error.fix)}
                return
            visit += workers

    # --- volumes and their sampler indices ---------------------------------------------------------
    def _load(self, item: int) -> LoadedVolume:
        name = _describe(self.items[item])
        result = self.load(self.items[item])
        if not isinstance(result, tuple) or len(result) not in (2, 3):
            raise InputDataError(name, "load() must return (image, label) or (image, label, weights)",
                                 "fix the load callable given to the patch loader")
        image, label = np.asarray(result[0]), result[1]
        weights = None if len(result) == 2 else np.asarray(result[2])
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise InputDataError(name, f"image has shape {image.shape}, not (C, X, Y, Z)", "load 3D volumes")
        # C order once per load: NIfTI arrays arrive in Fortran order, and window reads (and flat
        # label indexing) want C order. Costs ~0.3 s for a 2-channel BRATS volume; free if C already.
        image = np.ascontiguousarray(image, dtype=np.float32)
        spatial = image.shape[1:]
        if label is not None:
            label = np.asarray(label)
            if label.ndim == 4 and label.shape[0] == 1:
                label = label[0]
            if label.shape != spatial:
                raise InputDataError(name, f"label shape {label.shape} differs from image {spatial}",
                                     "resample the label onto the image grid")
            if label.dtype.kind not in "iub":  # float label files: round once, keep a small integer type
                label = np.rint(label).astype(np.int16)
            label = np.ascontiguousarray(label)
        if weights is not None and weights.shape != spatial:
            raise InputDataError(name, f"weight map shape {weights.shape} differs from image {spatial}",
                                 "give a weight map on the image grid")
        prepared = self.sampler.prepare(label, weights, spatial_shape=spatial, name=name)
        return LoadedVolume(image, label, prepared)

    def fingerprint(self) -> str:
        """Changes when anything that defines the stream changes (not the worker count)."""
        text = repr((len(self.items), [_describe(i) for i in self.items], repr(self.sampler), self.batch_size,
                     self.patches_per_volume, self.volumes_per_block, repr(self.augmentation), self.shuffle_volumes,
                     self.image_fill, self.padding_label))
        return hashlib.sha1(text.encode()).hexdigest()[:16]


class PatchLoader:
    """Iterable over batches: visits computed by DataLoader workers, shuffled per block, batched here.

    Args: see the module docstring; ``num_workers``/``prefetch_factor``/``pin_memory`` go to
    ``torch.utils.data.DataLoader`` (``prefetch_factor`` counts visits per worker);
    ``num_batches`` makes the stream finite; ``cache=True`` keeps every loaded volume and its
    sampler index in memory (each worker its own) — for data sets that fit in memory, like
    MONAI's CacheDataset.
    """

    def __init__(
        self,
        items: Sequence[Any],
        load: Callable[[Any], LoadResult],
        sampler: PatchSampler,
        batch_size: int = 2,
        patches_per_volume: int = 8,
        volumes_per_block: int = 4,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        num_workers: int = 0,
        shuffle_volumes: bool = True,
        image_fill: float = 0.0,
        padding_label: int = -1,
        dtype: torch.dtype = torch.float32,
        num_batches: int | None = None,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
        cache: bool = False,
    ) -> None:
        self.stream = PatchStream(items, load, sampler, batch_size, patches_per_volume, volumes_per_block,
                                  augmentation, seed, shuffle_volumes, image_fill, padding_label, dtype, cache)
        self.num_workers = int(num_workers)
        self.num_batches = num_batches
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.next_batch = 0

    @classmethod
    def from_manifest(cls, manifest: Any, split: str | None, sampler: PatchSampler, preprocessor: Any = None,
                      label_mapping: Any = None, **options: Any) -> "PatchLoader":
        """Loader over ``manifest.subjects(split)``, loading with ``load_subject`` (+ preprocessing)."""
        subjects = manifest.subjects(split)
        if not subjects:
            raise SamplingError(f"split {split!r}", "has no subjects in the manifest", "choose a split that exists")
        return cls(subjects, SubjectLoader(preprocessor, label_mapping), sampler, **options)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = self.stream
        size, per_block, per_visit = stream.batch_size, stream.patches_per_block, stream.volumes_per_block
        if self.num_batches is not None and self.next_batch >= self.num_batches:
            return
        first_patch = self.next_batch * size
        stream.first_batch, stream.stop_batch = self.next_batch, self.num_batches
        stream.first_visit = first_patch // per_block * per_visit
        stream.stop_visit = None
        if self.num_batches is not None:
            stream.stop_visit = ((self.num_batches * size - 1) // per_block + 1) * per_visit
        source: Iterator = iter(stream)
        ring = None
        if self.num_workers > 0:  # buffers reused in shared memory (see vol_transfer.sampling.ring)
            if stream.cache:
                ring = stream.ring = BatchRing(self.num_workers, self.prefetch_factor + 1)
            else:  # the main process holds up to two blocks of visits while it assembles batches
                held = -(-2 * stream.volumes_per_block // self.num_workers)
                ring = stream.ring = BatchRing(self.num_workers, held + self.prefetch_factor)
            source = iter(DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                     prefetch_factor=self.prefetch_factor))
            stream.ring = None  # the workers have their copy; the stream itself stays picklable as before
        if stream.cache:
            batches: Iterator = (self._from_worker(_raise_error(b), ring) for b in source)
        else:
            opened: collections.deque = collections.deque()  # (visit, worker) read in place from the ring
            patches = stream.patches_from(first_patch, (self._open_visit(v, ring, opened) for v in source))
            indices = itertools.count(self.next_batch) if self.num_batches is None else \
                range(self.next_batch, self.num_batches)
            batches = (self._release_after(stream.assemble(i, [next(patches) for _ in range(size)]), ring, opened)
                       for i in indices)
        try:
            for batch in batches:
                if self.num_batches is not None and batch["index"] >= self.num_batches:
                    return
                if self.pin_memory:
                    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                self.next_batch = batch["index"] + 1
                yield batch
        finally:
            if ring is not None:
                ring.close()  # workers waiting for a slot stop, so the DataLoader shuts down at once

    @staticmethod
    def _open_visit(visit: dict[str, Any], ring: BatchRing | None, opened: collections.deque) -> dict[str, Any]:
        if ring is None or "ring_slot" not in visit:
            return visit
        visit = ring.open(visit)
        visit["centre"] = torch.as_tensor(visit["centre"])
        opened.append((visit["visit"], visit.pop("ring_worker")))
        return visit

    def _release_after(self, batch: dict[str, Any], ring: BatchRing | None, opened: collections.deque
                       ) -> dict[str, Any]:
        """Free the ring slots of visits no later batch needs (those before the next batch's block)."""
        stream = self.stream
        next_block = (batch["index"] + 1) * stream.batch_size // stream.patches_per_block
        while opened and opened[0][0] < next_block * stream.volumes_per_block:
            ring.release(opened.popleft()[1])
        return batch

    def _from_worker(self, batch: dict[str, Any], ring: BatchRing | None) -> dict[str, Any]:
        """A batch as sent by a worker: copied out of its ring slot when it came through the ring."""
        if ring is None or "ring_slot" not in batch:
            return batch
        batch = ring.take(batch)
        batch["centre"], batch["item"] = torch.as_tensor(batch["centre"]), torch.as_tensor(batch["item"])
        if self.stream.dtype != torch.float32:
            batch["image"] = batch["image"].to(self.stream.dtype)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.stream.seed, "next_batch": self.next_batch, "fingerprint": self.stream.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") not in (None, self.stream.fingerprint()):
            raise SamplingError("loader state", "was saved for a different data list or sampler configuration",
                                "resume with the same manifest split, sampler and loader settings")
        if int(state["seed"]) != self.stream.seed:
            self.stream.seed = int(state["seed"])
            self.stream.reset()
        self.next_batch = int(state["next_batch"])


def _raise_error(item: dict[str, Any]) -> dict[str, Any]:
    """Re-raise a user error sent from a worker as its fields (see ``PatchStream.__iter__``)."""
    if "error" in item:
        kind, where, problem, fix = item["error"]
        raise kind(where, problem, fix)
    return item


class SubjectLoader:
    """``load`` for manifest subjects: ``load_subject`` → optional Preprocessor → label mapping."""

    def __init__(self, preprocessor: Any = None, label_mapping: Any = None) -> None:
        self.preprocessor = preprocessor
        self.label_mapping = label_mapping

    def __call__(self, subject: Any) -> tuple[np.ndarray, np.ndarray | None]:
        from vol_transfer.io.manifest import load_subject  # imported late: optional dependency at import time

        image, label = load_subject(subject)
        if self.preprocessor is not None:
            image, label, _ = self.preprocessor.apply_with_label(image, label)
        label_array = None if label is None else np.asarray(label.array)
        if label_array is not None and label_array.ndim == 4:
            label_array = label_array[0]
        if label_array is not None and self.label_mapping is not None:
            from vol_transfer.preprocessing.labels import remap_labels

            label_array = remap_labels(label_array, self.label_mapping)
        return np.asarray(image.array, dtype=np.float32), label_array


def _describe(item: Any) -> str:
    for attribute in ("subject_id", "name"):
        if hasattr(item, attribute):
            return str(getattr(item, attribute))
    return str(item)
