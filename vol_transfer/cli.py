"""The ``vol-transfer`` command. Subcommands only parse arguments and delegate.

Each module in :mod:`vol_transfer.commands` defines ``register(subparsers)`` which adds one
subcommand (with ``set_defaults(handler=...)``); this file discovers them, so adding a command
never edits this file.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys
import traceback
from typing import Sequence

from vol_transfer import __version__
from vol_transfer import commands
from vol_transfer.console import configure_console
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


def split_debug(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """``--debug`` anywhere before a ``--`` → (True, the other arguments in order).

    >>> split_debug(["infer", "x.nii.gz", "--debug", "--out", "p"])
    (True, ['infer', 'x.nii.gz', '--out', 'p'])
    """
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    return debug, [a for a in argv[:end] if a != "--debug"] + argv[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    debug, argv = split_debug(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.debug = debug
    configure_console(debug)  # library messages (logging) → stderr, as plain lines
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 1
    try:
        result = handler(args)
    except VolTransferError as error:
        if args.debug:
            traceback.print_exc()
            for line in error.details:
                print(f"  - {line}", file=sys.stderr)
        print(f"error: {error.message}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        if error.errno not in _DISK_ERRNOS:  # a full or read-only disk met outside an atomic write
            raise
        if args.debug:
            traceback.print_exc()
        from vol_transfer.io.atomic import write_error

        print(f"error: {write_error(error.filename or 'output', error).message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the outputs written so far are complete; rerun with --resume (train, infer) to continue",
              file=sys.stderr)
        return 130
    return int(result or 0)


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


if __name__ == "__main__":
    sys.exit(main())
