"""Our HighRes3DNet weights as a MONAI HighResNet state dict: MONAI's network gives our logits."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import HighResNet

from tests.export.conftest import randomise_norms
from vol_transfer.errors import CheckpointError
from vol_transfer.export.highresnet import monai_logits_network, to_monai_highresnet
from vol_transfer.nets.autoencoder import ConvAutoencoder
from vol_transfer.nets.highres3dnet import HighRes3DNet
from vol_transfer.nets.monai_import import monai_highresnet_to_ours


@pytest.mark.parametrize("activation,width", [("relu", 1.0), ("relu", 0.5), ("prelu", 0.25)])
def test_monai_highresnet_with_the_exported_state_gives_our_logits(activation, width):
    torch.manual_seed(0)
    ours = HighRes3DNet(in_channels=2, num_classes=3, activation=activation, width=width)
    randomise_norms(ours)
    ours.eval()
    config, state = to_monai_highresnet(ours)
    monai_net = HighResNet(**config)
    monai_net.load_state_dict(state)  # strict: every MONAI key filled, no extra key
    monai_net.eval()
    x = torch.randn(1, 2, 17, 14, 12)
    with torch.no_grad():
        logits = ours(x)
        torch.testing.assert_close(monai_logits_network(monai_net)(x), logits, rtol=0, atol=1e-5)
        if activation == "prelu":  # the exported final slope is 1: MONAI's own forward is already the logits
            torch.testing.assert_close(monai_net(x), logits, rtol=0, atol=1e-5)
        else:  # MONAI ends with BN -> ReLU
            torch.testing.assert_close(monai_net(x), torch.relu(logits), rtol=0, atol=1e-5)
    assert logits.abs().max() > 1  # not a trivially small output


def test_export_and_import_are_inverse():
    torch.manual_seed(1)
    ours = HighRes3DNet(in_channels=1, num_classes=4, width=0.5)
    randomise_norms(ours, seed=3)
    _, state = to_monai_highresnet(ours)
    back = monai_highresnet_to_ours(state)
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_other_networks_are_refused_with_the_fix():
    with pytest.raises(CheckpointError, match="torchscript or onnx"):
        to_monai_highresnet(ConvAutoencoder())
