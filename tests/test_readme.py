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


def _readme_commands() -> list[str]:
    """Every command line of the README's bash blocks (continuations joined, comments dropped)."""
    import re

    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(line)
    return commands


def test_readme_commands_run_in_a_fresh_shell_and_parse() -> None:
    """After the install line, every vol-transfer call names the venv's executable (no activation needed),
    parses with today's options, and the recipes and manifests it names exist."""
    import shlex

    from vol_transfer.cli import build_parser

    calls = [c for c in _readme_commands() if "vol-transfer" in c and not c.startswith("python3 -m venv")]
    assert len(calls) >= 8
    parser = build_parser()
    for command in calls:
        words = shlex.split(command)
        assert words[0] in (".venv/bin/vol-transfer", ".venv/bin/torchrun"), command
        if words[0] == ".venv/bin/vol-transfer":
            parser.parse_args(words[1:])  # an unknown option or subcommand exits here
        for word in words:
            if word.startswith(("recipes/", "data_manifests/")):
                assert (ROOT / word).is_file(), f"{command}: {word} does not exist"
