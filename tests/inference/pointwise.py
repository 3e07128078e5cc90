"""Tiny checkpoints whose labels are known voxel by voxel: a pointwise (1×1×1) network."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vol_transfer.nets import register_network
from vol_transfer.transfer.checkpoint import make_metadata, save_checkpoint


class PointwiseNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


register_network("pointwise_test", PointwiseNet)


def difference_checkpoint(path: Path, channels: list[str]) -> Path:
    """Labels 1 where channel 0 > channel 1 (no preprocessing): swapping its inputs flips the labels."""
    net = PointwiseNet(len(channels), 2)
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.bias.zero_()
        net.conv.weight[1, :2, 0, 0, 0] = torch.tensor([1.0, -1.0])
    metadata = make_metadata({"name": "pointwise_test", "in_channels": len(channels), "num_classes": 2},
                             channels, ["background", "first_brighter"], preprocessing={"intensity": []})
    return save_checkpoint(path, net.state_dict(), metadata)
