"""TorchScript and ONNX exports of the BN-folded model, read back by torch.jit and onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vol_transfer.cli import main
from vol_transfer.export.traced import onnx_runner, torchscript_runner
from vol_transfer.io.volumes import load_volume

pytestmark = pytest.mark.real_data


@pytest.mark.parametrize("fmt,file", [("torchscript", "model.ts"), ("onnx", "model.onnx")])
def test_export_matches_the_checkpoint_on_a_real_volume(fmt, file, hippocampus_checkpoint, hippocampus_image,
                                                        tmp_path, capsys):
    out = tmp_path / fmt
    code = main(["export", str(hippocampus_checkpoint), "--format", fmt, "--out", str(out),
                 "--check", str(hippocampus_image)])
    assert code == 0
    report = json.loads((out / "export.json").read_text())
    (check,) = report["checks"]
    shape = load_volume(hippocampus_image).spatial_shape
    assert check["source"] == "hippocampus_003" and tuple(check["shape"]) == (1, *shape)
    # folding + export change the logits by float rounding only, and no voxel's class
    assert check["max_abs_diff"] < 1e-4 * check["max_abs_logit"] and check["max_abs_logit"] > 1
    assert check["label_agreement"] == 1.0
    assert report["channels"] == ["image"] and report["preprocessing"]["orientation"] == "RAS"
    assert "max |Δlogit|" in capsys.readouterr().out

    # the file stands alone: another batch size and volume size than it was traced/checked on
    run = torchscript_runner(out / file) if fmt == "torchscript" else onnx_runner(out / file)
    x = torch.randn(2, 1, 9, 23, 11)
    logits = run(x)
    assert logits.shape == (2, 3, 9, 23, 11) and np.isfinite(logits.numpy()).all()


def test_existing_outputs_are_refused_in_one_line(hippocampus_checkpoint, tmp_path, capsys):
    out = tmp_path / "ts"
    assert main(["export", str(hippocampus_checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["checks"][0]["source"] == "random"
    capsys.readouterr()
    assert main(["export", str(hippocampus_checkpoint), "--format", "torchscript", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "already exists" in error[0] and "--overwrite" in error[0]


def test_a_two_d_classifier_is_refused_in_one_line(tmp_path, capsys):
    from vol_transfer.nets import build_network
    from vol_transfer.transfer.checkpoint import make_metadata, save_checkpoint

    architecture = {"name": "cbr_large_t", "in_channels": 1, "num_classes": 2}
    path = save_checkpoint(tmp_path / "cls.pt", build_network(architecture).state_dict(),
                           make_metadata(architecture, ["image"], ["NORMAL", "PNEUMONIA"]))
    assert main(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "3-D segmentation networks" in error[0]
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_the_exports_bn_folding_is_pytorchs():
    """The folding the exports carry (vol_transfer.inference.fusion) equals torch's fuse_conv_bn_eval."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from tests.export.conftest import randomise_norms
    from vol_transfer.inference.fusion import fold_batchnorm
    from vol_transfer.nets.highres3dnet import HighRes3DNet

    net = HighRes3DNet(in_channels=2, num_classes=3, width=0.5)
    randomise_norms(net, seed=4)
    net.eval()
    pairs = [(net.conv_0.conv, net.conv_0.bn), (net.res_2[1].conv1, net.res_2[1].bn2), (net.conv_2.conv, net.conv_2.bn)]
    for conv, norm in pairs:
        ours, theirs = fold_batchnorm(conv, norm), fuse_conv_bn_eval(conv, norm)
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours.bias, theirs.bias, rtol=1e-6, atol=1e-6)
