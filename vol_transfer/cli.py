"""The ``vol-transfer`` command. Subcommands only parse arguments and delegate.

Each module in :mod:`vol_transfer.commands` defines ``register(subparsers)`` which adds one
subcommand (with ``set_defaults(handler=...)``); this file discovers them, so adding a command
never edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from typing import Sequence

from vol_transfer import __version__
from vol_transfer import commands
from vol_transfer.errors import VolTransferError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vol-transfer",
        description="Transfer learning for 3D medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"vol_transfer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 1
    try:
        result = handler(args)
    except VolTransferError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted: outputs written so far are complete; rerun to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
