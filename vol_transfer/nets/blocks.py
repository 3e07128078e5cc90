"""Building blocks of HighRes3DNet: conv → BN → activation, and the pre-activation residual block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("relu", "prelu")


def make_activation(name: str) -> nn.Module:
    """``"relu"`` → in-place ReLU, ``"prelu"`` → PReLU with one learnable slope (as MONAI)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "prelu":
        return nn.PReLU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, not {name!r}")


class ConvNormAct(nn.Sequential):
    """``conv → bn → act → dropout``; ``activation=None`` leaves out the activation (logits).

    Parameter names: ``conv.weight``, ``bn.weight``, ``bn.bias`` (+ ``act.weight`` for PReLU).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        activation: str | None = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm3d(out_channels)
        if activation is not None:
            self.act = make_activation(activation)
        if dropout > 0:
            self.dropout = nn.Dropout(dropout)


def pad_channels(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Zero-pad the channel axis of ``x`` (N, C, ...) to ``out_channels``: half before, half after."""
    extra = out_channels - x.shape[1]
    if extra == 0:
        return x
    before = extra // 2
    spatial = [0, 0] * (x.dim() - 2)
    return F.pad(x, spatial + [before, extra - before])


class ResidualBlock(nn.Module):
    """Pre-activation residual block: ``x + conv2(act2(bn2(conv1(act1(bn1(x))))))``.

    3×3×3 convolutions without bias, both with the given dilation. When the block widens the
    channels, the first convolution does it and the identity path is zero-padded (no parameters).
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int, activation: str = "relu") -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"a residual block cannot narrow channels ({in_channels} → {out_channels})")
        self.out_channels = out_channels
        self.bn1 = nn.BatchNorm3d(in_channels)
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.act2 = make_activation(activation)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(self.act1(self.bn1(x)))
        residual = self.conv2(self.act2(self.bn2(residual)))
        return residual + pad_channels(x, self.out_channels)
