"""The MONAI bundle end to end: MONAI's own `python -m monai.bundle run` on real BraTS volumes
writes the labels `vol-transfer infer` writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.export.conftest import BRATS_CASES, BRATS_PREPROCESSING, save_tiny_checkpoint
from vol_transfer.cli import main
from vol_transfer.evaluation.metrics import dice_per_class
from vol_transfer.export.bundle import BUNDLE_FILES

pytestmark = pytest.mark.real_data


def _agreement(ours_path: Path, monai_path: Path) -> tuple[float, list[float], np.ndarray]:
    ours_image, monai_image = nib.load(ours_path), nib.load(monai_path)
    np.testing.assert_allclose(monai_image.affine, ours_image.affine, atol=1e-5)  # each input's own grid
    assert monai_image.get_data_dtype() == np.uint8
    ours, theirs = np.asarray(ours_image.dataobj), np.asarray(monai_image.dataobj)
    assert theirs.shape == ours.shape
    return float((ours == theirs).mean()), dice_per_class(theirs, ours, 2), ours


@pytest.fixture(scope="module")
def exported(brats_crops, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle_export")
    checkpoint = save_tiny_checkpoint(folder / "tc.pt", ["t1", "t2"], ["background", "core"], BRATS_PREPROCESSING,
                                      seed=2)
    bundle = folder / "bundle"
    code = main(["export", str(checkpoint), "--format", "monai-bundle", "--out", str(bundle),
                 "--check", str(brats_crops / BRATS_CASES[0])])
    assert code == 0
    return checkpoint, bundle


def test_bundle_files_and_checks(exported):
    _, bundle = exported
    assert all((bundle / name).is_file() for name in BUNDLE_FILES)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    inputs = metadata["network_data_format"]["inputs"]["image"]
    assert inputs["num_channels"] == 2 and inputs["channel_def"] == {"0": "t1", "1": "t2"}
    assert metadata["vol_transfer"]["preprocessing"] == BRATS_PREPROCESSING  # the checkpoint's, for the record
    assert "CropForegroundd" in (bundle / "docs" / "README.md").read_text()
    report = json.loads((bundle / "export.json").read_text())
    torchscript, network, preprocessing = report["checks"]
    # model.ts is BN-folded (rounding); MONAI's HighResNet with model.pt is the same arithmetic as ours
    assert torchscript["max_abs_diff"] < 1e-4 * torchscript["max_abs_logit"]
    assert network["max_abs_diff"] < 1e-5 * network["max_abs_logit"]
    assert preprocessing["same_grid"] and preprocessing["max_abs_diff"] < 1e-5


@pytest.mark.slow
def test_monai_bundle_run_writes_what_infer_writes(exported, brats_crops, tmp_path):
    checkpoint, bundle = exported
    monai_out, ours_out = tmp_path / "monai", tmp_path / "ours"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--dataset_dir", str(brats_crops), "--output_dir", str(monai_out),
         "--channel_suffixes", "['_t1.nii.gz', '_t2.nii.gz']"],
        cwd=bundle, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert main(["infer", "--checkpoint", str(checkpoint), *(str(brats_crops / c) for c in BRATS_CASES),
                 "--out", str(ours_out), "--no-progress"]) == 0
    for case in BRATS_CASES:
        agreement, dice, ours = _agreement(ours_out / f"{case}_seg.nii.gz", monai_out / f"{case}_seg.nii.gz")
        assert 5_000 < (ours == 1).sum() < (ours == 0).sum()  # both classes present: something to lose
        print(f"{case}: voxel agreement {agreement:.6f}, Dice (core) {dice[0]:.6f}")
        assert agreement >= 0.9999 and dice[0] >= 0.9999, (case, agreement, dice)


def test_the_torchscript_network_runs_the_bundle_too(exported, brats_crops, tmp_path):
    """The same bundle with ``network`` overridden to models/model.ts (in process, MONAI's run())."""
    from monai.bundle import run

    checkpoint, bundle = exported
    case = BRATS_CASES[1]
    grad = torch.is_grad_enabled()
    try:
        run(config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle),
            dataset_dir=str(brats_crops / case), output_dir=str(tmp_path / "monai"),
            channel_suffixes=["_t1.nii.gz", "_t2.nii.gz"],
            network="$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device).eval()")
    finally:
        torch.set_grad_enabled(grad)  # the bundle's initialize turns gradients off
    assert main(["infer", "--checkpoint", str(checkpoint), str(brats_crops / case), "--out", str(tmp_path / "ours"),
                 "--no-progress"]) == 0
    agreement, dice, _ = _agreement(tmp_path / "ours" / f"{case}_seg.nii.gz", tmp_path / "monai" / f"{case}_seg.nii.gz")
    assert agreement >= 0.9999 and dice[0] >= 0.9999
