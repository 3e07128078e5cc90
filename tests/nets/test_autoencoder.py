from __future__ import annotations

import pytest
import torch

from vol_transfer.nets import build_network
from vol_transfer.nets.autoencoder import ConvAutoencoder
from vol_transfer.nets.classifiers2d import CBRLargeT

torch.set_num_threads(2)


@pytest.mark.parametrize("size", [64, 72])
def test_reconstruction_has_input_shape_and_range(size):
    net = ConvAutoencoder(in_channels=1).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, size, size))
    assert out.shape == (2, 1, size, size)
    assert 0 <= float(out.min()) and float(out.max()) <= 1


def test_encoder_keys_match_classifier_exactly():
    auto = ConvAutoencoder(in_channels=1).state_dict()
    classifier = CBRLargeT(in_channels=1, num_classes=2).state_dict()
    encoder_keys = {k for k in auto if k.startswith("encoder.")}
    assert encoder_keys == {k for k in classifier if k.startswith("encoder.")}
    assert all(auto[k].shape == classifier[k].shape for k in encoder_keys)
    assert not (set(auto) - encoder_keys) & set(classifier)  # decoder names never collide


def test_registered_factory_rejects_wrong_output_count():
    net = build_network({"name": "cbr_autoencoder", "in_channels": 1, "num_classes": 1})
    assert isinstance(net, ConvAutoencoder)
    from vol_transfer.errors import RecipeError

    with pytest.raises(RecipeError, match="num_classes"):
        build_network({"name": "cbr_autoencoder", "in_channels": 1, "num_classes": 2})
