"""Predict one ``(C, X, Y, Z)`` volume with a model: logits, class probabilities or labels.

This is the function to call for validation during training and for ``vol-transfer infer``::

    probabilities = predict_probabilities(model, image)
    labels = predict_labels(model, image, memory_budget_gb=4)

The strategy is chosen automatically (``mode="auto"``) and logged:

* ``whole`` — one pass over the whole volume, when it fits ``memory_budget_gb``;
* ``tiled`` — exact large tiles with a receptive-field halo (networks without down-sampling);
* ``window`` — overlapping windows with Gaussian/constant blending (any fully convolutional
  network; the only choice for networks that down-sample).

``whole`` and ``tiled`` give the same numbers (up to float rounding); ``window`` differs from them
near window borders, where the network zero-padded inside the volume.

Padding semantics: every convolution zero-pads its input. In ``whole``/``tiled`` that happens only
at the volume's own border, so each voxel sees all the real context within the receptive field
(HighRes3DNet: 43 voxels each side). In training the network saw 96³ windows zero-padded at the
window border, i.e. less context and padding inside the anatomy; a network trained that way may
behave slightly differently on the whole volume than on windows. With an 87-voxel receptive field
only the central 10³ voxels of a 96³ window are free of window-border padding, so ``window`` (and
MONAI's sliding window) is never the network's exact whole-volume output. Zero padding at the
volume border is also not the image background when intensities are z-scored (background ≈ −3.6
in the BraTS files): the same holds for every path, MONAI's included.

The model runs as an eval-mode copy (BatchNorm folded, channels_last weights), so the caller's
model — its training mode, weights and memory layout — is untouched: a training loop can call
this between iterations.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from vol_transfer.inference.fusion import fuse_for_inference
from vol_transfer.inference.sliding_window import BLEND_MODES, window_slices, windowed_logits
from vol_transfer.inference.tiling import TilePlan, plan_tiles, receptive_field_radius, tiled_logits

log = logging.getLogger(__name__)

MODES = ("auto", "whole", "tiled", "window")
# Live activation tensors of the widest layer during a forward pass: measured 2.6 for the fused
# HighRes3DNet in fp32 (the issue-6 benchmarks/bench_inference.py --quick: 2.81 GiB over 3.7 M voxels);
# 3 leaves headroom for the allocator.
ACTIVATION_COPIES = 3.0
# auto prefers exact tiles unless they cost more than this many times the windows' voxels
MAX_EXACT_COST_RATIO = 2.0
DEFAULT_CPU_BUDGET_FRACTION = 0.4
DEFAULT_GPU_BUDGET_FRACTION = 0.8


@dataclass(frozen=True)
class InferenceOptions:
    """How to run a model over a volume.

    Attributes:
        mode: ``"auto"``, ``"whole"``, ``"tiled"`` or ``"window"`` (see module docstring).
        window: window size in voxels (int or per-axis triple), for ``mode="window"``.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        blend: ``"gaussian"`` or ``"constant"`` weighting of overlapping windows.
        batch_size: windows per forward pass.
        halo: context voxels each side of a tile; default the network's receptive-field radius.
        memory_budget_gb: memory one forward pass may use; default 40 % of RAM (CPU) or 80 % of
            free GPU memory.
        bf16: run under bfloat16 autocast (outputs are returned as float32).
        channels_last: use the ``channels_last_3d`` memory layout (faster convolutions on CPU).
        fuse: fold BatchNorms into the preceding convolutions (:mod:`~vol_transfer.inference.fusion`).
        tta: average the logits over the identity and one flip per axis of ``flip_axes``.
        flip_axes: the spatial axes (0, 1, 2) ``tta`` flips, one pass each: only those the model
            was trained with (``vol-transfer infer`` reads them from the checkpoint's recipe).
        device: where to run; default the model's device.
        progress: show a tqdm bar; a string is used as its label.
    """

    mode: str = "auto"
    window: int | tuple[int, int, int] = 96
    overlap: float = 0.25
    blend: str = "gaussian"
    batch_size: int = 2
    halo: int | None = None
    memory_budget_gb: float | None = None
    bf16: bool = False
    channels_last: bool = True
    fuse: bool = True
    tta: bool = False
    flip_axes: tuple[int, ...] = (0, 1, 2)
    device: str | torch.device | None = None
    progress: bool | str = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, not {self.blend!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), not {self.overlap!r}")
        if min(self.window_size) < 1:
            raise ValueError(f"window must be positive, not {self.window!r}")
        if any(axis not in (0, 1, 2) for axis in self.flip_axes):
            raise ValueError(f"flip_axes must be among 0, 1, 2, not {self.flip_axes!r}")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise ValueError(f"memory_budget_gb must be > 0, not {self.memory_budget_gb!r}")

    @property
    def window_size(self) -> tuple[int, int, int]:
        if isinstance(self.window, int):
            return (self.window,) * 3
        return tuple(int(w) for w in self.window)  # type: ignore[return-value]


@dataclass(frozen=True)
class InferencePlan:
    """The chosen strategy for one volume and why; ``describe()`` is what gets logged."""

    strategy: str
    shape: tuple[int, int, int]
    reason: str
    tiles: TilePlan | None = None
    windows: int = 0
    estimated_bytes: int = 0
    budget_bytes: int = 0

    @property
    def steps(self) -> int:
        return len(self.tiles) if self.tiles is not None else self.windows

    def describe(self) -> str:
        what = {
            "whole": "whole-volume pass (exact)",
            "tiled": f"{self.steps} tiles {self.tiles.splits if self.tiles else ''} "
            f"with a {self.tiles.halo if self.tiles else 0}-voxel halo (exact)",
            "window": f"{self.steps} overlapping windows, blended",
        }[self.strategy]
        return (
            f"inference on {self.shape}: {what}; estimated peak {self.estimated_bytes / 2**30:.2f} GiB "
            f"of budget {self.budget_bytes / 2**30:.2f} GiB; {self.reason}"
        )


def _model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def default_budget_bytes(device: torch.device) -> int:
    """40 % of physical RAM on CPU; 80 % of the free memory on a CUDA device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * DEFAULT_GPU_BUDGET_FRACTION)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * 2**30
    return int(ram * DEFAULT_CPU_BUDGET_FRACTION)


def bytes_per_voxel(model: nn.Module, bf16: bool = False) -> float:
    """Estimated peak bytes per input voxel of one forward pass (widest layer × live copies)."""
    widest = 1
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            widest = max(widest, module.in_channels, module.out_channels)
    return ACTIVATION_COPIES * widest * (2 if bf16 else 4)


def plan_inference(model: nn.Module, shape: Sequence[int], options: InferenceOptions) -> InferencePlan:
    """Choose whole / tiled / window for a volume of spatial ``shape`` under the options."""
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    device = torch.device(options.device) if options.device is not None else _model_device(model)
    budget = int(options.memory_budget_gb * 2**30) if options.memory_budget_gb else default_budget_bytes(device)
    per_voxel = bytes_per_voxel(model, options.bf16)
    voxels = math.prod(shape)
    radius = receptive_field_radius(model)
    halo = options.halo if options.halo is not None else radius

    def window_plan(reason: str) -> InferencePlan:
        window = tuple(min(w, s) for w, s in zip(options.window_size, shape))
        count = len(window_slices(shape, window, options.overlap))
        batch = min(options.batch_size, count)
        return InferencePlan("window", shape, reason, windows=count,  # type: ignore[arg-type]
                             estimated_bytes=int(per_voxel * batch * math.prod(window)), budget_bytes=budget)

    if options.mode == "window":
        return window_plan("requested with mode=window")
    if options.mode == "tiled" and halo is None:
        raise ValueError("mode='tiled' needs a network without down-sampling or an explicit halo")
    if options.mode == "whole" or (options.mode == "auto" and voxels * per_voxel <= budget):
        reason = "requested with mode=whole" if options.mode == "whole" else "the volume fits the memory budget"
        tiles = plan_tiles(shape, halo or 0, voxels)
        return InferencePlan("whole", shape, reason, tiles=tiles,  # type: ignore[arg-type]
                             estimated_bytes=int(voxels * per_voxel), budget_bytes=budget)
    if halo is None:
        return window_plan("the volume exceeds the memory budget and the network down-samples, so tiling is not exact")
    tiles = plan_tiles(shape, halo, int(budget // per_voxel))
    estimated = int(tiles.largest_tile_voxels * per_voxel)
    if options.mode == "auto" and estimated > budget:
        return window_plan(f"even the smallest exact tile ({estimated / 2**30:.2f} GiB) exceeds the memory budget")
    if options.mode == "auto":
        windows = window_plan("")
        window_cost = windows.windows * math.prod(min(w, s) for w, s in zip(options.window_size, shape))
        if tiles.cost_voxels > MAX_EXACT_COST_RATIO * window_cost:
            return window_plan(f"exact tiles under this budget would compute {tiles.cost_voxels / window_cost:.1f}× "
                               "the voxels of blended windows; raise --memory-budget for the exact path")
    reason = "requested with mode=tiled" if options.mode == "tiled" else "the whole volume exceeds the memory budget"
    return InferencePlan("tiled", shape, f"{reason}; computes {tiles.cost_voxels / voxels:.2f}× the volume's voxels",
                         tiles=tiles, estimated_bytes=estimated, budget_bytes=budget)  # type: ignore[arg-type]


def _make_forward(model: nn.Module, device: torch.device, options: InferenceOptions) -> Callable[[torch.Tensor], torch.Tensor]:
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if options.bf16 else contextlib.nullcontext()
    )

    def forward(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device, non_blocking=True)
        if options.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with autocast:
            logits = model(batch)
        return logits.float().to("cpu").contiguous()

    return forward


def _as_tensor(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if tensor.dim() != 4:
        raise ValueError(f"expected a (C, X, Y, Z) volume, got shape {tuple(tensor.shape)}")
    return tensor.detach().to("cpu", torch.float32)


def inference_copy(model: nn.Module, options: InferenceOptions, device: torch.device) -> nn.Module:
    """An eval-mode copy to run: BatchNorm folded (``fuse``), on ``device``, channels_last weights.

    Working on a copy leaves the caller's model (its mode, weights and layout) untouched, which
    matters when a training loop calls for validation.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    runner = fuse_for_inference(model) if options.fuse else copy.deepcopy(model).eval()
    runner = runner.to(device)
    if options.channels_last:
        runner = runner.to(memory_format=torch.channels_last_3d)
    return runner


def _progress_bar(options: InferenceOptions, plan: InferencePlan, passes: int):
    if not options.progress:
        return None
    from tqdm.auto import tqdm

    label = options.progress if isinstance(options.progress, str) else "inference"
    unit = "window" if plan.strategy == "window" else "tile"
    return tqdm(total=plan.steps * passes, desc=label, unit=unit, leave=False)


def _flips(options: InferenceOptions) -> list[tuple[int, ...]]:
    """The tensor dims flipped in each pass: none, then each of ``flip_axes`` (dim = axis + 1)."""
    return [()] + [(axis + 1,) for axis in sorted(set(options.flip_axes))] if options.tta else [()]


def predict_logits(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    options: InferenceOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """Logits ``(K, X, Y, Z)`` float32 on the CPU for one image ``(C, X, Y, Z)``.

    Keyword ``overrides`` replace fields of ``options`` (e.g. ``mode="window", bf16=True``).
    """
    options = replace(options or InferenceOptions(), **overrides)
    tensor = _as_tensor(image)
    device = torch.device(options.device) if options.device is not None else _model_device(model)
    plan = plan_inference(model, tensor.shape[1:], options)
    log.debug(plan.describe())  # Predictor.predict_case reports it per case
    flips = _flips(options)
    bar = _progress_bar(options, plan, len(flips))
    step = bar.update if bar is not None else None
    total: torch.Tensor | None = None
    try:
        with torch.no_grad():  # not inference_mode: callers may modify the returned tensors in place
            forward = _make_forward(inference_copy(model, options, device), device, options)
            for dims in flips:
                flipped = tensor.flip(dims) if dims else tensor
                if plan.strategy == "window":
                    logits = windowed_logits(forward, flipped, options.window_size, overlap=options.overlap,
                                             blend=options.blend, batch_size=options.batch_size, progress=step)
                else:
                    assert plan.tiles is not None
                    logits = tiled_logits(forward, flipped, plan.tiles, progress=step)
                if dims:
                    logits = logits.flip(dims)
                total = logits if total is None else total.add_(logits)
    finally:
        if bar is not None:
            bar.close()
    assert total is not None
    return total.div_(len(flips)) if len(flips) > 1 else total


def predict_probabilities(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    options: InferenceOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """Class probabilities ``(K, X, Y, Z)`` (softmax over the logits), float32 on the CPU.

    Example:
        >>> from vol_transfer.nets.highres3dnet import HighRes3DNet
        >>> net = HighRes3DNet(in_channels=1, num_classes=3).eval()
        >>> probabilities = predict_probabilities(net, torch.randn(1, 15, 21, 13))
        >>> probabilities.shape, bool(torch.allclose(probabilities.sum(0), torch.ones(15, 21, 13)))
        (torch.Size([3, 15, 21, 13]), True)
    """
    return torch.softmax(predict_logits(model, image, options, **overrides), dim=0)


def predict_labels(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    options: InferenceOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """Label map ``(X, Y, Z)`` uint8: the argmax class index per voxel."""
    return logits_to_labels(predict_logits(model, image, options, **overrides))


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over classes as uint8 (up to 256 classes)."""
    if logits.shape[0] > 256:
        raise ValueError(f"{logits.shape[0]} classes do not fit a uint8 label map")
    return logits.argmax(dim=0).to(torch.uint8)
