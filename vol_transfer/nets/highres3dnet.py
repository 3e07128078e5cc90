"""HighRes3DNet (Li et al., IPMI 2017) with the six named layer groups of the freezing study.

| group  | what                                                   | channels | dilation |
|--------|--------------------------------------------------------|----------|----------|
| conv_0 | 3×3×3 conv → BN → act                                  | 16       | 1        |
| res_1  | 3 pre-activation residual blocks (BN → act → conv) ×2  | 16       | 1        |
| res_2  | 3 residual blocks                                      | 32       | 2        |
| res_3  | 3 residual blocks                                      | 64       | 4        |
| conv_1 | 1×1×1 conv → BN → act (→ dropout)                      | 80       | –        |
| conv_2 | 1×1×1 conv → BN, no activation: the logits             | classes  | –        |

Example:
    >>> net = HighRes3DNet(in_channels=2, num_classes=2)
    >>> [name for name, _ in net.named_children()]
    ['conv_0', 'res_1', 'res_2', 'res_3', 'conv_1', 'conv_2']
    >>> net.receptive_field
    87
"""

from __future__ import annotations

import torch
from torch import nn

from vol_transfer.nets.blocks import ACTIVATIONS, ConvNormAct, ResidualBlock

BASE_CHANNELS = {"conv_0": 16, "res_1": 16, "res_2": 32, "res_3": 64, "conv_1": 80}
DILATIONS = {"res_1": 1, "res_2": 2, "res_3": 4}
BLOCKS_PER_GROUP = 3
# The study's six layer groups, input to output: group name → parameter-name patterns
# (see vol_transfer.transfer.groups); the top-level children of HighRes3DNet, in order.
HIGHRES3DNET_GROUPS: dict[str, tuple[str, ...]] = {
    name: (f"{name}.*",) for name in ("conv_0", "res_1", "res_2", "res_3", "conv_1", "conv_2")
}


class HighRes3DNet(nn.Module):
    """HighRes3DNet; the top-level children are the layer groups, in order.

    Args:
        in_channels: number of input modalities.
        num_classes: number of output channels (logits, background included).
        activation: ``"relu"`` (default, as the paper) or ``"prelu"``.
        width: multiplier on every group's channel count (1.0 = 16/16/32/64/80).
        dropout: dropout probability applied before ``conv_2`` (0 = none).
    """

    layer_groups = HIGHRES3DNET_GROUPS

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        activation: str = "relu",
        width: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, not {width!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {dropout!r}")
        channels = {name: max(1, round(base * width)) for name, base in BASE_CHANNELS.items()}
        self.in_channels = in_channels
        self.num_classes = num_classes

        self.conv_0 = ConvNormAct(in_channels, channels["conv_0"], 3, activation)
        previous = channels["conv_0"]
        for group, dilation in DILATIONS.items():
            blocks = []
            for _ in range(BLOCKS_PER_GROUP):
                blocks.append(ResidualBlock(previous, channels[group], dilation, activation))
                previous = channels[group]
            setattr(self, group, nn.Sequential(*blocks))
        self.conv_1 = ConvNormAct(previous, channels["conv_1"], 1, activation, dropout=dropout)
        self.conv_2 = ConvNormAct(channels["conv_1"], num_classes, 1, activation=None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal convolutions (fan-in), BN weight 1 and bias 0; running statistics reset."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                module.reset_parameters()

    @property
    def receptive_field(self) -> int:
        """Receptive field along each axis, in voxels (87 for the standard layout)."""
        field = 1
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                field += (module.kernel_size[0] - 1) * module.dilation[0]
        return field

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of ``conv_1`` (the 80-channel features before the logits)."""
        for group in (self.conv_0, self.res_1, self.res_2, self.res_3, self.conv_1):
            x = group(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_2(self.features(x))


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
