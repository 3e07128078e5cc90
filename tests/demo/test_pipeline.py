"""The main job end to end at a tiny size: pre-train → model_1 + scratch → NIfTI predictions → Dice, curves, figures."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from vol_transfer.cli import main
from vol_transfer.demo.pipeline import DemoSizes, conclusion, first_reaching


@pytest.mark.slow
def test_demo_runs_the_whole_story_and_writes_predictions_figures_and_where_they_are(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--pretrain-iterations", "4", "--finetune-iterations", "4", "--threads", "2"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| model_1 |" in text and "| scratch |" in text and "vol-transfer study recipes/freeze_ablation_cpu.yaml" in text
    assert "conv_0 frozen" in text and "parameters trainable" in text  # what was frozen, how much trains
    assert "What it is evidence of" in text and "synthetic" in text
    for run in ("source_pretrain", "target_model_1", "target_scratch"):
        assert (out / run / "checkpoints" / "best.pt").is_file()
        assert (out / run / "metrics.csv").is_file() and (out / run / "recipe.yaml").is_file()
        assert any((out / run / "tensorboard").iterdir())
    # both arms' predictions, on the input's grid
    for arm in ("model_1", "scratch"):
        predictions = sorted((out / "predictions" / arm).glob("*_seg.nii.gz"))
        assert len(predictions) == 4, arm
        case = predictions[0].name.replace("_seg.nii.gz", "")
        prediction = nib.load(predictions[0])
        source = nib.load(out / "data" / "tumour" / f"{case}_flair.nii.gz")
        assert prediction.shape == source.shape and np.allclose(prediction.affine, source.affine)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1}
    # the figures exist, are real PNGs of a readable size, and every output's path is printed
    record = json.loads((out / "demo.json").read_text())
    assert set(record["figures"]) == {"dice_per_arm", "learning_curves", "overlay_model_1", "overlay_scratch"}
    for path in record["figures"].values():
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 250, (path, image.size)
        assert path in text
    assert str(out / "predictions" / "model_1") in text and str(out / "dice.md") in text
    # the learning curves are what metrics.csv holds
    curve = record["arms"]["model_1"]["curve"]
    assert [point[0] for point in curve] == [4]
    assert record["arms"]["model_1"]["best"] == pytest.approx(curve[0][1], abs=1e-6)
    assert (out / "dice.md").read_text().count("|") > 12


def test_conclusion_states_the_direction_the_numbers_point() -> None:
    sizes = DemoSizes()

    def arms(transfer: float, scratch: float) -> dict:
        return {"model_1": {"test_dice": {"a": transfer}, "curve": [(10, transfer)]},
                "scratch": {"test_dice": {"a": scratch}, "curve": [(10, scratch)]}}

    assert "frozen beat the same network" in conclusion(arms(0.7, 0.2), sizes)
    assert "frozen lost to the same network" in conclusion(arms(0.2, 0.7), sizes)
    assert "did about as well as" in conclusion(arms(0.5, 0.52), sizes)
    assert "iteration 10 vs never" in conclusion(arms(0.7, 0.2), sizes)
    assert first_reaching([(10, 0.1), (20, 0.49)], 0.5) is None
    unlearning = arms(0.9, 0.2)
    unlearning["model_1"]["curve"] = [(10, 0.9), (20, 0.7)]
    assert "highest at iteration 10 and lower later" in conclusion(unlearning, sizes)
    assert "lower later" not in conclusion(arms(0.9, 0.2), sizes)
