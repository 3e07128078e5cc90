"""The segmentation task end to end on tiny volumes: recipe sections, a short run, its outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import from_dict, load_recipe_dict, resolve_recipe
from vol_transfer.training.segmentation import SegmentationConfig, run_segmentation
from vol_transfer.transfer.checkpoint import build_from_checkpoint, load_checkpoint

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def make_dataset(root: Path, cases: int = 5, seed: int = 0) -> Path:
    """Tiny two-structure volumes (labels 1 and 2 brighter than background) and their manifest."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(cases):
        shape = (14, 16, 12)
        label = np.zeros(shape, np.uint8)
        c = rng.integers(5, 8, size=3)
        label[c[0] - 2:c[0] + 2, c[1] - 3:c[1], c[2] - 2:c[2] + 2] = 1
        label[c[0] - 2:c[0] + 2, c[1]:c[1] + 4, c[2] - 2:c[2] + 2] = 2
        image = rng.normal(100, 10, shape).astype(np.float32) + 60 * (label == 1) + 120 * (label == 2)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / f"img_{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / f"lab_{i}.nii.gz")
        split = "validation" if i == cases - 1 else "train"
        rows.append(f"case{i},{split},img_{i}.nii.gz,lab_{i}.nii.gz")
    manifest = root / "tiny.csv"
    manifest.write_text("# labels: 0,1,2\nsubject_id,split,image,label\n" + "\n".join(rows) + "\n")
    return manifest


def tiny_recipe(manifest: Path, iterations: int = 6, **sections) -> dict:
    recipe = {
        "data": {"manifest": str(manifest), "data_root": str(manifest.parent), "label_mapping": "hippocampus"},
        "network": {"options": {"width": 0.25}},
        "sampler": {"patches_per_volume": 2, "volumes_per_block": 2},
        "training": {"iterations": iterations, "batch_size": 2, "window": [12, 12, 12], "threads": 1, "log_every": 2},
        "validation": {"every": 3},
        "checkpoint": {"every": 2},
    }
    for key, value in sections.items():
        recipe.setdefault(key, {}).update(value)
    return recipe


@pytest.mark.parametrize(
    "patch, key, words",
    [
        ({"loss": {"class_weights": [1, 1]}}, "loss.class_weights", "3 classes"),
        ({"data": {"label_mapping": "hipocampus"}}, "data.label_mapping", "unknown preset"),
        ({"data": {"label_mapping": {1: 1}}}, "data.classes", "class names are unknown"),
        ({"training": {"window": [12, 12]}}, "training.window", "expected 3 values"),
        ({"preprocessing": {"intensity": [{"kind": "zscor"}]}}, "preprocessing", "zscor"),
        ({"transfer": {"lr_decay": 0.5, "lr_multipliers": {"conv_0": 0.1}}}, "transfer.lr_decay", "both"),
        ({"optim": {"schedule": {"kind": "linear"}}}, "optim.schedule.kind", "choose one of"),
    ],
)
def test_segmentation_recipe_errors_name_the_key(tmp_path, patch, key, words):
    data = tiny_recipe(tmp_path / "m.csv")
    for section, values in patch.items():
        data[section].update(values) if section in data else data.setdefault(section, values)
    with pytest.raises(RecipeError) as info:
        from_dict(SegmentationConfig, data)
    assert info.value.where.startswith(key), info.value.message
    assert words in info.value.message


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")
                                    if p.name.startswith(("hippocampus", "brats"))
                                    and load_recipe_dict(p)["task"] == "segmentation"))  # not the studies
def test_shipped_recipes_resolve(name):
    task, config = resolve_recipe(RECIPES / name)
    assert task == "segmentation"
    assert config.class_names()[0] == "background"
    if "_cpu" in name:
        assert max(config.training.window) <= 48
    else:
        assert config.training.window == (96, 96, 96) and config.training.batch_size == 2
        assert config.optim.name == "adam" and config.optim.lr == pytest.approx(1e-3) and config.optim.weight_decay > 0


def test_short_run_writes_everything_inference_needs(tmp_path):
    torch.set_num_threads(1)
    manifest = make_dataset(tmp_path / "data")
    config = from_dict(SegmentationConfig, tiny_recipe(manifest, iterations=6))
    run_dir = tmp_path / "run"
    summary = run_segmentation(config, run_dir, progress=False)
    assert summary["iterations"] == 6 and summary["train_cases"] == 4 and summary["validation_cases"] == 1

    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    meta = best.metadata
    assert meta["architecture"] == {"name": "highres3dnet", "in_channels": 1, "num_classes": 3, "activation": "relu",
                                    "width": 0.25, "dropout": 0.0}
    assert meta["channels"] == ["image"] and meta["classes"] == ["background", "anterior", "posterior"]
    assert meta["preprocessing"]["intensity"] == [{"kind": "zscore", "mask": "nonzero", "threshold": 0.0, "channels": None}]
    assert meta["label_mapping"] == {"1": 1, "2": 2}
    assert meta["recipe"]["training"]["iterations"] == 6
    model = build_from_checkpoint(best)
    assert sum(p.numel() for p in model.parameters()) > 0

    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last.extra["iteration"] == 6 and "optimizer" in last.extra and len(last.extra["samplers"]) == 1

    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["iteration"]) for r in rows] == [2, 3, 4, 6]
    for column in ("train_loss", "train_lr", "perf_samples_per_s", "perf_step_time_s", "perf_data_wait_s",
                   "val_loss", "val_dice_mean", "val_dice_anterior", "val_dice_posterior"):
        assert column in rows[0]
    assert rows[1]["val_dice_anterior"] != "" and rows[0]["val_dice_anterior"] == ""
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_finetune_adapts_channels_and_freezes(tmp_path):
    """1-channel source → 2-channel target, new head, conv_0 frozen (bit-identical after training)."""
    torch.set_num_threads(1)
    manifest = make_dataset(tmp_path / "data")
    source_run = tmp_path / "source"
    run_segmentation(from_dict(SegmentationConfig, tiny_recipe(manifest, iterations=2)), source_run, progress=False)

    two_channel = tmp_path / "data" / "two.csv"
    lines = manifest.read_text().splitlines()
    body = [line.split(",") for line in lines[2:]]
    two_channel.write_text("# labels: 0,1,2\nsubject_id,split,a,b,label\n"
                           + "\n".join(f"{r[0]},{r[1]},{r[2]},{r[2]},{r[3]}" for r in body) + "\n")
    recipe = tiny_recipe(two_channel, iterations=3,
                         data={"label_mapping": "hippocampus_merged"},
                         transfer={"source": str(source_run / "checkpoints" / "best.pt"), "channel_adaptation": "repeat",
                                   "freezing": {"kind": "freeze_first", "k": 1}})
    config = from_dict(SegmentationConfig, recipe)
    run_segmentation(config, tmp_path / "target", progress=False)
    source = load_checkpoint(source_run / "checkpoints" / "best.pt").state_dict
    target = load_checkpoint(tmp_path / "target" / "checkpoints" / "last.pt").state_dict
    expected = source["conv_0.conv.weight"].repeat(1, 2, 1, 1, 1) / 2
    assert torch.equal(target["conv_0.conv.weight"], expected)  # frozen: exactly the adapted source
    assert target["conv_2.conv.weight"].shape[0] == 2  # new head for 2 classes
    assert not torch.equal(target["res_1.0.conv1.weight"], source["res_1.0.conv1.weight"])  # trained


@pytest.mark.real_data
def test_real_hippocampus_short_run(dataset, tmp_path):
    """Two iterations on two real hippocampus cases, validated on one whole real volume."""
    torch.set_num_threads(1)
    dataset("msd_hippocampus")
    task, config = resolve_recipe(RECIPES / "hippocampus_pretrain_cpu.yaml", [
        "training.iterations=2", "training.batch_size=1", "training.threads=1", "data.train_subjects=2",
        "data.validation_subjects=1", "validation.every=2", "network.options.width=0.25",
        "training.window=[16,16,16]", "sampler.patches_per_volume=1",
    ])
    manifest = Path(__file__).resolve().parents[2] / "data_manifests" / "msd_hippocampus.csv"
    config.data.manifest = manifest
    summary = run_segmentation(config, tmp_path / "run", progress=False)
    assert summary["iterations"] == 2 and summary["train_cases"] == 2
    assert len(summary["last_val_dice"]) == 2
    assert all(0.0 <= d <= 1.0 for d in summary["last_val_dice"] if not np.isnan(d))


@pytest.mark.parametrize("window", [None, (8, 8, 8)])
def test_validation_logits_match_a_plain_forward(window):
    """The inference path used for validation agrees with the network run on the whole volume."""
    from vol_transfer.nets import build_network
    from vol_transfer.training.segmentation import predict_logits

    torch.manual_seed(0)
    model = build_network({"name": "highres3dnet", "in_channels": 1, "num_classes": 2, "width": 0.25}).eval()
    image = torch.randn(1, 1, 10, 12, 9)
    with torch.no_grad():
        reference = model(image)
        logits = predict_logits(model, image, window, overlap=0.5)
    assert logits.shape == reference.shape
    if window is None:  # exact path (BatchNorm folded: float rounding only)
        assert torch.allclose(logits, reference, atol=1e-4)
    else:  # windows see zero padding at their borders: close, not equal
        assert (logits.argmax(1) == reference.argmax(1)).float().mean() > 0.5


def test_freezing_a_channel_adapted_first_convolution_is_warned_about(tmp_path):
    from vol_transfer.training.segmentation import frozen_adaptation_warning

    def config(freezing, adaptation="mean"):
        recipe = tiny_recipe(tmp_path / "m.csv", transfer={"source": "x.pt", "channel_adaptation": adaptation,
                                                           "freezing": freezing})
        return from_dict(SegmentationConfig, recipe)

    adapted = {"conv_0.conv.weight": (1, 2)}
    warning = frozen_adaptation_warning(adapted, config({"kind": "freeze_first", "k": 1}))
    assert "conv_0" in warning and "sum" in warning
    assert frozen_adaptation_warning(adapted, config({"kind": "none"})) is None
    assert "ignores them" in frozen_adaptation_warning(adapted, config({"kind": "freeze_first", "k": 1}, "first"))
    fewer = {"conv_0.conv.weight": (4, 2)}  # nothing new to ignore
    assert frozen_adaptation_warning(fewer, config({"kind": "freeze_first", "k": 1}, "first")) is None
    assert frozen_adaptation_warning({}, config({"kind": "freeze_first", "k": 1})) is None
