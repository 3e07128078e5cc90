"""Device-dependent training defaults: what ``auto`` means on a CPU and on a GPU.

A recipe may ask for a precision (``fp32``, ``bf16``, ``fp16``) and a memory layout explicitly;
``auto`` picks, per device:

========================  ==========================================  =============================
setting                   CUDA                                        CPU
========================  ==========================================  =============================
precision                 bf16 where the GPU has it (Ampere+), else   fp32 (bf16 autocast is slower
                          fp16 with a gradient scaler (e.g. V100)     than fp32 without AMX)
channels-last (3D convs)  off (not measured faster here)               on (oneDNN: 2-5× faster
                                                                      dilated 3D convolutions)
cuDNN autotuning          on, unless the recipe asks for determinism  —
pinned host memory        on (``non_blocking`` copies overlap)        off
========================  ==========================================  =============================

>>> import torch
>>> resolve_precision("auto", torch.device("cpu")), resolve_channels_last("auto", torch.device("cpu"))
('fp32', True)
>>> resolve_precision("bf16", torch.device("cpu"))
'bf16'
"""

from __future__ import annotations

from typing import Literal, Union

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Layout = Union[bool, Literal["auto"]]


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision ``requested`` resolves to on ``device`` (``auto`` → bf16 / fp16 on CUDA, fp32 on CPU)."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def resolve_channels_last(requested: Layout, device: torch.device) -> bool:
    """Channels-last 3D memory layout: on for CPUs (measured faster), off for CUDA unless asked."""
    if requested == "auto":
        return device.type == "cpu"
    return bool(requested)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """cuDNN autotuning for fixed-size windows unless the run must be deterministic; TF32 matmuls on CUDA."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None for fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def pin_memory(device: torch.device) -> bool:
    """Whether batches should be collated into pinned host memory (only helps copies to a GPU)."""
    return device.type == "cuda"
