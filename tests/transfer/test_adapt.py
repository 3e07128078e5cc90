from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vol_transfer.errors import CheckpointError
from vol_transfer.nets import build_network
from vol_transfer.transfer.adapt import adapt_input_channels, transfer_weights
from vol_transfer.transfer.checkpoint import load_checkpoint, make_metadata, save_checkpoint
from tests.transfer.real_windows import brats_window, hippocampus_window

torch.set_num_threads(2)

HIPPOCAMPUS = {"name": "highres3dnet", "in_channels": 1, "num_classes": 3}
BRATS_TC = {"name": "highres3dnet", "in_channels": 2, "num_classes": 2}


@pytest.mark.parametrize("method", ["repeat", "mean", "first"])
def test_channel_adaptation_methods(method):
    weight = torch.randn(4, 2, 3, 3, 3)
    adapted = adapt_input_channels(weight, 3, method)
    assert adapted.shape == (4, 3, 3, 3, 3)
    if method == "repeat":
        torch.testing.assert_close(adapted[:, 2], weight[:, 0] * 2 / 3)
    if method == "mean":
        torch.testing.assert_close(adapted[:, 1], weight.mean(1) * 2 / 3)
    if method == "first":
        assert torch.equal(adapted[:, :2], weight) and adapted[:, 2].abs().sum() == 0
    # mean (always) and repeat (for a multiple of the old count) keep the response to
    # identical channels, i.e. the sum over input kernels, unchanged
    if method != "first":
        torch.testing.assert_close(adapt_input_channels(weight, 4, method).sum(1), weight.sum(1))
    if method == "mean":
        torch.testing.assert_close(adapted.sum(1), weight.sum(1))


def test_unadaptable_mismatches_list_every_key():
    source = build_network({**HIPPOCAMPUS, "width": 0.5}).state_dict()
    target = build_network(BRATS_TC)
    with pytest.raises(CheckpointError) as info:
        transfer_weights(target, source, channels="repeat", where="hippo.pt")
    message = str(info.value)
    assert message.startswith("hippo.pt:") and "\n" not in message
    for key in ("res_1.0.conv1.weight", "res_3.2.bn2.running_var", "conv_1.conv.weight"):
        assert key in " ".join(info.value.details)  # the message summarises (issue 15); --debug lists every key


def test_missing_channel_choice_is_an_error_not_a_default():
    with pytest.raises(CheckpointError, match="channels='repeat'"):
        transfer_weights(build_network(BRATS_TC), build_network(HIPPOCAMPUS).state_dict())


def test_missing_body_tensors_ignored_extras_and_requested_reinit():
    source = build_network(BRATS_TC).state_dict()
    source["decoder.weight"] = torch.zeros(3)
    del source["res_2.1.conv2.weight"]
    target = build_network(BRATS_TC)
    with pytest.raises(CheckpointError, match="res_2.1.conv2.weight is missing"):
        transfer_weights(target, source)
    report = transfer_weights(target, source, reinitialise=["res_2.1.*"])
    assert report.ignored == ["decoder.weight"]
    assert "res_2.1.conv2.weight" in report.reinitialised and not report.adapted


@pytest.mark.real_data
def test_hippocampus_model_into_flair_t1c_tumour_core_model(shared_data, tmp_path: Path):
    torch.manual_seed(0)
    source = build_network(HIPPOCAMPUS)
    # a real optimisation step so the transferred weights and BN statistics are not the initial ones
    image, label = hippocampus_window(shared_data)
    image, label = image[..., 4:28, 4:28, 4:28], label[..., 4:28, 4:28, 4:28]
    optimizer = torch.optim.Adam(source.parameters(), lr=1e-3)
    for _ in range(1):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(source(image), label).backward()
        optimizer.step()
    path = save_checkpoint(
        tmp_path / "hippocampus.pt",
        source.state_dict(),
        make_metadata(HIPPOCAMPUS, ["t1"], ["background", "anterior", "posterior"]),
    )

    target = build_network(BRATS_TC)
    fresh_head = target.conv_2.conv.weight.clone()
    report = transfer_weights(target, load_checkpoint(path), channels="repeat")
    assert list(report.adapted) == ["conv_0.conv.weight"]
    assert report.channel_changes == {"conv_0.conv.weight": (1, BRATS_TC["in_channels"])}
    assert set(report.reinitialised) == {
        "conv_2.conv.weight", "conv_2.bn.weight", "conv_2.bn.bias", "conv_2.bn.running_mean", "conv_2.bn.running_var"
    }
    assert len(report.copied) == len(target.state_dict()) - 6 and report.ignored == []
    assert "1 adapted" in report.summary() and "conv_0.conv.weight" in report.table()
    assert torch.equal(target.conv_2.conv.weight, fresh_head)
    assert torch.equal(target.res_3[2].conv2.weight, source.res_3[2].conv2.weight)

    brats, _ = brats_window(shared_data, 48)
    source.eval()
    target.eval()
    with torch.no_grad():
        logits = target(brats)
        # the same modality in both channels reproduces the source model's features exactly
        flair = brats[:, :1, 12:36, 12:36, 12:36]
        same = target.features(torch.cat([flair, flair], dim=1))
        torch.testing.assert_close(same, source.features(flair), rtol=1e-3, atol=1e-3)
    assert logits.shape == (1, 2, 48, 48, 48) and torch.isfinite(logits).all()


def test_monai_highresnet_weights_transfer_into_a_new_task():
    from monai.networks.nets import HighResNet

    torch.manual_seed(0)
    monai_state = HighResNet(spatial_dims=3, in_channels=1, out_channels=3).state_dict()
    target = build_network(BRATS_TC)
    report = transfer_weights(target, monai_state, channels="first", where="monai.pth")
    assert list(report.adapted) == ["conv_0.conv.weight"] and "conv_2.conv.weight" in report.reinitialised
    torch.testing.assert_close(target.conv_0.conv.weight[:, :1], monai_state["blocks.0.conv.weight"])
    assert target.conv_0.conv.weight[:, 1].abs().sum() == 0
    assert torch.equal(target.res_2[0].conv1.weight, monai_state["blocks.4.layers.1.conv.weight"])
