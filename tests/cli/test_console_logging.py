"""Library modules report through ``logging``; the command shows those messages on stderr as before."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from vol_transfer.console import PACKAGE, ConsoleHandler, configure_console

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "vol_transfer"
# the command layer prints on purpose; a cluster job's wrapper writes to that job's own stdout log
MAY_PRINT = ("commands/", "cli.py", "studies/executors.py")


@pytest.fixture
def package_logger():
    logger = logging.getLogger(PACKAGE)
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def test_the_console_handler_writes_bare_lines_to_the_stderr_of_the_moment(package_logger, capsys):
    configure_console()
    configure_console()  # the command may run several times in one process: still one handler
    assert sum(isinstance(h, ConsoleHandler) for h in package_logger.handlers) == 1
    logging.getLogger("vol_transfer.training.classification").info("train 8 images {'NORMAL': 4}")
    logging.getLogger("vol_transfer.inference.predict").debug("plan: whole volume")
    logging.getLogger("elsewhere").warning("not ours")  # other libraries' loggers are left alone
    captured = capsys.readouterr()
    assert captured.err == "train 8 images {'NORMAL': 4}\n" and captured.out == ""
    configure_console(debug=True)
    logging.getLogger("vol_transfer.inference.predict").debug("plan: whole volume")
    assert capsys.readouterr().err == "plan: whole volume\n"


def test_run_messages_and_lock_notes_go_through_logging(package_logger, caplog, tmp_path):
    from vol_transfer.io.folder_lock import FolderLock
    from vol_transfer.training.logging import RunLogger

    caplog.set_level(logging.INFO, logger=PACKAGE)
    RunLogger(tmp_path, 2).message("iteration 2: loss 0.5")
    RunLogger(tmp_path, 2, enabled=False).message("a non-main rank says nothing")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("vol_transfer.training.logging", logging.INFO, "iteration 2: loss 0.5")]
    assert FolderLock(tmp_path).say.__self__ is logging.getLogger("vol_transfer.io.folder_lock")
    # a warning, so a library user without any logging set-up still sees it (Python's last-resort handler)
    assert FolderLock(tmp_path).say.__name__ == "warning"


def test_library_modules_do_not_print():
    printing = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        if relative.startswith(MAY_PRINT):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{relative}:{node.lineno}")
    assert printing == [], "use logger = logging.getLogger(__name__) instead: " + ", ".join(printing)
