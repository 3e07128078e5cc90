"""The main job end to end at a tiny size: pre-train → fine-tune + scratch → NIfTI predictions → Dice table."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from vol_transfer.cli import main


def test_demo_runs_the_whole_story_and_writes_predictions_in_input_geometry(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--pretrain-iterations", "4", "--finetune-iterations", "4", "--threads", "2"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| model_1 |" in text and "| scratch |" in text and "vol-transfer study recipes/freeze_ablation_cpu.yaml" in text
    for run in ("hippocampus_pretrain", "tumour_model_1", "tumour_scratch"):
        assert (out / run / "checkpoints" / "best.pt").is_file()
        assert (out / run / "metrics.csv").is_file() and (out / run / "recipe.yaml").is_file()
        assert any((out / run / "tensorboard").iterdir())
    predictions = sorted((out / "predictions").glob("*_seg.nii.gz"))
    assert predictions, "no predictions written"
    case = predictions[0].name.replace("_seg.nii.gz", "")
    prediction = nib.load(predictions[0])
    source = nib.load(out / "data" / "tumour" / f"{case}_flair.nii.gz")
    assert prediction.shape == source.shape and np.allclose(prediction.affine, source.affine)
    assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1}
    assert (out / "dice.md").read_text().count("|") > 6
