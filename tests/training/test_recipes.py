"""Recipe loading: typed validation, extends, --set overrides, the task registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import pytest
import yaml

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import (
    apply_overrides,
    config_to_dict,
    deep_merge,
    from_dict,
    load_recipe_dict,
    option,
    recipe_to_yaml,
    register_task,
    resolve_recipe,
    tagged_union,
)


@dataclass
class Optim:
    name: Literal["adam", "sgd"] = "adam"
    lr: float = option(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: list[int] = option(default_factory=list, ge=1)


@dataclass
class Data:
    manifest: Path
    channels: list[str] = option(["t1"], min_len=1)
    label_mapping: Optional[dict[int, int]] = None
    window: tuple[int, ...] = option((32, 32, 32), ge=8)


@dataclass
class Toy:
    data: Data
    optim: Optim = field(default_factory=Optim)
    iterations: int = option(100, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    deterministic: bool = True

    def validate(self, where: str) -> None:
        if self.iterations < len(self.optim.milestones):
            raise RecipeError("iterations", "fewer iterations than milestones", "raise iterations")


def _run(config, run_dir, **_):
    return {"ok": True}


register_task("toy_recipe_test", Toy, _run)


def test_nested_types_are_converted():
    config = from_dict(Toy, {"data": {"manifest": "m.csv", "label_mapping": {"1": 1, 2: 1}, "window": [40, 40, 40]},
                             "optim": {"lr": "1e-4", "betas": [0.8, 0.9]}, "iterations": 1e3})
    assert config.data.manifest == Path("m.csv")
    assert config.data.label_mapping == {1: 1, 2: 1}
    assert config.data.window == (40, 40, 40)
    assert config.optim.lr == pytest.approx(1e-4) and config.optim.betas == (0.8, 0.9)
    assert config.iterations == 1000 and isinstance(config.iterations, int)
    assert config.data.channels == ["t1"]


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"data": {"manifest": "m"}, "optim": {"lrr": 1}}, "optim.lrr", "did you mean 'lr'"),
        ({"data": {"manifest": "m"}, "iteratons": 5}, "iteratons", "did you mean 'iterations'"),
        ({"data": {"manifest": "m"}, "iterations": "many"}, "iterations", "expected an integer"),
        ({"data": {"manifest": "m"}, "iterations": 2.5}, "iterations", "expected an integer"),
        ({"data": {"manifest": "m"}, "iterations": 0}, "iterations", "out of range"),
        ({"data": {"manifest": "m"}, "deterministic": "yes please"}, "deterministic", "true/false"),
        ({"data": {"manifest": "m"}, "precision": "fp16"}, "precision", "choose one of"),
        ({"data": {"manifest": "m"}, "optim": {"lr": -1}}, "optim.lr", "out of range"),
        ({"data": {"manifest": "m"}, "optim": {"betas": [0.9]}}, "optim.betas", "expected 2 values"),
        ({"data": {"manifest": "m"}, "optim": {"milestones": [5, 0]}}, "optim.milestones", "out of range"),
        ({"data": {"manifest": "m", "window": [4, 32, 32]}}, "data.window", "out of range"),
        ({"data": {"manifest": "m", "channels": []}}, "data.channels", "at least 1"),
        ({"data": {"manifest": "m", "channels": [1]}}, "data.channels[0]", "expected a string"),
        ({"data": {"manifest": "m", "label_mapping": {"x": 1}}}, "data.label_mapping.x", "not an integer"),
        ({"data": {}}, "data.manifest", "required key is missing"),
        ({"data": "m.csv"}, "data", "expected a mapping"),
        ({"data": {"manifest": "m"}, "optim": {"milestones": [1, 2, 3]}, "iterations": 2}, "iterations", "fewer"),
    ],
)
def test_bad_values_name_the_key(data, key, words):
    with pytest.raises(RecipeError) as info:
        from_dict(Toy, data)
    assert info.value.where == key
    assert words in info.value.message
    assert "\n" not in info.value.message


def test_extends_is_recursive_and_deep_merged(tmp_path: Path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "root.yaml").write_text(
        "task: toy_recipe_test\ndata: {manifest: a.csv, channels: [t1, t2]}\noptim: {lr: 0.01, name: sgd}\n")
    (tmp_path / "base" / "mid.yaml").write_text("extends: root.yaml\noptim: {lr: 0.001}\niterations: 50\n")
    (tmp_path / "leaf.yaml").write_text("extends: base/mid.yaml\niterations: 7\n")
    data = load_recipe_dict(tmp_path / "leaf.yaml")
    assert data["optim"] == {"lr": 0.001, "name": "sgd"}
    assert data["data"]["channels"] == ["t1", "t2"]
    assert data["iterations"] == 7


def test_extends_cycle_and_missing_parent(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe_dict(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe_dict(tmp_path / "c.yaml")


def test_invalid_yaml_is_one_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: toy\ndata:\n  manifest: [unclosed\n")
    with pytest.raises(RecipeError) as info:
        load_recipe_dict(bad)
    assert "not valid YAML" in info.value.message and "\n" not in info.value.message


def test_overrides_parse_yaml_values():
    data = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=3e-4", "data.channels=[flair, t1c]", "seed=7",
                                                     "data.label_mapping=null"])
    assert data["optim"]["lr"] == pytest.approx(3e-4)
    assert data["data"] == {"channels": ["flair", "t1c"], "label_mapping": None}
    assert data["seed"] == 7
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(RecipeError, match="single value"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_resolve_recipe_round_trips_through_yaml(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: toy_recipe_test\ndata: {manifest: m.csv}\n")
    task, config = resolve_recipe(recipe, ["optim.lr=0.5", "precision=bf16"])
    assert task == "toy_recipe_test" and config.optim.lr == 0.5 and config.precision == "bf16"
    text = recipe_to_yaml(task, config)
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(text)
    task2, config2 = resolve_recipe(resolved)
    assert task2 == task and config_to_dict(config2) == config_to_dict(config)
    assert yaml.safe_load(text)["data"]["manifest"] == "m.csv"


def test_resolve_recipe_errors_name_file_and_key(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: toy_recipe_test\ndata: {manifest: m.csv}\n")
    with pytest.raises(RecipeError) as info:
        resolve_recipe(recipe, ["optim.lr=-1"])
    assert str(recipe) in info.value.where and "optim.lr" in info.value.where
    recipe.write_text("task: toy_recipe_tset\n")
    with pytest.raises(RecipeError, match="did you mean 'toy_recipe_test'"):
        resolve_recipe(recipe)
    recipe.write_text("data: {manifest: m.csv}\n")
    with pytest.raises(RecipeError, match="task"):
        resolve_recipe(recipe)


# --------------------------------------------------------------------------------------------
# Tagged unions: sub-specs chosen by their kind
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Circle:
    kind: Literal["circle"] = "circle"
    radius: float = option(ge=0)
    colour: str = "red"


@dataclass(kw_only=True)
class Box:
    kind: Literal["box"] = "box"
    sides: tuple[float, float] = (1.0, 1.0)
    colour: str = "red"


@dataclass
class Drawing:
    shape: Union[Circle, Box] = field(default_factory=Box)
    extra: Optional[Union[Circle, Box]] = None
    shapes: list[Union[Circle, Box]] = option(default_factory=list)


register_task("drawing_recipe_test", Drawing, _run)


def test_tagged_union_chooses_the_dataclass_by_kind():
    drawing = from_dict(Drawing, {"shape": {"kind": "circle", "radius": 2}, "shapes": [{"kind": "box"}],
                                  "extra": {"kind": "box", "sides": [2, 3]}})
    assert drawing.shape == Circle(radius=2.0) and drawing.shapes == [Box()] and drawing.extra == Box(sides=(2.0, 3.0))
    # no kind: the field's default kind; a None optional stays None
    assert from_dict(Drawing, {"shape": {"sides": [4, 5]}}).shape == Box(sides=(4.0, 5.0))
    assert from_dict(Drawing, {}).extra is None
    # a typed value is checked again like its YAML
    assert from_dict(Drawing, {"shape": Circle(radius=1.0)}).shape == Circle(radius=1.0)
    assert config_to_dict(drawing)["shape"] == {"kind": "circle", "radius": 2.0, "colour": "red"}


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"shape": {"kind": "circel"}}, "shape.kind", "did you mean 'circle'? choose one of 'circle', 'box'"),
        ({"shape": {"kind": "circle"}}, "shape.radius", "required key is missing"),
        ({"shape": {"kind": "circle", "radius": 1, "sides": [1, 2]}}, "shape.sides", "belongs to kind 'box'"),
        ({"shape": {"radius": 1}}, "shape.radius", "is not an option of kind 'box'"),  # default kind is box
        ({"shape": {"kind": "box", "colur": "blue"}}, "shape.colur", "did you mean 'colour'"),
        ({"extra": {"radius": 1}}, "extra.kind", "required key is missing"),  # no default kind to fall back on
        ({"shapes": [{"kind": "box"}, {"kind": "blob"}]}, "shapes[1].kind", "choose one of 'circle', 'box'"),
        ({"shape": {"kind": "circle", "radius": -1}}, "shape.radius", "out of range"),
    ],
)
def test_tagged_union_errors_are_one_line_with_the_dotted_key(data, key, words):
    with pytest.raises(RecipeError) as info:
        from_dict(Drawing, data)
    assert info.value.where == key
    assert words in info.value.message and "\n" not in info.value.message


def test_extends_replaces_a_sub_spec_of_another_kind(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("task: drawing_recipe_test\n"
                                        "shape: {kind: circle, radius: 3, colour: blue}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nshape: {kind: box, sides: [1, 2]}\n")
    (tmp_path / "same.yaml").write_text("extends: base.yaml\nshape: {radius: 4}\n")
    data = load_recipe_dict(tmp_path / "child.yaml")
    assert data["shape"] == {"kind": "box", "sides": [1, 2], "colour": "blue"}  # no stray radius; colour is shared
    assert resolve_recipe(tmp_path / "child.yaml", command=None)[1].shape == Box(sides=(1.0, 2.0), colour="blue")
    assert load_recipe_dict(tmp_path / "same.yaml")["shape"] == {"kind": "circle", "radius": 4, "colour": "blue"}
    # without a schema, deep_merge merges key by key
    assert deep_merge({"a": {"kind": "x", "k": 1}}, {"a": {"kind": "y"}}) == {"a": {"kind": "y", "k": 1}}


def test_set_kind_drops_the_old_kinds_options_in_either_order(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: drawing_recipe_test\nshape: {kind: circle, radius: 3, colour: blue}\n")
    for overrides in (["shape.kind=box", "shape.sides=[2, 2]"], ["shape.sides=[2, 2]", "shape.kind=box"]):
        assert resolve_recipe(recipe, overrides, command=None)[1].shape == Box(sides=(2.0, 2.0), colour="blue")
    # setting the kind it already has keeps its options; a mapping value replaces the whole sub-spec
    assert resolve_recipe(recipe, ["shape.kind=circle"], command=None)[1].shape == Circle(radius=3.0, colour="blue")
    assert resolve_recipe(recipe, ["shape={kind: box}"], command=None)[1].shape == Box()
    assert apply_overrides({"shape": {"kind": "circle", "radius": 3}}, ["shape.kind=box"]) == {
        "shape": {"kind": "box", "radius": 3}}  # no schema: a plain key


# --------------------------------------------------------------------------------------------
# The segmentation recipe: everything checked before any data is read
# --------------------------------------------------------------------------------------------


def _segmentation_recipe(tmp_path: Path, **sections) -> Path:
    data = {"task": "segmentation", "data": {"manifest": str(tmp_path / "no_such_manifest.csv"),
                                             "label_mapping": "hippocampus"}, **sections}
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_freezing_kind_typo_is_refused_before_any_data_is_read(tmp_path: Path, capsys):
    from vol_transfer.cli import main

    # the manifest does not exist: reading any data would fail with a manifest error instead
    recipe = _segmentation_recipe(tmp_path, transfer={"freezing": {"kind": "freeze_frist", "k": 2}})
    with pytest.raises(RecipeError) as info:
        resolve_recipe(recipe)
    assert info.value.where == f"{recipe}: transfer.freezing.kind"
    assert "did you mean 'freeze_first'" in info.value.message
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = _one_line_error(capsys)
    assert "transfer.freezing.kind" in err and "did you mean 'freeze_first'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "sections, key, words",
    [
        ({"transfer": {"freezing": {"kind": "freeze_first"}}}, "transfer.freezing.k", "required key is missing"),
        ({"transfer": {"freezing": {"kind": "warmup", "iterations": 10, "k": 2}}}, "transfer.freezing.k",
         "belongs to kind 'freeze_first'"),
        ({"transfer": {"freezing": {"kind": "gradual", "evry": 10}}}, "transfer.freezing.evry", "did you mean 'every'"),
        ({"transfer": {"freezing": {"kind": "freeze_first", "k": 7}}}, "transfer.freezing.k", "6 layer groups"),
        ({"transfer": {"freezing": {"kind": "phases", "phases": {0: ["conv_0", "res1"], 100: []}}}},
         "transfer.freezing.phases.0", "did you mean 'res_1'"),
        ({"transfer": {"freezing": {"kind": "phases", "phases": {10: ["conv_0"]}}}}, "transfer.freezing.phases",
         "must start at iteration 0"),
        ({"transfer": {"freezing": {"kind": "warmup", "iterations": 10, "head": ["conv2"]}}},
         "transfer.freezing.head", "did you mean 'conv_2'"),
        ({"transfer": {"freezing": {"kind": "none", "bn_policy": "frozen"}}}, "transfer.freezing.bn_policy",
         "did you mean 'freeze'"),
        ({"transfer": {"lr_multipliers": {"conv0": 0.1}}}, "transfer.lr_multipliers.conv0", "did you mean 'conv_0'"),
        ({"preprocessing": {"intensity": [{"kind": "zscore"}, {"kind": "percentile"}]}},
         "preprocessing.intensity[1].kind", "did you mean 'percentile_clip'"),
        ({"preprocessing": {"intensity": [{"kind": "zscore", "mask": "nonzero", "lower": 1}]}},
         "preprocessing.intensity[0].lower", "belongs to kind 'percentile_clip'"),
        ({"preprocessing": {"intensity": [{"kind": "hu_window", "window": "livr"}]}},
         "preprocessing.intensity[0].window", "unknown HU window"),
        ({"preprocessing": {"orientation": "RAR"}}, "preprocessing.orientation", "repeats an axis"),
        ({"network": {"options": {"widht": 0.5}}}, "network.options.widht", "did you mean 'width'"),
        ({"network": {"options": {"dropout": 1.0}}}, "network.options.dropout", "out of range"),
        ({"network": {"options": {"activation": "gelu"}}}, "network.options.activation", "choose one of 'relu', 'prelu'"),
        ({"network": {"name": "highres3dnt"}}, "network.name", "did you mean 'highres3dnet'"),
        ({"network": {"name": "cbr_large_t"}}, "network.name", "choose one of 'highres3dnet'"),  # a 2-D classifier
    ],
)
def test_sub_specs_are_checked_at_resolve_time(tmp_path: Path, sections, key, words):
    recipe = _segmentation_recipe(tmp_path, **sections)
    with pytest.raises(RecipeError) as info:
        resolve_recipe(recipe)
    assert info.value.where == f"{recipe}: {key}"
    assert words in info.value.message and "\n" not in info.value.message


def test_typed_sections_keep_the_attributes_other_code_reads(tmp_path: Path):
    from vol_transfer.preprocessing.intensity_steps import ZScore
    from vol_transfer.training.network_spec import HighRes3DNetOptions
    from vol_transfer.transfer.freezing_spec import FreezeFirst, NoFreezing

    _, config = resolve_recipe(_segmentation_recipe(tmp_path, network={"options": {"width": 0.25}},
                                                    transfer={"freezing": {"kind": "freeze_first", "k": 2}}))
    assert config.transfer.freezing == FreezeFirst(k=2)
    assert config.preprocessing.intensity == [ZScore(mask="nonzero")] and config.preprocessing.orientation == "RAS"
    assert config.network.name == "highres3dnet" and config.network.options == HighRes3DNetOptions(width=0.25)
    assert config.network.architecture(2, 3) == {"name": "highres3dnet", "in_channels": 2, "num_classes": 3,
                                                  "activation": "relu", "width": 0.25, "dropout": 0.0}
    _, default = resolve_recipe(_segmentation_recipe(tmp_path))
    assert default.transfer.freezing == NoFreezing()


def test_extends_switching_the_freezing_kind_leaves_no_stray_keys(tmp_path: Path):
    base = _segmentation_recipe(tmp_path, transfer={"freezing": {"kind": "freeze_first", "k": 2, "bn_policy": "freeze"}},
                                sampler={"kind": "balanced", "patches_per_volume": 8})
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {base.name}\ntransfer:\n  freezing: {{kind: warmup, iterations: 100}}\n"
                     "sampler: {kind: uniform}\n")
    data = load_recipe_dict(child)
    assert data["transfer"]["freezing"] == {"kind": "warmup", "iterations": 100, "bn_policy": "freeze"}
    from vol_transfer.transfer.freezing_spec import WarmupFreezing

    _, config = resolve_recipe(child)
    assert config.transfer.freezing == WarmupFreezing(iterations=100, bn_policy="freeze")
    # a plain section's kind is no tagged union: it merges as before
    assert config.sampler.kind == "uniform" and config.sampler.patches_per_volume == 8
    # --set likewise, in either order
    for overrides in (["transfer.freezing.kind=warmup", "transfer.freezing.iterations=100"],
                      ["transfer.freezing.iterations=100", "transfer.freezing.kind=warmup"]):
        assert resolve_recipe(base, overrides)[1].transfer.freezing == WarmupFreezing(iterations=100, bn_policy="freeze")


def test_a_study_recipe_given_to_train_points_to_the_study_command(tmp_path: Path, capsys):
    from vol_transfer.cli import main

    study = RECIPES / "freeze_ablation_cpu.yaml"
    assert main(["train", str(study), "--run-dir", str(tmp_path / "run")]) == 2
    err = _one_line_error(capsys)
    assert "study" in err and f"vol-transfer study {study}" in err
    assert not (tmp_path / "run").exists()
    assert main(["study", str(RECIPES / "brats_tc_finetune_cpu.yaml"), "--out", str(tmp_path / "s"), "--commands"]) == 2
    assert "vol-transfer train" in _one_line_error(capsys)


# --------------------------------------------------------------------------------------------
# Shipped recipes and network specs
# --------------------------------------------------------------------------------------------

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHIPPED = sorted(RECIPES.glob("*.yaml"))


def test_recipes_folder_is_found():
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path: Path, tmp_path: Path, monkeypatch):
    from vol_transfer.studies.plan import plan_study

    monkeypatch.chdir(RECIPES.parent)  # shipped recipes name paths relative to the project root
    task = load_recipe_dict(path)["task"]
    name, config = resolve_recipe(path, command="study" if task == "study" else "train")
    assert name == task
    assert yaml.safe_load(recipe_to_yaml(name, config))["task"] == name
    if task != "study":
        return
    # a study: its target recipe, and every arm of it (study-wide and arm overrides applied)
    target_task, target = resolve_recipe(config.recipe, config.set)
    assert target_task == "segmentation"
    manifest = tmp_path / "manifest.csv"  # enough training cases for the GPU-size subsets
    manifest.write_text("subject_id,split,fold,image,label\n" + "".join(f"c{i},train,{i % 2},c{i}.nii.gz,c{i}_seg.nii.gz\n"
                                                                       for i in range(200)))
    plan = plan_study(config, tmp_path / "study", manifest, target.data.train_split)
    assert plan.arms
    for arm in plan.arms:
        resolve_recipe(config.recipe, [*config.set, *arm.overrides])


def test_network_specs_match_the_network_factories():
    import inspect

    from vol_transfer.nets import _REGISTRY, available_networks
    from vol_transfer.training.network_spec import NetworkSpec

    tag, specs = tagged_union(NetworkSpec)
    assert tag == "name"
    builtin = [n for n in available_networks() if "test" not in n]  # tests register their own
    assert sorted(name.lower() for name in specs) == sorted(builtin)  # build_network looks names up lowercased
    for name, spec in specs.items():
        parameters = inspect.signature(_REGISTRY[name.lower()]).parameters
        options = config_to_dict(spec().options)
        for option_name, default in options.items():
            assert option_name in parameters, (name, option_name)
            assert list(parameters[option_name].default) == default if isinstance(default, list) \
                else parameters[option_name].default == default, (name, option_name)
