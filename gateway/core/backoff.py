"""The retry policy: exponential backoff with jitter, and the gate the upload workers share.

One failure is backed off once. For uploads the delay is decided by the Gate
(the CaiaSoft endpoint's state, shared by every upload worker) and that one
delay is applied twice over: the gate stays closed for it, and the file is due
again when the gate reopens, so it keeps its place in the queue. There is no
second, per-file backoff on top. The number of failures the delay grows with
is the larger of the endpoint's consecutive failures and the file's own
attempts, so a file that fails alone (the endpoint answering others) still
waits longer each time.

Retry instants are kept on a SteadyClock, not the wall clock: the ledger's
next_attempt_at (uploads, placing, leases) is wall time as it was when the
process started plus the monotonic time since, so a wall-clock step while the
service runs (NTP, an admin, a VM restored) moves no wait at all. Waits left by an
earlier run are capped at backoff_max_seconds when the service starts
(ledger.files.cap_waits, from recovery), so a step between two runs delays nothing
beyond that either.

Every retry in the gateway waits as decided here: uploads and `send` (Gate),
placing a file (pipeline), SFTP reconnects (sources/sftp.py), the NCIP relay,
alert delivery, a worker's pause after a fault (worker.py) and recovery at start
(service.py). Each failure has one owner: a lost SFTP server is backed off by
its reconnecting, and the collector reports it without pausing on top of it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core import logs

log = logs.get("gateway.backoff")


class SteadyClock:
    """Seconds on the wall clock's scale that only the monotonic clock moves.

    Its reading is the wall time when it was made plus the monotonic time since:
    the instants retries are scheduled at (see the module's docstring). It never
    steps, so a wait scheduled on it lasts what it was meant to whatever the wall
    clock does meanwhile. It is not a time to show anyone: after a step it is not
    what the wall clock says.
    """

    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic):
        self._monotonic = monotonic
        self._offset = wall() - monotonic()

    def __call__(self) -> float:
        return self._offset + self._monotonic()


STEADY = SteadyClock()  # this process's: every retry instant in the ledger is written and compared on it


@dataclass
class Backoff:
    """Exponential backoff with jitter, capped; a server's Retry-After wins if longer."""

    initial: float
    maximum: float
    random: Callable[[], float] = random.random

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the given number of consecutive failures (1 = first)."""
        base = min(self.maximum, self.initial * 2 ** min(max(failures - 1, 0), 62))
        delay: float = base / 2 + self.random() * base / 2
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay


class Gate:
    """Shared by the upload workers of one CaiaSoft connection: one backoff and one pause for its endpoint.

    A transient failure closes the gate for every worker of the connection (CaiaSoft is down for
    all of them); a 401/403 pauses them all; any success reopens it. Another connection has a
    gate of its own, so its workers go on. name is the connection's, for the log.
    """

    def __init__(self, settings: Any, clock: Callable[[], float] = time.monotonic, name: str = "default"):
        self.name = name
        self.backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)
        self.auth_pause = settings.auth_pause_seconds
        self.clock = clock
        self.failures = 0
        self.paused_reason: str | None = None
        self.problem: str | None = None  # why calls fail, while they keep failing (for alerts and metrics)
        self._not_before = 0.0
        self._lock = threading.Lock()

    def wait_seconds(self) -> float:
        return max(self._not_before - self.clock(), 0.0)

    def wait_open(self) -> None:
        """Block until the gate reopens: for `send`, which tries again in the foreground and has no worker
        to rest in (workers rest for wait_seconds(), so a stop cuts the wait short)."""
        time.sleep(self.wait_seconds())

    def failed(self, retry_after: float | None, attempts: int = 0, reason: str | None = None) -> float:
        """A transient failure; return the seconds until the next try (for the gate and the file alike).

        Workers that fail together while the gate is open count once.
        """
        with self._lock:
            self.problem = reason or "CaiaSoft did not answer"
            now = self.clock()
            if self._not_before <= now or not self.failures:
                self.failures += 1
            delay = self.backoff.delay(max(self.failures, attempts), retry_after)
            self._not_before = max(self._not_before, now + delay)
            return self._not_before - now

    def pause(self, reason: str) -> None:
        with self._lock:
            first = self.paused_reason is None or self.wait_seconds() == 0
            self.paused_reason = reason
            self._not_before = self.clock() + self.auth_pause
        if first:
            log.error(
                "upload.paused",
                connection=self.name,
                reason=reason,
                retry_in=self.auth_pause,
                detail="no file is moved to error while paused; fix the key, then wait or reload",
            )

    def succeeded(self) -> None:
        with self._lock:
            self.failures = 0
            self.problem = None
            resumed, self.paused_reason = self.paused_reason, None
        if resumed:
            log.info("upload.resumed", connection=self.name, detail="CaiaSoft accepts the API key again")
