"""Data-parallel training under ``torchrun``: process-group set-up and small collective helpers.

``torchrun --nproc_per_node=N -m vol_transfer train RECIPE`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``; :func:`init_distributed` reads them and joins the group (gloo on CPU, NCCL on
CUDA). Without them everything here is a no-op, so single-process code needs no branches.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, and the device it should use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` → this process's CUDA device when there is one, else CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); else a 1-process DistInfo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = pick_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, torch_device)
    if not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, torch_device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[DistInfo]:
    """:func:`init_distributed` for one run; a group joined here is left again at the end.

    On success every rank passes a barrier first, so none destroys the group while another is still
    in a collective. Left to interpreter exit, gloo's threads were sometimes torn down mid-use
    (SIGABRT). A group the caller set up before stays as it is.
    """
    joined_here = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(device)
    try:
        yield info
        barrier(info)
    finally:
        if joined_here:
            shutdown_distributed()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (a copy; the input is untouched)."""
    if not info.enabled:
        return tensor.detach().clone()
    out = tensor.detach().to(info.device).clone()  # NCCL reduces CUDA tensors only
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_flags(flags: Sequence[bool], info: DistInfo) -> tuple[bool, ...]:
    """Rank 0's booleans, on every process (e.g. "stop early", "a signal asked to stop"), in one collective."""
    if not info.enabled:
        return tuple(bool(flag) for flag in flags)
    value = torch.tensor([1 if flag else 0 for flag in flags], dtype=torch.int64, device=info.device)
    dist.broadcast(value, src=0)
    return tuple(bool(v) for v in value.tolist())
