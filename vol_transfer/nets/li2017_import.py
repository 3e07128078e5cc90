"""Importing the published HighRes3DNet of Li et al. 2017 (fepegar/highresnet's PyTorch port).

That port names its layers ``block.<b>.…``: block 0 the first convolution, blocks 1–3 the three
dilation groups of three residual blocks each (BN → ReLU → conv, twice), block 4 the 80-channel
1×1×1 convolution, block 5 a dropout layer (no weights) and block 6 the 160-class classifier. Its
tensors correspond one to one, in the same order and shapes, to our
:class:`~vol_transfer.nets.highres3dnet.HighRes3DNet` at width 1.0 (``conv_0``, ``res_1``–``res_3``,
``conv_1``, ``conv_2``), so a renamed state dict loads with ``strict=True``.

>>> li2017_key_to_ours("block.2.dilation_block.1.residual_block.0.convolutional_block.3.weight")
'res_2.1.conv1.weight'
>>> li2017_key_to_ours("block.6.convolutional_block.1.running_var")
'conv_2.bn.running_var'
>>> li2017_key_to_ours("blocks.0.conv.weight") is None
True
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from vol_transfer.errors import CheckpointError
from vol_transfer.nets.monai_import import rename_state

LI2017_CLASSES = 160
_GROUPS = {0: "conv_0", 4: "conv_1", 6: "conv_2"}
_RESIDUAL_GROUPS = {1: "res_1", 2: "res_2", 3: "res_3"}
# inside a plain block (0, 4, 6): the index of the conv and of the BN in ``convolutional_block``
_PLAIN_PARTS = {0: {"1": "conv", "2": "bn"}, 4: {"0": "conv", "1": "bn"}, 6: {"0": "conv", "1": "bn"}}
# inside a residual block: residual_block.<r>.convolutional_block.<0 = BN, 3 = conv>
_RESIDUAL_PARTS = {("0", "0"): "bn1", ("0", "3"): "conv1", ("1", "0"): "bn2", ("1", "3"): "conv2"}


def li2017_key_to_ours(key: str) -> str | None:
    """Our name for a key of fepegar/highresnet's state dict, or None when it has no counterpart."""
    plain = re.fullmatch(r"block\.(\d+)\.convolutional_block\.(\d+)\.(\w+)", key)
    if plain:
        block, part, tensor = int(plain.group(1)), plain.group(2), plain.group(3)
        ours = _PLAIN_PARTS.get(block, {}).get(part)
        return f"{_GROUPS[block]}.{ours}.{tensor}" if ours else None
    residual = re.fullmatch(
        r"block\.(\d+)\.dilation_block\.(\d+)\.residual_block\.(\d+)\.convolutional_block\.(\d+)\.(\w+)", key)
    if residual:
        block, index, half, part, tensor = residual.groups()
        group = _RESIDUAL_GROUPS.get(int(block))
        ours = _RESIDUAL_PARTS.get((half, part))
        return f"{group}.{index}.{ours}.{tensor}" if group and ours else None
    return None


def is_li2017_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses fepegar/highresnet's names (``block.0.convolutional_block.…``)."""
    return any(key.startswith("block.0.convolutional_block.") for key in state)


def li2017_to_ours(state: Mapping[str, torch.Tensor], where: str = "Li 2017 state dict") -> dict[str, torch.Tensor]:
    """Rename the published network's state dict to our HighRes3DNet names.

    Raises:
        CheckpointError: naming how many keys have no counterpart and the first few.
    """
    renamed, unknown = rename_state(state, li2017_key_to_ours)
    if unknown:
        raise CheckpointError(where, f"{len(unknown)} key(s) are not fepegar/highresnet's HighRes3DNet "
                                     f"(first: {', '.join(unknown[:3])})",
                              "use the 160-class model of github.com/fepegar/highresnet-models")
    return renamed
