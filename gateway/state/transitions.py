"""The file-state transitions: each step of a file's life, as the ledger commits it.

A row moves claiming -> claimed -> queued -> uploading -> answered -> archiving/refusing ->
archived/refused, or stuck (see gateway/core/states.py and gateway/state/ledger.py). Each method
changes rows only from the states it expects, in one transaction, and returns once the
change is durable (group commit), except finished(): recovery redoes it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.config.settings import DEFAULT_CONNECTION
from gateway.core.names import stored
from gateway.core.states import FINAL_STATES, FileState, Verdict
from gateway.state.db import outside
from gateway.state.filequeries import FileQueries
from gateway.state.filerow import FileRow, Seen

PLACE_LEASE_SECONDS = 600.0  # an answered row is left to the worker that recorded it for this long


class Files(FileQueries):
    """The files table (ledger.files): the transitions that move a row from one state to the next, and (from
    FileQueries) the questions about it."""

    # -- taking, validating, uploading ----------------------------------------

    def begin_claim(
        self, source: str, name: str, origin: str, size: int, mtime: float, connection: str = DEFAULT_CONNECTION
    ) -> int:
        """Record that a file for that CaiaSoft connection is about to be moved into work/; return its row id."""
        return self._insert_claims(source, [(name, origin, size, mtime)], connection)[0]

    def begin_claims(self, source: str, entries: Sequence[Seen], connection: str = DEFAULT_CONNECTION) -> list[int]:
        """begin_claim for several files (with name, origin, size, mtime) in one transaction; ids in order."""
        return self._insert_claims(source, [(e.name, e.origin, e.size, e.mtime) for e in entries], connection)

    def _insert_claims(self, source: str, files: list[tuple[str, str, int, float]], connection: str) -> list[int]:
        now = self.db.clock()
        with self.db.transaction() as db:
            return [
                _row_id(
                    db.execute(
                        "INSERT INTO files (source, name, origin, state, size, mtime, seen_at, connection) "
                        "VALUES (?, ?, ?, 'claiming', ?, ?, ?, ?)",
                        (source, stored(name), stored(origin), size, mtime, now, connection),
                    )
                )
                for name, origin, size, mtime in files
            ]

    def claimed(self, row_id: int) -> None:
        self.db.update(row_id, (FileState.CLAIMING,), state=FileState.CLAIMED, claimed_at=self.db.clock())

    def forget(self, *row_ids: int) -> None:
        """Drop rows whose claim never happened (the file stayed in, or left, its source)."""
        with self.db.transaction() as db:
            db.executemany("DELETE FROM files WHERE id = ? AND state = 'claiming'", [(i,) for i in row_ids])

    def queued(self, row_id: int, kind: str, sha256: str, size: int, details: dict[str, Any]) -> None:
        self.queued_many([(row_id, kind, sha256, size, details)])

    def queued_many(self, rows: list[tuple[int, str, str, int, dict[str, Any]]]) -> None:
        """Validated files, in one transaction: claiming or claimed -> queued."""
        now = self.db.clock()
        with self.db.transaction() as db:
            for row_id, kind, sha256, size, details in rows:
                changed = db.execute(
                    "UPDATE files SET state = 'queued', kind = ?, sha256 = ?, size = ?, details = ?, "
                    "claimed_at = COALESCE(claimed_at, ?) WHERE id = ? AND state IN ('claiming', 'claimed')",
                    (kind, sha256, size, json.dumps(details, ensure_ascii=False), now, row_id),
                ).rowcount
                if changed != 1:
                    raise LookupError(f"ledger row {row_id} is not being claimed")

    def assign_due(
        self,
        now: float,
        share: int,
        most: int,
        *,
        beyond: int = 0,
        wait: bool = True,
        connection: str = DEFAULT_CONNECTION,
    ) -> list[FileRow]:
        """Assign up to most of the oldest due queued files of a CaiaSoft connection to one of its workers
        (uploading) in one commit; return them in order.

        now is on the schedule clock (LedgerDb.schedule), as every next_attempt_at is.

        A backlog is shared among share workers: each is assigned its part of what is due (at
        least one, at most most), so a few files are not all assigned to one worker. Nothing
        is assigned unless more than beyond files are due. Without wait the assignment is not yet
        durable on return: wait_for(durable()) before sending any of them. Another connection's
        files, however many, are neither counted nor read (files_connection_due).
        """
        with self.db.transaction(wait) as db:
            due = int(
                db.execute(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM files INDEXED BY files_connection_due WHERE state = 'queued' "
                    "AND connection = ? AND next_attempt_at <= ? LIMIT ?)",
                    (connection, now, beyond + share * most + 1),
                ).fetchone()[0]
            )
            if due <= beyond:
                return []
            rows = db.execute(
                "UPDATE files SET state = 'uploading', attempts = attempts + 1 WHERE id IN ("
                " SELECT id FROM files INDEXED BY files_connection_due WHERE state = 'queued' AND connection = ?"
                " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?) RETURNING *",
                (connection, now, max(1, min(most, due // max(share, 1)))),
            ).fetchall()
        assigned = [FileRow(**dict(row)) for row in rows]
        return sorted(assigned, key=lambda row: (row.next_attempt_at, row.id))

    def unassign(self, *row_ids: int) -> None:
        """Files assigned but not sent (the worker stops, or uploads pause): back to the queue, the attempt undone."""
        with self.db.transaction() as db:
            db.executemany(
                "UPDATE files SET state = 'queued', attempts = MAX(attempts - 1, 0) "
                "WHERE id = ? AND state = 'uploading'",
                [(row_id,) for row_id in row_ids],
            )

    def assign(self, row_id: int) -> FileRow | None:
        """Mark one queued file 'uploading' (for `send`); None if it is not queued."""
        with self.db.transaction() as db:
            row = db.execute(
                "UPDATE files SET state = 'uploading', attempts = attempts + 1 "
                "WHERE id = ? AND state = 'queued' RETURNING *",
                (row_id,),
            ).fetchone()
        return FileRow(**dict(row)) if row else None

    def requeue(
        self, row_id: int, reason: str, next_attempt_at: float, http_status: int | None = None, answer: Any = None
    ) -> None:
        """A transient failure: back to the queue, due again at next_attempt_at (the attempt counts; an instant
        on the schedule clock, LedgerDb.schedule).

        answer, if given, is kept with the row (an unreadable answer and how many there were).
        """
        fields: dict[str, Any] = {} if answer is None else {"answer": json.dumps(answer, ensure_ascii=False)}
        self.db.update(
            row_id,
            (FileState.UPLOADING,),
            state=FileState.QUEUED,
            reason=reason,
            next_attempt_at=next_attempt_at,
            http_status=http_status,
            **fields,
        )

    def requeue_paused(self, row_id: int, reason: str, http_status: int | None = None) -> None:
        """Uploads are paused (wrong key or URL): back to the queue, due at once, the attempt not counted."""
        with self.db.transaction() as db:
            changed = db.execute(
                "UPDATE files SET state = 'queued', reason = ?, http_status = ?, next_attempt_at = ?, "
                "attempts = MAX(attempts - 1, 0) WHERE id = ? AND state = 'uploading'",
                (outside(reason), http_status, self.db.schedule(), row_id),
            ).rowcount
        if changed != 1:
            raise LookupError(f"ledger row {row_id} is not uploading")

    def interrupted(self, row_id: int) -> None:
        """After a restart: an upload whose answer was not recorded goes back to the queue, due at once."""
        self.db.update(
            row_id, (FileState.UPLOADING,), state=FileState.QUEUED, reason="interrupted by a restart", next_attempt_at=0
        )

    def cap_waits(self, longest: float) -> int:
        """At start: no queued or placing row waits more than longest seconds from now; return how many waited longer.

        Waits are instants on the schedule clock of the process that wrote them; an earlier
        run's clock may have been ahead of this one's (the wall clock stepped back during it,
        or between the two runs), and its gate (and any Retry-After) ended with it.
        """
        latest = self.db.schedule() + longest
        with self.db.transaction() as db:
            count: int = db.execute(
                "UPDATE files SET next_attempt_at = ? WHERE state IN ('queued', 'answered', 'archiving', 'refusing') "
                "AND next_attempt_at > ?",
                (latest, latest),
            ).rowcount
        return count

    def answered(
        self,
        row_id: int,
        verdict: Verdict,
        reason: str,
        *,
        http_status: int | None = None,
        answer: Any = None,
        uploaded: bool = False,
        sha256: str | None = None,
        size: int | None = None,
    ) -> FileRow:
        """Record the verdict (CaiaSoft's, or the gateway's own refusal) before the file is placed; return the row.

        The row is leased to the caller for PLACE_LEASE_SECONDS: the Placer is not assigned
        it meanwhile (the caller places it at once; after a crash, recover() does).
        """
        if verdict not in (Verdict.ACCEPTED, Verdict.REFUSED):
            raise ValueError(f"a file is answered as accepted or refused, not {verdict}")
        fields: dict[str, Any] = dict(
            state=FileState.ANSWERED,
            verdict=verdict,
            reason=reason,
            http_status=http_status,
            answer=json.dumps(answer, ensure_ascii=False) if answer is not None else None,
            problem=None,
            place_failures=0,
            next_attempt_at=self.db.schedule() + PLACE_LEASE_SECONDS,
        )
        if uploaded:
            fields["uploaded_at"] = self.db.clock()
        if sha256 is not None:
            fields["sha256"] = sha256
        if size is not None:
            fields["size"] = size
        return self.db.update(row_id, (FileState.CLAIMING, FileState.CLAIMED, FileState.UPLOADING), **fields)

    # -- answered, then placed in the archive or error folder --------------------

    def placing(self, row_id: int, final_path: Path) -> FileRow:
        """The final path is reserved: answered -> archiving (accepted) or refusing (refused); return the row."""
        placed = self.placing_many([(row_id, final_path)])
        if not placed:
            raise LookupError(f"ledger row {row_id} is not answered")
        return placed[0]

    def placing_many(self, targets: list[tuple[int, Path]]) -> list[FileRow]:
        """placing() for several rows (row id, reserved final path) in one commit; return those that were
        answered (a row placed by someone else meanwhile is left out), in the order given."""
        placed = []
        with self.db.transaction() as db:
            for row_id, final_path in targets:
                row = db.execute(
                    "UPDATE files SET final_path = ?, state = CASE verdict WHEN 'accepted' THEN 'archiving' "
                    "ELSE 'refusing' END WHERE id = ? AND state = 'answered' RETURNING *",
                    (str(final_path), row_id),
                ).fetchone()
                if row is not None:
                    placed.append(FileRow(**dict(row)))
        return placed

    def place_failed(self, row_id: int, problem: str, next_attempt_at: float) -> None:
        """Placing failed on the folder (permissions, space, a file in the way): try again at next_attempt_at."""
        with self.db.transaction() as db:
            db.execute(
                "UPDATE files SET problem = ?, next_attempt_at = ?, place_failures = place_failures + 1 "
                "WHERE id = ? AND state IN ('answered', 'archiving', 'refusing')",
                (outside(problem), next_attempt_at, row_id),
            )

    def stuck(self, row_id: int, problem: str) -> None:
        """The file itself cannot be placed: it stays in work/, shown by `status`, tried again at the next start."""
        with self.db.transaction() as db:
            db.execute(
                "UPDATE files SET state = 'stuck', problem = ?, finished_at = ? WHERE id = ? AND state IN "
                "('claiming', 'claimed', 'answered', 'archiving', 'refusing')",
                (outside(problem), self.db.clock(), row_id),
            )

    def unstick(self) -> int:
        """stuck -> answered (or back to its reserved path), due at once: one more try; return how many."""
        with self.db.transaction() as db:
            count: int = db.execute(
                "UPDATE files SET state = CASE WHEN final_path IS NULL THEN 'answered' "
                "WHEN verdict = 'accepted' THEN 'archiving' ELSE 'refusing' END, "
                "next_attempt_at = 0, finished_at = NULL WHERE state = 'stuck' AND verdict IS NOT NULL"
            ).rowcount
        return count

    def assign_placement(self, now: float | None = None) -> FileRow | None:
        """The oldest row whose placing is due (a retry, or a lease that ran out), leased anew; None if none.

        now is on the schedule clock (LedgerDb.schedule), as every next_attempt_at is."""
        now = self.db.schedule() if now is None else now
        with self.db.transaction() as db:
            row = db.execute(
                "UPDATE files SET next_attempt_at = ? WHERE id = ("
                " SELECT id FROM files WHERE state IN ('answered', 'archiving', 'refusing') AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT 1) RETURNING *",
                (now + PLACE_LEASE_SECONDS, now),
            ).fetchone()
        return FileRow(**dict(row)) if row else None

    def finished(self, row_id: int, final_path: Path) -> None:
        """The file is in its final place (which may differ from the one chosen, after a clash).

        Lazy: committed with the next batch, not waited for. Until then (or if the process
        dies first) the row stays archiving/refusing, which recovery and the placer finish
        again at the same place (file and sidecar are already there and synced).
        """
        with self.db.transaction(wait=False) as db:
            changed = db.execute(
                "UPDATE files SET state = CASE state WHEN 'archiving' THEN 'archived' ELSE 'refused' END, "
                "final_path = ?, finished_at = ?, problem = NULL WHERE id = ? AND state IN ('archiving', 'refusing')",
                (str(final_path), self.db.clock(), row_id),
            ).rowcount
        if changed != 1:
            raise LookupError(f"ledger row {row_id} is not being placed")

    def reopen(self, row_id: int, name: str) -> None:
        """`retry`: a refused file goes back to 'claimed' (validated again, then uploaded)."""
        self.db.update(
            row_id,
            (FileState.REFUSED,),
            state=FileState.CLAIMED,
            name=stored(name),
            final_path=None,
            reason=None,
            http_status=None,
            answer=None,
            attempts=0,
            next_attempt_at=0,
            finished_at=None,
            claimed_at=self.db.clock(),
            verdict=None,
            problem=None,
            place_failures=0,
        )

    def adopt(self, name: str, size: int, origin: str) -> int:
        """Record a file found in work/ with no row (the database was lost); return its row id."""
        with self.db.transaction() as db:
            cursor = db.execute(
                "INSERT INTO files (source, name, origin, state, size, seen_at, claimed_at) "
                "VALUES ('recovered', ?, ?, 'claimed', ?, ?, ?)",
                (stored(name), stored(origin), size, self.db.clock(), self.db.clock()),
            )
            return _row_id(cursor)

    # -- sources that keep their originals until the outcome is known (SFTP) --------

    def released(self, row_id: int) -> None:
        self.db.update(row_id, FINAL_STATES, released_at=self.db.clock())

    def moved_when_taken(self, *row_ids: int) -> None:
        """These files were moved out of their source when taken: no original is left to release."""
        now = self.db.clock()
        with self.db.transaction() as db:
            db.executemany(
                "UPDATE files SET released_at = ? WHERE id = ? AND released_at IS NULL",
                [(now, row_id) for row_id in row_ids],
            )

    def release_rows_from_before_kept_originals(self, local_sources: list[str]) -> int:
        """Once per ledger: rows of local sources from before originals could stay are marked released
        (back then every local file was moved out when taken). Return how many rows were marked."""
        with self.db.transaction() as db:
            if db.execute("SELECT 1 FROM meta WHERE key = 'local_originals_kept'").fetchone():
                return 0
            marks = ", ".join("?" for _ in local_sources)
            count = (
                db.execute(
                    f"UPDATE files SET released_at = seen_at WHERE released_at IS NULL AND source IN ({marks})",
                    local_sources,
                ).rowcount
                if local_sources
                else 0
            )
            db.execute("INSERT INTO meta VALUES ('local_originals_kept', '1')")
            return count


def _row_id(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just added."""
    if cursor.lastrowid is None:
        raise AssertionError("INSERT added no row")
    return cursor.lastrowid
