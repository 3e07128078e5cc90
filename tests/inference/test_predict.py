from __future__ import annotations

import pytest
import torch
from torch import nn

from vol_transfer.inference import InferenceOptions, plan_inference, predict_labels, predict_logits, predict_probabilities
from vol_transfer.inference.predict import bytes_per_voxel
from vol_transfer.inference.sliding_window import importance_map, window_slices, window_starts
from vol_transfer.inference.tiling import plan_tiles, receptive_field_radius
from vol_transfer.nets.highres3dnet import HighRes3DNet

torch.set_num_threads(2)


def _small_conv_net(in_channels: int = 2, classes: int = 3) -> nn.Module:
    """Radius 1 + 2 + 1 = 4 voxels of context; BN with non-trivial statistics."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(in_channels, 8, 3, padding=1),
        nn.BatchNorm3d(8),
        nn.ReLU(),
        nn.Conv3d(8, 8, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv3d(8, classes, 3, padding=1),
    )
    net[1].running_mean.uniform_(-0.3, 0.3)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def _varied_highres(in_channels: int = 2, classes: int = 3, width: float = 0.25) -> HighRes3DNet:
    torch.manual_seed(1)
    net = HighRes3DNet(in_channels=in_channels, num_classes=classes, width=width)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net


def test_window_starts_hand_computed():
    assert window_starts(240, 96, 0.25) == [0, 72, 144]
    assert window_starts(155, 96, 0.25) == [0, 59]
    assert window_starts(50, 96, 0.25) == [0]
    assert window_starts(10, 4, 0.0) == [0, 4, 6]


def test_windows_cover_every_voxel():
    slices = window_slices((23, 17, 9), (8, 8, 8), 0.5)
    covered = torch.zeros(23, 17, 9)
    for where in slices:
        covered[where] += 1
    assert covered.min() >= 1


def test_gaussian_importance_map_peaks_in_the_centre():
    weights = importance_map((9, 9, 9), "gaussian")
    assert weights[4, 4, 4] == pytest.approx(1.0)
    assert weights.min() > 0
    assert weights[0, 4, 4] < weights[2, 4, 4] < weights[4, 4, 4]
    assert torch.equal(importance_map((3, 4, 5), "constant"), torch.ones(3, 4, 5))


def test_receptive_field_radius():
    assert receptive_field_radius(HighRes3DNet(2, 2)) == 43 == (HighRes3DNet(2, 2).receptive_field - 1) // 2
    assert receptive_field_radius(_small_conv_net()) == 4
    strided = nn.Sequential(nn.Conv3d(1, 2, 3, stride=2))
    assert receptive_field_radius(strided) is None
    assert receptive_field_radius(nn.Sequential(nn.Conv3d(1, 2, 3), nn.MaxPool3d(2))) is None


def test_plan_tiles_cover_the_volume_exactly_once():
    plan = plan_tiles((50, 40, 30), halo=4, max_voxels=20 * 40 * 30)
    assert len(plan) > 1 and plan.largest_tile_voxels <= 20 * 40 * 30
    covered = torch.zeros(50, 40, 30)
    for tile in plan.tiles:
        covered[tile.core] += 1
    assert torch.equal(covered, torch.ones(50, 40, 30))


def test_tiled_equals_whole_volume_forward():
    net = _small_conv_net().eval()
    image = torch.randn(2, 40, 33, 21)
    with torch.no_grad():
        expected = net(image[None])[0]
    budget_gb = 12 * 33 * 21 * 4 * 8 * 4 / 2**30  # fits a slab of about 12 voxels
    plan = plan_inference(net, image.shape[1:], InferenceOptions(memory_budget_gb=budget_gb))
    assert plan.strategy == "tiled" and plan.steps > 1
    tiled = predict_logits(net, image, memory_budget_gb=budget_gb, channels_last=False)
    assert torch.allclose(tiled, expected, atol=1e-5)
    whole = predict_logits(net, image, mode="whole")
    assert torch.allclose(whole, expected, atol=1e-4)


def test_tiled_equals_whole_on_highres3dnet():
    net = _varied_highres()
    image = torch.randn(2, 130, 24, 16)
    whole = predict_logits(net, image, mode="whole")
    budget_gb = 110 * 24 * 16 * bytes_per_voxel(net) / 2**30  # two tiles of 65 + 43 voxels along x
    assert plan_inference(net, image.shape[1:], InferenceOptions(memory_budget_gb=budget_gb)).steps == 2
    tiled = predict_logits(net, image, memory_budget_gb=budget_gb)
    assert torch.allclose(tiled, whole, atol=1e-4)
    assert whole.std() > 0.1  # outputs vary, so the comparison means something


def test_pointwise_model_is_exact_under_any_windowing_and_tta():
    torch.manual_seed(2)
    net = nn.Conv3d(2, 3, 1)
    image = torch.randn(2, 21, 18, 13)
    with torch.no_grad():
        expected = net(image[None])[0]
    for blend in ("gaussian", "constant"):
        windowed = predict_logits(net, image, mode="window", window=8, overlap=0.5, blend=blend, batch_size=3)
        assert torch.allclose(windowed, expected, atol=1e-5)
    assert torch.allclose(predict_logits(net, image, tta=True), expected, atol=1e-5)


def test_window_path_matches_monai_sliding_window():
    from monai.inferers import sliding_window_inference

    net = _varied_highres(width=0.125).eval()
    image = torch.randn(2, 30, 25, 20)  # every axis ≥ the window: MONAI pads smaller axes, we clip the window
    with torch.no_grad():
        reference = sliding_window_inference(image[None], (16, 16, 16), 2, net, overlap=0.25, mode="constant")[0]
    ours = predict_logits(net, image, mode="window", window=16, overlap=0.25, blend="constant", channels_last=False)
    assert torch.allclose(ours, torch.as_tensor(reference), atol=1e-4)


def test_model_mode_and_weights_are_restored():
    net = _small_conv_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    predict_probabilities(net, torch.randn(2, 12, 12, 12), bf16=True)
    assert net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN running statistics untouched
    assert net[0].weight.is_contiguous()


def test_outputs_are_probabilities_and_labels():
    net = _small_conv_net()
    image = torch.randn(2, 10, 11, 12).numpy()
    probabilities = predict_probabilities(net, image)
    assert probabilities.shape == (3, 10, 11, 12)
    assert torch.allclose(probabilities.sum(0), torch.ones(10, 11, 12), atol=1e-5)
    labels = predict_labels(net, image)
    assert labels.dtype == torch.uint8 and torch.equal(labels, probabilities.argmax(0).to(torch.uint8))
    probabilities.mul_(2)  # callers may modify results in place (not inference tensors)


def test_bf16_close_to_fp32():
    net = _small_conv_net()
    image = torch.randn(2, 16, 16, 16)
    fp32 = predict_logits(net, image)
    bf16 = predict_logits(net, image, bf16=True)
    assert torch.allclose(bf16, fp32, atol=0.1, rtol=0.05)


def test_auto_falls_back_to_windows_for_downsampling_nets():
    net = nn.Sequential(nn.Conv3d(1, 4, 3, stride=2, padding=1), nn.Upsample(scale_factor=2), nn.Conv3d(4, 2, 1))
    plan = plan_inference(net, (64, 64, 64), InferenceOptions(memory_budget_gb=0.001, window=16))
    assert plan.strategy == "window" and "down-samples" in plan.reason
    assert plan_inference(net, (64, 64, 64), InferenceOptions(memory_budget_gb=8)).strategy == "whole"


def test_auto_prefers_windows_when_tiny_tiles_would_cost_too_much():
    net = HighRes3DNet(2, 2)  # 43-voxel halo
    tiny = 30 * 240 * 155 * bytes_per_voxel(net) / 2**30
    plan = plan_inference(net, (240, 240, 155), InferenceOptions(memory_budget_gb=tiny))
    assert plan.strategy == "window" and "raise --memory-budget" in plan.reason
    roomy = plan_inference(net, (240, 240, 155), InferenceOptions(memory_budget_gb=6.5))
    assert roomy.strategy == "tiled" and len(roomy.tiles) == 2  # two slabs: 1.36× the voxels
    assert roomy.tiles.cost_voxels < 1.4 * 240 * 240 * 155


def test_bad_options_raise():
    with pytest.raises(ValueError):
        InferenceOptions(mode="fast")
    with pytest.raises(ValueError):
        InferenceOptions(overlap=1.0)
    with pytest.raises(ValueError):
        predict_logits(_small_conv_net(), torch.randn(10, 10, 10))
