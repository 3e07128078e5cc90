"""Start from MONAI ``HighResNet`` weights: map its ``blocks.N`` names onto our layer groups.

MONAI's default 3D HighResNet has the same layers in the same order (``blocks.0`` = conv_0,
``blocks.1-3`` = res_1, ``4-6`` = res_2, ``7-9`` = res_3, ``10`` = conv_1, ``11`` = conv_2) and pads
channels the same way (half before, half after). One difference: MONAI applies BN → ReLU after its
last convolution, so its outputs are the ReLU of our logits; the weights are the same.

Example:
    >>> from monai.networks.nets import HighResNet
    >>> monai_net = HighResNet(spatial_dims=3, in_channels=1, out_channels=3)
    >>> ours = HighRes3DNet(in_channels=1, num_classes=3)
    >>> _ = ours.load_state_dict(monai_highresnet_to_ours(monai_net.state_dict()))
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from vol_transfer.errors import CheckpointError
from vol_transfer.nets.highres3dnet import BLOCKS_PER_GROUP, DILATIONS, HighRes3DNet

_RESIDUAL_GROUPS = list(DILATIONS)  # res_1, res_2, res_3
_FIRST_RESIDUAL = 1
_CONV_1 = _FIRST_RESIDUAL + BLOCKS_PER_GROUP * len(_RESIDUAL_GROUPS)  # 10
_CONV_2 = _CONV_1 + 1  # 11

# inside a MONAI HighResBlock: layers.0 = N(+A), layers.1 = conv, layers.2 = N(+A), layers.3 = conv
_BLOCK_PARTS = {"layers.0.N": "bn1", "layers.0.A": "act1", "layers.1.conv": "conv1", "layers.2.N": "bn2",
                "layers.2.A": "act2", "layers.3.conv": "conv2"}
# inside a MONAI Convolution: conv, adn.N (norm), adn.A (activation, PReLU has a weight)
_CONV_PARTS = {"conv": "conv", "adn.N": "bn", "adn.A": "act"}


def monai_key_to_ours(key: str) -> str | None:
    """Our name for a MONAI HighResNet state-dict key, or None when it has no counterpart."""
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(\w+)", key)
    if match is None:
        return None
    index, part, tensor = int(match.group(1)), match.group(2), match.group(3)
    if index == 0 or index in (_CONV_1, _CONV_2):
        group = {0: "conv_0", _CONV_1: "conv_1", _CONV_2: "conv_2"}[index]
        if index == _CONV_2 and part == "adn.A":
            return None  # our conv_2 has no activation
        ours = _CONV_PARTS.get(part)
        return f"{group}.{ours}.{tensor}" if ours else None
    if _FIRST_RESIDUAL <= index < _CONV_1:
        position = index - _FIRST_RESIDUAL
        group = _RESIDUAL_GROUPS[position // BLOCKS_PER_GROUP]
        ours = _BLOCK_PARTS.get(part)
        return f"{group}.{position % BLOCKS_PER_GROUP}.{ours}.{tensor}" if ours else None
    return None


def rename_state(state: Mapping[str, torch.Tensor], key_to_ours) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` under our names (``key_to_ours(key)``), and the keys that have none."""
    renamed: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        ours = key_to_ours(key)
        if ours is None:
            unknown.append(key)
        else:
            renamed[ours] = value
    return renamed, unknown


def monai_highresnet_to_ours(state_dict: Mapping[str, torch.Tensor], where: str = "MONAI state dict") -> dict[str, torch.Tensor]:
    """Rename a MONAI HighResNet state dict to our names.

    Raises:
        CheckpointError: listing every key that has no counterpart (e.g. a non-default layout).
    """
    # the PReLU slope after MONAI's last conv is dropped: our logits have no activation
    kept = {k: v for k, v in state_dict.items() if not k.startswith(f"blocks.{_CONV_2}.adn.A.")}
    renamed, unknown = rename_state(kept, monai_key_to_ours)
    if unknown:
        raise CheckpointError(
            where,
            f"{len(unknown)} key(s) are not part of MONAI's default HighResNet: {', '.join(unknown)}",
            "use a HighResNet with the default layer_params and channel_matching='pad'",
        )
    return renamed


def highres3dnet_from_monai(state_dict: Mapping[str, torch.Tensor], activation: str = "relu", where: str = "MONAI state dict") -> HighRes3DNet:
    """A HighRes3DNet carrying the weights of a MONAI HighResNet (channel and class counts read from them)."""
    renamed = monai_highresnet_to_ours(state_dict, where)
    try:
        in_channels = renamed["conv_0.conv.weight"].shape[1]
        num_classes = renamed["conv_2.conv.weight"].shape[0]
    except KeyError as error:
        raise CheckpointError(where, f"has no {error.args[0]}", "pass a complete HighResNet state dict") from error
    model = HighRes3DNet(in_channels=in_channels, num_classes=num_classes, activation=activation)
    from vol_transfer.transfer.checkpoint import state_dict_problems

    problems = state_dict_problems(model, renamed)
    if problems:
        raise CheckpointError(where, f"does not fit HighRes3DNet: {'; '.join(problems)}", "check the MONAI network options")
    model.load_state_dict(renamed)
    return model


__all__ = ["monai_key_to_ours", "monai_highresnet_to_ours", "highres3dnet_from_monai"]
