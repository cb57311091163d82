"""Stopping a run on a signal: Ctrl-C (SIGINT), SIGTERM (what job schedulers send) and
SIGHUP (a closed terminal or SSH session) all mean "stop", with exit code 128 + signal
(130, 143, 129).

- While the run trains, the **first** signal lets the step in progress finish, saves a
  checkpoint of it and stops. Network calls still in flight get ``NETWORK_GRACE_S`` to
  answer (a healthy server lets the step finish); after that they are cut, the step is
  abandoned and the run stops at its last checkpoint.
- The **second** signal (or the first one while the run is still being built or
  restored) stops now: network calls are cut at once and the steps since the last
  checkpoint are lost — except that a checkpoint being written is finished first, since
  it is what saves them. Whatever still runs ``EXIT_DEADLINE_S`` seconds later (a worker
  stuck in a library call) no longer holds the process: it exits, with the same code.
- A **third** signal exits at once.

A checkpoint is committed by one atomic rename (retrain/checkpoint.py), so even a hard
exit in the middle of one leaves the previous checkpoint whole. Signals that were
ignored when the run started (SIGINT in a background job, SIGHUP under ``nohup``) stay
ignored; handlers are only installed in the main thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from retrain.http import IN_FLIGHT

logger = logging.getLogger(__name__)

NETWORK_GRACE_S = 10.0
EXIT_DEADLINE_S = 4.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# A signal disposition, as signal.signal takes and returns it.
SignalHandler = Callable[[int, FrameType | None], object] | int | None


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on a signal; exit code 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class StopSignals:
    """The signal handlers of one run (a context manager around all of it)."""

    def __init__(self, exit_deadline_s: float = EXIT_DEADLINE_S, network_grace_s: float = NETWORK_GRACE_S) -> None:
        self.exit_deadline_s = exit_deadline_s
        self.network_grace_s = network_grace_s
        # The first stop signal, once one came.
        self.signum: int | None = None
        self.previous: dict[int, SignalHandler] = {}
        self._graceful = False
        self._checkpointing = False
        self._deferred: int | None = None
        self._stopping_now = False
        self._watchdog: threading.Timer | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignals:
        IN_FLIGHT.reset()
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
                    self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
        IN_FLIGHT.reset()

    @contextlib.contextmanager
    def graceful(self) -> Iterator[None]:
        """While training: the first signal asks the loop to stop after this step."""
        self._graceful = True
        try:
            yield
        finally:
            self._graceful = False

    @contextlib.contextmanager
    def checkpointing(self) -> Iterator[None]:
        """While a checkpoint is written: a signal that stops now waits for it."""
        self._checkpointing = True
        try:
            yield
        finally:
            self._checkpointing = False
        if self._deferred is not None:
            self._arm_watchdog(self._deferred)
            raise RunInterrupted(self._deferred)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stopping_now:
            _hard_exit(128 + signum, f"{name} again: exiting now")
        if self._graceful and self.signum is None:
            self.signum = signum
            IN_FLIGHT.cancel_after(self.network_grace_s)
            logger.warning("%s: finishing this step and saving a checkpoint (send it again to stop now)", name)
            return
        self.signum = self.signum or signum
        self._stopping_now = True
        IN_FLIGHT.cancel_now()
        if self._checkpointing:
            # The checkpoint saves the steps since the last one: it is not cut short (the
            # exit deadline starts when it is written; a third signal still exits).
            self._deferred = signum
            logger.warning("%s: stopping once the checkpoint being written is complete", name)
            return
        self._arm_watchdog(signum)
        raise RunInterrupted(signum)

    def _arm_watchdog(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self._watchdog = threading.Timer(self.exit_deadline_s, _hard_exit, (
            128 + signum, f"still stopping {self.exit_deadline_s:g} s after {name}; exiting now"))
        self._watchdog.daemon = True
        self._watchdog.start()


def _hard_exit(code: int, why: str) -> None:
    """End the process now: what is still running cannot be waited for. The last
    complete checkpoint stays valid (it is committed by an atomic rename)."""
    with contextlib.suppress(OSError, ValueError):  # a closed terminal (SIGHUP) cannot be written to
        sys.stdout.flush()
        sys.stderr.write(f"retrain: {why}; resume from the last checkpoint with `retrain --resume <log_dir>`\n")
        sys.stderr.flush()
    os._exit(code)
