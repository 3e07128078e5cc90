"""An inference copy of a network: BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution
with scaled weights and a bias: one pass over the activations instead of two, and one tensor
fewer alive. HighRes3DNet has 21 BatchNorms; 12 directly follow a convolution (``conv_0``,
``conv_1``, ``conv_2`` and the middle one of each residual block) and are folded. The other 9
act on a residual sum and stay. Residual blocks also add their shortcut in place.

The original model is never modified.

Example:
    >>> from vol_transfer.nets.highres3dnet import HighRes3DNet
    >>> fused = fuse_for_inference(HighRes3DNet(2, 2))
    >>> sum(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())
    9
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vol_transfer.nets.blocks import ResidualBlock, pad_channels

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(conv: nn.modules.conv._ConvNd, norm: nn.modules.batchnorm._BatchNorm) -> nn.modules.conv._ConvNd:
    """A new convolution equal to ``norm(conv(x))`` with ``norm`` in eval mode (PyTorch's ``fuse_conv_bn_eval``).

    Unlike ``fuse_conv_bn_eval`` either module may be in training mode: the fold always uses the
    running statistics, and the new convolution keeps ``conv``'s mode. Neither input is modified.
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    conv_eval = copy.deepcopy(conv).eval() if conv.training else conv
    norm_eval = copy.deepcopy(norm).eval() if norm.training else norm
    return fuse_conv_bn_eval(conv_eval, norm_eval).train(conv.training)


class FusedResidualBlock(nn.Module):
    """:class:`ResidualBlock` for inference: ``bn2`` folded into ``conv1``, shortcut added in place."""

    def __init__(self, block: ResidualBlock) -> None:
        super().__init__()
        self.out_channels = block.out_channels
        self.bn1 = block.bn1
        self.act1 = block.act1
        self.conv1 = fold_batchnorm(block.conv1, block.bn2)
        self.act2 = block.act2
        self.conv2 = block.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(self.act2(self.conv1(self.act1(self.bn1(x)))))
        return residual.add_(pad_channels(x, self.out_channels))


def _fuse_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, ResidualBlock) and type(child) is ResidualBlock:
            setattr(module, name, FusedResidualBlock(child))
            continue
        _fuse_children(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, _CONVS) and isinstance(norm, _NORMS) and norm.track_running_stats:
                module._modules[first] = fold_batchnorm(conv, norm)
                module._modules[second] = nn.Identity()


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with foldable BatchNorms folded (see module docstring)."""
    fused = copy.deepcopy(model).eval()
    _fuse_children(fused)
    return fused
