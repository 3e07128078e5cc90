"""Rescaling a transferred HighRes3DNet to He size: same function, weights at initialisation size."""

from __future__ import annotations

import copy

import pytest
import torch

from vol_transfer.errors import RecipeError
from vol_transfer.nets.highres3dnet import HighRes3DNet
from vol_transfer.recipes import resolve_recipe
from vol_transfer.transfer.rescale import he_std, rescale_to_init


def _inflated_network(seed: int = 0) -> HighRes3DNet:
    """A network whose body convolutions are 10–40× He size, with running statistics from a few batches.

    BatchNorm's ε is set near 0 so the algebra is checked exactly (its real effect: the Li 2017 test)."""
    torch.manual_seed(seed)
    net = HighRes3DNet(in_channels=2, num_classes=3, width=0.25).double()
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, torch.nn.Conv3d) and not name.startswith("conv_2"):
                module.weight.mul_(float(torch.empty(()).uniform_(10, 40)))
        net.conv_0.bn.weight.uniform_(0.5, 3.0)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.eps = 1e-12
        for _ in range(20):
            net(torch.randn(2, 2, 10, 10, 10, dtype=torch.float64))  # momentum 0.1: statistics settle
    return net


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_rescaling_keeps_the_function_in_training_and_evaluation_mode(mode: str) -> None:
    net = _inflated_network()
    reference = copy.deepcopy(net)
    rescale_to_init(net)
    x = torch.randn(2, 2, 10, 10, 10, dtype=torch.float64)
    getattr(net, mode)(), getattr(reference, mode)()
    with torch.no_grad():
        expected, got = reference(x), net(x)
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-9


def test_every_body_convolution_ends_near_he_size_and_the_head_is_untouched() -> None:
    net = _inflated_network()
    head = net.conv_2.conv.weight.clone()
    report = rescale_to_init(net)
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Conv3d) and not name.startswith("conv_2"):
            ratio = float(module.weight.pow(2).mean().sqrt()) / he_std(module.weight)
            # BN-followed convolutions exactly; the conv2s share one stream factor (their sizes differed up to 4x)
            assert (abs(ratio - 1) < 1e-6) if not name.endswith("conv2") else (0.4 < ratio < 2.5), (name, ratio)
    assert torch.equal(net.conv_2.conv.weight, head)
    assert 1 / 40 < report.stream < 1 / 10


def test_without_the_running_statistics_the_evaluation_output_changes() -> None:
    """The statistics step is what keeps evaluation mode: a rescale that skipped it would be caught above."""
    net = _inflated_network()
    reference = copy.deepcopy(net)
    rescale_to_init(net)
    for (name, bn), (_, original) in zip(net.named_modules(), reference.named_modules()):
        if isinstance(bn, torch.nn.BatchNorm3d):
            bn.running_mean.copy_(original.running_mean)
            bn.running_var.copy_(original.running_var)
    x = torch.randn(2, 2, 10, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        expected, got = reference.eval()(x), net.eval()(x)
    assert float((got - expected).abs().max() / expected.abs().max()) > 0.1


def test_weight_scale_init_is_refused_for_a_network_it_does_not_know(monkeypatch) -> None:
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    with pytest.raises(RecipeError, match="weight_scale"):
        resolve_recipe("recipes/brats18_tc_finetune_cpu.yaml",
                       ["transfer.weight_scale=init", "network={name: monai.SegResNet}"])
