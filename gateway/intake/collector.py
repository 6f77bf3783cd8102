"""The collector: one thread per source, finding settled files and handing them to admission.

It knows nothing about how a source lists or moves files (that is the Source
protocol); it only decides when to look and when a file is ready.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.archive import aftertake
from gateway.archive.placing import Placing
from gateway.core import logs
from gateway.core.errors import SourceUnavailable, describe
from gateway.core.states import CHANGED_AFTER_TAKE
from gateway.core.worker import Worker
from gateway.intake.admission import Admission
from gateway.intake.readiness import TAIL_BYTES, ReadyCheck, Settler
from gateway.sources.base import Entry, Source
from gateway.sources.folder import FolderReplaced

log = logs.get("gateway.collector")

MAX_WAIT_SECONDS = 1.0  # between full scans, the settling files are looked at again at least this often
FAILED_CLAIM_RETRY_SECONDS = 60.0
CLAIM_BATCH = 64  # files claimed with one pair of ledger commits
FIRST_CLAIM_BATCH = 8  # the first batch of a look is small, so the upload workers start while the rest is claimed
SHOWN_CLAIM_FAILURES = 10  # files that cannot be taken, listed by `status` per source
STALL_SECONDS = 300.0  # a collector silent this long is shown stuck (a listing or read that does not return)


def claim_hint(error: Exception, state_dir: Path | None = None) -> str:
    """What to fix when a file cannot be moved out of its source folder into state_dir/work/."""
    if not isinstance(error, OSError):
        return "the file is left in its source; see the error above"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the filesystem of state_dir (or of the source) is full: free space; taken again by itself"
    in_state_dir = (
        state_dir is not None and isinstance(error.filename, str) and Path(error.filename).is_relative_to(state_dir)
    )
    if error.errno == errno.EROFS:
        return (
            f"{'state_dir' if in_state_dir else 'the source folder'} is on a read-only filesystem: under "
            "systemd, a folder not in the unit's ReadWritePaths= (add it with the install's --writable-path or "
            "--print-folder; `caiasoft-gateway check --as-service` names it), else remount it read-write; "
            "taken again by itself"
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        if in_state_dir:
            return "the service user cannot write state_dir/work/: fix its owner or mode; taken again by itself"
        return (
            "the service user needs read permission on the file and write permission on its folder "
            "(e.g. through ALEPH's group); taken again by itself"
        )
    return "taken again by itself once the cause is fixed"


class Collector(Worker):
    def __init__(
        self,
        source: Source,
        settle_seconds: float,
        admission: Admission,
        placing: Placing,
        clock: Callable[[], float] = time.monotonic,
        grace_seconds: float = 300.0,
        marker_mode: bool = False,
        keep_original_seconds: float = 0.0,
        stall_seconds: float = STALL_SECONDS,
        state_dir: Path | None = None,
    ):
        super().__init__(name=f"collector-{source.name}")
        self.source = source
        self.admission = admission
        self.ledger = admission.ledger
        self.placing = placing  # a finished file's sidecar notes an original that changed after the take
        self.state_dir = state_dir  # named in the hint when a file cannot be taken
        self.clock = clock
        self.settler = Settler(settle_seconds, trust_mtime=source.trust_mtime, clock=clock)
        self.ready_check = ReadyCheck(source, self.settler, grace_seconds, TAIL_BYTES, marker_mode)
        self.problem: str | None = None
        self.claim_failures: dict[str, str] = {}  # name -> why it cannot be taken (shown by `status`)
        self._wake = threading.Event()
        self._failed: dict[str, float] = {}  # name -> when a claim last failed (e.g. permission)
        self._to_admit: list[int] = []  # moved into work/, not yet validated (a ledger fault interrupted it)
        self._next_scan = 0.0
        self._held: set[tuple[str, int, float]] = set()  # (origin, size, mtime) taken, original still there
        self.keep_original_seconds = keep_original_seconds
        self.stall_seconds = stall_seconds

    def current_problem(self) -> str | None:
        """Why this source is not taking files now, for `status`, STATUS= and alerts: its reported problem, or
        that the collector has been silent for longer than stall_seconds (blocked in the source: a hung
        mount), which is never shown as ok."""
        if self.problem:
            return self.problem
        silent = time.monotonic() - self.heartbeat
        if self.is_alive() and silent > self.stall_seconds:
            return (
                f"stuck: no progress for {silent:.0f}s (a listing or read of {self.source.location} does not "
                "return; check the mount)"
            )
        return None

    def begin(self) -> None:
        self.source.start(self._wake.set)
        log.info("source.started", source=self.source.name, mode=self.source.mode)

    def end(self) -> None:
        self.source.stop()
        log.info("source.stopped", source=self.source.name)

    def step(self) -> None:
        if self._to_admit:  # a batch in work/ whose validation a ledger fault interrupted
            self.admission.admit_many(self._to_admit)
            self._to_admit = []
        self._wake.clear()
        now = self.clock()
        if now >= self._next_scan:
            entries = self._scan()
            self._next_scan = now + self.source.scan_interval
        else:
            entries = self._look()
        wait = min(self._next_scan - self.clock(), MAX_WAIT_SECONDS)
        ready: list[Entry] = []
        batch = FIRST_CLAIM_BATCH
        for entry in sorted(entries, key=lambda e: (e.mtime, e.name)):
            if self.stopping:
                break
            hint = self._consider(entry)
            if hint is None:
                ready.append(entry)
            elif hint > 0:
                wait = min(wait, hint)
            if len(ready) == batch:  # a full batch goes at once: a big backlog starts quickly
                self._take(ready)
                ready, batch = [], CLAIM_BATCH
        if ready and not self.stopping:
            self._take(ready)
        self.rest(max(wait, 0.01), self._wake)

    def _scan(self) -> list[Entry]:
        try:
            self._release_finished()  # first: a file removed now is not listed, then looked at
            entries = self.source.scan()
        except OSError as error:
            self._report(self._unreadable(error))
            return []
        self._report(None)
        self._held = self.ledger.files.held(self.source.name)
        entries = self._unheld(entries)
        names = {entry.name for entry in entries}
        self.settler.keep_only(names)
        self.ready_check.keep_only(names)
        self._failed = {name: when for name, when in self._failed.items() if name in names}
        self.claim_failures = {name: why for name, why in self.claim_failures.items() if name in names}
        return entries

    def _look(self) -> list[Entry]:
        """The files the source hinted at and those still settling, as they are now. A source that cannot be
        read is reported as by a scan, not a fault of this worker: a lost SFTP server is backed off once, by
        its own reconnecting (gateway.core.backoff), not by the worker's pause on top of it."""
        try:
            return self._unheld(self.source.look(self.source.hints() | set(self.settler.pending())))
        except OSError as error:
            self._report(self._unreadable(error))
            return []

    def _unreadable(self, error: OSError) -> str:
        if isinstance(error, FolderReplaced):  # says itself what happened and that the source is paused
            return str(error)
        return f"cannot list {self.source.location}: {describe(error)}"

    @property
    def originals_kept(self) -> int:
        """Files taken whose original is still in the source (removed once sent and unchanged)."""
        return len(self._held)

    def _unheld(self, entries: list[Entry]) -> list[Entry]:
        """Without the originals taken earlier and still in the source, unchanged: never taken twice."""
        return [entry for entry in entries if (entry.origin, entry.size, entry.mtime) not in self._held]

    def _release_finished(self) -> None:
        """Remove (or move) originals whose outcome is known, unless they changed after they were taken
        (then they stay, and are taken again whole). A failure is retried on the next scan."""
        ledger = self.ledger
        for row in ledger.files.to_release(self.source.name, time.time() - self.keep_original_seconds):
            try:
                released = self.source.release(aftertake.taken(row))
            except OSError as error:
                if isinstance(error, SourceUnavailable):
                    raise
                log.error(
                    "remote.cleanup_failed",
                    source=self.source.name,
                    file=row.name,
                    origin=row.origin,
                    error=describe(error),
                    detail="retried on the next scan; the file is not taken again meanwhile",
                )
                continue
            if released.changed_size is not None and not (row.reason or "").startswith(CHANGED_AFTER_TAKE):
                aftertake.log_changed(row, released.changed_size, "before removing the original")
                self.placing.note_changed(row, released.changed_size)
            ledger.files.released(row.id)
            log.info(
                "remote.cleaned_up" if self.source.keeps_originals else "original.cleaned_up",
                source=self.source.name,
                file=row.name,
                origin=row.origin,
                done=released.done,
            )

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
        self.check_in()
        for entry in entries:
            self.settler.forget(entry.name)
            self.ready_check.changed(entry.name)
        taken, failures = self.admission.claim(self.source, entries)
        self._to_admit = taken
        self._held = self.ledger.files.held(self.source.name)
        for entry in entries:
            self._failed.pop(entry.name, None)
            self.claim_failures.pop(entry.name, None)
        for entry, error in failures:
            if isinstance(error, FolderReplaced):
                self._report(str(error))
                continue
            if isinstance(error, SourceUnavailable):  # the source went away: taken again once it is back
                self._report(f"cannot take files from {self.source.location}: {error}")
                continue
            self._failed[entry.name] = self.clock()
            if len(self.claim_failures) < SHOWN_CLAIM_FAILURES:
                self.claim_failures[entry.name] = f"cannot be taken: {describe(error)}"
            log.error(
                "file.claim_failed",
                source=self.source.name,
                file=entry.name,
                error=describe(error),
                hint=claim_hint(error, self.state_dir),
                retry_in=FAILED_CLAIM_RETRY_SECONDS,
            )
        self.admission.admit_many(taken)
        self._to_admit = []

    def _report(self, problem: str | None) -> None:
        if problem != self.problem:
            if problem:
                log.error("source.problem", source=self.source.name, problem=problem)
            else:
                if self.problem:
                    log.info("source.recovered", source=self.source.name)
            self.problem = problem
