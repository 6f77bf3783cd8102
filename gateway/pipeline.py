"""The request-file pipeline: claim -> validate -> upload -> archive or error.

Pipeline moves files between the source, work/, the archive and the error
folder, and records each step in the ledger before the next one starts; the
one other mover is the `retry` command (retry.py), which puts a file from the
error folder back into work/ and hands it to the pipeline. recover() finishes
whatever a crash interrupted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from gateway import __version__, aftertake, intake, logs
from gateway.archive import Folder
from gateway.caiasoft import Backoff, CaiaSoftClient, Outcome, counts_unreadable, is_denied, settle_unreadable
from gateway.errors import FileRefused, SourceGone
from gateway.files import PARTIAL_GLOB, copy_no_clobber
from gateway.itemindex import RecordSpool, sidecar_records
from gateway.ledger import Ledger, FileRow, work_name
from gateway.names import printable, safe_name
from gateway.settings import Settings
from gateway.sources.base import Entry, Source

log = logs.get("gateway.pipeline")
SIDECAR_RECORDS = 10_000  # records listed in one sidecar; all are counted, and all are in the ledger


class Pipeline:
    def __init__(self, config: Settings, ledger: Ledger, client: CaiaSoftClient | None,
                 clock: Callable[[], float] = time.time, on_queued: Callable[[], None] = lambda: None):
        self.config = config
        self.ledger = ledger
        self.client = client
        self.clock = clock
        self.on_queued = on_queued
        self.archive = Folder(config.paths.archive_dir)
        self.errors = Folder(config.paths.error_dir)
        self.work_dir = config.paths.work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.backoff = Backoff(config.caiasoft.backoff_initial_seconds, config.caiasoft.backoff_max_seconds)
        self.sources: dict[str, Source] = {}  # by name: where originals that stay after the take are checked

    def work_path(self, row: FileRow) -> Path:
        return self.work_dir / row.work_name

    # -- intake --------------------------------------------------------------

    def take(self, source: Source, entries: list[Entry]) -> tuple[list[int], list[tuple[Entry, OSError]]]:
        """Claim ready files from their source into work/, validate them, queue them.

        Two ledger commits for the whole batch: the claims are recorded, the files
        moved, then the valid ones queued together (refused ones go to error_dir).
        Return (row ids taken, [(entry, error)] for files that could not be moved,
        e.g. no permission on the folder); a file that vanished is simply dropped.
        """
        row_ids = self.ledger.begin_claims(source.name, entries)
        taken, dropped, failures, moved = [], [], [], []
        for row_id, entry in zip(row_ids, entries, strict=True):
            try:
                kept = source.fetch(entry, self.work_dir / work_name(row_id, entry.name))
            except SourceGone as gone:
                dropped.append(row_id)
                log.info("file.vanished", source=source.name, file=entry.name, detail=str(gone))
            except OSError as error:
                dropped.append(row_id)
                failures.append((entry, error))
            else:
                taken.append(row_id)
                if not kept:
                    moved.append(row_id)
                log.info("file.claimed", id=row_id, source=source.name, file=entry.name, size=entry.size,
                         original="kept until sent" if kept else "moved")
                _drop_marker(source, entry)
        if dropped:
            self.ledger.forget(*dropped)
        if moved:
            self.ledger.moved_when_taken(*moved)
        self._admit(taken)
        return taken, failures

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
        self._admit([row_id])

    def _admit(self, row_ids: list[int]) -> None:
        valid = []
        limits = self.config.intake
        spool = RecordSpool(self.ledger)  # what each file holds, indexed by barcode for `find`
        for row_id in row_ids:
            row = self.ledger.row(row_id)
            path = self.work_path(row)
            spool.start(row_id)
            try:
                found = intake.inspect(path, row.name, limits.max_file_bytes, limits.text_fallback_encoding,
                                       on_record=spool.add)
            except FileRefused as refusal:
                spool.flush()  # the sidecar names the records, the bad ones too
                sha256, size = intake.file_digest(path)
                size_now = aftertake.changed_since_take(row, self.sources, "validating")
                why = aftertake.reason(row, size_now) if size_now is not None else \
                    f"refused by the gateway: {refusal.reason}"
                log.warning("file.refused", id=row.id, source=row.source, file=row.name, sha256=sha256,
                            by="gateway", reason=why)
                self._finish(row, "refusing", reason=why, sha256=sha256, size=size)
                continue
            valid.append((row_id, found.kind, found.sha256, found.size, found.details))
            log.info("file.queued", id=row.id, source=row.source, file=row.name, kind=found.kind,
                     sha256=found.sha256, size=found.size)
        spool.flush()
        if valid:
            self.ledger.queued_many(valid)
            self.on_queued()

    # -- upload --------------------------------------------------------------

    def upload(self, row: FileRow) -> Outcome:
        """Send one 'uploading' row to CaiaSoft and act on the answer.

        An original that changed since it was taken is not sent: it is taken again, whole.
        """
        if self.client is None:
            raise RuntimeError("this pipeline was made without a CaiaSoft client; it cannot upload")
        size_now = aftertake.changed_since_take(row, self.sources, "before upload")
        if size_now is not None:
            why = aftertake.reason(row, size_now)
            self._finish(row, "refusing", reason=why)
            return Outcome("refused", why)
        outcome = settle_unreadable(self.client.upload(self.work_path(row), safe_name(row.name), row.kind or "text"),
                                    row.answer_json, self.config.caiasoft.unreadable_answer_retries)
        fields = dict(id=row.id, source=row.source, file=row.name, sha256=row.sha256, attempt=row.attempts,
                      status=outcome.http_status, ms=outcome.elapsed_ms)
        if outcome.verdict == "accepted":
            log.info("upload.ok", **fields, denied=len(outcome.denials))
            for item in outcome.denials:
                log.warning("upload.item_denied", id=row.id, file=row.name, item=item.get("item"),
                            istatus=item.get("istatus"))
            self._finish(row, "archiving", reason=outcome.reason, http_status=outcome.http_status,
                         answer=outcome.answer, uploaded=True)
        elif outcome.verdict == "refused":
            log.warning("upload.refused", **fields, reason=outcome.reason)
            self._finish(row, "refusing", reason=outcome.reason, http_status=outcome.http_status,
                         answer=outcome.answer, uploaded=True)
        elif outcome.verdict == "transient":
            delay = self.backoff.delay(row.attempts, outcome.retry_after)
            log.warning("upload.retry", **fields, reason=outcome.reason, retry_in=round(delay, 2))
            self.ledger.requeue(row.id, outcome.reason, self.clock() + delay, outcome.http_status,
                                answer=outcome.answer if counts_unreadable(outcome) else None)
        else:  # paused: the key or URL is wrong; the file waits, unharmed
            self.ledger.requeue(row.id, outcome.reason, self.clock(), outcome.http_status, undo_attempt=True)
        return outcome

    # -- finishing -------------------------------------------------------------

    def _finish(self, row: FileRow, state: str, *, reason: str, http_status: int | None = None,
                answer: Any = None, uploaded: bool = False, sha256: str | None = None,
                size: int | None = None) -> None:
        folder = self.archive if state == "archiving" else self.errors
        target = folder.choose(row.name, dt.datetime.fromtimestamp(self.clock()))
        self._complete(self.ledger.finishing(row.id, state, target, reason=reason, http_status=http_status,
                                             answer=answer, uploaded=uploaded, sha256=sha256, size=size))

    def _complete(self, row: FileRow) -> Path:
        """Write the sidecar, move the work file beside it, close the row.

        The sidecar goes first, so a file never appears in the archive without its
        NAME.json (and the sidecar reserves the name against other writers).
        """
        folder = self.archive if row.state == "archiving" else self.errors
        work = self.work_path(row)
        if row.final_path is None:
            raise AssertionError(f"row {row.id} is {row.state} without a final path")
        final = Path(row.final_path)
        contents = self.contents(row)
        if work.exists():
            folder.write_sidecar(final, sidecar(row, final, self.clock(), contents))
            placed = folder.place(work, final)
            if placed != final:  # the name was taken meanwhile: the sidecar follows the file
                folder.write_sidecar(placed, sidecar(row, placed, self.clock(), contents))
                folder.remove_sidecar(final)
                final = placed
            folder.sync(final)
        elif final.exists():
            folder.write_sidecar(final, sidecar(row, final, self.clock(), contents))
            folder.sync(final)
        else:
            log.error("file.lost", id=row.id, file=row.name, expected=str(final),
                      detail="neither the work copy nor the final copy exists")
        self.ledger.finished(row.id, final)
        log.info("file.archived" if row.state == "archiving" else "file.to_error", id=row.id,
                 source=row.source, file=row.name, path=str(final))
        return final

    def contents(self, row: FileRow) -> dict[str, Any]:
        """What the file held (records or barcodes, CaiaSoft's answer joined to each), for its sidecar."""
        return sidecar_records(row.kind, self.ledger.records_of(row.id, SIDECAR_RECORDS),
                               self.ledger.record_count(row.id), row.answer_json)

    def note_changed(self, row: FileRow, size_now: int) -> None:
        """A finished file whose original changed after it was taken: its sidecar says so."""
        if row.final_path and Path(row.final_path).exists():
            folder = self.archive if row.state == "archived" else self.errors
            aftertake.add_note(folder, row, size_now, sidecar(row, Path(row.final_path), self.clock()))

    # -- after a crash -----------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Finish or resume everything a crash interrupted; return what was done, by kind."""
        done = {"claims_completed": 0, "claims_dropped": 0, "requeued": 0, "finished": 0, "adopted": 0}
        for leftover in self.work_dir.glob(PARTIAL_GLOB):  # half-written copies: the claim is redone
            leftover.unlink()
        self._recover_claims(done)
        for row in self.ledger.in_state("uploading"):
            self.ledger.requeue(row.id, "interrupted by a restart", 0, undo_attempt=False)
            done["requeued"] += 1
        for row in self.ledger.in_state("archiving", "refusing"):
            self._complete(row)
            done["finished"] += 1
        self._adopt_strays(done)
        for row in self.ledger.in_state("claimed"):
            self.admit(row.id)
        if any(done.values()):
            log.info("recovery.done", **done)
        return done

    def _recover_claims(self, done: dict[str, int]) -> None:
        """A claim cut short: complete it if the file reached work/, else forget it (it is still in the source)."""
        local_sources = [source.name for source in self.config.sources if not source.is_sftp]
        self.ledger.release_rows_from_before_kept_originals(local_sources)
        for row in self.ledger.in_state("claiming"):
            if self.work_path(row).exists():  # an original still there is removed once sent, if unchanged
                self.ledger.claimed(row.id)
                done["claims_completed"] += 1
            else:
                self.ledger.forget(row.id)
                done["claims_dropped"] += 1

    def _adopt_strays(self, done: dict[str, int]) -> None:
        """Files in work/ without a row (the ledger was lost): give each a row and its work name."""
        known = self.ledger.known_work_names()
        for path in sorted(self.work_dir.iterdir()):
            if path.name not in known and not path.name.startswith(".") and path.is_file() \
                    and not path.is_symlink():
                name = path.name.split(".", 1)[1] if "." in path.name else path.name
                row_id = self.ledger.adopt(name, path.stat().st_size, str(path))
                path.rename(self.work_dir / work_name(row_id, name))
                done["adopted"] += 1


def _drop_marker(source: Source, entry: Entry) -> None:
    """Marker mode: the file is taken, so its marker has served (a marker left behind is only noise)."""
    try:
        source.drop_marker(entry)
    except OSError as error:
        log.warning("marker.not_removed", source=source.name, file=entry.name,
                    error=getattr(error, "strerror", None) or str(error))


def _iso(moment: float | None) -> str | None:
    return dt.datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds") if moment else None


def sidecar(row: FileRow, final: Path, now: float, contents: dict[str, Any] | None = None) -> dict[str, Any]:
    """The NAME.json an admin reads beside a file in the archive or error folder.

    contents (Pipeline.contents) says what was in the file: its records, or a barcode list's barcodes.
    """
    answer = row.answer_json
    denied = [item for item in answer.get("results") or [] if is_denied(item)] if isinstance(answer, dict) else []
    return {
        "file": final.name,
        "original_name": printable(row.name),  # escaped as in status: reversible with names.unprintable
        "outcome": "accepted" if row.state in ("archiving", "archived") else "refused",
        "reason": row.reason,
        "source": row.source,
        "original_path": printable(row.origin),
        "size": row.size,
        "sha256": row.sha256,
        "kind": row.kind,
        "details": json.loads(row.details) if row.details else None,
        "http_status": row.http_status,
        "caiasoft_answer": answer,
        "denied_items": denied,
        **(contents or {}),
        "attempts": row.attempts,
        "times": {"seen": _iso(row.seen_at), "claimed": _iso(row.claimed_at),
                  "uploaded": _iso(row.uploaded_at), "finished": _iso(row.finished_at or now)},
        "ledger_id": row.id,
        "gateway": f"aleph-caiasoft-gateway {__version__}",
    }
