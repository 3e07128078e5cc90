from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vol_transfer.errors import ManifestError, RecipeError
from vol_transfer.nets.classifiers2d import CBRLargeT
from vol_transfer.recipes import resolve_recipe
from vol_transfer.training.classification import (
    ClassificationConfig,
    OptimConfig,
    make_optimizer,
    run_classification,
)
from vol_transfer.training.image_data import ImageDataConfig, epoch_indices, load_image_set, stratified_subset
from vol_transfer.training.pretext import PretextConfig
from vol_transfer.transfer.checkpoint import load_checkpoint
from vol_transfer.transfer.freezing import FreezingSchedule

from .kermany_fixture import KERMANY, write_tiny_manifest

torch.set_num_threads(2)
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
LABELS = np.array([0] * 90 + [1] * 10)


def test_oversampling_duplicates_minority_up_to_majority():
    order = epoch_indices(LABELS, "oversample", np.random.default_rng(0))
    assert np.bincount(LABELS[order]).tolist() == [90, 90]
    assert np.bincount(order[LABELS[order] == 1]).max() == 9  # each positive 9 times
    assert sorted(set(order[LABELS[order] == 0].tolist())) == list(range(90))


def test_undersampling_cuts_majority_to_minority():
    order = epoch_indices(LABELS, "undersample", np.random.default_rng(0))
    assert np.bincount(LABELS[order]).tolist() == [10, 10]
    assert len(set(order.tolist())) == 20


def test_weighted_sampler_balances_classes_in_expectation():
    labels = np.repeat(LABELS, 100)
    order = epoch_indices(labels, "weighted_sampler", np.random.default_rng(0))
    assert len(order) == len(labels)
    assert 0.47 < labels[order].mean() < 0.53


def test_no_balance_is_a_permutation():
    order = epoch_indices(LABELS, "none", np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(100))


def test_stratified_subset_keeps_proportions_and_is_seeded():
    keep = stratified_subset(LABELS, 20, seed=3)
    assert len(keep) == 20 and np.bincount(LABELS[keep]).tolist() == [18, 2]
    assert keep.tolist() == stratified_subset(LABELS, 20, seed=3).tolist()


def test_discriminative_learning_rates_and_head_only_warmup():
    model = CBRLargeT(in_channels=1, num_classes=2)
    optimizer = make_optimizer(model, OptimConfig(name="adam", lr=1e-3, group_lr_decay=0.5))
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs["head"] == pytest.approx(1e-3)
    assert lrs["block5"] == pytest.approx(5e-4)
    assert lrs["block1"] == pytest.approx(1e-3 * 0.5**5)
    warmup = FreezingSchedule.warmup(3, model)  # what warmup_epochs builds: head only, then everything
    warmup.apply(model, 2)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    assert warmup.apply(model, 3)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", ["scratch", "autoencoder", "genesis"])
@pytest.mark.parametrize("size", ["", "_cpu"])
def test_shipped_recipes_validate(name, size):
    task, config = resolve_recipe(RECIPES / f"pneumonia_{name}{size}.yaml")
    assert task == "classification" and isinstance(config, ClassificationConfig)
    assert config.network.name == "cbr_large_t"
    assert (config.pretrain is None) == (name == "scratch")
    if config.pretrain is not None:
        assert config.pretrain.method == name


def test_recipe_typo_is_one_line_error(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"extends: {RECIPES / 'pneumonia_scratch.yaml'}\nbalance: oversampel\n")
    with pytest.raises(RecipeError, match="balance"):
        resolve_recipe(recipe)


def test_segmentation_manifest_is_refused(tmp_path, shared_data):
    manifest = Path(__file__).resolve().parents[2] / "data_manifests" / "msd_hippocampus.csv"
    with pytest.raises(ManifestError, match="classification"):
        load_image_set(ImageDataConfig(manifest=str(manifest), data_root=str(shared_data)), "train")


def test_pretrained_classification_run_on_real_xrays(dataset, tmp_path):
    data_root = dataset(KERMANY).parent
    manifest = write_tiny_manifest(data_root, tmp_path / "tiny.csv", per_class=4)
    data = ImageDataConfig(manifest=str(manifest), data_root=str(data_root), image_size=32)
    config = ClassificationConfig(
        data=data, pretrain=PretextConfig(method="autoencoder", data=data, epochs=1, batch_size=4),
        balance="oversample", optim=OptimConfig(name="adam", lr=1e-3), epochs=2, batch_size=4,
        warmup_epochs=1,
    )
    run = tmp_path / "run"
    result = run_classification(config, run, progress=False)
    encoder_tensors = sum(k.startswith("encoder.") for k in CBRLargeT(1, 2).state_dict())
    assert result["init"]["copied"] == encoder_tensors and result["init"]["adapted"] == []
    assert sorted(result["init"]["reinitialised"]) == ["fc.bias", "fc.weight"]
    assert result["validation"]["count"] == 8 and result["train_images"] == 8
    assert sum(map(sum, result["validation"]["confusion_matrix"])) == 8
    assert 0 <= result["validation"]["auc"] <= 1
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "metrics.csv", "predictions.csv", "roc.png",
                 "confusion_matrix.png", "pretrain/checkpoints/best.pt", "pretrain/summary.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    checkpoint = load_checkpoint(run / "checkpoints" / "best.pt")
    assert checkpoint.metadata["classes"] == ["NORMAL", "PNEUMONIA"]
    assert checkpoint.metadata["architecture"] == {"name": "cbr_large_t", "in_channels": 1, "num_classes": 2,
                                                   "widths": [32, 64, 128, 256, 512]}
    assert result["best_epoch"] in (1, 2) and result["selection"]["metric"] == "val/auc"
    assert result["selection"]["iteration"] == result["best_epoch"] * result["iterations_per_epoch"]
    # the head-only warm-up epoch and its end are both recorded
    assert [entry["frozen_groups"] == [] for entry in result["trainable"]] == [False, True]
    assert len((run / "predictions.csv").read_text().splitlines()) == 9


def test_batch_norm_recalibration_uses_exact_statistics():
    from vol_transfer.training.classification import recalibrate_batch_norm

    model = CBRLargeT(in_channels=1, num_classes=2)
    images = (np.random.default_rng(0).random((10, 1, 16, 16)) * 255).astype(np.uint8)
    recalibrate_batch_norm(model, images, batch_size=4)  # batches of 4, 4 and 2
    conv = model.encoder.block1.conv
    with torch.no_grad():
        outputs = [conv(torch.from_numpy(images[i:i + 4] / np.float32(255))) for i in (0, 4, 8)]
    expected = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs]).mean(0)
    assert torch.allclose(model.encoder.block1.bn.running_mean, expected, atol=1e-5)
    assert model.encoder.block1.bn.momentum == 0.1


@torch.no_grad()
def _hand_written_recalibration(model, images, batch_size):
    """The recalibration vol_transfer carried before it used torch's update_bn (kept as the reference)."""
    from vol_transfer.training.image_data import to_batch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    for first in range(0, len(images) - 1, batch_size):
        model(to_batch(images[first:first + batch_size]))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@pytest.mark.parametrize("count", [9, 10])  # 9 = 4 + 4 + a trailing single image, which is left out
def test_batch_norm_recalibration_equals_the_previous_hand_written_one(count):
    from vol_transfer.training.classification import recalibrate_batch_norm

    torch.manual_seed(0)
    ours, reference = CBRLargeT(in_channels=1, num_classes=2, widths=(4, 8)), CBRLargeT(in_channels=1, num_classes=2, widths=(4, 8))
    reference.load_state_dict(ours.state_dict())
    images = (np.random.default_rng(count).random((count, 1, 16, 16)) * 255).astype(np.uint8)
    ours.eval()
    recalibrate_batch_norm(ours, images, batch_size=4)
    _hand_written_recalibration(reference, images, batch_size=4)
    expected = reference.state_dict()
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7, msg=key)
    assert int(ours.encoder.block1.bn.num_batches_tracked) == 2 + (count == 10)
    assert not ours.training  # update_bn gives the model its mode back
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    recalibrate_batch_norm(ours, images[:1])  # one image: nothing to average, statistics kept
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())


def test_image_loading_jpeg_dicom_and_broken_file(dataset, tmp_path):
    from vol_transfer.errors import InputDataError
    from vol_transfer.io.images2d import load_image

    jpeg = next((dataset(KERMANY) / "train" / "NORMAL").glob("*.jpeg"))
    grey = load_image(jpeg, size=48, channels=1)
    rgb = load_image(jpeg, size=48, channels=3)
    assert grey.shape == (1, 48, 48) and rgb.shape == (3, 48, 48) and grey.dtype == np.uint8
    assert abs(float(grey.mean()) - float(rgb.mean())) < 3  # a grey X-ray stored as RGB
    import pydicom

    dicom_path = dataset("cxr_dicom_nih") / "test1.dcm"
    dicom = load_image(dicom_path)
    assert dicom.shape == (1, 1024, 1024)
    assert np.array_equal(dicom[0], pydicom.dcmread(dicom_path).pixel_array)  # 8-bit kept as stored
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(InputDataError, match="broken.jpeg"):
        load_image(broken)


def test_image_groups_from_file_names():
    from vol_transfer.training.classification import image_group

    assert image_group("a/person1_virus_6.jpeg", "PNEUMONIA", ["bacteria", "virus"]) == "PNEUMONIA/virus"
    assert image_group("a/IM-0115-0001.jpeg", "NORMAL", ["bacteria", "virus"]) == "NORMAL"
    assert image_group("a/person1_virus_6.jpeg", "PNEUMONIA", []) == "PNEUMONIA"


def test_init_from_a_weights_file_copies_the_encoder(tmp_path):
    from vol_transfer.nets.autoencoder import ConvAutoencoder
    from vol_transfer.training.classification import InitConfig, _initialise
    from vol_transfer.transfer.checkpoint import save_checkpoint

    source = ConvAutoencoder(in_channels=1)
    with torch.no_grad():
        source.encoder.block3.conv.weight.fill_(0.5)
    path = save_checkpoint(tmp_path / "pretext.pt", source.state_dict(), {"architecture": {"name": "cbr_autoencoder"}})
    model = CBRLargeT(in_channels=1, num_classes=2)
    config = ClassificationConfig(init=InitConfig(checkpoint=str(path)))
    init = _initialise(config, model, tmp_path, data_root=None, progress=False)
    assert init["copied"] == sum(k.startswith("encoder.") for k in model.state_dict())
    assert torch.all(model.encoder.block3.conv.weight == 0.5)
