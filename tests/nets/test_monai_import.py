from __future__ import annotations

import pytest
import torch
from monai.networks.nets import HighResNet

from vol_transfer.errors import CheckpointError
from vol_transfer.nets.monai_import import highres3dnet_from_monai, monai_highresnet_to_ours, monai_key_to_ours

torch.set_num_threads(2)


def _randomise_norms(net: torch.nn.Module) -> None:
    # non-trivial BN statistics and affine parameters so a wrong mapping cannot hide
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=generator))
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator))
        if isinstance(module, torch.nn.PReLU):
            module.weight.data.fill_(0.2)


@pytest.mark.parametrize("activation", ["relu", "prelu"])
def test_outputs_agree_before_the_final_layer(activation):
    torch.manual_seed(0)
    monai_net = HighResNet(spatial_dims=3, in_channels=2, out_channels=3, acti_type=activation)
    _randomise_norms(monai_net)
    monai_net.eval()
    ours = highres3dnet_from_monai(monai_net.state_dict(), activation=activation).eval()
    assert ours.in_channels == 2 and ours.num_classes == 3
    x = torch.randn(1, 2, 18, 18, 18)
    with torch.no_grad():
        monai_features = monai_net.blocks[:11](x)
        torch.testing.assert_close(ours.features(x), monai_features, rtol=0, atol=1e-5)
        # MONAI ends with BN -> activation; ours ends with BN (logits)
        logits = ours(x)
        final_activation = monai_net.blocks[11].adn.A
        torch.testing.assert_close(final_activation(logits.clone()), monai_net(x), rtol=0, atol=1e-5)


def test_mapping_of_group_boundaries():
    assert monai_key_to_ours("blocks.0.conv.weight") == "conv_0.conv.weight"
    assert monai_key_to_ours("blocks.3.layers.3.conv.weight") == "res_1.2.conv2.weight"
    assert monai_key_to_ours("blocks.4.layers.0.N.running_mean") == "res_2.0.bn1.running_mean"
    assert monai_key_to_ours("blocks.9.layers.2.N.weight") == "res_3.2.bn2.weight"
    assert monai_key_to_ours("blocks.10.adn.N.bias") == "conv_1.bn.bias"
    assert monai_key_to_ours("blocks.11.conv.weight") == "conv_2.conv.weight"
    assert monai_key_to_ours("head.weight") is None


def test_foreign_keys_are_listed():
    state = HighResNet(spatial_dims=3, in_channels=1, out_channels=2).state_dict()
    state["blocks.12.conv.weight"] = torch.zeros(1)
    state["extra.bias"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        monai_highresnet_to_ours(state)
    assert "blocks.12.conv.weight" in str(info.value) and "extra.bias" in str(info.value)
