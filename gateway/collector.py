"""The collector: one thread per source, finding settled files and handing them to the pipeline.

It knows nothing about how a source lists or moves files (that is the Source
protocol); it only decides when to look and when a file is ready.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from gateway import aftertake, logs
from gateway.errors import SourceUnavailable
from gateway.intake import Settler
from gateway.readiness import ReadyCheck
from gateway.pipeline import Pipeline
from gateway.sources.base import Entry, Source

log = logs.get("gateway.collector")

MAX_WAIT_SECONDS = 1.0  # the loop checks in (heartbeat) at least this often
FAILED_CLAIM_RETRY_SECONDS = 60.0
CLAIM_BATCH = 64  # files claimed with one pair of ledger commits


class Collector(threading.Thread):
    def __init__(self, source: Source, settle_seconds: float, pipeline: Pipeline,
                 clock: Callable[[], float] = time.monotonic, grace_seconds: float = 300.0,
                 marker_mode: bool = False, keep_original_seconds: float = 0.0):
        super().__init__(name=f"collector-{source.name}", daemon=True)
        self.source = source
        self.pipeline = pipeline
        self.stop_event = threading.Event()
        self.clock = clock
        self.settler = Settler(settle_seconds, trust_mtime=source.trust_mtime, clock=clock)
        self.ready_check = ReadyCheck(source, self.settler, grace_seconds, pipeline.config.intake.max_file_bytes,
                                      marker_mode)
        self.heartbeat = clock()
        self.problem: str | None = None
        self._wake = threading.Event()
        self._failed: dict[str, float] = {}  # name -> when a claim last failed (e.g. permission)
        self._held: set[tuple[str, int, float]] = set()  # (origin, size, mtime) taken, original still there
        self.keep_original_seconds = keep_original_seconds

    def stop(self) -> None:
        """Ask the loop to end after the file in hand (idempotent)."""
        self.stop_event.set()
        self._wake.set()

    def run(self) -> None:
        try:
            self.source.start(self._wake.set)
            log.info("source.started", source=self.source.name, mode=self.source.mode)
            next_scan = 0.0
            while not self.stop_event.is_set():
                self._wake.clear()
                self.heartbeat = now = self.clock()
                if now >= next_scan:
                    entries = self._scan()
                    next_scan = now + self.source.scan_interval
                else:
                    entries = self._unheld(self.source.look(self.source.hints() | set(self.settler.pending())))
                wait = min(next_scan - self.clock(), MAX_WAIT_SECONDS)
                ready: list[Entry] = []
                for entry in sorted(entries, key=lambda e: (e.mtime, e.name)):
                    if self.stop_event.is_set():
                        break
                    hint = self._consider(entry)
                    if hint is None:
                        ready.append(entry)
                    elif hint > 0:
                        wait = min(wait, hint)
                    if len(ready) == CLAIM_BATCH:  # a full batch goes at once: a big backlog starts quickly
                        self._take(ready)
                        ready = []
                if ready and not self.stop_event.is_set():
                    self._take(ready)
                self._wake.wait(max(wait, 0.01))
        finally:
            self.source.stop()
            log.info("source.stopped", source=self.source.name)

    def _scan(self) -> list[Entry]:
        try:
            self._release_finished()  # first: a file removed now is not listed, then looked at
            entries = self.source.scan()
        except OSError as error:
            self._report(f"cannot list {self.source.location}: {error.strerror or error}")
            return []
        self._report(None)
        self._held = self.pipeline.ledger.held(self.source.name)
        entries = self._unheld(entries)
        names = {entry.name for entry in entries}
        self.settler.keep_only(names)
        self.ready_check.keep_only(names)
        self._failed = {name: when for name, when in self._failed.items() if name in names}
        return entries

    def _unheld(self, entries: list[Entry]) -> list[Entry]:
        """Without the originals taken earlier and still in the source, unchanged: never taken twice."""
        return [entry for entry in entries if (entry.origin, entry.size, entry.mtime) not in self._held]

    def _release_finished(self) -> None:
        """Remove (or move) originals whose outcome is known, unless they changed after they were taken
        (then they stay, and are taken again whole). A failure is retried on the next scan."""
        ledger = self.pipeline.ledger
        for row in ledger.to_release(self.source.name, time.time() - self.keep_original_seconds):
            try:
                released = self.source.release(aftertake.taken(row))
            except OSError as error:
                if isinstance(error, SourceUnavailable):
                    raise
                log.error("remote.cleanup_failed", source=self.source.name, file=row.name, origin=row.origin,
                          error=error.strerror or str(error), detail="retried on the next scan; the file is "
                          "not taken again meanwhile")
                continue
            if released.changed_size is not None and not (row.reason or "").startswith(aftertake.CHANGED):
                aftertake.log_changed(row, released.changed_size, "before removing the original")
                self.pipeline.note_changed(row, released.changed_size)
            ledger.released(row.id)
            log.info("remote.cleaned_up" if self.source.keeps_originals else "original.cleaned_up",
                     source=self.source.name, file=row.name, origin=row.origin, done=released.done)

    def _consider(self, entry: Entry) -> float | None:
        """None if the file is ready to take; otherwise seconds until it might be (0: not soon)."""
        if not self.settler.observe(entry.name, entry.size, entry.mtime):
            self.ready_check.changed(entry.name)
            return self.settler.wait_hint(entry.name)
        hold = self.ready_check.hold(entry)
        if hold is not None:
            return hold
        failed_at = self._failed.get(entry.name)
        if failed_at is not None and self.clock() - failed_at < FAILED_CLAIM_RETRY_SECONDS:
            return 0.0
        return None

    def _take(self, entries: list[Entry]) -> None:
        self.heartbeat = self.clock()
        for entry in entries:
            self.settler.forget(entry.name)
            self.ready_check.changed(entry.name)
        taken, failures = self.pipeline.take(self.source, entries)
        self._held = self.pipeline.ledger.held(self.source.name)
        for entry in entries:
            self._failed.pop(entry.name, None)
        for entry, error in failures:
            if isinstance(error, SourceUnavailable):  # the source went away: taken again once it is back
                self._report(f"cannot take files from {self.source.location}: {error}")
                continue
            self._failed[entry.name] = self.clock()
            log.error("file.claim_failed", source=self.source.name, file=entry.name,
                      error=error.strerror or str(error),
                      hint="the gateway needs write permission on the folder to move files out of it")

    def _report(self, problem: str | None) -> None:
        if problem != self.problem:
            if problem:
                log.error("source.problem", source=self.source.name, problem=problem)
            else:
                if self.problem:
                    log.info("source.recovered", source=self.source.name)
            self.problem = problem
