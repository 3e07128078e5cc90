"""Recipe loading: typed validation, extends, --set overrides, the task registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import (
    apply_overrides,
    config_to_dict,
    from_dict,
    load_recipe_dict,
    option,
    recipe_to_yaml,
    register_task,
    resolve_recipe,
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
