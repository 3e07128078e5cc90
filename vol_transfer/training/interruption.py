"""Stop a training run cleanly on SIGTERM (Slurm preemption, ``kill``) or SIGINT (Ctrl-C).

The signal only raises a flag; the engine finishes the step it is in, writes ``last.pt`` and
raises :class:`~vol_transfer.errors.TrainingInterrupted`, so ``--resume`` continues from that very
iteration instead of the last scheduled checkpoint. A second signal of the same kind is not
deferred (the previous handler is back): a second Ctrl-C stops at once.

Example:
    >>> import os, signal
    >>> with StopOnSignal() as stop:
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     stop.signum == signal.SIGTERM
    True
    >>> signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored on exit
    True
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable, Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    """Context manager: ``signum`` is the first stop signal received inside it (None: none yet).

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, on_signal: Optional[Callable[[int], None]] = None) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._on_signal = on_signal  # also called (in the main thread) with the first signal

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        if first and self._on_signal is not None:
            self._on_signal(signum)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
