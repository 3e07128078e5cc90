"""Tiny checkpoints (width-reduced HighRes3DNet, BN statistics randomised) and cropped real volumes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest
import torch

from vol_transfer.nets import build_network
from vol_transfer.transfer.checkpoint import make_metadata, save_checkpoint

torch.set_num_threads(2)

HIPPOCAMPUS_PREPROCESSING = {"orientation": "RAS", "intensity": [{"kind": "zscore", "mask": "nonzero"}]}
# as recipes/brats_tc_finetune.yaml: LPS files → RAS, crop the air, z-score the head only
BRATS_PREPROCESSING = {"orientation": "RAS", "crop_foreground": 4, "intensity": [{"kind": "zscore", "mask": "foreground"}]}
BRATS_CASES = ("Brats18_2013_11_1", "Brats18_CBICA_AME_1")
# 80 x 80 x 60 voxels with the air in front of the head (x < 47, y < 37) included, so the crop has work
BRATS_BOX = (slice(24, 104), slice(20, 100), slice(30, 90))


def randomise_norms(net: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so folding and renaming mistakes show."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
        if isinstance(module, torch.nn.PReLU):
            module.weight.data.fill_(0.2)


def save_tiny_checkpoint(path: Path, channels: list[str], classes: list[str], preprocessing: dict,
                         activation: str = "relu", width: float = 0.25, seed: int = 0) -> Path:
    architecture = {"name": "highres3dnet", "in_channels": len(channels), "num_classes": len(classes),
                    "width": width, "activation": activation}
    torch.manual_seed(seed)
    net = build_network(architecture)
    randomise_norms(net, seed)
    return save_checkpoint(path, net.state_dict(), make_metadata(architecture, channels, classes,
                                                                 preprocessing=preprocessing))


@pytest.fixture
def hippocampus_checkpoint(tmp_path: Path) -> Path:
    return save_tiny_checkpoint(tmp_path / "hippo.pt", ["image"], ["background", "anterior", "posterior"],
                                HIPPOCAMPUS_PREPROCESSING)


@pytest.fixture
def hippocampus_image(dataset) -> Path:
    return dataset("msd_hippocampus") / "imagesTr" / "hippocampus_003.nii.gz"


@pytest.fixture(scope="session")
def brats_crops(dataset, tmp_path_factory) -> Path:
    """``<tmp>/<case>/<case>_{t1,t2,seg}.nii.gz``: two real BraTS 2018 cases, cropped (affines kept right)."""
    source = dataset("brats2018_4mod")
    root = tmp_path_factory.mktemp("brats_crops")
    for case in BRATS_CASES:
        (root / case).mkdir()
        for kind in ("t1", "t2", "seg"):
            image = nib.load(source / case / f"{case}_{kind}.nii.gz")
            nib.save(image.slicer[BRATS_BOX], root / case / f"{case}_{kind}.nii.gz")
    return root
