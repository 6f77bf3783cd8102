"""Placing a file CaiaSoft has answered: answered -> archiving/refusing -> archived/refused.

Placing is the one component that puts answered files in the archive or the error
folder; uploads and intake only record the answer, recovery only hands unfinished
placements back. Every placing is a batch (of one, or of what the finisher was
handed) and takes the same steps:
  1. the name in the archive or error folder is reserved (the empty sidecar, see
     archive.Folder.choose) and recorded in the ledger, one commit for the batch;
  2. the sidecar is written and synced, then the file is linked in beside it;
  3. each day folder the batch touched is synced, once;
  4. only then is the work name removed and the row archived or refused.
A crash anywhere leaves the answer durable and the row answered, archiving or
refusing: recovery hands it back here, and the steps, taken again, finish it.

A folder that cannot be written (permissions, a full disk, a file where a day
folder should be) leaves the row waiting with the reason and a backoff, tried
again by the Placer (archive.workers); a file that cannot be placed for a reason
of its own is marked stuck, shown by `status`. Ledger faults reach the worker,
which pauses.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway import __version__
from gateway.archive import aftertake
from gateway.archive.folders import Folder
from gateway.core import logs
from gateway.core.backoff import Backoff
from gateway.core.errors import BUG, describe, fault_kind
from gateway.core.files import fsync_dir
from gateway.core.names import printable
from gateway.core.states import FileState, Verdict
from gateway.monitor.events import NO_EVENTS, Events
from gateway.state.filerow import iso
from gateway.state.itemindex import is_denied, sidecar_records
from gateway.state.ledger import FileRow, Ledger

log = logs.get("gateway.pipeline")  # its lines were always the pipeline's: scripts filter on the logger

SIDECAR_RECORDS = 10_000  # records listed in one sidecar; all are counted, and all are in the ledger
_FULL = (errno.ENOSPC, errno.EDQUOT)
_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)
_T = TypeVar("_T")


def folder_hint(error: OSError) -> str:
    """What an admin should look at, for an error writing a folder."""
    if error.errno in _FULL:
        return "the filesystem is full: free space there; the gateway resumes by itself"
    if error.errno in _PERMISSION:
        return "the service user cannot write there: fix the owner or mode; the gateway resumes by itself"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is where a folder should be: move it away; the gateway resumes by itself"
    return "fix the folder; the gateway tries again by itself"


@dataclass(frozen=True)
class _Put:
    """A row whose sidecar is written and whose file is at final; what is left to close it."""

    row: FileRow
    final: Path
    in_work: bool  # the work name is still there (a link): removed once final's folder is synced
    synced: bool = False  # nothing to sync (a lost file: neither copy exists)


class Placing:
    """Places answered files in the archive (accepted) or the error folder (refused).

    on_failed is called when a placing failed for a fault of the folder (the Placer
    then tries the row again once its backoff has passed).
    """

    def __init__(
        self,
        ledger: Ledger,
        archive: Folder,
        errors: Folder,
        work_dir: Path,
        backoff: Backoff,
        clock: Callable[[], float] = time.time,
        events: Events = NO_EVENTS,
        on_failed: Callable[[], None] = lambda: None,
    ):
        self.ledger = ledger
        self.archive = archive
        self.errors = errors
        self.work_dir = work_dir
        self.backoff = backoff
        self.clock = clock
        self.events = events
        self.on_failed = on_failed

    def work_path(self, row: FileRow) -> Path:
        return self.work_dir / row.work_name

    def folder_for(self, row: FileRow) -> Folder:
        return self.archive if row.accepted else self.errors

    def place(self, row: FileRow) -> Path | None:
        """Put one answered file in its folder; return where, or None if it waits, is stuck or was placed
        by someone else meanwhile."""
        return self.place_many([row]).get(row.id)

    def place_many(self, rows: list[FileRow]) -> dict[int, Path]:
        """Place rows (answered, or archiving/refusing after an interruption) in one batch: their names
        recorded in one commit, each day folder synced once. Return where each placed row went, by id.

        Each row is its own fault boundary (see _contained): one that cannot be placed now
        waits or is stuck, and the others are placed. Ledger errors propagate (the worker
        pauses; the answers are durable).
        """
        put = [done for row in self._reserve(rows) for done in [self._contained(row, self._put, row)] if done]
        failed: dict[Path, OSError] = {}
        for folder in {done.final.parent for done in put if not done.synced}:
            try:
                fsync_dir(folder)
            except OSError as error:  # each row there waits, its file linked in: placed again, it is found there
                failed[folder] = error
        placed = {}
        for done in put:
            final = self._contained(done.row, self._close, done, failed.get(done.final.parent))
            if final is not None:
                placed[done.row.id] = final
        return placed

    def place_due(self) -> bool:
        """Place one row whose placing is due again (after a fault); return False if none was due."""
        row = self.ledger.files.assign_placement()
        if row is None:
            return False
        if self.place(row) is not None and row.problem:
            log.info("file.placed_after_problem", id=row.id, file=row.name, problem=row.problem)
        return True

    def _reserve(self, rows: list[FileRow]) -> list[FileRow]:
        """Rows to place, the answered ones with their reserved names recorded (one commit); an answered
        row placed by someone else meanwhile is left out, its reservation released."""
        answered = {row.id: row for row in rows if row.state == FileState.ANSWERED}
        if not answered:
            return rows
        reserved = [
            (row.id, target)
            for row in answered.values()
            for target in [self._contained(row, self._choose, row)]
            if target is not None
        ]
        try:
            recorded = {row.id: row for row in self.ledger.files.placing_many(reserved)} if reserved else {}
        except BaseException:  # the ledger failed (the worker pauses): the names are free again
            for row_id, target in reserved:
                self._release(answered[row_id], target)
            raise
        for row_id, target in reserved:
            if row_id not in recorded:  # placed by someone else meanwhile (a lease that ran out)
                self._release(answered[row_id], target)
                log.warning(
                    "file.place_skipped",
                    id=row_id,
                    file=answered[row_id].name,
                    detail="placed by someone else meanwhile",
                )
        return [
            recorded[row.id] if row.id in answered else row
            for row in rows
            if row.id not in answered or row.id in recorded
        ]

    def _release(self, row: FileRow, target: Path) -> None:
        """Give back a name reserved for row and not recorded (an empty sidecar left would only cost the
        next file with this name a number; recovery removes what is left at the next start)."""
        try:
            self.folder_for(row).remove_sidecar(target)
        except OSError as error:
            log.warning("file.reservation_left", id=row.id, file=row.name, path=str(target), error=describe(error))

    def _choose(self, row: FileRow) -> Path:
        """Reserve a free name for an answered row in today's folder (see archive.Folder.choose)."""
        return self.folder_for(row).choose(row.name, dt.datetime.fromtimestamp(self.clock()))

    def _put(self, row: FileRow) -> _Put:
        """The sidecar, then the file linked in beside it (under the next free name if its own was taken
        meanwhile). The sidecar goes first, so a file never appears without its NAME.json."""
        if row.final_path is None:
            raise AssertionError(f"row {row.id} is {row.state} without a final path")
        folder = self.folder_for(row)
        work, final = self.work_path(row), Path(row.final_path)
        contents = self.contents(row)
        if not work.exists():  # placed before a crash (only the row was left to close), or lost
            if final.exists():
                folder.write_sidecar(final, sidecar(row, final, self.clock(), contents))
                return _Put(row, final, in_work=False)
            log.error(
                "file.lost",
                id=row.id,
                file=row.name,
                expected=str(final),
                detail="neither the work copy nor the final copy exists",
            )
            return _Put(row, final, in_work=False, synced=True)
        folder.write_sidecar(final, sidecar(row, final, self.clock(), contents))
        placed, in_work = folder.put(work, final)
        if placed != final:  # the name was taken meanwhile: the sidecar follows the file
            folder.write_sidecar(placed, sidecar(row, placed, self.clock(), contents))
            folder.remove_sidecar(final)
        return _Put(row, placed, in_work)

    def _close(self, done: _Put, sync_failed: OSError | None) -> Path:
        """Final's folder is synced: the work name can go, and the row is closed."""
        if sync_failed is not None:
            raise sync_failed
        if done.in_work:
            self.work_path(done.row).unlink(missing_ok=True)
        self.ledger.files.finished(done.row.id, done.final)
        self.events.file_finished(done.row, done.final)
        log.info(
            "file.archived" if done.row.state == FileState.ARCHIVING else "file.to_error",
            id=done.row.id,
            source=done.row.source,
            file=done.row.name,
            path=str(done.final),
        )
        return done.final

    def _contained(self, row: FileRow, action: Callable[..., _T], *args: Any) -> _T | None:
        """Run one step of placing row, its fault boundary: a fault of the folder (OSError: permissions,
        space, a file in the way) leaves the row where it is with the reason and a backoff; any other
        error marks it stuck. Ledger errors propagate."""
        folder = self.folder_for(row)
        try:
            return action(*args)
        except LookupError as error:  # placed by someone else meanwhile (a lease that ran out)
            log.warning("file.place_skipped", id=row.id, file=row.name, detail=str(error))
        except OSError as error:
            failures = row.place_failures + 1
            delay = self.backoff.delay(failures)
            log.error(
                "file.place_failed",
                id=row.id,
                file=row.name,
                folder=str(folder.root),
                error=describe(error),
                attempt=failures,
                retry_in=round(delay, 2),
                hint=folder_hint(error),
            )
            self.ledger.files.place_failed(
                row.id, f"cannot place it in {folder.root}: {describe(error)}", self.ledger.db.schedule() + delay
            )
            self.on_failed()
        except Exception as error:
            if fault_kind(error) != BUG:
                raise
            log.error(
                "file.stuck",
                id=row.id,
                file=row.name,
                error=describe(error),
                exc_info=(type(error), error, error.__traceback__),
                detail="the file stays in work/; `status` lists it; it is tried again at the next start",
            )
            self.ledger.files.stuck(row.id, f"stuck in {self.work_path(row)}: it cannot be placed ({describe(error)})")
        return None

    def contents(self, row: FileRow) -> dict[str, Any]:
        """What the file held (records or barcodes, CaiaSoft's answer joined to each), for its sidecar."""
        return sidecar_records(
            row.kind,
            self.ledger.items.records_of(row.id, SIDECAR_RECORDS),
            self.ledger.items.record_count(row.id),
            row.answer_json,
        )

    def note_changed(self, row: FileRow, size_now: int) -> None:
        """A finished file whose original changed after it was taken: its sidecar says so."""
        if row.final_path and Path(row.final_path).exists():
            aftertake.add_note(self.folder_for(row), row, size_now, sidecar(row, Path(row.final_path), self.clock()))


# -- the sidecar: the NAME.json an admin reads beside each file in the archive or error folder --------------


def sidecar(row: FileRow, final: Path, now: float, contents: dict[str, Any] | None = None) -> dict[str, Any]:
    """The NAME.json an admin reads beside a file in the archive or error folder.

    contents (Placing.contents) says what was in the file: its records, or a barcode list's barcodes.
    """
    answer = row.answer_json
    denied = [item for item in answer.get("results") or [] if is_denied(item)] if isinstance(answer, dict) else []
    return {
        "file": final.name,
        "original_name": printable(row.name),  # escaped as in status: reversible with names.unprintable
        "outcome": str(Verdict.ACCEPTED if row.accepted else Verdict.REFUSED),
        "reason": row.reason,
        "source": row.source,
        "connection": row.connection,
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
        "times": {
            "seen": iso(row.seen_at),
            "claimed": iso(row.claimed_at),
            "uploaded": iso(row.uploaded_at),
            "finished": iso(row.finished_at or now),
        },
        "ledger_id": row.id,
        "gateway": f"aleph-caiasoft-gateway {__version__}",
    }
