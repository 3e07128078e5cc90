"""`vol-transfer evaluate` answers the next question: it prints the Dice table, and never guesses classes.

A BraTS-style manifest declares labels 1, 2, 4; a tumour-core model writes 1 = core. Without a
checkpoint to say so, scoring prediction 1 as "necrosis" would be silently wrong: the classes come
from the checkpoint (given, or recorded by ``vol-transfer infer``), else from the manifest when the
predictions hold exactly its values, else ``--labels`` is required.
"""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import torch

from tests.inference.pointwise import PointwiseNet
from vol_transfer.cli import main
from vol_transfer.io.volumes import save_volume
from vol_transfer.transfer.checkpoint import make_metadata, save_checkpoint

SHAPE = (8, 8, 8)


def _brats_like(tmp_path):
    """One case: truth core = labels 1 and 4 (2 around it); flair − t1c > 0 exactly on a 3×3×3 cube."""
    truth = np.zeros(SHAPE, np.uint8)
    truth[1:6, 1:6, 1:6] = 2
    truth[2:5, 2:5, 2:5] = 4
    truth[3, 3, 2:5] = 1
    flair = np.zeros(SHAPE, np.float32)
    flair[2:5, 2:5, 2:5] = 1.0
    flair[2, 2, 2] = 0.0  # one voxel of the core missed by the model: Dice 2·26/53
    for name, array in (("flair", flair), ("t1c", np.zeros_like(flair)), ("label", truth)):
        save_volume(array, tmp_path / f"{name}.nii.gz", affine=np.eye(4))
    manifest = tmp_path / "brats.csv"
    manifest.write_text("# labels: 0,1,2,4\n# label_names: background,necrosis,oedema,enhancing\n"
                        "subject_id,split,flair,t1c,label\ncase_1,test,flair.nii.gz,t1c.nii.gz,label.nii.gz\n")
    net = PointwiseNet(2, 2)
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.bias.copy_(torch.tensor([0.0, -0.5]))
        net.conv.weight[1, :2, 0, 0, 0] = torch.tensor([1.0, -1.0])
    metadata = make_metadata({"name": "pointwise_test", "in_channels": 2, "num_classes": 2}, ["flair", "t1c"],
                             ["background", "tumour_core"], preprocessing={"intensity": []},
                             label_mapping="brats_tc_2017")
    checkpoint = save_checkpoint(tmp_path / "tc.pt", net.state_dict(), metadata)
    return manifest, checkpoint


def _evaluate(tmp_path, manifest, pred, *extra):
    return main(["evaluate", "--pred", str(pred), "--manifest", str(manifest), "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "report"), "--no-progress", "--overlays", "1", "--overwrite", *extra])


def test_classes_come_from_the_checkpoint_infer_recorded_and_the_dice_is_printed(tmp_path, capsys) -> None:
    manifest, checkpoint = _brats_like(tmp_path)
    pred = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(checkpoint), str(manifest), "--data-root", str(tmp_path),
                 "--out", str(pred), "--no-progress"]) == 0
    capsys.readouterr()
    assert _evaluate(tmp_path, manifest, pred) == 0
    out = capsys.readouterr().out
    assert "tumour_core = truth 1,4 / prediction 1" in out and "inference_timings.csv" in out
    assert f"| test | tumour_core | 1 | {2 * 26 / 53:.4f} ± – |" in out  # the number itself, on the console
    assert "summary.md" in out and "overlays/" in out
    rows = list(csv.DictReader(open(tmp_path / "report" / "metrics_per_subject.csv")))
    assert [(r["class"], round(float(r["dice"]), 6)) for r in rows] == [("tumour_core", round(2 * 26 / 53, 6))]


def test_without_a_checkpoint_a_core_prediction_is_not_scored_as_necrosis(tmp_path, capsys) -> None:
    manifest, checkpoint = _brats_like(tmp_path)
    pred = tmp_path / "pred"
    core = np.zeros(SHAPE, np.uint8)
    core[2:5, 2:5, 2:5] = 1  # written by some other tool: no inference_timings.csv
    save_volume(core, pred / "case_1_seg.nii.gz", affine=np.eye(4))
    assert _evaluate(tmp_path, manifest, pred) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--labels" in err[0] and "necrosis=1" in err[0] and "--checkpoint" in err[0]
    assert not (tmp_path / "report" / "summary.csv").exists()
    # told what they mean, it scores them
    assert _evaluate(tmp_path, manifest, pred, "--checkpoint", str(checkpoint)) == 0
    assert "| test | tumour_core | 1 | 1.0000 ± – |" in capsys.readouterr().out
    assert _evaluate(tmp_path, manifest, pred, "--labels", "core=1,4", "--pred-labels", "core=1") == 0
    assert "| test | core | 1 | 1.0000 ± – |" in capsys.readouterr().out


def test_manifest_labels_are_used_when_the_predictions_hold_exactly_those_values(tmp_path, capsys) -> None:
    manifest, _ = _brats_like(tmp_path)
    pred = tmp_path / "pred"
    truth = np.asarray(nib.load(tmp_path / "label.nii.gz").dataobj).astype(np.uint8)
    save_volume(truth, pred / "case_1_seg.nii.gz", affine=np.eye(4))
    assert _evaluate(tmp_path, manifest, pred) == 0
    out = capsys.readouterr().out
    assert "the manifest's declared labels" in out
    for name in ("necrosis", "oedema", "enhancing"):
        assert f"| test | {name} | 1 | 1.0000 ± – |" in out
