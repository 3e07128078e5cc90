"""Shared-memory slots that DataLoader workers reuse, so batches cross processes without new segments.

Opt-in (``PatchLoader(worker_transport="ring")``, recipe key ``sampler.worker_transport: ring``):
measured end to end (loader + HighRes3DNet step, ``benchmarks/bench_train_step.py``) it made no
difference to the training step on the CPU recipes, so the default is DataLoader's own transport.

Sending a fresh tensor from a worker moves it into a new shared-memory segment (an allocation plus
a page fault per 4 KiB, ~8 ms for a 2×2×96³ batch here) and passes a file descriptor over a socket
per tensor. With a ring, each worker allocates ``slots`` batch buffers in shared memory once, sends
them once, and afterwards only says "batch ``b`` is in slot ``s``"; the main process copies the
batch out (one plain copy) and marks the slot free. A worker waits only when all of its slots hold
batches the main process has not copied yet, which with ``slots = prefetch_factor + 1`` does not
happen in steady state.

Worker ``w`` of ``W`` produces batches ``b ≡ w (mod W)`` in order, so its ``k``-th batch goes to
slot ``k mod slots`` and may be written once the main process has copied ``k - slots + 1`` of them.

Example (what :class:`~vol_transfer.sampling.loader.PatchStream` does)::

    ring = BatchRing(num_workers=2, slots=3)        # main process, before the DataLoader starts
    # worker:  buffers, message = ring.reserve(worker_id, shapes); fill buffers; yield message
    # main:    batch = ring.take(message)            # a private copy; the slot is free again
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import time
from typing import Any

import torch

_POLL_SECONDS = 0.0005
_PARENT_CHECK_SECONDS = 1.0


class BatchRing:
    """Per-worker batch slots in shared memory; see the module docstring."""

    def __init__(self, num_workers: int, slots: int, start_method: str | None = None) -> None:
        if num_workers < 1 or slots < 1:
            raise ValueError(f"BatchRing needs num_workers >= 1 and slots >= 1, got {num_workers}, {slots}")
        self.num_workers = int(num_workers)
        self.slots = int(slots)
        # copied[w]: batches of worker w the main process has copied out; copied[W] = 1 once closed.
        # Created before the workers start (with their start method), so they share it: inherited
        # at fork, or pickled at spawn/forkserver.
        context = multiprocessing.get_context(start_method)
        self._copied = context.Array(ctypes.c_int64, self.num_workers + 1, lock=False)
        self._parent = os.getpid()
        self._buffers: list[dict[str, torch.Tensor]] | None = None  # worker side: this worker's slots
        self._shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None
        self._produced = 0
        self._received: dict[int, list[dict[str, torch.Tensor]]] = {}  # main side: slots per worker

    # --- worker side --------------------------------------------------------------------------
    def reserve(self, worker: int, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Buffers to fill for this worker's next batch and the message announcing them.

        Returns None if the loader was closed while waiting (the worker should stop), and raises
        ValueError if ``shapes`` differ from the first batch's (the caller sends that batch normally).
        """
        if self._shapes is None:
            self._shapes = dict(shapes)
            self._buffers = [{name: torch.empty(shape, dtype=dtype).share_memory_()
                              for name, (shape, dtype) in shapes.items()} for _ in range(self.slots)]
        elif dict(shapes) != self._shapes:
            raise ValueError("batch shapes changed")
        if not self._wait_for_slot(worker):
            return None
        slot = self._produced % self.slots
        self._produced += 1
        message: dict[str, Any] = {"ring_worker": worker, "ring_slot": slot}
        if self._produced == 1:  # the buffers travel once, with the first batch
            message["ring_buffers"] = self._buffers
        assert self._buffers is not None
        return self._buffers[slot], message

    def _wait_for_slot(self, worker: int) -> bool:
        last_check = time.monotonic()
        while self._produced - self._copied[worker] >= self.slots:
            if self._copied[self.num_workers]:
                return False
            if time.monotonic() - last_check > _PARENT_CHECK_SECONDS:
                if os.getppid() != self._parent:  # the main process is gone
                    return False
                last_check = time.monotonic()
            time.sleep(_POLL_SECONDS)
        return True

    # --- main side ----------------------------------------------------------------------------
    def take(self, message: dict[str, Any]) -> dict[str, Any]:
        """The batch a worker announced, copied out of its slot (which is then free again)."""
        batch = dict(message)
        worker, slot = batch.pop("ring_worker"), batch.pop("ring_slot")
        if "ring_buffers" in batch:
            self._received[worker] = batch.pop("ring_buffers")
        for name, buffer in self._received[worker][slot].items():
            # numpy's copy, not Tensor.clone: clone goes through the intra-op thread pool, whose
            # wake-up costs more than these copies on a busy machine (measured 10×)
            batch[name] = torch.from_numpy(buffer.numpy().copy())
        self._copied[worker] += 1
        return batch

    def close(self) -> None:
        """Release workers waiting for a slot (called when the main process stops reading)."""
        self._copied[self.num_workers] = 1

    def __getstate__(self) -> dict[str, Any]:  # what a spawned worker receives: no main-side state
        state = dict(self.__dict__)
        state["_received"] = {}
        return state
