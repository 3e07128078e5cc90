"""Study reports: tables in the study's layout, time-to-threshold, files written."""

from __future__ import annotations

import csv
import math

from vol_transfer.studies.report import ablation_table, size_table, write_report
from vol_transfer.studies.results import ArmResult, CurvePoint, smooth


def _arm(name: str, dice: float, subset: str = "", size: int = 0, seed: int = 0) -> ArmResult:
    curve = [CurvePoint(i * 100, i * 60.0, 1.0 - 0.1 * i, 1.0 - 0.1 * i, 0.1 * i) for i in range(6)]
    return ArmResult(name, subset, size, seed, 400, {"train": [dice + 0.1, dice + 0.1], "test": [dice - 0.05, dice + 0.05]}, curve, 1.5, 360.0)


def test_ablation_table_means_and_seed_spread() -> None:
    table = ablation_table([_arm("scratch", 0.5), _arm("model_1", 0.6, seed=0), _arm("model_1", 0.7, seed=1)], ["train", "test"])
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "0.6000" in rows["scratch"] and "0.5000" in rows["scratch"]
    assert "0.6500 ± 0.0707" in rows["model_1"]  # test means 0.6 and 0.7 over two seeds


def test_size_table_has_one_row_per_subset_with_iterations() -> None:
    table = size_table([_arm("scratch", 0.4, "S1", 26), _arm("scratch", 0.5, "S2", 52), _arm("model_1", 0.45, "S1", 26)])
    lines = table.splitlines()
    assert lines[2].startswith("| S1 (26) | 0.4000 (400) | 0.4500 (400)")
    assert lines[3].startswith("| S2 (52) | 0.5000 (400) | –")


def test_time_to_threshold_is_first_crossing() -> None:
    assert _arm("a", 0.5).time_to_threshold(0.25) == (300, 180.0)
    assert _arm("a", 0.5).time_to_threshold(0.9) is None


def test_smoothing_skips_nan_and_is_debiased() -> None:
    values = smooth([1.0, math.nan, 1.0, 1.0])
    assert math.isnan(values[1]) and values[0] == values[2] == 1.0


def test_write_report_writes_markdown_csv_and_plots(tmp_path) -> None:
    results = [_arm("scratch", 0.4, "S1", 26), _arm("model_1", 0.5, "S1", 26)]
    report = write_report(results, tmp_path, title="Data size", kind="dataset_size", threshold=0.3)
    text = report.read_text()
    assert "# Data size" in text and "dice_vs_size.png" in text
    for name in ("loss_curves.png", "dice_box_test.png", "dice_vs_size.png"):
        assert (tmp_path / name).stat().st_size > 1000
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {(r["arm"], r["split"]) for r in rows} == {("scratch", "train"), ("scratch", "test"), ("model_1", "train"), ("model_1", "test")}
    assert rows[0]["iterations_to_threshold"] == "300"


def test_nan_subjects_are_left_out_of_means_counts_and_spread(tmp_path) -> None:
    arm = ArmResult("scratch", dice={"test": [0.4, math.nan, 0.6]}, best_iteration=1)
    assert arm.mean_dice("test") == 0.5
    write_report([arm], tmp_path, title="t", kind="freeze_ablation")
    with open(tmp_path / "results.csv") as handle:
        row = next(csv.DictReader(handle))
    assert (row["mean_dice"], row["n_subjects"], row["sd_dice"]) == ("0.500000", "2", "0.100000")
    assert "0.5000" in ablation_table([arm], ["test"])


def test_study_evaluation_reads_channels_by_alias_and_scores_nothing_as_nan(tmp_path) -> None:
    """evaluate_checkpoint: the checkpoint's [flair, t1c] from columns (t1ce, flair); an empty case is NaN."""
    import nibabel as nib
    import numpy as np

    from tests.inference.pointwise import difference_checkpoint
    from vol_transfer.studies.evaluate import evaluate_checkpoint

    checkpoint = difference_checkpoint(tmp_path / "tc.pt", ["flair", "t1c"])
    flair = np.zeros((6, 6, 6), np.float32)
    flair[1:4, 1:4, 1:4] = 10.0  # brighter than t1c exactly on the core
    label = (flair > 0).astype(np.uint8)
    label[1, 1, 1] = 0  # one voxel off: Dice 2·26 / 53
    files = {"flair_a": flair, "t1c": np.zeros_like(flair), "flair_b": np.zeros_like(flair),
             "label_a": label, "label_b": np.zeros_like(label)}
    for name, array in files.items():
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    manifest = tmp_path / "m.csv"
    manifest.write_text("# labels: 0,1\nsubject_id,split,t1ce,flair,label\n"
                        "a,test,t1c.nii.gz,flair_a.nii.gz,label_a.nii.gz\nb,test,t1c.nii.gz,flair_b.nii.gz,label_b.nii.gz\n")
    by_case = evaluate_checkpoint(checkpoint, manifest, tmp_path, ["test"])["test"]
    assert list(by_case) == ["a", "b"]  # manifest order, keyed by subject ID
    scores = list(by_case.values())
    assert scores[0] == 2 * 26 / 53 and math.isnan(scores[1])
    assert ArmResult("model_1", dice={"test": scores}).mean_dice("test") == 2 * 26 / 53


def test_per_case_csv_holds_every_score_by_case_with_nan_empty(tmp_path) -> None:
    arms = [ArmResult("scratch", dice={"test": [0.4, math.nan]}, cases={"test": ["p1", "p2"]}),
            ArmResult("finetune", dice={"test": [0.5, 0.3]}, cases={"test": ["p1", "p2"]})]
    write_report(arms, tmp_path, title="t", kind="freeze_ablation")
    rows = list(csv.DictReader(open(tmp_path / "per_case.csv")))
    assert [(r["arm"], r["case"], r["dice"]) for r in rows] == [
        ("scratch", "p1", "0.400000"), ("scratch", "p2", ""), ("finetune", "p1", "0.500000"), ("finetune", "p2", "0.300000")]
