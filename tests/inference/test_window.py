"""``mode=window`` gives MONAI's ``sliding_window_inference`` output: same windows, same blend, given our weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vol_transfer.inference import predict_logits
from vol_transfer.inference.sliding_window import importance_map, windowed_logits


def tiny_net(down_sample: bool = False) -> nn.Module:
    """Conv + BN (non-trivial statistics) + ReLU; optionally a stride-2 stage (only windows can run it)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU()]
    if down_sample:
        layers += [nn.Conv3d(4, 4, 3, stride=2, padding=1), nn.Upsample(scale_factor=2)]
    layers.append(nn.Conv3d(4, 3, 3, padding=1))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.2, 0.2)
    return net.eval()


def monai_blend(net: nn.Module, image: torch.Tensor, window: int, overlap: float, blend: str,
                batch_size: int) -> torch.Tensor:
    """MONAI's sliding window given our window (clipped to the volume, as ours clips it) and our weights."""
    from monai.inferers import sliding_window_inference

    size = tuple(min(window, s) for s in image.shape[1:])
    with torch.no_grad():
        return sliding_window_inference(image[None], size, batch_size, net, overlap=overlap, mode=blend,
                                        roi_weight_map=importance_map(size, blend))[0]


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("down_sample", [False, True])
def test_window_mode_equals_monai_sliding_window(blend, down_sample):
    net = tiny_net(down_sample)
    # 30 and 29 need 3 windows of 16 at overlap 0.25, the last one flush; 12 < 16 clips the window
    image = torch.randn(2, 30, 29, 12)
    for batch_size in (1, 4):  # 9 windows: 9 single batches, or two of 4 and a last one with 1
        expected = monai_blend(net, image, 16, 0.25, blend, batch_size)
        ours = predict_logits(net, image, mode="window", window=16, overlap=0.25, blend=blend, batch_size=batch_size)
        assert torch.allclose(ours, expected, atol=1e-5), (blend, down_sample, batch_size)


def test_monai_own_gaussian_map_differs_from_ours_only_slightly():
    from monai.inferers import sliding_window_inference

    net = tiny_net()
    image = torch.randn(2, 30, 26, 20)
    with torch.no_grad():
        monai_map = sliding_window_inference(image[None], (16, 16, 16), 4, net, overlap=0.25, mode="gaussian")[0]
    ours = predict_logits(net, image, mode="window", window=16, overlap=0.25, blend="gaussian", batch_size=4)
    # MONAI's map is ours times a constant except at the common 1e-3 floor: close, not the same numbers
    assert 0 < float((ours - monai_map).abs().max()) < 0.05


def test_progress_counts_every_window_once_and_the_input_is_untouched():
    net = tiny_net()
    image = torch.randn(2, 30, 29, 12)
    before = image.clone()
    done: list[int] = []
    windowed_logits(lambda batch: net(batch).detach(), image, (16, 16, 16), overlap=0.25, batch_size=4,
                    progress=done.append)
    assert done == [4, 4, 1] and torch.equal(image, before)


def test_window_mode_rejects_a_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        windowed_logits(lambda b: b, torch.zeros(1, 8, 8, 8), (4, 4, 4), overlap=1.0)
