"""Samplers and loader on the real data: one BraTS case (tumour core) and a few hippocampus crops."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from vol_transfer.io.case import load_case
from vol_transfer.io.manifest import read_manifest
from vol_transfer.preprocessing.labels import remap_labels
from vol_transfer.preprocessing.pipeline import Preprocessor
from vol_transfer.sampling import Augmentation, BalancedSampler, PatchLoader, WeightedSampler

pytestmark = pytest.mark.real_data
torch.set_num_threads(2)

BRATS_CASE = "validation/brats_2013_pat0003_1"  # the smallest tumour core: 25664 voxels


@pytest.fixture(scope="module")
def tumour_core(dataset) -> np.ndarray:
    path = dataset("brats2015_flair_t1c") / BRATS_CASE / "OTMultiClass.nii.gz"
    return remap_labels(np.asarray(nib.load(path).dataobj), "brats_tc_2015").astype(np.uint8)


@pytest.mark.parametrize("window", [96, 48])
def test_brats_balanced_centres_hit_tumour_core_half_the_time(tumour_core, window):
    assert 0 < tumour_core.mean() < 0.01  # rare class: ~0.4 % of this case
    sampler = BalancedSampler(window)
    centres = sampler.draw(sampler.prepare(tumour_core), 10000, np.random.default_rng(0))
    assert abs(float(tumour_core[tuple(centres.T)].mean()) - 0.5) < 0.02
    half = window // 2
    assert (centres >= half).all() and (centres + (window - half) <= np.array(tumour_core.shape)).all()


def test_brats_weighted_centres_are_all_tumour_core(tumour_core):
    sampler = WeightedSampler(96)
    centres = sampler.draw(sampler.prepare(tumour_core), 1000, np.random.default_rng(0))
    assert (tumour_core[tuple(centres.T)] == 1).all()


@pytest.fixture(scope="module")
def hippocampus_manifest(dataset, tmp_path_factory):
    root = dataset("msd_hippocampus").parent
    rows = ["# labels: 0,1,2", "subject_id,split,image,label"]
    for case in ("hippocampus_001", "hippocampus_003", "hippocampus_004"):
        rows.append(f"{case},train,msd_hippocampus/imagesTr/{case}.nii.gz,msd_hippocampus/labelsTr/{case}.nii.gz")
    path = tmp_path_factory.mktemp("manifest") / "hippocampus.csv"
    path.write_text("\n".join(rows) + "\n")
    return read_manifest(path, data_root=root)


def test_hippocampus_crops_smaller_than_the_window_are_padded_and_marked(hippocampus_manifest):
    preprocessor = Preprocessor.from_spec({"intensity": [{"kind": "zscore", "mask": "nonzero"}]})
    cases = {}
    for subject in hippocampus_manifest.subjects("train"):
        image, label, _ = preprocessor.apply_with_label(*load_case(subject))
        cases[subject.subject_id] = (image.array, label.array)
    loader = PatchLoader(
        list(cases), cases.__getitem__, BalancedSampler(48),
        batch_size=2, patches_per_volume=2, volumes_per_block=3, augmentation=Augmentation.study(), seed=1,
        num_batches=3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class may be absent from the few eligible centres
        batches = list(loader)
    assert len(batches) == 3 and sorted(set(torch.cat([b["item"] for b in batches]).tolist())) == [0, 1, 2]
    for batch in batches:
        assert batch["image"].shape == (2, 1, 48, 48, 48)
        valid, label = batch["valid"], batch["label"]
        assert (~valid).any(), "every crop (≤ 43×59×47) must leave padding in a 48³ window along some axis"
        assert (label[~valid] == -1).all()
        assert set(label[valid].unique().tolist()) <= {0, 1, 2} and (label[valid] > 0).any()
        assert torch.isfinite(batch["image"]).all()
