"""The service: starts the parts, runs until told to stop, stops them in order.

Threads: one collector per source (inputs), one uploader (output), and the
main thread, which waits on the stop event and does housekeeping. Signal
handlers only set flags. Shutdown: inputs stop first, then the uploader
finishes the file it is sending (or leaves it queued), then the ledger closes.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from gateway import logs, notify
from gateway.caiasoft import Backoff, CaiaSoftClient
from gateway.collector import Collector
from gateway.config import Config
from gateway.errors import AlreadyRunning
from gateway.ledger import Ledger
from gateway.pipeline import Pipeline
from gateway.sources.local import LocalSource

log = logs.get("gateway.service")

HOUSEKEEPING_SECONDS = 5.0
PRUNE_SECONDS = 3600.0
IDLE_POLL_SECONDS = 1.0
JOIN_SECONDS = 60.0


class StateLock:
    """An exclusive lock on state_dir, so two gateways never share one ledger."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def acquire(self) -> "StateLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise AlreadyRunning(f"another gateway (pid {holder}) is using {self.path.parent}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class Uploader(threading.Thread):
    """Takes due files from the ledger, one at a time, oldest first, and sends them."""

    def __init__(self, pipeline: Pipeline, clock: Callable[[], float] = time.time):
        super().__init__(name="uploader", daemon=True)
        self.pipeline = pipeline
        self.stop_event = threading.Event()
        self.clock = clock
        self.wake = threading.Event()
        self.heartbeat = time.monotonic()
        settings = pipeline.config.caiasoft
        self.backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)
        self.auth_pause = settings.auth_pause_seconds
        self.paused_reason: str | None = None

    def stop(self) -> None:
        """Ask the loop to end after the upload in hand (idempotent)."""
        self.stop_event.set()
        self.wake.set()

    def run(self) -> None:
        failures = 0
        ledger = self.pipeline.ledger
        while not self.stop_event.is_set():
            self.heartbeat = time.monotonic()
            self.wake.clear()
            row = ledger.take_next(self.clock())
            if row is None:
                due = ledger.next_due_at()
                wait = IDLE_POLL_SECONDS if due is None else min(max(due - self.clock(), 0.01), IDLE_POLL_SECONDS)
                self.wake.wait(wait)
                continue
            outcome = self.pipeline.upload(row)
            if outcome.verdict == "transient":
                failures += 1
                self.stop_event.wait(self.backoff.delay(failures, outcome.retry_after))
            elif outcome.verdict == "paused":
                self._pause(outcome.reason)
            else:
                failures = 0
                if self.paused_reason:
                    log.info("upload.resumed", detail="CaiaSoft accepts the API key again")
                    self.paused_reason = None

    def _pause(self, reason: str) -> None:
        self.paused_reason = reason
        log.error("upload.paused", reason=reason, retry_in=self.auth_pause,
                  detail="no file is moved to error while paused; fix the key, then wait or restart")
        self.stop_event.wait(self.auth_pause)


class Service:
    def __init__(self, config: Config):
        self.config = config
        self.stop_event = threading.Event()
        self._signals = 0

    def request_stop(self, signum: int | None = None, frame=None) -> None:
        """Signal handler: the first call asks for a clean stop, the second exits at once."""
        self._signals += 1
        if self._signals > 1:
            os._exit(1)
        self.stop_event.set()

    def run(self) -> int:
        """Run until stopped. Return the exit code."""
        lock = StateLock(self.config.paths.lock_file).acquire()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        ledger = Ledger(self.config.paths.database)
        client = CaiaSoftClient(self.config.caiasoft, self.config.api_key)
        uploader: Uploader | None = None
        collectors: list[Collector] = []
        try:
            for warning in self.config.warnings:
                log.warning("config.warning", detail=warning)
            pipeline = Pipeline(self.config, ledger, client)
            pipeline.recover()
            uploader = Uploader(pipeline)
            pipeline.on_queued = uploader.wake.set
            uploader.start()
            for settings in self.config.sources:
                collector = Collector(LocalSource(settings), settings.settle_seconds, pipeline)
                collector.start()
                collectors.append(collector)
            log.info("service.started", sources=[s.name for s in self.config.sources],
                     caiasoft=self.config.caiasoft.base_url, pid=os.getpid())
            notify.send("READY=1")
            self._housekeeping(pipeline, collectors, uploader)
        finally:
            self.stop_event.set()
            notify.send("STOPPING=1")
            for collector in collectors:  # inputs first: no new files are taken
                collector.stop()
            for collector in collectors:
                collector.join(JOIN_SECONDS)
            if uploader is not None:  # then the output, after the upload in hand
                uploader.stop()
                uploader.join(JOIN_SECONDS)
            client.close()
            ledger.set_meta("service", "null")
            ledger.close()
            lock.release()
            log.info("service.stopped")
        return 0

    def _housekeeping(self, pipeline: Pipeline, collectors: list[Collector], uploader: Uploader) -> None:
        """Until stopped: prune old archive days, publish the service's state for `status`."""
        next_prune = 0.0
        while True:
            now = time.time()
            if now >= next_prune and self.config.archive.retention_days:
                removed = pipeline.archive.prune(self.config.archive.retention_days, dt.date.today())
                if removed:
                    log.info("archive.pruned", days=len(removed), retention_days=self.config.archive.retention_days)
                next_prune = now + PRUNE_SECONDS
            sources = {c.source.name: {"mode": c.source.mode, "problem": c.problem, "healthy": c.source.healthy()}
                       for c in collectors}
            pipeline.ledger.set_meta("service", json.dumps(
                {"pid": os.getpid(), "updated": now, "sources": sources, "paused": uploader.paused_reason}))
            if self.stop_event.wait(HOUSEKEEPING_SECONDS):
                return
