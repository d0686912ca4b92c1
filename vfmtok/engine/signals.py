"""SIGTERM / SIGINT handling of the training loop: finish the step, checkpoint, stop (all ranks after the same step).

A cluster scheduler's SIGTERM (or a first Ctrl-C) sets a flag; the loop checks it after each optimizer step, saves
a checkpoint and returns. A second Ctrl-C stops at once (KeyboardInterrupt). With several processes the flag rides
on the step's existing all-reduce of the logged values (`Trainer`), so every rank stops after the same step with no
extra collective or host sync; a rank that received no signal itself reports SIGTERM.
"""
from __future__ import annotations

import logging
import signal
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """The stop request of one training process.

    Args:
        announce: log a line when a signal arrives (the main process).

    Attributes:
        signum: the signal received, or None. agreed: set by the trainer after each step's all-reduce (several
            processes): some rank had received a signal.
    """

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.signum: int | None = None
        self.agreed = False
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        """The signal handler: remember `signum`; a second SIGINT raises KeyboardInterrupt (stop now)."""
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum
        if self.announce:
            log.warning("received %s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)

    def install(self) -> None:
        """Install `handle` for SIGTERM and SIGINT (no-op outside the main thread, where Python refuses handlers)."""
        try:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self.handle)
        except ValueError:  # not in the main thread: no signal handling
            self._previous = {}

    def uninstall(self) -> None:
        """Restore the handlers that `install` replaced."""
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous = {}

    def local_flag(self) -> float:
        """1.0 when this process received a signal, else 0.0 (the value this rank adds to the step's all-reduce)."""
        return float(self.signum is not None)

    def after_step(self, world_size: int) -> int | None:
        """The signal to stop on after the step just completed, or None (no tensor, collective or sync).

        One process: the handler's flag. Several: `agreed` (set from the step's all-reduce), reporting this rank's
        signal or SIGTERM.
        """
        if world_size == 1:
            return self.signum
        if not self.agreed:
            return None
        return self.signum or int(signal.SIGTERM)
