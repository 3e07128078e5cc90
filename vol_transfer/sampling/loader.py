"""Patch loader: an endless, seeded stream of window batches ready for a 3D segmentation network.

API (what training code calls)::

    loader = PatchLoader(items, load, sampler, batch_size=2, patches_per_volume=8,
                         volumes_per_block=4, augmentation=Augmentation.study(), seed=0,
                         num_workers=2, dtype=torch.float32, padding_label=-1)
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

``items`` is any sequence (in-memory cases, subjects, paths …); ``load(item)`` returns
``(image, label)`` — image ``(C, X, Y, Z)`` float array (3D is taken as one channel), label
``(X, Y, Z)`` int array or None — or ``(image, label, weights)`` with a non-negative weight map for
:class:`WeightedSampler`. Every loaded volume and its sampler index stay in memory (in each
process that uses them), like MONAI's CacheDataset: meant for data sets that fit in memory, as the
training engine's in-memory cases do.

How the stream is defined (why resume and worker counts do not change it): batch ``b`` is a pure
function of ``(seed, b)``. Volumes are visited in epochs, each in a seeded random order; a
*visit* draws ``patches_per_volume`` windows from one volume (centres seeded by ``(seed, visit)``,
augmentation by ``(seed, visit, draw)``; TorchIO transforms too, under a forked torch generator).
Visits are grouped in *blocks* of ``volumes_per_block`` — the shuffle buffer — whose patches are
shuffled together (seeded by ``(seed, block)``); batch ``b`` is patches ``b·B … b·B + B - 1`` of
that stream.

Workers: DataLoader worker ``w`` of ``W`` builds whole batches ``b ≡ w (mod W)``; DataLoader returns
them round-robin, i.e. in stream order. Workers start with the ``fork`` method on Linux (the
in-memory cases are shared copy-on-write instead of pickled into every worker; DataLoader workers
run one torch thread and never touch CUDA, so forking a threaded trainer is safe) and ``spawn``
elsewhere (see :func:`worker_start_method`). A batch crosses to the main process the usual torch
way (a shared-memory tensor per field), or with ``worker_transport="ring"`` through a few reused
shared-memory slots (:mod:`vol_transfer.sampling.ring`); both give the same batches.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vol_transfer.errors import InputDataError, VolTransferError
from vol_transfer.sampling.augment import Augmentation, extract_patch
from vol_transfer.sampling.base import PatchSampler, PreparedVolume, SamplingError
from vol_transfer.sampling.ring import BatchRing

LoadResult = tuple  # (image, label) or (image, label, weights)
WorkerTransport = Literal["torch", "ring"]
WORKER_TRANSPORTS = ("torch", "ring")
_ORDER, _SHUFFLE, _CENTRES, _AUGMENT, _TORCHIO = 0, 1, 2, 3, 4  # generator streams, kept apart by a tag
# Labels travel as int16 (−1 = padding fits): a quarter of int64's bytes between processes.
# Losses that need int64 (cross-entropy) convert on the training device.
LABEL_DTYPE = torch.int16


def worker_start_method() -> str:
    """How DataLoader workers start: ``fork`` on Linux, ``spawn`` elsewhere.

    ``fork`` shares the in-memory volumes with the workers copy-on-write and starts a worker in
    milliseconds; ``spawn``/``forkserver`` pickle every item (the whole data set) into every worker
    and import torch again there (see ``benchmarks/bench_train_step.py``). macOS lacks a safe fork,
    Windows any fork; Python 3.14 would otherwise default to ``forkserver`` on Linux.
    """
    return "fork" if sys.platform.startswith("linux") else "spawn"


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
    """The seeded stream. As an IterableDataset it yields whole batches, which DataLoader workers
    compute in parallel (worker ``w`` of ``W``: batches ``b ≡ w (mod W)``)."""

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
        params, pipeline, torchio_seed = None, None, 0
        if self.augmentation is not None:
            params = self.augmentation.draw(np.random.default_rng([self.seed, _AUGMENT, visit, draw]))
            pipeline = self.augmentation.torchio_pipeline
            if pipeline is not None:  # TorchIO draws from torch's generator: seeded per patch, forked
                torchio_seed = int(np.random.default_rng([self.seed, _TORCHIO, visit, draw]).integers(2**63 - 1))
        return extract_patch(volume.image, volume.label, self.centres(visit, volume)[draw], self.sampler.window,
                             params, self.image_fill, self.padding_label, pipeline, torchio_seed)

    def volume(self, item: int) -> LoadedVolume:
        """Item ``item`` loaded with its sampler index (once; then kept)."""
        if item not in self._volumes:
            self._volumes[item] = self._load(item)
        return self._volumes[item]

    def batch(self, index: int, allocate: Callable[[dict[str, Any]], dict[str, torch.Tensor]] | None = None
              ) -> dict[str, Any]:
        """Batch ``index``, computed here from the volumes it needs.

        ``allocate(shapes)`` may supply the tensors to fill (``{name: (shape, dtype)}`` → tensors).
        """
        located = [self.locate(p) for p in range(index * self.batch_size, (index + 1) * self.batch_size)]
        volumes = [self.volume(self.item_of_visit(visit)) for visit, _ in located]
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
            # numpy assignment, not Tensor.copy_: copy_ goes through the intra-op thread pool,
            # which measured 10× slower for these small copies on a busy machine
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

    # --- as a dataset of batches, sharded over workers ---------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        index = self.first_batch + worker
        ring = self.ring  # set only in worker processes, and only for worker_transport="ring"
        while self.stop_batch is None or index < self.stop_batch:
            message: dict[str, Any] = {}
            try:
                batch = self.batch(index, None if ring is None else _ring_allocator(ring, worker, message))
            except VolTransferError as error:
                if info is None:
                    raise
                # DataLoader cannot rebuild our exceptions (their __init__ takes 3 fields): send the fields
                yield {"index": index, "error": (type(error), error.where, error.problem, error.fix)}
                return
            if message.get("closed"):
                return
            if "ring_slot" in message:  # the tensors wait in the ring: send only where they are
                message.update(index=batch["index"], centre=batch["centre"].tolist(), item=batch["item"].tolist())
                batch = message
            yield batch
            index += workers

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
        """Changes when anything that defines the stream changes (not the worker count or transport)."""
        text = repr((len(self.items), [_describe(i) for i in self.items], repr(self.sampler), self.batch_size,
                     self.patches_per_volume, self.volumes_per_block, repr(self.augmentation), self.shuffle_volumes,
                     self.image_fill, self.padding_label))
        return hashlib.sha1(text.encode()).hexdigest()[:16]


class PatchLoader:
    """Iterable over batches, computed in-process or by DataLoader workers.

    Args: see the module docstring; ``num_workers``/``prefetch_factor``/``pin_memory`` go to
    ``torch.utils.data.DataLoader`` (``prefetch_factor`` counts batches per worker);
    ``num_batches`` makes the stream finite; ``worker_transport`` is how a worker's batch reaches
    this process (``"torch"``: DataLoader's own shared-memory tensors; ``"ring"``: reused slots,
    :mod:`vol_transfer.sampling.ring`); ``multiprocessing_context`` defaults to
    :func:`worker_start_method`.
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
        worker_transport: WorkerTransport = "torch",
        multiprocessing_context: str | None = None,
    ) -> None:
        if worker_transport not in WORKER_TRANSPORTS:
            raise SamplingError("worker_transport", f"unknown transport {worker_transport!r}",
                                f"use one of {list(WORKER_TRANSPORTS)}")
        self.stream = PatchStream(items, load, sampler, batch_size, patches_per_volume, volumes_per_block,
                                  augmentation, seed, shuffle_volumes, image_fill, padding_label, dtype)
        self.num_workers = int(num_workers)
        self.num_batches = num_batches
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.worker_transport = worker_transport
        self.multiprocessing_context = multiprocessing_context or worker_start_method()
        self.next_batch = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = self.stream
        if self.num_batches is not None and self.next_batch >= self.num_batches:
            return
        stream.first_batch, stream.stop_batch = self.next_batch, self.num_batches
        source: Iterator = iter(stream)
        ring = None
        if self.num_workers > 0:
            if self.worker_transport == "ring":  # each worker reuses prefetch + 1 batch slots
                ring = stream.ring = BatchRing(self.num_workers, self.prefetch_factor + 1,
                                               self.multiprocessing_context)
            source = iter(DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                     prefetch_factor=self.prefetch_factor,
                                     multiprocessing_context=self.multiprocessing_context))
            stream.ring = None  # the workers have their copy; the stream itself stays picklable as before
        try:
            for batch in source:
                batch = _raise_error(batch)
                if ring is not None and "ring_slot" in batch:
                    batch = self._from_ring(batch, ring)
                if self.num_batches is not None and batch["index"] >= self.num_batches:
                    return
                if self.pin_memory:
                    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                self.next_batch = batch["index"] + 1
                yield batch
        finally:
            if ring is not None:
                ring.close()  # workers waiting for a slot stop, so the DataLoader shuts down at once

    def _from_ring(self, message: dict[str, Any], ring: BatchRing) -> dict[str, Any]:
        """A batch announced by a worker, copied out of its ring slot."""
        batch = ring.take(message)
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


def _describe(item: Any) -> str:
    for attribute in ("subject_id", "name"):
        if hasattr(item, attribute):
            return str(getattr(item, attribute))
    return str(item)
