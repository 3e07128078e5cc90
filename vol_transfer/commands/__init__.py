"""One module per ``vol-transfer`` subcommand; each defines ``register(subparsers)``.

Every subcommand's ``--help`` ends with an examples section: pass ``**examples(...)`` to
``add_parser``, one command line per argument.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="vol-transfer x", **examples("vol-transfer x --out runs/x"))
    >>> parser.format_help().splitlines()[-2:]
    ['examples:', '  vol-transfer x --out runs/x']
"""

from __future__ import annotations

import argparse
from typing import Any


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that indented lines of a description or epilog are kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks: list[str] = []
        for line in text.splitlines():
            if not line.strip() or line.startswith(" ") or line.endswith(":"):
                blocks.append(indent + line)
            else:
                blocks.append(super()._fill_text(line, width, indent))
        return "\n".join(blocks)


def examples(*commands: str) -> dict[str, Any]:
    """``add_parser`` keywords for an ``examples:`` section listing ``commands`` (one per line)."""
    return {"epilog": "examples:\n" + "\n".join(f"  {command}" for command in commands),
            "formatter_class": HelpFormatter}
