from __future__ import annotations

import pytest
import torch

from vol_transfer.errors import RecipeError
from vol_transfer.nets import build_network
from vol_transfer.transfer.freezing import freeze_first
from vol_transfer.transfer.lr_groups import lr_multipliers, make_optimizer

GROUPS = ["conv_0", "res_1", "res_2", "res_3", "conv_1", "conv_2"]


def test_geometric_decay_toward_early_groups():
    factors = lr_multipliers(GROUPS, decay=0.5)
    assert list(factors.values()) == [0.5**5, 0.5**4, 0.5**3, 0.25, 0.5, 1.0]


def test_per_group_multipliers_and_errors():
    assert lr_multipliers(GROUPS, multipliers={"conv_0": 0.1})["conv_0"] == 0.1
    assert lr_multipliers(GROUPS, multipliers={"conv_0": 0.1})["res_1"] == 1.0
    with pytest.raises(RecipeError):
        lr_multipliers(GROUPS, multipliers={"conv_9": 0.1})
    with pytest.raises(RecipeError):
        lr_multipliers(GROUPS, multipliers={"conv_0": 0.1}, decay=0.5)
    with pytest.raises(RecipeError):
        lr_multipliers(GROUPS, decay=1.5)


def test_optimizer_groups_leave_frozen_parameters_out():
    torch.manual_seed(0)
    net = build_network({"name": "highres3dnet", "in_channels": 1, "num_classes": 2})
    freeze_first(net, 3)
    optimizer = make_optimizer(net, "adamw", lr=1e-3, weight_decay=0.01, decay=0.1)
    assert [g["name"] for g in optimizer.param_groups] == ["res_3", "conv_1", "conv_2"]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-5, 1e-4, 1e-3])
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in net.res_2.parameters())
    freeze_first(net, 6)
    with pytest.raises(RecipeError, match="nothing to train"):
        make_optimizer(net)
    with pytest.raises(RecipeError):
        make_optimizer(net, "lion")
