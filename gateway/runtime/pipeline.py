"""The request-file pipeline: claim -> validate -> upload -> answered -> archive or error.

Pipeline moves files between the source, work/, the archive and the error
folder, and records each step in the ledger before the next one starts; the
one other mover is the `retry` command (retry.py), which puts a file from the
error folder back into work/ and hands it to the pipeline. recover() finishes
whatever a crash interrupted (gateway/archive/recovery.py); placing an answered file
is gateway/archive/placing.py, and the sidecar beside it gateway/archive/sidecars.py.

Faults are contained per file, by construction:
  * validating (admit_many): anything that goes wrong reading or judging one
    file refuses that file, with the reason, into the error folder;
  * uploading (send, record): the verdict is recorded before anything else; an
    unexpected error while sending refuses that file (the reason says it may
    have reached CaiaSoft);
  * placing (place): a folder that cannot be written (permissions, a full disk,
    a file where a day folder should be) leaves the row waiting with the reason
    and a backoff, tried again by the Placer; a file that cannot be placed for a
    reason of its own is marked stuck, shown by `status`.
Ledger faults (locked, disk full) are not an item's fault: they reach the
worker, which pauses (worker.Worker).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from gateway.archive import aftertake, recovery
from gateway.archive.folders import Folder
from gateway.archive.placing import Placing
from gateway.config.settings import Settings
from gateway.core import logs
from gateway.core.backoff import Backoff, Gate
from gateway.core.errors import BUG, FileRefused, SourceGone, describe, fault_kind
from gateway.core.files import copy_no_clobber
from gateway.core.names import safe_name
from gateway.core.states import FileState, Verdict
from gateway.intake import validation
from gateway.monitor.events import NO_EVENTS, Events
from gateway.sources.base import Entry, Source
from gateway.state.itemindex import RecordSpool
from gateway.state.ledger import FileRow, Ledger, work_name
from gateway.upload.caiasoft import CaiaSoftClient, Outcome, counts_unreadable, settle_unreadable

log = logs.get("gateway.pipeline")


class Pipeline(Placing):
    """Claim, admit, upload and record each file; placing it comes from Placing (gateway/archive/placing.py)."""

    def __init__(
        self,
        config: Settings,
        ledger: Ledger,
        client: CaiaSoftClient | None,
        clock: Callable[[], float] = time.time,
        on_queued: Callable[[], None] = lambda: None,
        gate: Gate | None = None,
    ):
        self.config = config
        self.ledger = ledger
        self.client = client
        self.clock = clock
        self.on_queued = on_queued
        self.archive = Folder(config.paths.archive_dir)
        self.errors = Folder(config.paths.error_dir)
        self.work_dir = config.paths.work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.gate = gate or Gate(config.caiasoft)  # the one retry policy for uploads (gateway.core.backoff)
        self.place_backoff = Backoff(config.caiasoft.backoff_initial_seconds, config.caiasoft.backoff_max_seconds)
        self.on_place_failed: Callable[[], None] = lambda: None
        self.sources: dict[str, Source] = {}  # by name: where originals that stay after the take are checked
        self.events: Events = (
            NO_EVENTS  # alerts and metrics hear of each finished file and upload (gateway.monitor.monitor)
        )

    # -- intake --------------------------------------------------------------

    def claim(self, source: Source, entries: list[Entry]) -> tuple[list[int], list[tuple[Entry, Exception]]]:
        """Move ready files into work/ and record them (claimed, not yet validated); admit_many() then
        validates and queues them.

        A file whose claim fails for a reason of its own (it cannot be moved, or even
        recorded) is returned with the error and stays in its source; the others go on.
        """
        try:
            row_ids = self.ledger.begin_claims(source.name, entries)
        except Exception as error:
            if fault_kind(error) != BUG:  # the ledger itself: the worker pauses
                raise
            return self._claim_one_by_one(source, entries, error)
        return self._fetch(source, entries, row_ids)

    def _fetch(
        self, source: Source, entries: list[Entry], row_ids: list[int]
    ) -> tuple[list[int], list[tuple[Entry, Exception]]]:
        """Move each recorded file into work/; forget the rows of those that could not be moved."""
        taken: list[int] = []
        dropped: list[int] = []
        moved: list[int] = []
        failures: list[tuple[Entry, Exception]] = []
        results = source.fetch_many(
            [
                (entry, self.work_dir / work_name(row_id, entry.name))  # one folder sync
                for row_id, entry in zip(row_ids, entries, strict=True)
            ]
        )
        for row_id, entry, kept in zip(row_ids, entries, results, strict=True):
            if isinstance(kept, SourceGone):
                dropped.append(row_id)
                log.info("file.vanished", source=source.name, file=entry.name, detail=str(kept))
            elif isinstance(kept, Exception):  # cannot be moved (an OSError: the collector says why), or a bug
                error = kept
                dropped.append(row_id)
                failures.append((entry, error))
                if not isinstance(error, OSError):
                    log.error(
                        "file.claim_failed",
                        source=source.name,
                        file=entry.name,
                        error=describe(error),
                        exc_info=(type(error), error, error.__traceback__),
                    )
            else:
                taken.append(row_id)
                if not kept:
                    moved.append(row_id)
                log.info(
                    "file.claimed",
                    id=row_id,
                    source=source.name,
                    file=entry.name,
                    size=entry.size,
                    original="kept until sent" if kept else "moved",
                )
                _drop_marker(source, entry)
        if dropped:
            self.ledger.forget(*dropped)
        if moved:
            self.ledger.moved_when_taken(*moved)
        return taken, failures

    def _claim_one_by_one(
        self, source: Source, entries: list[Entry], error: Exception
    ) -> tuple[list[int], list[tuple[Entry, Exception]]]:
        """A batch that could not be recorded: claim its files alone, so only the one at fault stays behind."""
        if len(entries) == 1:
            log.error(
                "file.claim_failed",
                source=source.name,
                file=entries[0].name,
                error=describe(error),
                exc_info=(type(error), error, error.__traceback__),
            )
            return [], [(entries[0], error)]
        taken: list[int] = []
        failed: list[tuple[Entry, Exception]] = []
        for entry in entries:
            one_taken, one_failed = self.claim(source, [entry])
            taken += one_taken
            failed += one_failed
        return taken, failed

    def adopt_copy(self, path: Path, source_name: str = "send") -> int:
        """Copy a file given on the command line into work/ and validate it (for `send`)."""
        info = os.stat(path)
        row_id = self.ledger.begin_claim(source_name, path.name, str(path.resolve()), info.st_size, info.st_mtime)
        copy_no_clobber(path, self.work_dir / work_name(row_id, path.name))
        self.ledger.claimed(row_id)
        self.admit(row_id)
        return row_id

    def admit(self, row_id: int) -> None:
        """Validate one claimed file: queue it for upload, or refuse it into error_dir."""
        self.admit_many([row_id])

    def admit_many(self, row_ids: list[int]) -> None:
        """Validate claimed files: queue the valid ones (one commit), refuse the others into error_dir.

        Rows no longer being claimed (admitted by an earlier try) are skipped, so a
        batch that a ledger fault interrupted can be admitted again as a whole.
        """
        if not row_ids:
            return
        valid = []
        spool = RecordSpool(self.ledger)  # what each file holds, indexed by barcode for `find`
        for row in self.ledger.rows(row_ids):
            if row.state not in (FileState.CLAIMING, FileState.CLAIMED):
                continue
            spool.start(row.id)
            found = self._inspect(row, spool)
            if found is None:
                continue
            valid.append((row.id, found.kind, found.sha256, found.size, found.details))
            log.info(
                "file.queued",
                id=row.id,
                source=row.source,
                file=row.name,
                kind=found.kind,
                sha256=found.sha256,
                size=found.size,
            )
        spool.flush()
        if valid:
            self.ledger.queued_many(valid)
            self.on_queued()

    def _inspect(self, row: FileRow, spool: RecordSpool) -> validation.Inspection | None:
        """The file's Inspection, or None after refusing it: the boundary around one file's validation."""
        path = self.work_path(row)
        limits = self.config.intake
        try:
            return validation.inspect(
                path, row.name, limits.max_file_bytes, limits.text_fallback_encoding, on_record=spool.add
            )
        except FileRefused as refusal:
            why = f"refused by the gateway: {refusal.reason}"
        except OSError as error:
            why = f"refused by the gateway: the file cannot be read ({describe(error)})"
        except Exception as error:  # a bug, on this file only: it is set aside, the rest goes on
            why = f"refused by the gateway: it could not be inspected ({describe(error)})"
            log.error(
                "file.inspect_failed",
                id=row.id,
                file=row.name,
                error=describe(error),
                exc_info=(type(error), error, error.__traceback__),
            )
        spool.flush()  # the sidecar names the records, the bad ones too
        try:
            sha256, size = validation.file_digest(path)
        except OSError:
            sha256, size = None, None
        size_now = aftertake.changed_since_take(row, self.sources, "validating")
        if size_now is not None:
            why = aftertake.reason(row, size_now)
        log.warning(
            "file.refused", id=row.id, source=row.source, file=row.name, sha256=sha256, by="gateway", reason=why
        )
        self.place(self.ledger.answered(row.id, Verdict.REFUSED, why, sha256=sha256, size=size))
        return None

    # -- upload --------------------------------------------------------------

    def upload(self, row: FileRow) -> Outcome:
        """Send one 'uploading' row to CaiaSoft, record the answer, place the file. Return the Outcome.

        An original that changed since it was taken is not sent: it is taken again, whole.
        """
        outcome = self.send(row)
        answered = self.record(row, outcome)
        if answered is not None:
            self.place(answered)
        return outcome

    def send(self, row: FileRow) -> Outcome:
        """POST the file and read the answer; never raises (an unexpected error refuses this file)."""
        if self.client is None:
            raise RuntimeError("this pipeline was made without a CaiaSoft client; it cannot upload")
        try:
            size_now = aftertake.changed_since_take(row, self.sources, "before upload")
            if size_now is not None:
                return Outcome(Verdict.REFUSED, aftertake.reason(row, size_now))
            outcome = settle_unreadable(
                self.client.upload(self.work_path(row), safe_name(row.name), row.kind or "text"),
                row.answer_json,
                self.config.caiasoft.unreadable_answer_retries,
            )
            self.events.upload_timed(outcome.elapsed_ms / 1000)
            return outcome
        except Exception as error:
            log.error(
                "upload.failed",
                id=row.id,
                file=row.name,
                error=describe(error),
                exc_info=(type(error), error, error.__traceback__),
            )
            if isinstance(error, OSError) and error.filename == str(self.work_path(row)):
                return Outcome(
                    Verdict.REFUSED,
                    f"the gateway could not open it in work/ ({describe(error)}); it "
                    "was not sent: fix the cause, then `retry`",
                )
            return Outcome(
                Verdict.REFUSED,
                f"the gateway failed while sending it ({describe(error)}); it may "
                "have reached CaiaSoft: check there before `retry`",
            )

    def record(self, row: FileRow, outcome: Outcome) -> FileRow | None:
        """Make the answer durable and tell the gate; return the answered row to place, if any."""
        fields = dict(
            id=row.id,
            source=row.source,
            file=row.name,
            sha256=row.sha256,
            attempt=row.attempts,
            status=outcome.http_status,
            ms=outcome.elapsed_ms,
        )
        if outcome.verdict == Verdict.TRANSIENT:
            delay = self.gate.failed(outcome.retry_after, row.attempts, outcome.reason)
            log.warning("upload.retry", **fields, reason=outcome.reason, retry_in=round(delay, 2))
            self.ledger.requeue(
                row.id,
                outcome.reason,
                self.ledger.schedule() + delay,
                outcome.http_status,
                answer=outcome.answer if counts_unreadable(outcome) else None,
            )
            return None
        if outcome.verdict == Verdict.PAUSED:  # the key or URL is wrong; the file waits, unharmed
            self.gate.pause(outcome.reason)
            self.ledger.requeue_paused(row.id, outcome.reason, outcome.http_status)
            return None
        if outcome.http_status is not None:
            self.gate.succeeded()
        if outcome.verdict == Verdict.ACCEPTED:
            log.info("upload.ok", **fields, denied=len(outcome.denials))
            for item in outcome.denials:
                log.warning(
                    "upload.item_denied", id=row.id, file=row.name, item=item.get("item"), istatus=item.get("istatus")
                )
            verdict = Verdict.ACCEPTED
        else:
            log.warning("upload.refused", **fields, reason=outcome.reason)
            verdict = Verdict.REFUSED
        return self.ledger.answered(
            row.id,
            verdict,
            outcome.reason,
            http_status=outcome.http_status,
            answer=outcome.answer,
            uploaded=outcome.http_status is not None,
        )

    def recover(self) -> dict[str, int]:
        """Finish or resume everything a crash interrupted (gateway.archive.recovery); return what was done, by kind."""
        return recovery.recover(self)


def _drop_marker(source: Source, entry: Entry) -> None:
    """Marker mode: the file is taken, so its marker has served (a marker left behind is only noise)."""
    try:
        source.drop_marker(entry)
    except OSError as error:
        log.warning(
            "marker.not_removed",
            source=source.name,
            file=entry.name,
            error=getattr(error, "strerror", None) or str(error),
        )
