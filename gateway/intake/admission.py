"""Admission: claim ready files from a source into work/, then validate each: queued for upload, or refused.

claim() moves the files the collector found ready into state_dir/work/ (one
folder sync for the batch) and records them; admit_many() reads and judges each
(intake.validation) and queues the valid ones in one commit. A refused file's
answer is recorded here and the file handed to archive.placing, the one way a
file is placed. The `send` command adopts a copy of a file named on its command
line the same way (adopt_copy), and `retry` admits a file put back into work/.

Faults are contained per file: anything that goes wrong reading or judging one
file refuses that file, with the reason, into the error folder; a file whose
claim fails for a reason of its own stays in its source, and the others go on.
Ledger faults (locked, disk full) are not a file's fault: they reach the worker,
which pauses (core.worker.Worker).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from gateway.archive import aftertake
from gateway.archive.placing import Placing
from gateway.config.settings import DEFAULT_CONNECTION, Intake
from gateway.core import logs
from gateway.core.errors import BUG, FileRefused, SourceGone, describe, fault_kind
from gateway.core.files import copy_no_clobber, file_digest
from gateway.core.states import FileState, Verdict
from gateway.intake import validation
from gateway.sources.base import Entry, Source
from gateway.state.itemindex import RecordSpool
from gateway.state.ledger import FileRow, Ledger, work_name

log = logs.get("gateway.pipeline")  # its lines were always the pipeline's: scripts filter on the logger


class Admission:
    """Claims and validates files; on_queued is called when files are queued (it wakes the upload workers)."""

    def __init__(
        self,
        limits: Intake,
        ledger: Ledger,
        work_dir: Path,
        sources: dict[str, Source],
        placing: Placing,
        on_queued: Callable[[], None] = lambda: None,
        connections: dict[str, str] | None = None,
    ):
        self.limits = limits
        self.connections = connections or {}  # source name -> the CaiaSoft connection its files are for
        self.ledger = ledger
        self.work_dir = work_dir
        self.sources = sources
        self.placing = placing
        self.on_queued = on_queued

    def claim(self, source: Source, entries: list[Entry]) -> tuple[list[int], list[tuple[Entry, Exception]]]:
        """Move ready files into work/ and record them (claimed, not yet validated); admit_many() then
        validates and queues them.

        A file whose claim fails for a reason of its own (it cannot be moved, or even
        recorded) is returned with the error and stays in its source; the others go on.
        """
        try:
            row_ids = self.ledger.files.begin_claims(source.name, entries, self.connection_of(source.name))
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
            self.ledger.files.forget(*dropped)
        if moved:
            self.ledger.files.moved_when_taken(*moved)
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

    def connection_of(self, source_name: str) -> str:
        """The CaiaSoft connection a source's files are for (the default one for `send`, `retry`, recovered)."""
        return self.connections.get(source_name, DEFAULT_CONNECTION)

    def adopt_copy(self, path: Path, source_name: str = "send", connection: str = DEFAULT_CONNECTION) -> int:
        """Copy a file given on the command line into work/ and validate it (for `send`), for that connection."""
        info = os.stat(path)
        row_id = self.ledger.files.begin_claim(
            source_name, path.name, str(path.resolve()), info.st_size, info.st_mtime, connection
        )
        copy_no_clobber(path, self.work_dir / work_name(row_id, path.name))
        self.ledger.files.claimed(row_id)
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
        spool = RecordSpool(self.ledger.items)  # what each file holds, indexed by barcode for `find`
        for row in self.ledger.files.rows(row_ids):
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
            self.ledger.files.queued_many(valid)
            self.on_queued()

    def _inspect(self, row: FileRow, spool: RecordSpool) -> validation.Inspection | None:
        """The file's Inspection, or None after refusing it: the boundary around one file's validation."""
        path = self.work_dir / row.work_name
        limits = self.limits
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
            sha256, size = file_digest(path)
        except OSError:
            sha256, size = None, None
        size_now = aftertake.changed_since_take(row, self.sources, "validating")
        if size_now is not None:
            why = aftertake.reason(row, size_now)
        log.warning(
            "file.refused", id=row.id, source=row.source, file=row.name, sha256=sha256, by="gateway", reason=why
        )
        self.placing.place(self.ledger.files.answered(row.id, Verdict.REFUSED, why, sha256=sha256, size=size))
        return None


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
