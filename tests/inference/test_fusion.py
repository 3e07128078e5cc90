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


def _hand_written_fold(conv: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The folding vol_transfer carried before it used torch's fuse_conv_bn_eval (kept as the reference)."""
    scale = norm.running_var.add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))), shift


@pytest.mark.parametrize("conv_type, norm_type, bias, affine", [
    (nn.Conv3d, nn.BatchNorm3d, False, True), (nn.Conv3d, nn.BatchNorm3d, True, True),
    (nn.Conv2d, nn.BatchNorm2d, True, False), (nn.Conv1d, nn.BatchNorm1d, False, False),
])
def test_fold_batchnorm_equals_the_previous_hand_written_fold(conv_type, norm_type, bias, affine):
    torch.manual_seed(2)
    conv, norm = conv_type(3, 5, 3, bias=bias), norm_type(5, affine=affine)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.2, 3)
    if affine:
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    before = [t.clone() for t in (*conv.state_dict().values(), *norm.state_dict().values())]
    fused = fold_batchnorm(conv, norm)  # both still in training mode: the fold uses the running statistics
    with torch.no_grad():
        weight, shift = _hand_written_fold(conv, norm)
    torch.testing.assert_close(fused.weight.detach(), weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fused.bias.detach(), shift, rtol=1e-6, atol=1e-7)
    assert fused.training and conv.training and norm.training  # modes kept, inputs untouched
    assert all(torch.equal(a, b) for a, b in zip(before, (*conv.state_dict().values(), *norm.state_dict().values())))


def test_fold_batchnorm_refuses_a_norm_without_running_statistics():
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(nn.Conv3d(2, 2, 1), nn.BatchNorm3d(2, track_running_stats=False))
