"""The published HighRes3DNet of Li et al. 2017 as a transfer source: key mapping proven on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vol_transfer.errors import CheckpointError
from vol_transfer.io.volumes import load_volume
from vol_transfer.nets import build_network
from vol_transfer.nets.li2017_import import LI2017_CLASSES, li2017_to_ours
from vol_transfer.preprocessing.pipeline import Preprocessor
from vol_transfer.transfer.adapt import transfer_weights
from vol_transfer.transfer.checkpoint import load_checkpoint

WEIGHTS = "pretrained/highres3dnet_li2017/highres3dnet_li_parameters-7d297872.pth"
T1 = "brats2018_4mod/Brats18_2013_20_1/Brats18_2013_20_1_t1.nii.gz"


@pytest.fixture
def li_state(dataset):
    return load_checkpoint(dataset("pretrained") / WEIGHTS.split("/", 1)[1]).state_dict


@pytest.fixture
def t1_crop(shared_data):
    """A 48³ crop from the middle of a real skull-stripped T1 (z-scored over the brain)."""
    image = load_volume(shared_data / T1)
    spec = {"orientation": "RAS", "crop_foreground": 2, "intensity": [{"kind": "zscore", "mask": "nonzero"}]}
    array = Preprocessor.from_spec(spec).apply_with_label(image, None)[0].array[0]
    centre = [s // 2 for s in array.shape]
    crop = array[tuple(slice(c - 24, c + 24) for c in centre)]
    return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]


def _ours(state) -> torch.nn.Module:
    net = build_network({"name": "highres3dnet", "in_channels": 1, "num_classes": LI2017_CLASSES})
    net.load_state_dict(li2017_to_ours(state), strict=True)
    return net.eval()


@pytest.mark.slow
def test_imported_network_computes_what_the_reference_implementation_computes(li_state, t1_crop):
    """fepegar/highresnet's own model class with its own key names is the reference."""
    from highresnet import HighRes3DNet as Reference

    reference = Reference(in_channels=1, out_channels=LI2017_CLASSES, add_dropout_layer=True)
    reference.load_state_dict(li_state)
    with torch.no_grad():
        expected, got = reference.eval()(t1_crop), _ours(li_state)(t1_crop)
    assert torch.allclose(got, expected, atol=1e-3, rtol=1e-4), float((got - expected).abs().max())


@pytest.mark.slow
def test_imported_network_parcellates_a_real_t1_and_a_wrong_mapping_does_not(li_state, t1_crop):
    """Before any fine-tuning it does its job: dozens of brain structures in a 48³ crop."""
    brain = t1_crop[0, 0] != 0

    def structures(state) -> int:
        with torch.no_grad():
            labels = _ours(state)(t1_crop).argmax(1)[0]
        return int((torch.bincount(labels[brain], minlength=LI2017_CLASSES) > 100).sum())

    assert structures(li_state) >= 30
    swapped = dict(li_state)  # the two BN layers of every residual block exchanged: a plausible mapping bug
    for key in [k for k in li_state if ".convolutional_block.0." in k and "residual_block.0" in k]:
        other = key.replace("residual_block.0", "residual_block.1")
        if swapped[key].shape == swapped[other].shape:
            swapped[key], swapped[other] = swapped[other], swapped[key]
    assert structures(swapped) <= 10


def test_li2017_weights_as_a_transfer_source_for_two_channel_tumour_core(li_state):
    target = build_network({"name": "highres3dnet", "in_channels": 2, "num_classes": 2})
    report = transfer_weights(target, li_state, channels="mean", head="auto")
    assert "conv_0.conv.weight" in report.adapted
    assert {"conv_2.conv.weight", "conv_2.bn.weight"} <= set(report.reinitialised)
    ours = li2017_to_ours(li_state)
    assert torch.equal(target.state_dict()["res_3.2.conv2.weight"], ours["res_3.2.conv2.weight"])
    # "mean": both channels get the T1 kernels halved, so a T1 repeated in both channels gives the same response
    assert torch.allclose(target.conv_0.conv.weight.sum(1), ours["conv_0.conv.weight"][:, 0], atol=1e-6)


def test_a_state_dict_of_another_layout_is_refused_naming_the_keys():
    with pytest.raises(CheckpointError, match="block.9"):
        li2017_to_ours({"block.0.convolutional_block.1.weight": torch.zeros(1), "block.9.foo.weight": torch.zeros(1)})


@pytest.mark.slow
def test_rescaled_li2017_network_still_parcellates_the_same_with_weights_at_he_size(li_state, t1_crop):
    """transfer.weight_scale: init on the real weights (20–30x He size): same labels, He-sized convolutions."""
    from vol_transfer.transfer.rescale import he_std, rescale_to_init

    net = _ours(li_state)
    brain = t1_crop[0, 0] != 0
    with torch.no_grad():
        before = net(t1_crop).argmax(1)[0]
        report = rescale_to_init(net)
        after = net(t1_crop).argmax(1)[0]
    agreement = float((before == after)[brain].float().mean())
    assert agreement > 0.95, agreement  # not 1: BatchNorm's ε meets a few low-variance channels of the smaller stream
    assert 0.02 < report.stream < 0.05
    ratios = [float(m.weight.pow(2).mean().sqrt()) / he_std(m.weight)
              for name, m in net.named_modules() if isinstance(m, torch.nn.Conv3d) and not name.startswith("conv_2")]
    assert max(ratios) < 3 and min(ratios) > 0.3, (min(ratios), max(ratios))
