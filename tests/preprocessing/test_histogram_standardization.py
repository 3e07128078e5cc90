"""Nyúl histogram standardisation: learned on the training split only, stored in the checkpoint, applied at inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vol_transfer.errors import RecipeError
from vol_transfer.io.volumes import load_volume
from vol_transfer.preprocessing.histogram_standardization import HistogramStandardization, learn_landmarks
from vol_transfer.preprocessing.pipeline import Preprocessor
from vol_transfer.recipes import from_dict, resolve_recipe
from vol_transfer.training.segmentation import run_segmentation
from vol_transfer.transfer.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# TorchIO's landmark percentiles: the cutoffs 1 and 99, the deciles and the quartiles
PERCENTILES = [1, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 99]
MEDIAN = PERCENTILES.index(50)


def _t1_volumes(folder: Path, names: list[str]):
    return [load_volume(folder / "imagesTr" / f"{name}.nii.gz") for name in names]


def _landmark_values(array: np.ndarray) -> np.ndarray:
    return np.percentile(array[array > 0], PERCENTILES)


def test_bad_or_missing_landmarks_are_one_line_errors():
    with pytest.raises(RecipeError, match="increasing"):
        from_dict(Preprocessor, {"intensity": [{"kind": "histogram_standardization", "landmarks": [0, 5, 2]}]})
    with pytest.raises(RecipeError, match="no landmarks"):
        HistogramStandardization()(np.ones((4, 4, 4), np.float32))


def test_without_torchio_only_a_recipe_that_standardises_histograms_needs_it(monkeypatch):
    """The README's main job installs no extras: every training run passes learn_landmarks."""
    import sys

    monkeypatch.setitem(sys.modules, "torchio", None)  # `import torchio` now raises ImportError
    plain = from_dict(Preprocessor, {"intensity": [{"kind": "zscore"}]})
    assert learn_landmarks(plain, lambda: iter(())) is plain
    standardising = from_dict(Preprocessor, {"intensity": [{"kind": "histogram_standardization"}]})
    with pytest.raises(RecipeError, match=r"needs TorchIO.*\[torchio\]"):
        learn_landmarks(standardising, lambda: iter(()))


@pytest.mark.real_data
def test_learned_landmarks_bring_real_t1_histograms_onto_one_scale(dataset):
    """Four real MRIs of different intensity scales end up with nearly the same percentile landmarks."""
    folder = dataset("msd_hippocampus")
    volumes = _t1_volumes(folder, ["hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_008"])
    scaled = [v.__class__(**{**v.__dict__, "array": v.array * factor})
              for v, factor in zip(volumes, (1.0, 3.0, 0.2, 1.7))]  # acquisitions on different scales
    plain = Preprocessor(intensity=[HistogramStandardization()])
    learned = learn_landmarks(plain, lambda: iter(scaled[:3]))
    landmarks = np.asarray(learned.intensity[0].landmarks)
    assert landmarks[0] == pytest.approx(0) and landmarks[-1] == pytest.approx(100)
    before = np.stack([_landmark_values(v.array[0]) for v in scaled])
    after = np.stack([_landmark_values(learned.apply(v)[0].array[0]) for v in scaled])
    assert np.ptp(before[:, MEDIAN]) / before[:, MEDIAN].mean() > 1.0  # medians differ by more than their mean
    assert np.ptp(after[:, MEDIAN]) < 8.0  # on the standard 0–100 scale, medians within a few units
    np.testing.assert_allclose(after[:3].mean(0), landmarks, atol=4.0)  # TorchIO skips the quartiles when mapping
    # the held-out fourth image (never seen when learning) is mapped onto the same scale
    assert abs(after[3, MEDIAN] - landmarks[MEDIAN]) < 8.0
    assert learned.apply(scaled[3])[0].array[0][scaled[3].array[0] == 0].max() == 0  # background stays 0


@pytest.mark.real_data
@pytest.mark.slow
def test_training_learns_landmarks_on_its_training_split_and_the_checkpoint_carries_them(dataset, tmp_path):
    dataset("msd_hippocampus")
    torch.set_num_threads(1)
    _, config = resolve_recipe(ROOT / "recipes" / "hippocampus_pretrain_cpu.yaml", [
        "training.iterations=1", "training.batch_size=1", "training.threads=1", "data.train_subjects=3",
        "data.validation_subjects=1", "validation.every=1", "network.options.width=0.25",
        "training.window=[16,16,16]", "sampler.patches_per_volume=1",
        "preprocessing.intensity=[{kind: histogram_standardization}]",
    ])
    config.data.manifest = ROOT / "data_manifests" / "msd_hippocampus.csv"
    run_segmentation(config, tmp_path / "run", progress=False)
    spec = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt").metadata["preprocessing"]
    stored = Preprocessor.from_spec(spec)
    landmarks = stored.intensity[0].landmarks
    assert landmarks is not None and len(landmarks) == len(PERCENTILES)

    from vol_transfer.io.manifest import read_manifest

    manifest = read_manifest(config.data.manifest, data_root=dataset("msd_hippocampus").parent)
    train = [s.channels[next(iter(s.channels))] for s in manifest.subjects("train")[:3]]
    validation = [s.channels[next(iter(s.channels))] for s in manifest.subjects("validation")[:1]]
    plain = Preprocessor(orientation=stored.orientation, crop_foreground=stored.crop_foreground,
                         intensity=[HistogramStandardization()])
    on_train = learn_landmarks(plain, lambda: (load_volume(p) for p in train)).intensity[0].landmarks
    with_validation = learn_landmarks(plain, lambda: (load_volume(p) for p in train + validation)).intensity[0].landmarks
    np.testing.assert_allclose(landmarks, on_train, rtol=1e-6)  # exactly the training split's landmarks
    assert not np.allclose(landmarks, with_validation, rtol=1e-4)  # a validation case would have moved them
