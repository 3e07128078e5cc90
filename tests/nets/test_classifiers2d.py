from __future__ import annotations

import pytest
import torch

from vol_transfer.nets import build_network
from vol_transfer.nets.classifiers2d import (
    CBRLargeT,
    ConcatPool2d,
    densenet121_2d,
)
from vol_transfer.transfer.groups import group_parameters, layer_groups_of

torch.set_num_threads(2)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_cbr_large_t_has_the_papers_parameter_count():
    assert count(CBRLargeT(in_channels=3, num_classes=2)) == 1_571_586
    # grey input: the first conv loses 2 × 9 × 32 weights
    assert count(CBRLargeT(in_channels=1, num_classes=2)) == 1_571_586 - 2 * 9 * 32


@pytest.mark.parametrize("size", [64, 100, 128])
def test_cbr_large_t_shapes(size):
    net = CBRLargeT(in_channels=1, num_classes=3).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, size, size)).shape == (2, 3)
        assert net.encoder(torch.rand(1, 1, size, size)).shape == (1, 512, -(-size // 16), -(-size // 16))


def test_cbr_layers_are_conv_bn_relu_with_pools_after_blocks_1_to_4():
    net = CBRLargeT()
    names = [name for name, _ in net.encoder.named_children()]
    assert names == ["block1", "pool1", "block2", "pool2", "block3", "pool3", "block4", "pool4", "block5"]
    widths = [getattr(net.encoder, f"block{i}").conv.out_channels for i in range(1, 6)]
    assert widths == [32, 64, 128, 256, 512]
    assert getattr(net.encoder, "block3").conv.kernel_size == (3, 3)


def test_densenet_concat_pool_head():
    net = densenet121_2d(in_channels=1, num_classes=2, head="concat_pool").eval()
    kinds = [type(m).__name__ for m in net.class_layers]
    assert kinds[:2] == ["ReLU", "ConcatPool2d"]
    linear_and_bn = [k for k in kinds if k in ("BatchNorm1d", "Linear")]
    assert linear_and_bn == ["BatchNorm1d", "Linear", "BatchNorm1d", "Linear"]
    assert net.class_layers.bn1.num_features == 2 * 1024
    with torch.no_grad():
        assert net(torch.rand(2, 1, 32, 32)).shape == (2, 2)
    monai_head = densenet121_2d(in_channels=1, num_classes=2, head="monai")
    head_size = 1024 * 2 * 2 + (2048 * 512 + 512) + 512 * 2 + (512 * 2 + 2)  # BN, Linear, BN, Linear
    assert count(net) - count(monai_head) == head_size - (1024 * 2 + 2)


def test_concat_pool_is_max_then_mean():
    x = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)
    assert ConcatPool2d()(x).tolist() == [[3.0, 7.0, 1.5, 5.5]]


def test_rgb_weights_into_grey_model_keep_the_response_to_grey_images():
    from vol_transfer.training.pretext import transfer_encoder

    rgb = CBRLargeT(in_channels=3, num_classes=2).eval()
    grey = CBRLargeT(in_channels=1, num_classes=2).eval()
    report = transfer_encoder(rgb.state_dict(), grey, prefix="")
    assert list(report.adapted) == ["encoder.block1.conv.weight"] and not report.reinitialised
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(grey(image), rgb(image.repeat(1, 3, 1, 1)), atol=1e-4)


@pytest.mark.parametrize("name,first,last", [
    ("cbr_large_t", "block1", "head"),
    ("densenet121_2d", "stem", "head"),
])
def test_registered_and_every_parameter_in_a_group(name, first, last):
    net = build_network({"name": name, "in_channels": 1, "num_classes": 2})
    groups = layer_groups_of(net)
    assert next(iter(groups)) == first and next(reversed(groups)) == last
    grouped = group_parameters(net)
    assert sum(len(v) for v in grouped.values()) == len(list(net.parameters()))
    assert all(grouped[g] for g in groups)


def test_torchvision_densenet_weights_transfer_into_grey_monai_densenet():
    from vol_transfer.nets.classifiers2d import densenet_state_from_torchvision
    from vol_transfer.training.pretext import transfer_encoder

    source = densenet121_2d(in_channels=3, num_classes=2, head="monai")
    with torch.no_grad():
        for tensor in source.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(-1, 1)
    # the names a torchvision file has: no ".layers", newer "norm1" or older "norm.1" style, a classifier head
    torchvision_style = {}
    for key, value in source.state_dict().items():
        if key.startswith("class_layers"):
            continue
        key = key.replace(".layers.", ".")
        if "denselayer1." in key:
            key = key.replace("norm1", "norm.1").replace("conv2", "conv.2")
        torchvision_style[key] = value
    torchvision_style["classifier.weight"] = torch.zeros(1000, 1024)
    renamed = densenet_state_from_torchvision(torchvision_style)
    features = {k for k in source.state_dict() if k.startswith("features.")}
    assert set(renamed) == features
    grey = densenet121_2d(in_channels=1, num_classes=2)
    report = transfer_encoder(renamed, grey, prefix="features.")
    assert list(report.adapted) == ["features.conv0.weight"]
    assert set(report.copied) == features - {"features.conv0.weight"}
    assert all(name.startswith("class_layers.") for name in report.reinitialised)
    key = "features.denseblock4.denselayer16.layers.conv2.weight"
    assert torch.equal(grey.state_dict()[key], source.state_dict()[key])
