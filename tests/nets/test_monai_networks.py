"""MONAI networks under the transfer toolkit: recipe-typed, with layer groups that freezing, per-group
learning rates, channel adaptation and resumable training read exactly as they read HighRes3DNet's."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import torch
import yaml

from tests.training.test_segmentation import make_dataset, tiny_recipe
from vol_transfer.errors import CheckpointError, RecipeError
from vol_transfer.nets import build_network
from vol_transfer.recipes import from_dict, get_task, resolve_recipe
from vol_transfer.training.network_spec import SegmentationNetworkSpec
from vol_transfer.training.segmentation import frozen_adaptation_warning, run_segmentation
from vol_transfer.transfer.adapt import transfer_weights
from vol_transfer.transfer.checkpoint import load_checkpoint
from vol_transfer.transfer.freezing import FreezingSchedule, frozen_groups
from vol_transfer.transfer.groups import check_partition, group_of, layer_groups_of
from vol_transfer.transfer.lr_groups import make_optimizer

# tiny sizes of every shipped MONAI network: recipe name → network.options
TINY = {
    "monai.SegResNet": {"init_filters": 4, "num_groups": 2, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
    "monai.UNet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "monai.DynUNet": {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "filters": [4, 8, 16]},
    # batch norm: instance norm needs more than the one voxel 32³ leaves at SwinUNETR's 1/32 bottleneck
    "monai.SwinUNETR": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "norm_name": "batch"},
    "monai.HighResNet": {},
}
# the input size each network needs (SwinUNETR: multiples of 32)
SIZE = {"monai.SwinUNETR": 32}


def spec_of(name: str, **extra):
    return from_dict(SegmentationNetworkSpec, {"name": name, "options": TINY[name], **extra}, "network")


def built(name: str, in_channels: int = 1, num_classes: int = 3, seed: int = 0, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(spec_of(name, **extra).architecture(in_channels, num_classes))


def tensor_names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]


@pytest.mark.parametrize("name", sorted(TINY))
def test_default_groups_split_every_parameter_exactly_once(name):
    spec = spec_of(name)
    model = built(name)
    groups = layer_groups_of(model)
    assert list(groups) == spec.layer_group_names()  # what the recipe checks is what the model uses
    counts = {n: sum(any(fnmatch.fnmatchcase(n, p) for p in patterns) for patterns in groups.values())
              for n in tensor_names(model)}
    assert set(counts.values()) == {1}, {n: c for n, c in counts.items() if c != 1}
    check_partition(model, groups)
    # the head (last group) holds the output convolution: the tensor with out_channels = classes
    output = [n for n, p in model.named_parameters() if p.dim() == 5 and p.shape[0] == 3]
    assert output and group_of(output[-1], groups) == list(groups)[-1]
    # the first group holds the convolution that reads the input
    first = next(n for n, p in model.named_parameters() if p.dim() == 5)
    assert group_of(first, groups) == list(groups)[0]
    # the model runs on a volume that is not a multiple of its stride (padded, output cropped back)
    size = SIZE.get(name, 12)
    shape = (size + 1, size - 2, size) if name != "monai.SwinUNETR" else (size, size, size - 3)
    assert model.eval()(torch.randn(1, 1, *shape)).shape == (1, 3, *shape)


@pytest.mark.parametrize("name", sorted(TINY))
def test_freeze_first_k_leaves_exactly_those_parameters_unchanged(name):
    model = built(name).train()
    k = 2
    schedule = FreezingSchedule.from_spec({"kind": "freeze_first", "k": k}, model)
    schedule.apply(model, 0)
    groups = layer_groups_of(model)
    frozen_names = {n for n, _ in model.named_parameters() if group_of(n, groups) in list(groups)[:k]}
    assert frozen_groups(model) == list(groups)[:k]
    optimizer = make_optimizer(model, "adam", lr=1e-2, weight_decay=1e-4, decay=0.5)
    assert [g["name"] for g in optimizer.param_groups] == list(groups)[k:]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    size = SIZE.get(name, 16)
    torch.manual_seed(1)
    x, target = torch.randn(2, 1, size, size, size), torch.randn(2, 3, size, size, size)
    (model(x) * target).mean().backward()
    optimizer.step()
    unchanged = {n for n, p in model.named_parameters() if torch.equal(p, before[n])}
    assert frozen_names <= unchanged
    # every trainable parameter that got a gradient moved (some biases before a norm get exactly none)
    moved_ok = {n for n, p in model.named_parameters() if n not in frozen_names and p.grad is not None
                and p.grad.abs().max() > 0}
    assert moved_ok and not (moved_ok & unchanged)
    assert frozen_names and unchanged - frozen_names <= {n for n, p in model.named_parameters()
                                                         if p.grad is None or p.grad.abs().max() == 0}


@pytest.mark.parametrize("name", sorted(TINY))
def test_channel_adaptation_of_the_first_convolution(name):
    """1-channel source → 2-channel model by 'repeat': identical channels give the source's output."""
    source = built(name, in_channels=1, num_classes=3, seed=0).eval()
    target = built(name, in_channels=2, num_classes=3, seed=1).eval()
    report = transfer_weights(target, source.state_dict(), channels="repeat")
    groups = layer_groups_of(target)
    # DynUNet's state dict also lists its tensors under skip_layers.* aliases; groups name each tensor once
    adapted = set(report.adapted) & {n for n, _ in target.named_parameters()}
    assert adapted and {group_of(n, groups) for n in adapted} == {list(groups)[0]}
    size = SIZE.get(name, 16)
    x = torch.randn(1, 1, size, size, size)
    with torch.no_grad():
        torch.testing.assert_close(target(torch.cat([x, x], 1)), source(x), rtol=1e-4, atol=1e-4)
    # another class count: only head tensors are re-initialised
    new_head = built(name, in_channels=2, num_classes=2)
    report = transfer_weights(new_head, source.state_dict(), channels="mean")
    head = list(layer_groups_of(new_head))[-1]
    assert report.reinitialised and {group_of(n, layer_groups_of(new_head)) for n in report.reinitialised} == {head}
    with pytest.raises(CheckpointError, match="input channel"):
        transfer_weights(built(name, in_channels=2, num_classes=3), source.state_dict(), channels=None)


def test_recipe_groups_replace_the_defaults_and_travel_in_the_architecture():
    groups = {"stem": ["convInit.*"], "encoder": ["down_layers.*"], "decoder": ["up_*"], "head": ["conv_final.*"]}
    spec = spec_of("monai.SegResNet", groups=groups)
    assert spec.layer_group_names() == ["stem", "encoder", "decoder", "head"]
    architecture = spec.architecture(2, 2)
    assert architecture["groups"] == [[name, patterns] for name, patterns in groups.items()]
    assert architecture["spatial_dims"] == 3
    model = build_network(architecture)  # what a checkpoint rebuilds
    assert list(layer_groups_of(model)) == ["stem", "encoder", "decoder", "head"]
    assert FreezingSchedule.from_spec({"kind": "freeze_first", "k": 2}, model).frozen_at(0) == ("stem", "encoder")


@pytest.mark.parametrize("groups, key, words", [
    ({"stem": ["convInit.*"], "rest": ["down_layers.*", "up_*", "conv_final.*", "down_layer.9.*"]},
     "network.groups.rest", "'down_layer.9.*' matches no parameter"),
    ({"stem": ["convInit.*"], "rest": ["down_layers.*", "up_*"]}, "network.groups", "belong to no group: conv_final"),
    ({"stem": ["convInit.*", "down_layers.0.*"], "rest": ["down_layers.*", "up_*", "conv_final.*"]},
     "network.groups", "matched by two groups: down_layers.0."),
    ({"stem": []}, "network.groups", "non-empty list"),
])
def test_bad_groups_are_one_line_errors(groups, key, words):
    with pytest.raises(RecipeError) as info:
        spec_of("monai.SegResNet", groups=groups)
    assert info.value.where == key and words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("network, key, words", [
    ({"name": "monai.SegResNet", "options": {"init_filter": 8}}, "network.options.init_filter", "did you mean 'init_filters'"),
    ({"name": "monai.SegResnet"}, "network.name", "did you mean 'monai.SegResNet'"),
    ({"name": "monai.SegResNet", "options": {"blocks_down": [1, 1]}}, "network.options.blocks_up", "give 1"),
    ({"name": "monai.UNet", "options": {"channels": [4, 8], "strides": [2], "norm": "BATHC"}}, "network.options",
     "did you mean 'BATCH'"),
    ({"name": "monai.SegResNet", "options": {"width": 0.5}}, "network.options.width", "valid keys"),
])
def test_bad_network_options_are_one_line_errors(tmp_path, network, key, words):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "segmentation", **tiny_recipe(tmp_path / "m.csv"), "network": network}))
    with pytest.raises(RecipeError) as info:
        resolve_recipe(recipe)
    assert info.value.where == f"{recipe}: {key}" and words in str(info.value) and "\n" not in str(info.value)


def test_freezing_names_are_checked_against_the_monai_groups(tmp_path):
    data = tiny_recipe(tmp_path / "m.csv", transfer={"freezing": {"kind": "phases", "phases": {0: ["enc_1"]}}})
    data["network"] = {"name": "monai.SegResNet", "options": TINY["monai.SegResNet"]}
    with pytest.raises(RecipeError, match=r"transfer.freezing.phases.0: unknown layer group 'enc_1' — did you mean 'enc1'"):
        from_dict(get_task("segmentation").config_cls, data)


def test_frozen_adapted_stem_is_warned_about_for_a_monai_network(tmp_path):
    def config(freezing):
        data = tiny_recipe(tmp_path / "m.csv", transfer={"channel_adaptation": "mean", "freezing": freezing})
        data["network"] = {"name": "monai.SegResNet", "options": TINY["monai.SegResNet"]}
        return from_dict(get_task("segmentation").config_cls, data)

    adapted = {"convInit.conv.weight": (1, 2)}
    assert "stem" in frozen_adaptation_warning(adapted, config({"kind": "freeze_first", "k": 1}))
    assert frozen_adaptation_warning(adapted, config({"kind": "phases", "phases": {0: ["enc1"]}})) is None


def test_tiny_train_with_a_monai_network_and_a_freezing_schedule_resumes_exactly(tmp_path):
    manifest = make_dataset(tmp_path / "data")

    def config(iterations: int, source: Path | None = None):
        transfer = {"freezing": {"kind": "gradual", "every": 3, "start_frozen": 2}}
        if source is not None:
            transfer.update(source=str(source), channel_adaptation="repeat")
        data = tiny_recipe(manifest, iterations=iterations, validation={"every": 4}, transfer=transfer,
                           training={"window": [16, 16, 16], "deterministic": True})
        data["network"] = {"name": "monai.SegResNet", "options": TINY["monai.SegResNet"]}
        return from_dict(get_task("segmentation").config_cls, data)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_segmentation(config(8), straight, progress=False)
    run_segmentation(config(4), resumed, progress=False)  # stopped at 4, between the unfreezing at 3 and 6
    run_segmentation(config(8), resumed, resume=True, progress=False)
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (straight, resumed))
    assert a.extra["iteration"] == b.extra["iteration"] == 8
    assert a.state_dict.keys() == b.state_dict.keys()
    for key, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[key]), key
    log = [(entry["iteration"], entry["frozen_groups"]) for entry in b.extra["trainable"]]
    assert log == [(0, ["stem", "enc1"]), (3, ["stem"]), (6, [])]
    assert a.metadata["architecture"]["name"] == "monai.segresnet"
    assert [name for name, _ in a.metadata["architecture"]["groups"]][-1] == "head"  # order kept through JSON
    assert list(layer_groups_of(build_network(a.metadata["architecture"]))) == config(8).network.layer_group_names()
    # the run is a transfer source for the same network with another channel count
    finetuned = tmp_path / "finetuned"
    run_segmentation(config(2, straight / "checkpoints" / "last.pt"), finetuned, progress=False)
    assert (finetuned / "checkpoints" / "last.pt").is_file()


def test_gradual_study_arm_is_positional_so_it_fits_any_network():
    from vol_transfer.studies.plan import arm_overrides
    from vol_transfer.transfer.freezing_spec import parse_freezing_spec

    overrides = arm_overrides("gradual_2_100")
    assert overrides == ["transfer.freezing.kind=freeze_first", "transfer.freezing.k=2", "transfer.freezing.until=100"]
    spec = parse_freezing_spec({"kind": "freeze_first", "k": 2, "until": 100})
    assert spec.phases_for(spec_of("monai.SegResNet").layer_group_names()) == [(0, ("stem", "enc1")), (100, ())]
