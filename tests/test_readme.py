"""The README's commands stay true: CI runs exactly the README's test command."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_test_command() -> str:
    lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd ", "export "))]
    assert len(lines) == 1, lines
    return lines[0]


def test_readme_shows_the_exact_command_ci_runs() -> None:
    assert _ci_test_command() in (ROOT / "README.md").read_text()


def test_ci_requires_real_data() -> None:
    assert "VOL_TRANSFER_REQUIRE_DATA=1" in (ROOT / ".ci/run").read_text()
