"""A convolutional autoencoder whose encoder IS the CBR-LargeT classifier trunk.

The encoder is a :class:`~vol_transfer.nets.classifiers2d.CBRTrunk` stored as ``encoder``, exactly
as in :class:`~vol_transfer.nets.classifiers2d.CBRLargeT`, so every ``encoder.*`` key of the
autoencoder has a same-named, same-shaped key in the classifier, and nothing else does. The
decoder mirrors the trunk with transposed-convolution upsampling blocks and ends in a sigmoid
(inputs are expected in ``[0, 1]``).

Example:
    >>> ae = ConvAutoencoder(in_channels=1)
    >>> ae(torch.rand(2, 1, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vol_transfer.nets import register_network
from vol_transfer.nets.classifiers2d import CBR_WIDTHS, CBRTrunk


class UpBlock(nn.Sequential):
    """2×2 transposed convolution with stride 2 (learned ×2 upsampling) → BN → ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                up=nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2),
                bn=nn.BatchNorm2d(out_channels),
                relu=nn.ReLU(inplace=True),
            )
        )


class MirrorDecoder(nn.Sequential):
    """One :class:`UpBlock` per trunk pool (512→256→…→32), then a 3×3 conv to the image channels.

    Upsampling by transposed convolutions keeps the decoder about as cheap as the encoder
    (convolving at full resolution after nearest upsampling costs four times more).
    """

    def __init__(self, out_channels: int, widths: Sequence[int] = CBR_WIDTHS) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        reversed_widths = list(widths)[::-1]
        for index, (wide, narrow) in enumerate(zip(reversed_widths[:-1], reversed_widths[1:]), start=1):
            layers[f"up{index}"] = UpBlock(wide, narrow)
        layers["out"] = nn.Conv2d(reversed_widths[-1], out_channels, kernel_size=3, padding=1)
        super().__init__(layers)


class ConvAutoencoder(nn.Module):
    """``encoder`` (CBR-LargeT trunk) → ``decoder``; reconstructs its input in ``[0, 1]``."""

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = CBR_WIDTHS) -> None:
        super().__init__()
        self.encoder = CBRTrunk(in_channels, widths)
        self.decoder = MirrorDecoder(in_channels, widths)
        self.layer_groups = AUTOENCODER_GROUPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decoded = self.decoder(self.encoder(x))
        if decoded.shape[-2:] != x.shape[-2:]:  # sides not divisible by 16
            decoded = F.interpolate(decoded, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(decoded)


ENCODER_PREFIX = "encoder."
AUTOENCODER_GROUPS = {"encoder": ("encoder.*",), "decoder": ("decoder.*",)}


def cbr_autoencoder(in_channels: int = 1, num_classes: int | None = None, widths: Sequence[int] = CBR_WIDTHS) -> ConvAutoencoder:
    """Factory for ``build_network({"name": "cbr_autoencoder", "in_channels": 1, "num_classes": 1})``.

    The reconstruction has ``in_channels`` channels; ``num_classes`` is accepted only because every
    network config carries it, and must be None or equal to ``in_channels``.
    """
    if num_classes not in (None, in_channels):
        raise ValueError(f"an autoencoder outputs its {in_channels} input channel(s); set num_classes: {in_channels}")
    return ConvAutoencoder(in_channels=in_channels, widths=tuple(widths))


register_network("cbr_autoencoder", cbr_autoencoder)
