"""Help that teaches: every subcommand's --help ends with examples; infer's device defaults like train's."""

from __future__ import annotations

import argparse

import pytest

from vol_transfer.cli import build_parser, main


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.append(((*prefix, name), child))
                found.extend(_subcommands(child, (*prefix, name)))
    return found


COMMANDS = _subcommands(build_parser())


def test_every_command_is_covered() -> None:
    names = {path[0] for path, _ in COMMANDS}
    assert {"data", "datasets", "demo", "evaluate", "infer", "recipe", "slices", "study", "train"} <= names
    assert ("recipe", "keys") in {path for path, _ in COMMANDS}


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_help_has_an_examples_section_of_real_command_lines(path, parser) -> None:
    text = parser.format_help()
    assert "examples:" in text.lower(), f"vol-transfer {' '.join(path)} --help has no examples"
    examples = text.lower().split("examples:", 1)[1].strip().splitlines()
    commands = [line.strip() for line in examples if line.strip().startswith(("vol-transfer", "torchrun"))]
    assert commands, text
    assert any(f"vol-transfer {path[0]}" in c or c.startswith("torchrun") for c in commands)


def test_help_prints_through_the_cli(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "examples:" in capsys.readouterr().out


def test_infer_device_defaults_to_auto_like_train() -> None:
    infer = dict(COMMANDS)[("infer",)]
    device = next(a for a in infer._actions if "--device" in a.option_strings)
    assert device.default == "auto" and "auto" in device.help
