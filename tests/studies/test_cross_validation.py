"""Cross-validated studies: one run per arm and fold, pooled held-out Dice, paired statistics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vol_transfer.errors import RecipeError
from vol_transfer.recipes import from_dict
from vol_transfer.studies.cross_validation import comparison_table, pool_folds
from vol_transfer.studies.plan import StudyConfig, plan_study
from vol_transfer.studies.results import ArmResult
from vol_transfer.training.segmentation_config import ValidationSection


def test_a_folds_study_trains_every_arm_on_every_fold_for_a_fixed_budget(tmp_path):
    config = from_dict(StudyConfig, {"kind": "freeze_ablation", "recipe": "recipes/brats18_tc_finetune_cpu.yaml",
                                     "arms": ["scratch", "model_1"], "seeds": [0], "folds": [0, 1]})
    plan = plan_study(config, tmp_path, None)
    assert [a.label for a in plan.arms] == ["scratch/seed0/fold0", "scratch/seed0/fold1",
                                            "model_1/seed0/fold0", "model_1/seed0/fold1"]
    assert len({a.run_dir for a in plan.arms}) == 4
    for arm in plan.arms:
        assert f"data.fold={arm.fold}" in arm.overrides and "validation.select=last" in arm.overrides


def test_pooled_folds_keep_case_order_and_the_comparison_is_paired():
    def result(name, fold_scores):
        return [ArmResult(name=name, dice={"validation": scores}) for scores in fold_scores]

    scratch = result("scratch", [[0.5, 0.4, 0.6], [0.3, float("nan"), 0.5]])
    tuned = result("finetune", [[0.6, 0.5, 0.7], [0.4, 0.2, 0.6]])
    pooled = pool_folds(scratch + tuned, [0, 1, 0, 1])
    by_name = {r.name: r for r in pooled}
    assert by_name["finetune"].dice["test"] == [0.6, 0.5, 0.7, 0.4, 0.2, 0.6]
    assert math.isnan(by_name["scratch"].dice["test"][4])
    table = comparison_table(pooled)
    row = next(line for line in table.splitlines() if "| finetune |" in line)
    # 6 cases scored; the pair with scratch's NaN is dropped: +0.1 on each of the other 5
    assert "| 6 |" in row and "+0.100" in row and "better on 5/5" in row


def test_the_comparison_pairs_by_case_id_and_refuses_different_cases():
    scratch = ArmResult("scratch", dice={"test": [0.5, 0.1]}, cases={"test": ["a", "b"]})
    tuned = ArmResult("finetune", dice={"test": [0.2, 0.6]}, cases={"test": ["b", "a"]})  # +0.1 on both, reordered
    row = next(line for line in comparison_table([scratch, tuned]).splitlines() if "| finetune |" in line)
    assert "+0.100" in row and "better on 2/2" in row
    other = ArmResult("finetune", dice={"test": [0.2, 0.6]}, cases={"test": ["b", "c"]})
    with pytest.raises(ValueError, match="different cases"):
        comparison_table([scratch, other])


def test_pooled_folds_carry_the_case_ids_in_fold_order():
    folds = [ArmResult("scratch", dice={"validation": [0.5]}, cases={"validation": ["x"]}),
             ArmResult("scratch", dice={"validation": [0.7]}, cases={"validation": ["y"]})]
    pooled = pool_folds([folds[1], folds[0]], [1, 0])[0]
    assert pooled.cases["test"] == ["x", "y"] and pooled.dice["test"] == [0.5, 0.7]


def test_select_last_refuses_early_stopping_on_the_held_out_cases():
    with pytest.raises(RecipeError, match="validation.patience"):
        from_dict(ValidationSection, {"select": "last", "patience": 3}, "validation")
