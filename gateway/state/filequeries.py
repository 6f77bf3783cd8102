"""Questions about files that the ledger answers: for the pipeline's recovery and timers, `status`, `find`,
the staff page, alerts and metrics, and the sources that keep their originals. None of them writes."""

from __future__ import annotations

from pathlib import Path

from gateway.core.names import loaded
from gateway.core.states import OPEN_STATES, FileState
from gateway.state.db import LedgerDb
from gateway.state.filerow import FileRow, work_name
from gateway.state.schema import _denied

# The staff page's figures read the files finished in a window only, through the files_done index (state,
# finished_at): their cost follows the files of the window, never the ledger's history.
_ITEMS = (
    "(CASE WHEN files.state != 'archived' THEN 0 "
    "WHEN json_valid(files.details) AND json_type(files.details, '$.items') = 'integer' "
    "THEN json_extract(files.details, '$.items') "
    "WHEN json_valid(files.answer) AND json_type(files.answer, '$.results') = 'array' "
    "THEN json_array_length(files.answer, '$.results') ELSE 0 END)"
)
_FINISHED_IN = (
    "FROM files INDEXED BY files_done WHERE state IN ('archived', 'refused') AND finished_at >= ? AND finished_at < ?"
)
_DENIED_IN = (
    "SELECT * FROM files INDEXED BY files_done WHERE state = 'archived' AND finished_at >= ? AND finished_at < ? "
    f"AND {_denied('files')} > 0 ORDER BY finished_at DESC, id DESC LIMIT ?"
)


class FileQueries:
    """The read-only questions about the files table; ledger.files (transitions.Files) asks them."""

    def __init__(self, db: LedgerDb):
        self.db = db

    def get(self, row_id: int) -> FileRow | None:
        return self.db.fetch_one("SELECT * FROM files WHERE id = ?", (row_id,))

    def row(self, row_id: int) -> FileRow:
        """The row of a file this process knows exists (LookupError if it does not)."""
        row = self.get(row_id)
        if row is None:
            raise LookupError(f"ledger row {row_id} does not exist")
        return row

    def rows(self, row_ids: list[int]) -> list[FileRow]:
        """These rows (those that exist), in id order."""
        found: list[FileRow] = []
        for start in range(0, len(row_ids), 500):
            chunk: list[object] = list(row_ids[start : start + 500])
            marks = ", ".join("?" for _ in chunk)
            found += self.db.fetch_all(f"SELECT * FROM files WHERE id IN ({marks}) ORDER BY id", chunk)
        return found

    def in_state(self, *states: FileState) -> list[FileRow]:
        marks = ", ".join("?" for _ in states)
        return self.db.fetch_all(f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY id", states)

    def find_refused(self, final_path: Path) -> FileRow | None:
        return self.db.fetch_one(
            "SELECT * FROM files WHERE state = 'refused' AND final_path = ? ORDER BY id DESC LIMIT 1",
            (str(final_path),),
        )

    def oldest_open(self) -> FileRow | None:
        marks = ", ".join("?" for _ in OPEN_STATES)
        return self.db.fetch_one(
            f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY seen_at, id LIMIT 1", OPEN_STATES
        )

    def recent(self, state: FileState, limit: int) -> list[FileRow]:
        return self.db.fetch_all(
            "SELECT * FROM files WHERE state = ? ORDER BY finished_at DESC, id DESC LIMIT ?", (state, limit)
        )

    def problems(self, limit: int = 20) -> list[FileRow]:
        """Rows waiting on a placing problem, or stuck: what `status` lists with its reason."""
        return self.db.fetch_all(
            "SELECT * FROM files WHERE (state IN ('answered', 'archiving', 'refusing') "
            "AND problem IS NOT NULL) OR state = 'stuck' ORDER BY id LIMIT ?",
            (limit,),
        )

    # -- counts and timers -------------------------------------------------------

    def counts(self) -> dict[FileState, int]:
        """Files by state, all time (from the running totals: no scan of history)."""
        with self.db.lock:
            rows = self.db.connection.execute("SELECT state, SUM(files) FROM file_totals GROUP BY state").fetchall()
        return {FileState(state): count for state, count in rows if count}

    def count_finished_since(self, state: FileState, since: float) -> int:
        with self.db.lock:
            count: int = self.db.connection.execute(
                "SELECT COUNT(*) FROM files WHERE state = ? AND finished_at >= ?", (state, since)
            ).fetchone()[0]
        return count

    def finished_figures(self, since: float, until: float) -> dict[FileState, tuple[int, int, int]]:
        """Archived and refused files finished in [since, until): state -> (files, items, items denied). Items
        are those an archived file held (its details; else CaiaSoft's answer), denied as file_totals counts them."""
        with self.db.lock:
            rows = self.db.connection.execute(
                f"SELECT state, COUNT(*), TOTAL({_ITEMS}), TOTAL({_denied('files')}) {_FINISHED_IN} GROUP BY state",
                (since, until),
            ).fetchall()
        return {FileState(state): (files, int(items), int(denied)) for state, files, items, denied in rows}

    def denied_between(self, since: float, until: float, limit: int) -> list[FileRow]:
        """Archived files finished in [since, until) in which CaiaSoft denied an item, newest first."""
        return self.db.fetch_all(_DENIED_IN, (since, until, limit))

    def next_due_at(self, connection: str | None = None) -> float | None:
        """When the earliest queued file (of a CaiaSoft connection, if given) becomes due, or None if there is none."""
        with self.db.lock:
            if connection is None:
                row = self.db.connection.execute(
                    "SELECT MIN(next_attempt_at) FROM files WHERE state = 'queued'"
                ).fetchone()
            else:
                row = self.db.connection.execute(
                    "SELECT MIN(next_attempt_at) FROM files INDEXED BY files_connection_due "
                    "WHERE state = 'queued' AND connection = ?",
                    (connection,),
                ).fetchone()
        due: float | None = row[0]
        return due

    def by_connection(self, *states: FileState) -> dict[str, tuple[int, float]]:
        """Files in these states (queued and uploading: waiting to be sent; OPEN_STATES: pending), by CaiaSoft
        connection: (how many, when the oldest was seen). A connection no longer in the config keeps its files
        here (they are never dropped). Reads the open rows only, through the files_queue index on state."""
        marks = ", ".join("?" for _ in states)
        with self.db.lock:
            rows = self.db.connection.execute(
                f"SELECT connection, COUNT(*), MIN(seen_at) FROM files WHERE state IN ({marks}) GROUP BY connection",
                states,
            ).fetchall()
        return {name: (count, oldest) for name, count, oldest in rows}

    def last_archived(self, connection: str) -> FileRow | None:
        """The file of a CaiaSoft connection archived last (the last entry of files_connection_archived)."""
        return self.db.fetch_one(
            "SELECT * FROM files INDEXED BY files_connection_archived WHERE state = 'archived' AND connection = ? "
            "ORDER BY finished_at DESC LIMIT 1",
            (connection,),
        )

    def next_placement_due(self) -> float | None:
        with self.db.lock:
            row = self.db.connection.execute(
                "SELECT MIN(next_attempt_at) FROM files WHERE state IN ('answered', 'archiving', 'refusing')"
            ).fetchone()
        due: float | None = row[0]
        return due

    def known_work_names(self) -> set[str]:
        marks = ", ".join("?" for _ in OPEN_STATES)
        with self.db.lock:
            rows = self.db.connection.execute(
                f"SELECT id, name FROM files WHERE state IN ({marks}, 'stuck')", OPEN_STATES
            ).fetchall()
        return {work_name(row_id, loaded(name)) for row_id, name in rows}

    # -- sources that keep their originals until the outcome is known (SFTP) --------

    def held(self, source: str) -> set[tuple[str, int, float]]:
        """(origin, size, mtime) of this source's files taken but not yet removed from the source."""
        with self.db.lock:
            rows = self.db.connection.execute(
                "SELECT origin, size, mtime FROM files WHERE source = ? AND released_at IS NULL", (source,)
            ).fetchall()
        return {(loaded(origin), size, mtime) for origin, size, mtime in rows}

    def to_release(self, source: str, taken_before: float | None = None) -> list[FileRow]:
        """This source's files whose outcome is known but whose original is still in the source
        (only those taken before taken_before, if given)."""
        return self.db.fetch_all(
            "SELECT * FROM files WHERE source = ? AND released_at IS NULL AND state IN "
            "('archived', 'refused') AND seen_at <= ? ORDER BY id",
            (source, float("inf") if taken_before is None else taken_before),
        )
