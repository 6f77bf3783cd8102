"""The life of a worker thread, written once: start, stop, check in, rest, contain, end.

In the spirit of fail2ban's JailThread. A worker runs step() until stopped;
step() does one unit of work (or one wait) and returns. Every item a step
handles has its own boundary in the pipeline (a bad file is that file's
outcome); what still escapes a step is contained here: an environment fault
(a folder, the disk, a locked ledger) or a bug pauses this worker with a
growing backoff and the reason in `fault` (shown by `status` and in STATUS=),
and the loop goes on. Only a damaged ledger ends the worker, with `fatal` set,
so the service can exit with a clear message instead of looping.

A worker checks in (heartbeat) at least every CHECK_IN_SECONDS while it rests;
the service pings systemd's watchdog only while every worker has checked in
recently. When a worker ends, for whatever reason, it calls on_exit, which the
service points at its wakeup pipe, so the main loop notices at once: `ended` is
already true when on_exit is called (the thread itself is still alive then).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from gateway.core import logs
from gateway.core.backoff import Backoff
from gateway.core.errors import BUG, DAMAGED, describe, fault_kind

log = logs.get("gateway.worker")

CHECK_IN_SECONDS = 1.0
FAULT_BACKOFF_INITIAL_SECONDS = 1.0
FAULT_BACKOFF_MAX_SECONDS = 60.0
STEADY_SECONDS = 120.0  # without a fault for this long, the next fault is backed off from the start again


class Worker(threading.Thread):
    """Subclasses implement step(); begin() and end() are optional hooks around the loop."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.stop_event = threading.Event()
        self.heartbeat = time.monotonic()
        self.fault: str | None = None  # why the worker is pausing, if it is
        self.fatal: BaseException | None = None  # what ended it, if it could not go on
        self.on_exit: Callable[[Worker], None] | None = None  # given to start()
        self.fault_backoff = Backoff(FAULT_BACKOFF_INITIAL_SECONDS, FAULT_BACKOFF_MAX_SECONDS)
        self._faults = 0
        self._last_fault = 0.0
        self.steady_seconds = STEADY_SECONDS
        self._resting_on: threading.Event | None = None
        self._loop_over = False

    # -- what subclasses provide ------------------------------------------------

    def begin(self) -> None:
        """Set up before the first step (retried, contained like a step, until it succeeds)."""

    def step(self) -> None:
        """Do one unit of work, or wait for some (with rest()). Return to be called again."""
        raise NotImplementedError

    def end(self) -> None:
        """Tear down after the last step (always called once begin() succeeded)."""

    # -- lifecycle ----------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def stop(self) -> None:
        """Ask the loop to end after the item in hand. Idempotent; wakes a rest at once."""
        self.stop_event.set()
        resting = self._resting_on
        if resting is not None:
            resting.set()

    @property
    def ended(self) -> bool:
        """True once the loop is over: from just before on_exit is called, or if the thread is gone."""
        return self._loop_over or (self.ident is not None and not self.is_alive())

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (at most timeout seconds). A worker never started is already done."""
        if self.ident is None:
            return
        super().join(timeout)

    def check_in(self) -> None:
        self.heartbeat = time.monotonic()

    def rest(self, seconds: float, event: threading.Event | None = None) -> bool:
        """Wait up to seconds, or until event (default: stop) is set, checking in as it goes.

        Return True if the event was set. stop() cuts the rest short whatever the event.
        """
        event = event or self.stop_event
        deadline = time.monotonic() + seconds
        self._resting_on = event
        try:
            while not self.stop_event.is_set():
                self.check_in()
                now = time.monotonic()
                if now >= deadline:
                    return False
                if event.wait(min(deadline - now, CHECK_IN_SECONDS)):
                    return True
            return event.is_set()
        finally:
            self._resting_on = None

    def health_problem(self, within: float) -> str | None:
        """Why this worker is not healthy, or None: ended, silent for longer than within, or pausing."""
        if self.ended:
            return f"{self.name} has stopped"
        silent = time.monotonic() - self.heartbeat
        if silent > within:
            return f"{self.name} has not checked in for {silent:.0f}s"
        return None

    def start(self, on_exit: Callable[[Worker], None] | None = None) -> None:
        """Start the thread; on_exit is called (from it) when it ends, for whatever reason."""
        self.on_exit = on_exit
        super().start()

    def run(self) -> None:
        began = type(self).begin is Worker.begin  # nothing to set up: end() is due whenever the thread ran
        try:
            while not self.stop_event.is_set():
                self.check_in()
                try:
                    if not began:
                        self.begin()
                        began = True
                    else:
                        self.step()
                except Exception as error:  # the last boundary: nothing that escapes a step ends the thread
                    if not self._contain(error):
                        return
                else:
                    self._steady()
        finally:
            try:
                if began:
                    self.end()
            finally:
                self._loop_over = True
                if self.on_exit is not None:
                    self.on_exit(self)

    def _steady(self) -> None:
        """A step went through: the fault is over. The backoff starts again only once no fault came back for
        steady_seconds, so a fault that returns at every other step (a full disk that lets one step through)
        is still backed off more and more, not logged every second or two."""
        if self.fault is not None:
            log.info("worker.resumed", worker=self.name, after=self.fault)
            self.fault = None
        if self._faults and time.monotonic() - self._last_fault >= self.steady_seconds:
            self._faults = 0

    def _contain(self, error: Exception) -> bool:
        """Pause after a fault that escaped a step; return False if the worker cannot go on."""
        kind = fault_kind(error)
        if kind == DAMAGED:  # the service turns this into LedgerDamaged (exit 2), naming the file
            self.fatal = error
            log.error("worker.ledger_damaged", worker=self.name, error=describe(error))
            return False
        self._faults += 1
        self._last_fault = time.monotonic()
        delay = self.fault_backoff.delay(self._faults)
        self.fault = describe(error)
        if kind == BUG:
            log.error(
                "worker.fault",
                worker=self.name,
                error=self.fault,
                retry_in=round(delay, 2),
                exc_info=(type(error), error, error.__traceback__),
                detail="an unexpected error; the worker pauses and goes on",
            )
        else:
            log.error(
                "worker.paused",
                worker=self.name,
                error=self.fault,
                retry_in=round(delay, 2),
                detail="resumes by itself once the cause is fixed",
            )
        self.rest(delay)
        return True
