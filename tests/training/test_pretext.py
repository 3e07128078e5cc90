from __future__ import annotations

import csv

import pytest
import torch

from vol_transfer.errors import CheckpointError
from vol_transfer.nets import build_network
from vol_transfer.nets.autoencoder import ConvAutoencoder
from vol_transfer.nets.classifiers2d import CBRLargeT
from vol_transfer.training.image_data import ImageDataConfig
from vol_transfer.training.pretext import GenesisOptions, PretextConfig, run_pretext, transfer_encoder
from vol_transfer.transfer.checkpoint import load_checkpoint

from .kermany_fixture import KERMANY, write_tiny_manifest

torch.set_num_threads(2)


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return module


def test_transfer_copies_exactly_the_encoder_and_nothing_else():
    source = _randomised(ConvAutoencoder(in_channels=1), 1).state_dict()
    classifier = CBRLargeT(in_channels=1, num_classes=2)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    report = transfer_encoder(source, classifier)
    after = classifier.state_dict()
    encoder_keys = sorted(k for k in after if k.startswith("encoder."))
    assert sorted(report.copied) == encoder_keys  # weights, biases and BN statistics
    assert report.adapted == {} and report.ignored == []  # the decoder is never offered
    assert sorted(report.reinitialised) == ["fc.bias", "fc.weight"]
    for key, value in after.items():
        if key.startswith("encoder."):
            assert torch.equal(value, source[key]), key
        else:
            assert torch.equal(value, before[key]), key  # the head is untouched
    assert {k for k in after if not k.startswith("encoder.")} == {"fc.weight", "fc.bias"}


def test_transfer_adapts_grey_encoder_to_rgb_classifier():
    source = _randomised(ConvAutoencoder(in_channels=1), 2).state_dict()
    classifier = CBRLargeT(in_channels=3, num_classes=2)
    report = transfer_encoder(source, classifier)
    assert list(report.adapted) == ["encoder.block1.conv.weight"]
    weight = classifier.state_dict()["encoder.block1.conv.weight"]
    assert torch.allclose(weight.sum(dim=1, keepdim=True), source["encoder.block1.conv.weight"], atol=1e-5)


def test_transfer_refuses_an_unrelated_checkpoint():
    unrelated = build_network({"name": "highres3dnet", "in_channels": 1, "num_classes": 2}).state_dict()
    with pytest.raises(CheckpointError, match="encoder"):
        transfer_encoder(unrelated, CBRLargeT(in_channels=1, num_classes=2))


@pytest.mark.parametrize("method", ["autoencoder", "genesis"])
def test_pretext_run_on_real_xrays_learns_and_writes_a_loadable_checkpoint(method, dataset, tmp_path):
    data_root = dataset(KERMANY).parent
    manifest = write_tiny_manifest(data_root, tmp_path / "tiny.csv", per_class=4)
    config = PretextConfig(
        method=method,
        data=ImageDataConfig(manifest=str(manifest), data_root=str(data_root), image_size=32),
        genesis=GenesisOptions(shuffle_blocks=20, shuffle_block_size=4),
        epochs=4, batch_size=4, lr=3e-3,
    )
    result = run_pretext(config, tmp_path / "run", progress=False)
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        mse = [float(row["val_mse"]) for row in csv.DictReader(handle) if row.get("val_mse")]
    assert result["images"] == 8 and len(mse) == 4  # one validation per epoch
    assert mse[-1] < mse[0]
    assert result["selection"]["metric"] == "val/mse" and result["selection"]["value"] == pytest.approx(min(mse), rel=1e-5)
    checkpoint = load_checkpoint(result["checkpoint"])
    assert checkpoint.metadata["architecture"]["name"] == "cbr_autoencoder"
    rebuilt = build_network(checkpoint.metadata["architecture"])
    rebuilt.load_state_dict(checkpoint.state_dict)
    classifier = CBRLargeT(in_channels=1, num_classes=2)
    assert len(transfer_encoder(checkpoint.state_dict, classifier).copied) == sum(
        k.startswith("encoder.") for k in classifier.state_dict())
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
