from __future__ import annotations

import pytest
import torch
from torch import nn

from vol_transfer.errors import RecipeError
from vol_transfer.nets import build_network
from vol_transfer.nets.highres3dnet import HIGHRES3DNET_GROUPS
from vol_transfer.transfer.groups import (
    group_modules,
    group_parameters,
    head_group,
    layer_groups_of,
    parameter_table,
)


class Tiny2D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.blocks = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)


def test_highres3dnet_groups_cover_every_parameter_once():
    net = build_network({"name": "highres3dnet", "in_channels": 1, "num_classes": 3})
    assert dict(layer_groups_of(net)) == HIGHRES3DNET_GROUPS
    grouped = group_parameters(net)
    assert sum(len(v) for v in grouped.values()) == len(list(net.parameters()))
    assert head_group(net) == "conv_2"
    assert [type(m).__name__ for m in group_modules(net)["conv_2"]] == ["Conv3d", "BatchNorm3d"]


def test_any_module_gets_one_group_per_child_with_state():
    model = Tiny2D()
    assert list(layer_groups_of(model)) == ["stem", "blocks", "fc"]  # pool has no state
    rows = parameter_table(model)
    assert [r.parameters for r in rows] == [3 * 4 * 9 + 4, 4 * 4 * 9 + 4 + 8, 4 * 2 + 2]
    assert rows[1].buffers == 4 + 4 + 1


def test_custom_patterns_first_match_wins_and_unmatched_names_are_listed():
    model = Tiny2D()
    groups = {"body": ["stem.*", "blocks.0.*"], "rest": ["*"]}
    grouped = group_parameters(model, groups)
    assert len(grouped["body"]) == 4 and len(grouped["rest"]) == 4
    with pytest.raises(RecipeError) as info:
        group_parameters(model, {"body": ["stem.*"]})
    assert "blocks.0.weight" in str(info.value) and "fc.bias" in str(info.value)


def test_trainable_column_follows_requires_grad():
    net = build_network({"name": "highres3dnet", "in_channels": 2, "num_classes": 2})
    for p in net.conv_0.parameters():
        p.requires_grad_(False)
    rows = parameter_table(net)
    assert rows[0].trainable == 0 and rows[0].parameters == 896
    assert sum(r.trainable for r in rows) == 809_380 - 896
    assert isinstance(torch.nn.Module(), nn.Module)
