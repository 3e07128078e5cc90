"""Where the package's log messages go when the ``vol-transfer`` command runs: the console.

Library modules report through ``logger = logging.getLogger(__name__)`` and never print. Used as a
library, the package leaves logging to the application (Python's default shows warnings only).
The command calls :func:`configure_console` once, which shows INFO and above from the
``vol_transfer`` loggers on stderr as bare lines (no level or logger name), written with
``tqdm.write`` so a progress bar on the same terminal is not torn apart.

Example:
    >>> import io, logging
    >>> stream = io.StringIO()
    >>> handler = configure_console(stream=stream)
    >>> logging.getLogger("vol_transfer.example").info("train 8 images")
    >>> logging.getLogger("vol_transfer.example").debug("not shown")
    >>> stream.getvalue()
    'train 8 images\\n'
    >>> logging.getLogger(PACKAGE).removeHandler(handler)
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

PACKAGE = "vol_transfer"


class ConsoleHandler(logging.Handler):
    """Writes each record's message as one line, through ``tqdm.write``, to ``stream`` (default: the
    ``sys.stderr`` of the moment, so a replaced stderr, e.g. a test's capture, is honoured)."""

    def __init__(self, stream: TextIO | None = None, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.stream = stream
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream or sys.stderr)
        except Exception:  # noqa: BLE001 (logging's own contract: never raise from emit)
            self.handleError(record)


def configure_console(debug: bool = False, stream: TextIO | None = None) -> ConsoleHandler:
    """Show the package's INFO messages (DEBUG with ``debug``) on the console; idempotent."""
    level = logging.DEBUG if debug else logging.INFO
    package = logging.getLogger(PACKAGE)
    package.setLevel(level)
    handler = next((h for h in package.handlers if isinstance(h, ConsoleHandler)), None)
    if handler is None or handler.stream is not stream:
        if handler is not None:
            package.removeHandler(handler)
        handler = ConsoleHandler(stream, level)
        package.addHandler(handler)
    handler.setLevel(level)
    return handler
