"""Every user command over every bad input of the corpus (``corpus.py``).

Each run must end in exit code 2 with one line on stderr (``error: <file>: <problem> — <fix>``)
naming the bad file, no traceback, no output written and no input changed. ``data check`` is
the one command that lists its problems first (one per line); its last line is then the
one-line error with the count.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch

from tests.bad_inputs.corpus import CASES, ZSCORE, BadCase, make_workspace
from tests.inference.pointwise import PointwiseNet
from vol_transfer.cli import main
from vol_transfer.transfer.checkpoint import make_metadata, save_checkpoint

# Known gaps in commands owned elsewhere: strict, so a fix turns them into a failure to remove here.
KNOWN_GAPS: dict[tuple[str, str], str] = {}  # (case, command) → why it still fails; empty: none known
RUNS = [pytest.param(case, command, id=f"{case.name}-{command}",
                     marks=[pytest.mark.xfail(reason=KNOWN_GAPS[case.name, command], strict=True)]
                     if (case.name, command) in KNOWN_GAPS else [])
        for case in CASES for command in case.commands]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    net = PointwiseNet(1, 3)
    metadata = make_metadata({"name": "pointwise_test", "in_channels": 1, "num_classes": 3}, ["image"],
                             ["background", "anterior", "posterior"], preprocessing={"intensity": ZSCORE})
    return save_checkpoint(tmp_path_factory.mktemp("checkpoint") / "hippo.pt", net.state_dict(), metadata)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case, command", RUNS)
def test_bad_input_gives_one_line_and_writes_nothing(case: BadCase, command: str, shared_data, checkpoint,
                                                     tmp_path, capsys, caplog, recwarn):
    torch.set_num_threads(1)
    ws = make_workspace(shared_data, tmp_path, checkpoint)
    bad = case.make(ws)
    if case.image_input:
        ws.infer_input = bad
    argv = ws.argv(command)
    before = _snapshot(tmp_path)
    capsys.readouterr()

    code = main(argv)

    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"{' '.join(argv)} exited {code}\n{out}\n{err}"
    assert "Traceback" not in err, err
    error = lines[-1]
    assert error.startswith("error: ") and " — " in error, err
    if command == "check" and len(lines) > 1:
        assert lines[0].endswith("problem(s):") and all(line.startswith("  - ") for line in lines[1:-1]), err
        assert f"{len(lines) - 2} problem(s)" in error, err
        listed = " ".join(lines)
    else:
        assert len(lines) == 1, err
        listed = error
    assert bad.name in listed, err
    for word in case.words:
        assert word in listed, err
    for word in case.absent:
        assert word not in listed, err
    fix = error.rsplit(" — ", 1)[1]
    assert len(fix.split()) >= 3, f"no fix in: {error}"
    # what a user would also see on stderr: library log records (nibabel logs to stderr; pydicom's logger
    # has only a NullHandler) and Python warnings
    assert [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and not r.name.startswith("pydicom")] == []
    assert [str(w.message) for w in recwarn if w.category is not DeprecationWarning] == []
    assert _snapshot(tmp_path) == before, "a file was written or changed"
    assert not ws.outputs()[command].exists(), f"{command} left {ws.outputs()[command]}"
