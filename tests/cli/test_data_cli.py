"""``vol-transfer data check`` and ``vol-transfer data manifest`` through the CLI entry point."""

from __future__ import annotations

from pathlib import Path

from vol_transfer.cli import main

MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"


def test_check_shipped_hippocampus_prints_the_summary(shared_data, capsys):
    code = main(["data", "check", str(MANIFESTS / "msd_hippocampus.csv"), "--data-root", str(shared_data)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "[train] cases       140" in out and "[validation] cases  30" in out and "[test] cases        30" in out
    assert "spacing (mm)      1x1x1" in out and "labels            0: " in out
    assert "ok: " in out and "200 of 200 cases opened" in out
    assert "checking msd_hippocampus.csv" in err  # the progress bar goes to stderr


def test_check_lists_every_problem_and_ends_with_one_line(shared_data, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "# labels: 0,1\n"
        "subject_id,split,image,label\n"
        "hippocampus_001,train,msd_hippocampus/imagesTr/hippocampus_001.nii.gz,msd_hippocampus/labelsTr/hippocampus_001.nii.gz\n"
        "hippocampus_003,train,msd_hippocampus/imagesTr/hippocampus_003.nii.gz,msd_hippocampus/labelsTr/hippocampus_003.nii.gz\n"
    )
    code = main(["data", "check", str(bad), "--data-root", str(shared_data), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == "2 problem(s):"
    assert all("value(s) [2] outside the declared labels [0, 1]" in line for line in lines[1:3])
    assert lines[-1].startswith(f"error: {bad}: 2 problem(s)")
    assert "[train] cases" in out  # the summary still shows what was found

    broken = tmp_path / "broken.csv"
    broken.write_text("subject_id,split,image\nx,train,nope.nii.gz\nx,tset,nope.nii.gz\n")
    code = main(["data", "check", str(broken), "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "duplicate subject_id" in err and "unknown split 'tset'" in err and "4 problem(s)" in err


def test_manifest_command_reproduces_the_shipped_manifests(shared_data, tmp_path, capsys):
    out = tmp_path / "hippo.csv"
    code = main(["data", "manifest", "--layout", "msd", str(shared_data / "msd_hippocampus"), "--out", str(out),
                 "--data-root", str(shared_data), "--seed", "0", "--labels", "0,1,2",
                 "--label-names", "background,anterior,posterior"])
    assert code == 0
    assert "200 cases of 200 patients (train 140, validation 30, test 30)" in capsys.readouterr().out
    assert out.read_text() == (MANIFESTS / "msd_hippocampus.csv").read_text()

    brats = tmp_path / "brats.csv"
    assert main(["data", "manifest", "--layout", "brats", str(shared_data / "brats2015_flair_t1c"), "--out", str(brats),
                 "--data-root", str(shared_data), "--labels", "0-4",
                 "--label-names", "background,necrosis,edema,non_enhancing,enhancing"]) == 0
    assert brats.read_text() == (MANIFESTS / "brats2015_flair_t1c.csv").read_text()


def test_manifest_command_refuses_to_overwrite_and_bad_fractions(shared_data, tmp_path, capsys):
    out = tmp_path / "existing.csv"
    out.write_text("keep me")
    args = ["data", "manifest", "--layout", "brats", str(shared_data / "brats2023_4mod_nolabel"), "--out", str(out)]
    assert main(args) == 2
    assert "output already exists — pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert main([*args, "--fractions", "0.9,0.2", "--overwrite"]) == 2
    assert "--fractions" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main([*args, "--overwrite"]) == 0
    assert "BraTS-GLI-00001-000,unlabelled" in out.read_text()


def test_data_without_action_prints_help(capsys):
    assert main(["data"]) == 1
    assert "check" in capsys.readouterr().out


def test_check_kermany_sample_and_structure_only(shared_data, capsys):
    manifest = str(MANIFESTS / "chest_xray_kermany.csv")
    assert main(["data", "check", manifest, "--data-root", str(shared_data), "--sample", "20", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "20 of 5216 cases opened" in out and "declared classes    NORMAL, PNEUMONIA" in out
    assert "[validation] cases" in out and "patients)" in out
    assert main(["data", "check", manifest, "--data-root", str(shared_data), "--structure-only"]) == 0
    assert "0 of 5216 cases opened" in capsys.readouterr().out


def test_manifest_command_reproduces_the_shipped_kermany_split(shared_data, tmp_path):
    out = tmp_path / "kermany.csv"
    assert main(["data", "manifest", "--layout", "folders", str(shared_data / "chest_xray_kermany_224" / "train"),
                 "--out", str(out), "--data-root", str(shared_data), "--fractions", "0.8,0.2", "--seed", "0"]) == 0
    assert out.read_text() == (MANIFESTS / "chest_xray_kermany.csv").read_text()
