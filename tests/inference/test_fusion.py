from __future__ import annotations

import pytest
import torch
from torch import nn

from vol_transfer.inference.fusion import fold_batchnorm, fuse_for_inference
from vol_transfer.nets.highres3dnet import HighRes3DNet

torch.set_num_threads(2)


def _randomise_norms(net: nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("activation", ["relu", "prelu"])
def test_fused_highres3dnet_equals_original(activation):
    torch.manual_seed(0)
    net = HighRes3DNet(2, 3, activation=activation, width=0.25)
    _randomise_norms(net)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = fuse_for_inference(net)
    assert sum(isinstance(m, nn.BatchNorm3d) for m in fused.modules()) == 9
    assert net.training and not fused.training
    x = torch.randn(1, 2, 20, 18, 16)
    with torch.no_grad():
        expected = net.eval()(x)
        assert torch.allclose(fused(x), expected, atol=1e-4 * expected.abs().max())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_fold_batchnorm_with_conv_bias():
    torch.manual_seed(1)
    conv = nn.Conv3d(3, 4, 3, padding=1, bias=True)
    norm = nn.BatchNorm3d(4).eval()
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 5, 5, 5)
    with torch.no_grad():
        assert torch.allclose(fold_batchnorm(conv, norm)(x), norm(conv(x)), atol=1e-5)
