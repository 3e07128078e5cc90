"""Our HighRes3DNet as MONAI's ``HighResNet``: the reverse of :mod:`vol_transfer.nets.monai_import`.

The layer-by-layer name mapping is the one :func:`~vol_transfer.nets.monai_import.monai_key_to_ours`
defines; here every key of a MONAI ``HighResNet`` built with our channel widths is looked up
through it, so the two directions cannot drift apart. MONAI's network ends with BN → activation
where ours ends with BN (the logits): :func:`monai_logits_network` drops that last activation, so
MONAI's modules give our logits exactly. For PReLU networks the slope MONAI has there (ours has
none) is exported as 1, which makes it the identity.

Example:
    >>> from vol_transfer.nets.highres3dnet import HighRes3DNet
    >>> ours = HighRes3DNet(in_channels=2, num_classes=3, width=0.5).eval()
    >>> config, state = to_monai_highresnet(ours)
    >>> config["layer_params"][0], config["layer_params"][-1]
    ({'name': 'conv_0', 'n_features': 8, 'kernel_size': 3}, {'name': 'conv_2', 'kernel_size': 1})
    >>> monai_net = build_monai_highresnet(config)
    >>> _ = monai_net.load_state_dict(state)
    >>> x = torch.randn(1, 2, 12, 12, 12)
    >>> bool(torch.allclose(monai_logits_network(monai_net).eval()(x), ours(x), atol=1e-5))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vol_transfer.errors import CheckpointError
from vol_transfer.nets.highres3dnet import BLOCKS_PER_GROUP, DILATIONS, HighRes3DNet
from vol_transfer.nets.monai_import import monai_key_to_ours

# the MONAI key of the final activation's parameter (PReLU slope): ours has no final activation
_FINAL_ACTIVATION = "blocks.11.adn.A."


def _activation_name(model: HighRes3DNet) -> str:
    return "prelu" if any(isinstance(m, nn.PReLU) for m in model.modules()) else "relu"


def monai_highresnet_config(model: HighRes3DNet) -> dict[str, Any]:
    """Keyword arguments of ``monai.networks.nets.HighResNet`` with ``model``'s layout (widths included)."""
    if not isinstance(model, HighRes3DNet):
        raise CheckpointError(type(model).__name__, "only HighRes3DNet has a MONAI HighResNet counterpart",
                              "export this network with --format torchscript or onnx")
    widths = {"conv_0": model.conv_0.conv.out_channels, "conv_1": model.conv_1.conv.out_channels}
    widths.update({group: getattr(model, group)[0].out_channels for group in DILATIONS})
    layers: list[dict[str, Any]] = [{"name": "conv_0", "n_features": widths["conv_0"], "kernel_size": 3}]
    layers += [{"name": group, "n_features": widths[group], "kernels": [3, 3], "repeat": BLOCKS_PER_GROUP}
               for group in DILATIONS]
    layers += [{"name": "conv_1", "n_features": widths["conv_1"], "kernel_size": 1},
               {"name": "conv_2", "kernel_size": 1}]
    return {"spatial_dims": 3, "in_channels": model.in_channels, "out_channels": model.num_classes,
            "acti_type": _activation_name(model), "layer_params": layers}


def build_monai_highresnet(config: dict[str, Any]) -> nn.Module:
    """MONAI's ``HighResNet`` from :func:`monai_highresnet_config` (what a bundle's ``network_def`` builds)."""
    from monai.networks.nets import HighResNet

    return HighResNet(**config)


def to_monai_highresnet(model: HighRes3DNet) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(HighResNet kwargs, state dict with MONAI's names)`` carrying ``model``'s weights."""
    config = monai_highresnet_config(model)
    ours = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for key, template in build_monai_highresnet(config).state_dict().items():
        if key.startswith(_FINAL_ACTIVATION):
            state[key] = torch.ones_like(template)  # PReLU slope 1 = identity: MONAI's output = our logits
            continue
        name = monai_key_to_ours(key)
        if name is None or name not in ours or ours[name].shape != template.shape:
            raise CheckpointError("HighRes3DNet", f"MONAI HighResNet key {key} has no counterpart ({name})",
                                  "export a standard HighRes3DNet (any width, relu or prelu)")
        state[key] = ours[name].detach().clone().cpu()
    return config, state


def monai_logits_network(monai_net: nn.Module) -> nn.Sequential:
    """MONAI HighResNet's own modules without the activation after its last BN: the logits."""
    last = monai_net.blocks[-1]
    return nn.Sequential(*monai_net.blocks[:-1], last.conv, last.adn.N)


__all__ = ["monai_highresnet_config", "build_monai_highresnet", "to_monai_highresnet", "monai_logits_network"]
