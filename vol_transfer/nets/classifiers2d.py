"""2D image classifiers of the studies: CBR-LargeT and DenseNet-121 with a concat-pool head.

- :class:`CBRLargeT` — five 3×3 conv → BN → ReLU blocks (32…512 filters), 3×3/2 max-pools after
  blocks 1–4, global average pooling, one dense layer: 1,571,586 parameters for 3-channel input
  and 2 classes. Its convolutional trunk is :class:`CBRTrunk`, registered as ``encoder`` so that
  the autoencoder of :mod:`vol_transfer.nets.autoencoder` shares its exact parameter names.
- :func:`densenet121_2d` — MONAI's 2D DenseNet-121 with either MONAI's head or the study's
  ``concat pooling → BN → Linear → ReLU → BN → Linear`` head.
- :func:`densenet_state_from_torchvision` — renames torchvision DenseNet weights (e.g. ImageNet
  weights a user downloaded) to MONAI's names, for the transfer API
  (:func:`vol_transfer.training.pretext.transfer_encoder` → :func:`vol_transfer.transfer.adapt.transfer_weights`),
  which also adapts RGB first-layer weights to grey input (``channels="mean"``: the grey kernel is
  the sum of the RGB kernels, so a grey image gives the same response as its RGB copy).

Both networks come with ordered layer groups (:data:`CBR_LARGE_T_GROUPS`,
:data:`DENSENET121_GROUPS`) for freezing, warm-up and discriminative learning rates.

Example:
    >>> net = CBRLargeT(in_channels=3, num_classes=2)
    >>> sum(p.numel() for p in net.parameters())
    1571586
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping, Sequence

import torch
from torch import nn

from vol_transfer.nets import register_network

CBR_WIDTHS = (32, 64, 128, 256, 512)


class ConvBNReLU(nn.Sequential):
    """3×3 convolution (stride 1, same padding) → batch norm → ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                bn=nn.BatchNorm2d(out_channels),
                relu=nn.ReLU(inplace=True),
            )
        )


class CBRTrunk(nn.Sequential):
    """The convolutional trunk of CBR-LargeT: ``block1 pool1 … block4 pool4 block5``.

    A feature map of side ``s`` leaves at side ``ceil(s / 16)`` with ``widths[-1]`` channels.
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = CBR_WIDTHS) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        previous = in_channels
        for index, width in enumerate(widths, start=1):
            layers[f"block{index}"] = ConvBNReLU(previous, width)
            if index < len(widths):
                layers[f"pool{index}"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            previous = width
        super().__init__(layers)
        self.in_channels = in_channels
        self.out_channels = previous


class CBRLargeT(nn.Module):
    """CBR-LargeT classifier: ``encoder`` (:class:`CBRTrunk`) → global average pool → ``fc``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, widths: Sequence[int] = CBR_WIDTHS) -> None:
        super().__init__()
        self.encoder = CBRTrunk(in_channels, widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.encoder.out_channels, num_classes)
        self.layer_groups = CBR_LARGE_T_GROUPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.encoder(x)), 1))


class ConcatPool2d(nn.Module):
    """Adaptive average and max pooling side by side: ``(N, C, H, W) → (N, 2C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.amax(x, dim=(2, 3)), torch.mean(x, dim=(2, 3))], dim=1)


class ConcatPoolHead(nn.Sequential):
    """The study's head: concat pooling → BN → Linear → ReLU → BN → Linear (logits)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.0) -> None:
        super().__init__(
            OrderedDict(
                relu_in=nn.ReLU(),
                pool=ConcatPool2d(),
                bn1=nn.BatchNorm1d(2 * in_features),
                drop1=nn.Dropout(dropout / 2),
                fc1=nn.Linear(2 * in_features, hidden),
                relu=nn.ReLU(inplace=True),
                bn2=nn.BatchNorm1d(hidden),
                drop2=nn.Dropout(dropout),
                fc2=nn.Linear(hidden, num_classes),
            )
        )


def densenet121_2d(
    in_channels: int = 3, num_classes: int = 2, head: str = "concat_pool", hidden: int = 512, dropout: float = 0.0
) -> nn.Module:
    """MONAI's 2D DenseNet-121; ``head="concat_pool"`` swaps in :class:`ConcatPoolHead`.

    The trunk is ``features`` and the head ``class_layers`` in both cases, so MONAI/torchvision
    style DenseNet-121 weights load into ``features.*`` unchanged.
    """
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)
    if head == "concat_pool":
        in_features = net.class_layers.out.in_features
        net.class_layers = ConcatPoolHead(in_features, num_classes, hidden=hidden, dropout=dropout)
    elif head != "monai":
        raise ValueError(f"unknown DenseNet-121 head {head!r}; use 'concat_pool' or 'monai'")
    net.layer_groups = DENSENET121_GROUPS
    return net


_TORCHVISION_DENSE_LAYER = re.compile(
    r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


def densenet_state_from_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision DenseNet state dict (e.g. downloaded ImageNet weights) to MONAI's names.

    torchvision calls a dense layer's parts ``denselayer1.norm1`` (older files: ``norm.1``); MONAI
    wraps them in ``layers``: ``denselayer1.layers.norm1``. The ``classifier.*`` head is dropped
    (the head is always new). Feed the result to the transfer API with prefix ``features.``.
    """
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("classifier."):
            continue
        match = _TORCHVISION_DENSE_LAYER.match(key)
        renamed[f"{match[1]}.layers.{match[2]}{match[3]}.{match[4]}" if match else key] = value
    return renamed


CBR_LARGE_T_GROUPS: OrderedDict[str, list[str]] = OrderedDict(
    [(f"block{i}", [f"encoder.block{i}.*"]) for i in range(1, 6)] + [("head", ["fc.*"])]
)

DENSENET121_GROUPS: OrderedDict[str, list[str]] = OrderedDict(
    [
        ("stem", ["features.conv0.*", "features.norm0.*"]),
        ("denseblock1", ["features.denseblock1.*", "features.transition1.*"]),
        ("denseblock2", ["features.denseblock2.*", "features.transition2.*"]),
        ("denseblock3", ["features.denseblock3.*", "features.transition3.*"]),
        ("denseblock4", ["features.denseblock4.*", "features.norm5.*"]),
        ("head", ["class_layers.*"]),
    ]
)


def cbr_large_t(in_channels: int = 3, num_classes: int = 2, widths: Sequence[int] = CBR_WIDTHS) -> CBRLargeT:
    """Factory for ``build_network({"name": "cbr_large_t", ...})``."""
    return CBRLargeT(in_channels=in_channels, num_classes=num_classes, widths=tuple(widths))


register_network("cbr_large_t", cbr_large_t)
register_network("densenet121_2d", densenet121_2d)
