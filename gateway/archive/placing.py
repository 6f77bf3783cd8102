"""Placing a file CaiaSoft has answered: answered -> archiving/refusing -> archived/refused.

Mixed into Pipeline. The name in the archive or error folder is reserved and
recorded in the ledger before the file is linked in; the sidecar is written and
synced, then the file is linked in and its day folder synced (once per batch of
files placed together), and only then is the row archived or refused.

A folder that cannot be written (permissions, a full disk, a file where a day
folder should be) leaves the row waiting with the reason and a backoff, tried
again by the Placer; a file that cannot be placed for a reason of its own is
marked stuck, shown by `status`. Ledger faults reach the worker, which pauses.
"""

from __future__ import annotations

import datetime as dt
import errno
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.archive import aftertake
from gateway.archive.folders import Folder
from gateway.archive.sidecars import sidecar
from gateway.core import logs
from gateway.core.backoff import Backoff
from gateway.core.errors import BUG, describe, fault_kind
from gateway.core.files import fsync_dir, place_no_clobber
from gateway.core.states import FileState
from gateway.monitor.events import Events
from gateway.state.itemindex import sidecar_records
from gateway.state.ledger import FileRow, Ledger

log = logs.get("gateway.pipeline")  # its lines were always the pipeline's: scripts filter on the logger

SIDECAR_RECORDS = 10_000  # records listed in one sidecar; all are counted, and all are in the ledger
_FULL = (errno.ENOSPC, errno.EDQUOT)
_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def folder_hint(error: OSError) -> str:
    """What an admin should look at, for an error writing a folder."""
    if error.errno in _FULL:
        return "the filesystem is full: free space there; the gateway resumes by itself"
    if error.errno in _PERMISSION:
        return "the service user cannot write there: fix the owner or mode; the gateway resumes by itself"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is where a folder should be: move it away; the gateway resumes by itself"
    return "fix the folder; the gateway tries again by itself"


class Placing:
    """The placing steps of Pipeline (which sets these attributes)."""

    ledger: Ledger
    archive: Folder
    errors: Folder
    clock: Callable[[], float]
    events: Events
    on_place_failed: Callable[[], None]
    place_backoff: Backoff
    work_dir: Path

    def work_path(self, row: FileRow) -> Path:
        return self.work_dir / row.work_name

    def folder_for(self, row: FileRow) -> Folder:
        return self.archive if row.accepted else self.errors

    def place(self, row: FileRow) -> Path | None:
        """Put an answered file in its folder; return where, or None if it waits or is stuck.

        The boundary around one file's placing: a fault of the folder (OSError:
        permissions, space, a file in the way) leaves the row where it is with the
        reason and a backoff (the Placer tries again); any other error marks it
        stuck. Ledger errors propagate (the worker pauses; the answer is durable).
        """

        def placed() -> Path:
            nonlocal row
            if row.state == FileState.ANSWERED:
                row = self.ledger.placing(row.id, self._reserve(row))
            return self._complete(row)

        return self._contained_place(row, placed)

    def place_many(self, rows: list[FileRow]) -> None:
        """place() for several rows, their final paths recorded in one commit (the finisher's batches)."""
        reserved: list[tuple[int, Path]] = []
        answered = {row.id: row for row in rows if row.state == FileState.ANSWERED}
        for row in rows:
            if row.id not in answered:
                self.place(row)
                continue
            target = self._contained_place(row, functools.partial(self._reserve, row))
            if target is not None:
                reserved.append((row.id, target))
        recorded = self.ledger.placing_many(reserved)
        done = {row.id for row in recorded}
        for row_id, target in reserved:
            if row_id not in done:  # placed by someone else meanwhile: our reservation is not needed
                self.folder_for(answered[row_id]).remove_sidecar(target)
                log.warning(
                    "file.place_skipped",
                    id=row_id,
                    file=answered[row_id].name,
                    detail="placed by someone else meanwhile",
                )
        self._complete_many(recorded)

    def _reserve(self, row: FileRow) -> Path:
        """Reserve the final path of an answered row in its folder (see archive.Folder.choose)."""
        return self.folder_for(row).choose(row.name, dt.datetime.fromtimestamp(self.clock()))

    def _contained_place(self, row: FileRow, action: Callable[[], Path]) -> Path | None:
        """Run one step of placing row: the fault boundary of place() (see there)."""
        folder = self.folder_for(row)
        try:
            return action()
        except LookupError as error:  # placed by someone else meanwhile (a lease that ran out)
            log.warning("file.place_skipped", id=row.id, file=row.name, detail=str(error))
        except OSError as error:
            failures = row.place_failures + 1
            delay = self.place_backoff.delay(failures)
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
            self.ledger.place_failed(
                row.id, f"cannot place it in {folder.root}: {describe(error)}", self.ledger.schedule() + delay
            )
            self.on_place_failed()
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
            self.ledger.stuck(row.id, f"stuck in {self.work_path(row)}: it cannot be placed ({describe(error)})")
        return None

    def place_due(self) -> bool:
        """Place one row whose placing is due again (after a fault); return False if none was due."""
        row = self.ledger.take_placement()
        if row is None:
            return False
        if self.place(row) is not None and row.problem:
            log.info("file.placed_after_problem", id=row.id, file=row.name, problem=row.problem)
        return True

    def _complete_many(self, rows: list[FileRow]) -> None:
        """_complete() for a finisher batch, syncing each day folder once, not once per file: sidecars
        written (fsynced) and files linked in, then each folder synced, and only then the work names
        removed and the rows closed. A row off that way is completed alone by _complete."""
        begun: list[tuple[FileRow, Path, list[bool]]] = []
        for row in rows:
            linked: list[bool] = []
            final = self._contained_place(row, functools.partial(self._begin_complete, row, linked))
            if final is not None and linked:
                begun.append((row, final, linked))
        unsynced: set[Path] = set()
        for folder in {final.parent for _, final, _ in begun}:
            try:
                fsync_dir(folder)
            except OSError:  # each of its rows is completed alone, where the fault is contained
                unsynced.add(folder)
        for row, final, linked in begun:
            self._contained_place(
                row,
                functools.partial(self._complete, row)
                if final.parent in unsynced
                else functools.partial(self._end_complete, row, final, linked[0]),
            )

    def _begin_complete(self, row: FileRow, linked: list[bool]) -> Path:
        """The sidecar, then the file linked in (linked gets whether the work name is still to be removed);
        a row whose work file is gone, or whose name was taken meanwhile, is completed by _complete."""
        if row.final_path is None:
            return self._complete(row)
        final = Path(row.final_path)
        self.folder_for(row).write_sidecar(final, sidecar(row, final, self.clock(), self.contents(row)))
        try:
            linked.append(place_no_clobber(self.work_path(row), final))
        except (FileNotFoundError, FileExistsError):
            return self._complete(row)
        return final

    def _end_complete(self, row: FileRow, final: Path, still_in_work: bool) -> Path:
        if still_in_work:  # final's folder is synced: the work name can go
            self.work_path(row).unlink(missing_ok=True)
        self._finished(row, final)
        return final

    def _complete(self, row: FileRow) -> Path:
        """Write the sidecar, move the work file beside it, close the row.

        The sidecar goes first, so a file never appears in the archive without its
        NAME.json (and the sidecar reserves the name against other writers).
        """
        folder = self.folder_for(row)
        work = self.work_path(row)
        if row.final_path is None:
            raise AssertionError(f"row {row.id} is {row.state} without a final path")
        final = Path(row.final_path)
        contents = self.contents(row)
        if work.exists():
            folder.write_sidecar(final, sidecar(row, final, self.clock(), contents))
            placed, synced = folder.move_in(work, final)  # synced: the sidecar's entry is durable as well
            if placed != final:  # the name was taken meanwhile: the sidecar follows the file
                folder.write_sidecar(placed, sidecar(row, placed, self.clock(), contents))
                folder.remove_sidecar(final)
                final, synced = placed, False
            if not synced:
                folder.sync(final)
        elif final.exists():
            folder.write_sidecar(final, sidecar(row, final, self.clock(), contents))
            folder.sync(final)
        else:
            log.error(
                "file.lost",
                id=row.id,
                file=row.name,
                expected=str(final),
                detail="neither the work copy nor the final copy exists",
            )
        self._finished(row, final)
        return final

    def _finished(self, row: FileRow, final: Path) -> None:
        """Close a placed row (its file and sidecar durable in final's folder)."""
        self.ledger.finished(row.id, final)
        self.events.file_finished(row, final)
        log.info(
            "file.archived" if row.state == FileState.ARCHIVING else "file.to_error",
            id=row.id,
            source=row.source,
            file=row.name,
            path=str(final),
        )

    def contents(self, row: FileRow) -> dict[str, Any]:
        """What the file held (records or barcodes, CaiaSoft's answer joined to each), for its sidecar."""
        return sidecar_records(
            row.kind, self.ledger.records_of(row.id, SIDECAR_RECORDS), self.ledger.record_count(row.id), row.answer_json
        )

    def note_changed(self, row: FileRow, size_now: int) -> None:
        """A finished file whose original changed after it was taken: its sidecar says so."""
        if row.final_path and Path(row.final_path).exists():
            aftertake.add_note(self.folder_for(row), row, size_now, sidecar(row, Path(row.final_path), self.clock()))
