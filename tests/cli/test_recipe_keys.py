"""`vol-transfer recipe keys`: every key of the typed schema with type, default and meaning."""

from __future__ import annotations

import pytest

from vol_transfer.cli import main
from vol_transfer.recipe_keys import schema_keys
from vol_transfer.recipes import get_task


def _lines(text: str) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines()[3:] if line.strip() and not line.startswith(" ")}


def test_lists_freezing_kind_with_its_choices_and_each_kinds_options(capsys) -> None:
    assert main(["recipe", "keys"]) == 0
    text = capsys.readouterr().out
    keys = _lines(text)
    kind = keys["transfer.freezing.kind"]
    for choice in ("'none'", "'freeze_first'", "'warmup'", "'gradual'", "'phases'"):
        assert choice in kind
    assert kind.split("'phases'", 1)[1].split()[0] == "'none'"  # the default, after the choices
    assert "number of leading layer groups frozen" in keys["transfer.freezing.k"]
    assert "[kind: freeze_first]" in keys["transfer.freezing.k"] and "required" in keys["transfer.freezing.k"]
    assert "  kind: warmup" in text  # each kind listed with its meaning
    assert "int ≥ 1" in keys["training.iterations"] and " 1000 " in keys["training.iterations"]
    assert "preprocessing.intensity[].mask" in keys and "network.options.width" in keys


def test_a_recipe_adds_the_values_it_resolves_to(capsys) -> None:
    assert main(["recipe", "keys", "recipes/brats_tc_finetune_cpu.yaml"]) == 0
    keys = _lines(capsys.readouterr().out)
    assert "'brats_tc_2015'" in keys["data.label_mapping"]
    assert "'runs/hippocampus_pretrain_cpu/checkpoints/best.pt'" in keys["transfer.source"]
    assert "400" in keys["training.iterations"]  # the _cpu recipe's value beside the default 1000


@pytest.mark.parametrize("task", ["segmentation", "classification", "pretext", "study"])
def test_every_key_of_every_task_has_a_type_and_a_meaning(task) -> None:
    keys = schema_keys(get_task(task).config_cls)
    assert len(keys) > 10
    missing = [k.key for k in keys if not k.meaning.strip() or (not k.key.startswith(" ") and not k.type)]
    assert not missing, f"{task} keys without a type or meaning: {missing}"


def test_unknown_task_is_a_one_line_error(capsys) -> None:
    assert main(["recipe", "keys", "--task", "segmentaton"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'segmentation'" in err[0]
