"""Rescale a transferred HighRes3DNet's convolutions to a fresh initialisation's size, computing the same function.

Adam moves every weight by about the learning rate per step, whatever its size, so a network whose
weights are far larger than at initialisation learns proportionally slower. The published Li et al.
2017 network's convolutions have an RMS of 1.2–2.0, 20–30× He initialisation (≈ 0.07 for a 3×3×3
convolution over 16 channels): fine-tuned at the learning rate that trains our network from scratch,
it barely moves in 300 iterations (issue 13: Dice 0.08 against scratch's 0.51).

BatchNorm makes most of that size free. A convolution followed by BatchNorm (``conv_0``, each residual
block's ``conv1``, ``conv_1``) computes the same function at any scale once the BN's running
statistics are rescaled with it. The residual stream's scale is shared: ``conv_0``'s BN affine
feeds it and every block's ``conv2`` adds to it, so one factor for all of them (the BNs reading the
stream rescale their statistics) keeps the function too, up to BatchNorm's ε: the smaller stream
brings a few low-variance channels near ε (on a real T1 crop, 97 % of brain voxels keep the Li
network's parcellation label in evaluation mode; ε cannot be rescaled with them, as checkpoints do
not store it). The head (``conv_2``) is left alone: it is re-initialised on transfer.

Example (weights 25× too large are brought back to He size; the training-mode output does not change):
    >>> import torch
    >>> from vol_transfer.nets.highres3dnet import HighRes3DNet
    >>> net = HighRes3DNet(in_channels=1, num_classes=2, width=0.25)
    >>> with torch.no_grad():
    ...     for conv in [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][:-1]:
    ...         _ = conv.weight.mul_(25.0)
    >>> x = torch.randn(1, 1, 12, 12, 12)
    >>> before = net(x)
    >>> report = rescale_to_init(net)
    >>> float((net(x) - before).abs().max() / before.abs().max()) < 2e-3, round(report.stream, 2)
    (True, 0.04)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from vol_transfer.nets.highres3dnet import HighRes3DNet


@dataclass
class RescaleReport:
    """The factor of each BN-followed convolution (name → factor) and the one factor of the residual stream
    (conv_0's BN affine and every conv2)."""

    factors: dict[str, float] = field(default_factory=dict)
    stream: float = 1.0

    def summary(self) -> str:
        free = self.factors.values()
        return (f"weights rescaled to He-initialisation size (transfer.weight_scale: init), same function up to BN ε: "
                f"BN-followed convolutions ×{min(free):.3g}–{max(free):.3g}, residual stream "
                f"(conv_0's BN affine and every conv2) ×{self.stream:.3g}")


def he_std(weight: torch.Tensor) -> float:
    """The standard deviation of He (fan-in, ReLU) initialisation for a convolution's weight."""
    return math.sqrt(2.0 / weight[0].numel())


def _rms(weight: torch.Tensor) -> float:
    return float(weight.detach().double().pow(2).mean().sqrt())


def _scale_statistics(bn: nn.BatchNorm3d, factor: float) -> None:
    """The BN's input was multiplied by ``factor``: keep its running statistics in step."""
    if bn.running_mean is not None:
        bn.running_mean.mul_(factor)
        bn.running_var.mul_(factor * factor)


@torch.no_grad()
def rescale_to_init(model: nn.Module) -> RescaleReport:
    """Bring ``model``'s convolutions (all but the head) to He size in place, keeping its function."""
    if not isinstance(model, HighRes3DNet):
        raise TypeError(f"rescale_to_init needs a HighRes3DNet, not {type(model).__name__}")
    report = RescaleReport()
    blocks = [(f"{group}.{i}", block) for group in ("res_1", "res_2", "res_3")
              for i, block in enumerate(getattr(model, group))]

    def scale_free(name: str, conv: nn.Conv3d, bn: nn.BatchNorm3d, input_factor: float = 1.0) -> None:
        factor = he_std(conv.weight) / _rms(conv.weight)
        conv.weight.mul_(factor)
        _scale_statistics(bn, factor * input_factor)
        report.factors[name] = factor

    scale_free("conv_0.conv.weight", model.conv_0.conv, model.conv_0.bn)
    for name, block in blocks:
        scale_free(f"{name}.conv1.weight", block.conv1, block.bn2)
    # one factor for the stream: the geometric mean of what each conv2 needs to reach He size
    stream = math.exp(sum(math.log(he_std(b.conv2.weight) / _rms(b.conv2.weight)) for _, b in blocks) / len(blocks))
    model.conv_0.bn.weight.mul_(stream)  # ReLU/PReLU are positively homogeneous: conv_0's output scales by it
    model.conv_0.bn.bias.mul_(stream)
    for _, block in blocks:
        block.conv2.weight.mul_(stream)
        _scale_statistics(block.bn1, stream)
    scale_free("conv_1.conv.weight", model.conv_1.conv, model.conv_1.bn, input_factor=stream)
    report.stream = stream
    return report
