"""TorchIO transforms in the patch loader: typed recipe entries, applied per patch, label-safe, seeded, resumable."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import yaml

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import from_dict, recipe_to_yaml
from vol_transfer.sampling import Augmentation, BalancedSampler, PatchLoader, UniformSampler
from vol_transfer.sampling.torchio_augment import TorchioPipeline, TorchioTransform
from vol_transfer.training.segmentation_config import SegmentationConfig
from vol_transfer.training.segmentation_data import PreparedCase, make_batches

torch.set_num_threads(2)
WINDOW = 16


def specs(*entries: dict) -> tuple:
    return tuple(from_dict(list[TorchioTransform], list(entries), "sampler.augmentation.torchio"))


def block_volumes(count: int = 3, shape=(28, 30, 26)) -> list[tuple[np.ndarray, np.ndarray]]:
    """A cube of label 1 with a slab of label 2; the image is the label plus a little noise."""
    rng = np.random.default_rng(7)
    volumes = []
    for _ in range(count):
        label = np.zeros(shape, np.int16)
        label[8:20, 9:21, 7:19] = 1
        label[8:20, 9:21, 13:19] = 2
        image = np.stack([label * 1.0, label * -0.5]).astype(np.float32) + rng.normal(0, 0.01, (2,) + shape)
        volumes.append((image.astype(np.float32), label))
    return volumes


VOLUMES = block_volumes()


def load(index: int):  # module level: picklable for worker processes
    return VOLUMES[index]


def loader(transforms: tuple, seed: int = 3, rotation: float = 0.0, **options) -> PatchLoader:
    augmentation = Augmentation(rotation_degrees=rotation, scaling=0.0, torchio=transforms)
    settings = dict(batch_size=2, patches_per_volume=2, volumes_per_block=2, seed=seed, augmentation=augmentation)
    settings.update(options)
    return PatchLoader(list(range(len(VOLUMES))), load, BalancedSampler(WINDOW), **settings)


def take(patch_loader: PatchLoader, n: int) -> list[dict]:
    return list(itertools.islice(patch_loader, n))


MOTION = specs({"name": "RandomMotion", "degrees": 8, "translation": 4})
ELASTIC = specs({"name": "RandomElasticDeformation", "num_control_points": 5, "max_displacement": 3})


def test_intensity_transforms_change_the_image_not_the_label():
    plain, moved = take(loader(()), 2), take(loader(MOTION), 2)
    for a, b in zip(plain, moved):
        assert torch.equal(a["centre"], b["centre"]) and torch.equal(a["label"], b["label"])
        assert torch.equal(a["valid"], b["valid"])
        assert (a["image"] - b["image"]).abs().max() > 0.05


def test_elastic_deformation_moves_label_with_the_image_and_keeps_its_values():
    nearest = specs({"name": "RandomElasticDeformation", "num_control_points": 5, "max_displacement": 3,
                     "image_interpolation": "nearest"})
    plain, warped = take(loader(()), 3), take(loader(nearest), 3)
    moved = 0
    for a, b in zip(plain, warped):
        label, valid, image = b["label"], b["valid"], b["image"]
        assert set(label.unique().tolist()) <= {-1, 0, 1, 2}
        assert ((label == -1) == ~valid).all()
        moved += int((a["label"] != label).sum())
        # aligned: channel 0 is ≈ the label, and both were resampled by nearest neighbour on one field
        assert (torch.round(image[:, 0]).to(torch.int16) == label)[valid].all()
    assert moved > 100, "the deformation must move label boundaries"


def test_elastic_margin_gives_real_voxels_at_the_border():
    pipe = TorchioPipeline(ELASTIC)
    assert pipe.margin == 4 and pipe.moves_voxels
    batch = take(loader(ELASTIC), 2)[-1]
    inside = take(loader(()), 2)[-1]["valid"]
    assert torch.equal(batch["valid"], inside)  # windows inside the volume stay fully valid


def test_same_seed_same_batches_other_seed_other_batches_and_global_rng_untouched():
    transforms = ELASTIC + specs({"name": "RandomGhosting", "p": 0.5}, {"name": "RandomNoise", "std": 0.1})
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = take(loader(transforms, rotation=10), 3)
    assert torch.equal(torch.get_rng_state(), before)
    again = take(loader(transforms, rotation=10), 3)
    other = take(loader(transforms, seed=4, rotation=10), 3)
    for a, b in zip(first, again):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert any(not torch.equal(a["image"], c["image"]) for a, c in zip(first, other))


def test_exact_resume_and_worker_processes_give_the_same_stream():
    transforms = ELASTIC + specs({"name": "RandomSpike"})
    first = loader(transforms)
    reference = take(first, 4)
    interrupted = loader(transforms)
    take(interrupted, 2)
    resumed = loader(transforms)
    resumed.load_state_dict(interrupted.state_dict())
    tail = take(resumed, 2)
    workers = take(loader(transforms, num_workers=2), 4)
    for a, b in zip(reference[2:], tail):
        assert a["index"] == b["index"] and torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    for a, b in zip(reference, workers):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_transforms_change_the_loader_fingerprint():
    assert loader(()).state_dict()["fingerprint"] != loader(MOTION).state_dict()["fingerprint"]
    assert loader(MOTION).state_dict()["fingerprint"] != loader(ELASTIC).state_dict()["fingerprint"]


# --- the recipe --------------------------------------------------------------------------------------------


def recipe(*entries: dict) -> dict:
    return {"data": {"manifest": "m.csv", "classes": ["background", "a", "b"]},
            "training": {"window": [WINDOW] * 3, "batch_size": 2},
            "sampler": {"kind": "uniform", "patches_per_volume": 2, "volumes_per_block": 1,
                        "augmentation": {"rotation_degrees": 0, "scaling": 0, "torchio": list(entries)}}}


@pytest.mark.parametrize("entry, message", [
    ({"name": "RandomMotoin"}, "sampler.augmentation.torchio[0].name: 'RandomMotoin' is not allowed — did you mean 'RandomMotion'?"),
    ({"name": "RandomMotion", "degres": 3}, "sampler.augmentation.torchio[0].degres: unknown key — did you mean 'degrees'?"),
    ({"name": "RandomMotion", "std": 1}, "torchio[0].std: is not an option of name 'RandomMotion' — it belongs to name"),
    ({"name": "RandomBlur", "std": [2, 1]}, "sampler.augmentation.torchio[0]: TorchIO refuses RandomBlur: If std is a sequence"),
    ({"name": "RandomGhosting", "p": 1.5}, "sampler.augmentation.torchio[0].p: value 1.5 is out of range"),
    ({"name": "RandomAffine", "degrees": 10}, "sampler.augmentation.torchio[0]: RandomAffine is done by our own patch resample"),
    ({"name": "RandomFlip"}, "set flip_axes in sampler.augmentation"),
])
def test_recipe_errors_are_one_line_and_name_the_key(entry, message):
    with pytest.raises(RecipeError) as error:
        from_dict(SegmentationConfig, recipe({"name": "RandomBlur"}, entry))
    text = str(error.value)
    assert message.replace("[0]", "[1]") in text and "\n" not in text


def test_without_torchio_installed_a_recipe_listing_transforms_is_refused_before_data(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchio", None)  # import torchio now fails as if not installed
    assert from_dict(SegmentationConfig, recipe()).sampler.augmentation.torchio == []
    with pytest.raises(RecipeError, match=r"torchio\[0\]: RandomBlur needs TorchIO, which is not installed — pip install"):
        from_dict(SegmentationConfig, recipe({"name": "RandomBlur"}))


def test_recipe_yaml_records_the_transforms_and_reads_back_the_same():
    config = from_dict(SegmentationConfig, recipe({"name": "RandomMotion", "p": 0.2, "degrees": [1, 5]},
                                                  {"name": "RandomElasticDeformation", "max_displacement": [2, 2, 0]}))
    written = yaml.safe_load(recipe_to_yaml("segmentation", config))
    entries = written["sampler"]["augmentation"]["torchio"]
    assert entries[0] == {"p": 0.2, "name": "RandomMotion", "degrees": [1.0, 5.0], "translation": 10.0,
                          "num_transforms": 2, "image_interpolation": "linear"}
    assert entries[1]["max_displacement"] == [2.0, 2.0, 0.0]
    written.pop("task")
    assert from_dict(SegmentationConfig, written) == config


def test_make_batches_applies_the_recipes_transforms():
    cases = [PreparedCase(f"c{i}", image, label) for i, (image, label) in enumerate(VOLUMES)]
    plain = from_dict(SegmentationConfig, recipe())
    blurred = from_dict(SegmentationConfig, recipe({"name": "RandomBlur", "std": [1, 1]}))
    a, b = next(make_batches(cases, plain)), next(make_batches(cases, blurred))
    assert torch.equal(a["label"], b["label"]) and (a["image"] - b["image"]).abs().max() > 0.1
    assert b["image"][:, 0].std() < a["image"][:, 0].std()  # blur smooths the block's edges


# --- real data ---------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_hippocampus_patches_with_elastic_and_artefacts(dataset):
    import nibabel as nib

    folder = dataset("msd_hippocampus")
    image = np.asarray(nib.load(folder / "imagesTr/hippocampus_001.nii.gz").dataobj, np.float32)
    label = np.asarray(nib.load(folder / "labelsTr/hippocampus_001.nii.gz").dataobj).astype(np.int16)
    image = (image - image[image > 0].mean()) / image[image > 0].std()
    transforms = specs({"name": "RandomElasticDeformation", "max_displacement": 4},
                       {"name": "RandomMotion", "degrees": 5, "translation": 3},
                       {"name": "RandomAnisotropy", "p": 0.5}, {"name": "RandomBiasField"})
    augmentation = Augmentation(rotation_degrees=10, scaling=0.1, torchio=transforms)
    plain = Augmentation(rotation_degrees=10, scaling=0.1)
    make = lambda aug: PatchLoader([0], lambda _: (image, label), UniformSampler(32), batch_size=2,
                                   patches_per_volume=4, augmentation=aug, seed=0, num_batches=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchIO's folding warning on a 32³ window
        augmented, reference = list(make(augmentation)), list(make(plain))
    for a, r in zip(augmented, reference):
        valid, lab = a["valid"], a["label"]
        assert torch.isfinite(a["image"]).all() and (a["image"] - r["image"]).abs().mean() > 0.01
        assert set(lab[valid].unique().tolist()) <= {0, 1, 2} and (lab[~valid] == -1).all()
        # the hippocampus stays about the same size: deformation moves, it does not erase or invent labels
        before, after = int((r["label"] > 0).sum()), int((lab > 0).sum())
        assert abs(after - before) < 0.15 * before + 50


# --- the fast elastic path equals TorchIO's --------------------------------------------------------------


@pytest.mark.parametrize("shape, points", [((30, 26, 22), (7, 6, 5)), ((41, 50, 37), (5, 9, 4))])
def test_bspline_field_equals_simpleitks(shape, points):
    import SimpleITK as sitk
    import torchio as tio
    from torchio.data.io import nib_to_sitk
    from torchio.transforms.augmentation.spatial.random_elastic_deformation import ElasticDeformation

    from vol_transfer.sampling.torchio_augment import bspline_displacement

    torch.manual_seed(0)
    control = tio.RandomElasticDeformation.get_params(points, (3.0, 2.0, 4.0), 1)
    image = nib_to_sitk(torch.zeros((1,) + shape), np.eye(4), force_3d=True)
    bspline = ElasticDeformation(control_points=control, max_displacement=(3.0, 2.0, 4.0)).get_bspline_transform(image)
    field = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, image.GetSize(), image.GetOrigin(),
                                              image.GetSpacing(), image.GetDirection())
    expected = sitk.GetArrayFromImage(field).transpose(3, 2, 1, 0) * np.array([-1, -1, 1])[:, None, None, None]
    assert np.abs(expected).max() > 0.5
    np.testing.assert_allclose(bspline_displacement(control.astype(np.float64), shape), expected, atol=1e-9)


def test_fast_elastic_matches_torchios_own_resample():
    import torchio as tio

    image, label = VOLUMES[0]
    image, label = image[:, 2:26, 3:27, 1:25], label[2:26, 3:27, 1:25]
    options = {"name": "RandomElasticDeformation", "num_control_points": 5, "max_displacement": 2}
    pipe = TorchioPipeline(specs(options))
    gaussian = TorchioPipeline(specs({**options, "label_interpolation": "label_gaussian"}))
    assert type(pipe.steps[0]).__name__ == "FastElastic" and isinstance(gaussian.steps[0], tio.Transform)
    fast_image, fast_label, _ = pipe.apply(image, label, np.ones(label.shape, bool), seed=11)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image)),
                          label=tio.LabelMap(tensor=torch.from_numpy(label + 1)[None]))  # as the pipeline encodes it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        own = tio.RandomElasticDeformation(num_control_points=5, max_displacement=2)(subject)
    inner = (slice(None),) + (slice(3, -3),) * 3  # away from the borders, where the two pad differently
    assert np.abs(fast_image - image).max() > 0.3  # it deformed
    assert np.abs(fast_image - own["image"].data.numpy())[inner].max() < 1e-3
    own_label = own["label"].data.numpy()[0].round() - 1
    assert (fast_label == own_label)[inner[1:]].mean() > 0.999  # nearest ties may round apart


# --- a training run ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_run_records_the_transforms_and_resumes_exactly(tmp_path):
    import signal

    from tests.training.test_resume import _checkpoint_iteration, _finish, _metrics, _train
    from tests.training.test_segmentation import make_dataset, tiny_recipe
    from vol_transfer.transfer.checkpoint import load_checkpoint

    transforms = [{"name": "RandomElasticDeformation", "p": 0.5, "num_control_points": 5, "max_displacement": 2},
                  {"name": "RandomMotion", "p": 0.5, "degrees": 5, "translation": 2}, {"name": "RandomBlur", "p": 0.5}]
    data = tiny_recipe(make_dataset(tmp_path / "data"), iterations=8, validation={"every": 4}, checkpoint={"every": 2},
                       sampler={"augmentation": {"torchio": transforms}})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "segmentation", **data}))
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _finish(_train(recipe, straight))
    written = yaml.safe_load((straight / "recipe.yaml").read_text())["sampler"]["augmentation"]["torchio"]
    assert [entry["name"] for entry in written] == ["RandomElasticDeformation", "RandomMotion", "RandomBlur"]
    assert written[0]["max_displacement"] == 2 and written[1]["translation"] == 2

    process = _train(recipe, interrupted, kill_after=6)
    process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL and _checkpoint_iteration(interrupted / "checkpoints" / "last.pt") == 6
    _finish(_train(recipe, interrupted, "--resume"))
    assert _metrics(interrupted) == _metrics(straight)
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (straight, interrupted))
    assert all(torch.equal(tensor, b.state_dict[key]) for key, tensor in a.state_dict.items())
