from __future__ import annotations

import pytest
import torch

from vol_transfer.errors import RecipeError
from vol_transfer.nets import available_networks, build_network, register_network
from vol_transfer.nets.blocks import pad_channels
from vol_transfer.nets.highres3dnet import HighRes3DNet
from vol_transfer.transfer.groups import format_parameter_table, parameter_table

torch.set_num_threads(2)

GROUPS = ["conv_0", "res_1", "res_2", "res_3", "conv_1", "conv_2"]


def test_parameter_table_matches_the_study_for_two_channels_two_classes():
    net = build_network({"name": "highres3dnet", "in_channels": 2, "num_classes": 2})
    rows = parameter_table(net)
    assert [r.group for r in rows] == GROUPS
    assert [r.parameters for r in rows] == [896, 41_664, 152_416, 608_960, 5_280, 164]
    assert sum(r.parameters for r in rows) == 809_380
    assert [r.trainable for r in rows] == [r.parameters for r in rows]
    # BN running mean + var (+1 counter per BN): conv_0 has one BN of 16 channels
    assert rows[0].buffers == 16 * 2 + 1
    assert "809,380" in format_parameter_table(rows)


def test_architecture_details():
    net = HighRes3DNet(in_channels=1, num_classes=3)
    assert [name for name, _ in net.named_children()] == GROUPS
    assert net.receptive_field == 87
    assert not any(m.bias is not None for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    assert [m.dilation[0] for m in net.res_2.modules() if isinstance(m, torch.nn.Conv3d)] == [2] * 6
    assert [m.dilation[0] for m in net.res_3.modules() if isinstance(m, torch.nn.Conv3d)] == [4] * 6
    # conv_2 is conv -> BN, no activation: logits can be negative
    assert [name for name, _ in net.conv_2.named_children()] == ["conv", "bn"]
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 12, 12, 12))
    assert out.shape == (1, 3, 12, 12, 12)
    assert (out < 0).any()


def test_channel_padding_is_half_before_half_after():
    x = torch.ones(1, 16, 2, 2, 2)
    padded = pad_channels(x, 32)
    assert padded.shape[1] == 32
    assert padded[:, :8].abs().sum() == 0 and padded[:, 24:].abs().sum() == 0
    assert torch.equal(padded[:, 8:24], x)


@pytest.mark.parametrize("options", [{"activation": "prelu"}, {"width": 0.5}, {"dropout": 0.2}])
def test_options(options):
    net = build_network({"name": "highres3dnet", "in_channels": 2, "num_classes": 4, **options})
    out = net(torch.randn(2, 2, 10, 10, 10))
    assert out.shape == (2, 4, 10, 10, 10)
    if "width" in options:
        assert net.conv_1.conv.out_channels == 40
    if "activation" in options:
        assert any(isinstance(m, torch.nn.PReLU) for m in net.modules())
    if "dropout" in options:
        assert net.conv_1.dropout.p == 0.2


@pytest.mark.parametrize(
    "config, key",
    [
        ({"name": "nope", "in_channels": 1, "num_classes": 2}, "network.name"),
        ({"name": "highres3dnet", "num_classes": 2}, "network.in_channels"),
        ({"name": "highres3dnet", "in_channels": 1, "num_classes": 2, "colour": 1}, "network.colour"),
        ({"name": "highres3dnet", "in_channels": 1, "num_classes": 2, "activation": "gelu"}, "network"),
        ({"name": "highres3dnet", "in_channels": 0, "num_classes": 2}, "network"),
    ],
)
def test_bad_configs_name_the_key(config, key):
    with pytest.raises(RecipeError) as info:
        build_network(config)
    assert info.value.where == key
    assert "\n" not in str(info.value)


def test_register_network():
    def tiny(in_channels: int, num_classes: int) -> torch.nn.Module:
        return torch.nn.Conv3d(in_channels, num_classes, 1)

    register_network("tiny_test_net", tiny)
    assert "tiny_test_net" in available_networks()
    assert isinstance(build_network({"name": "tiny_test_net", "in_channels": 1, "num_classes": 2}), torch.nn.Conv3d)
    with pytest.raises(ValueError):
        register_network("tiny_test_net", lambda **kw: None)


def test_bf16_autocast_and_channels_last_forward_backward():
    torch.manual_seed(0)
    net = HighRes3DNet(in_channels=2, num_classes=2).to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 2, 16, 16, 16).to(memory_format=torch.channels_last_3d)
    target = torch.randint(0, 2, (1, 16, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), target)
    assert logits.dtype == torch.bfloat16
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.conv_0.conv.weight.grad.abs().sum() > 0
