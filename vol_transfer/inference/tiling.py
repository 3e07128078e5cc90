"""Exact inference for networks without down-sampling: large tiles with a halo, centres kept.

A voxel's output depends only on the input within the network's receptive-field radius. Run each
tile extended by a halo of at least that radius and keep the tile's centre: the result equals a
whole-volume pass (eval mode, so BatchNorm is a fixed affine map) up to float rounding. The halo
is clipped at the volume border, where the network zero-pads exactly as a whole-volume pass does.
One tile covering everything is the whole-volume pass itself.

Why it is cheaper than overlapping windows: 96³ windows at overlap 0.25 compute a 240×240×155
volume 1.8 times over, and a 43-voxel halo on small windows would cost even more; a few large
tiles (or one) compute each voxel about once.

Example:
    >>> plan = plan_tiles((240, 240, 155), halo=43, max_voxels=10**9)
    >>> len(plan), plan.cost_voxels == 240 * 240 * 155
    (1, True)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]
MAX_SPLITS_PER_AXIS = 16

_DOWNSAMPLING = (
    nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.Upsample,
    nn.ConvTranspose3d, nn.MaxPool2d, nn.AvgPool2d, nn.ConvTranspose2d,
)


def receptive_field_radius(model: nn.Module) -> int | None:
    """Voxels of context each side that an output voxel depends on, or None if not tileable.

    Sums ``(kernel − 1) × dilation / 2`` over every 3D convolution: exact for a chain of
    convolutions with residual shortcuts (HighRes3DNet: 43) and an upper bound — still safe as a
    halo — for branching networks. Returns None when the network down-samples or up-samples
    (strided convolution, pooling, transposed convolution), where tiling is not exact.
    """
    radius = 0
    found = False
    for module in model.modules():
        if isinstance(module, _DOWNSAMPLING):
            return None
        if isinstance(module, nn.Conv3d):
            found = True
            if any(s != 1 for s in module.stride):
                return None
            reach = max((k - 1) * d for k, d in zip(module.kernel_size, module.dilation))
            radius += math.ceil(reach / 2)
    return radius if found else None


@dataclass(frozen=True)
class Tile:
    """``core`` is where the output is kept; ``source`` (core + halo, clipped) is what is run."""

    core: tuple[slice, slice, slice]
    source: tuple[slice, slice, slice]

    @property
    def source_voxels(self) -> int:
        return math.prod(s.stop - s.start for s in self.source)

    @property
    def core_in_source(self) -> tuple[slice, slice, slice]:
        return tuple(  # type: ignore[return-value]
            slice(c.start - s.start, c.stop - s.start) for c, s in zip(self.core, self.source)
        )


@dataclass(frozen=True)
class TilePlan:
    tiles: tuple[Tile, ...]
    splits: tuple[int, int, int]
    halo: int

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def cost_voxels(self) -> int:
        """Voxels the network computes in all (the volume's voxels when there is one tile)."""
        return sum(tile.source_voxels for tile in self.tiles)

    @property
    def largest_tile_voxels(self) -> int:
        return max(tile.source_voxels for tile in self.tiles)


def _axis_pieces(size: int, splits: int, halo: int) -> list[tuple[slice, slice]]:
    bounds = [round(i * size / splits) for i in range(splits + 1)]
    return [
        (slice(lo, hi), slice(max(0, lo - halo), min(size, hi + halo)))
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]


def _axis_cost(size: int, splits: int, halo: int) -> tuple[int, int]:
    """(sum of source extents, largest source extent) along one axis."""
    extents = [s.stop - s.start for _, s in _axis_pieces(size, splits, halo)]
    return sum(extents), max(extents)


def plan_tiles(shape: Sequence[int], halo: int, max_voxels: int) -> TilePlan:
    """The tiling with the fewest computed voxels whose largest tile has ≤ ``max_voxels`` voxels.

    When even the smallest tiling exceeds ``max_voxels``, the one with the smallest tiles is
    returned (the caller decides whether to fall back to windows).
    """
    shape = tuple(int(s) for s in shape)
    options = []
    ranges = [range(1, min(size, MAX_SPLITS_PER_AXIS) + 1) for size in shape]
    axis_costs = [{n: _axis_cost(size, n, halo) for n in r} for size, r in zip(shape, ranges)]
    for splits in itertools.product(*ranges):
        costs = [axis_costs[axis][n] for axis, n in enumerate(splits)]
        total = math.prod(c[0] for c in costs)
        largest = math.prod(c[1] for c in costs)
        options.append((largest > max_voxels, total if largest <= max_voxels else largest, math.prod(splits), splits))
    _, _, _, best = min(options)
    pieces = [_axis_pieces(size, n, halo) for size, n in zip(shape, best)]
    tiles = tuple(
        Tile(core=tuple(p[0] for p in combo), source=tuple(p[1] for p in combo))  # type: ignore[arg-type]
        for combo in itertools.product(*pieces)
    )
    return TilePlan(tiles=tiles, splits=best, halo=halo)  # type: ignore[arg-type]


def tiled_logits(
    forward: Forward,
    image: torch.Tensor,
    plan: TilePlan,
    *,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run ``forward`` on each tile's source of ``image`` ``(C, X, Y, Z)``; stitch the cores."""
    shape = tuple(image.shape[1:])
    output: torch.Tensor | None = None
    for tile in plan.tiles:
        logits = forward(image[(slice(None), *tile.source)].unsqueeze(0))[0]
        if output is None:
            if len(plan.tiles) == 1:
                if progress is not None:
                    progress(1)
                return logits
            output = torch.empty((logits.shape[0], *shape))
        output[(slice(None), *tile.core)] = logits[(slice(None), *tile.core_in_source)]
        del logits
        if progress is not None:
            progress(1)
    assert output is not None
    return output
