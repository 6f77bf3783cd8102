"""The ledger: SQLite (WAL) record of every file the gateway has taken.

It is the one owner of state. A file's row moves through the states in
gateway.states (claiming -> claimed -> queued -> uploading -> answered ->
archiving/refusing -> archived/refused, or stuck). Each step is committed
before the file moves on, so after a crash every row says what to redo (see
pipeline.Pipeline.recover):

  claiming            the work file exists: it was claimed; else the claim is forgotten
  claimed             validated again
  uploading           back to queued (the upload is sent again: the answer was not recorded)
  answered            the verdict is durable: placed now (a name is reserved only after this)
  archiving/refusing  carry their reserved final path: finished there
  stuck               given one more try at placing

CaiaSoft's answer is recorded ('answered', with the verdict) before any name is
reserved or folder written, so a file CaiaSoft answered is never uploaded again
because placing it failed. A row whose placing fails keeps its state, with the
reason in `problem` and a later next_attempt_at (see pipeline.Pipeline.place).

Transitions are committed by group commit (gateway/groupcommit.py): a method
returns once its change is durable, but the changes of all threads waiting at
once share one COMMIT. Only finished() (recovery redoes it) and count_up() (it
rides the NCIP checkpoint's commit that follows it) do not wait.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from gateway import itemindex, monitorstore
from gateway.errors import GatewayError, LedgerDamaged, describe
from gateway.groupcommit import GroupCommit
from gateway.logs import redact
from gateway.names import loaded, safe_name, stored
from gateway.states import FINAL_STATES, OPEN_STATES, FileState, Verdict

PLACE_LEASE_SECONDS = 600.0  # an answered row is left to the worker that recorded it for this long


class Seen(Protocol):
    """A file seen in a source, as the ledger records a claim of it (sources.base.Entry is one)."""

    @property
    def name(self) -> str: ...
    @property
    def origin(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime(self) -> float: ...

SCHEMA_VERSION = 4  # 2: records and items (gateway/itemindex.py); 3: verdict, problem, place_failures;
                    # 4: alerts and counters (gateway/monitorstore.py; its tables are created on open)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    source          TEXT NOT NULL,
    name            TEXT NOT NULL,   -- TEXT, or a BLOB of the exact bytes of a name that is not UTF-8
    origin          TEXT NOT NULL,   -- the same: the source path or remote path, byte for byte
    state           TEXT NOT NULL,
    size            INTEGER,
    mtime           REAL,
    sha256          TEXT,
    kind            TEXT,
    details         TEXT,
    seen_at         REAL NOT NULL,
    claimed_at      REAL,
    uploaded_at     REAL,
    finished_at     REAL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    http_status     INTEGER,
    answer          TEXT,
    reason          TEXT,
    final_path      TEXT,
    released_at     REAL,
    verdict         TEXT,
    problem         TEXT,
    place_failures  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_queue ON files (state, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS files_origin ON files (source, origin);
CREATE INDEX IF NOT EXISTS files_finished ON files (finished_at);
CREATE INDEX IF NOT EXISTS files_unreleased ON files (source) WHERE released_at IS NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    name        TEXT PRIMARY KEY,
    device      INTEGER NOT NULL,
    inode       INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    fingerprint_length INTEGER NOT NULL,
    offset      INTEGER NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feed_seen (
    kind    TEXT NOT NULL,
    barcode TEXT NOT NULL,
    day     TEXT NOT NULL,
    at      REAL NOT NULL,
    PRIMARY KEY (kind, barcode, day)
);
"""

_ADDED_COLUMNS = {  # columns of SCHEMA_VERSION 3, added to an older ledger's files table when it is opened
    "verdict": "TEXT",
    "problem": "TEXT",
    "place_failures": "INTEGER NOT NULL DEFAULT 0",
}


def _outside(text: str) -> str:
    """A text from outside (CaiaSoft's words, an error) as the ledger stores it: registered secrets
    redacted, and a lone surrogate written as its escape (\\ud800): JSON may escape half a UTF-16 pair
    and an undecodable byte of a file name is one, and SQLite takes only valid UTF-8."""
    return redact(text).encode("utf-8", "backslashreplace").decode("utf-8")


class LedgerUnavailable(GatewayError):
    """gateway.db cannot be opened now (no permission on state_dir, locked, disk full)."""


@dataclass(frozen=True)
class FileRow:
    id: int
    source: str
    name: str
    origin: str
    state: str
    size: int | None
    mtime: float | None
    sha256: str | None
    kind: str | None
    details: str | None
    seen_at: float
    claimed_at: float | None
    uploaded_at: float | None
    finished_at: float | None
    attempts: int
    next_attempt_at: float
    http_status: int | None
    answer: str | None
    reason: str | None
    final_path: str | None
    released_at: float | None
    verdict: str | None = None
    problem: str | None = None
    place_failures: int = 0

    def __post_init__(self) -> None:
        # name and origin are TEXT, or the exact bytes (BLOB) of a name that is not UTF-8: see gateway.names
        object.__setattr__(self, "name", loaded(self.name))
        object.__setattr__(self, "origin", loaded(self.origin))

    @property
    def work_name(self) -> str:
        return work_name(self.id, self.name)

    @property
    def answer_json(self) -> Any:
        return json.loads(self.answer) if self.answer else None


def work_name(row_id: int, name: str) -> str:
    """Return the name a file has in state_dir/work/: its row id, a dot, its name made safe."""
    return f"{row_id:08d}." + safe_name(name)


class Ledger(itemindex.ItemIndex, monitorstore.MonitorStore):
    """SQLite-backed state of every file. Thread-safe; safe to open from a second process."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time, check: bool = True):
        """Open (or create) the ledger at path.

        Raise LedgerDamaged if the file is not a readable SQLite database (with check,
        the default, every page is verified: quick_check), LedgerUnavailable if it
        cannot be opened now.
        """
        self.path = path
        self.clock = clock
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.OperationalError) as error:
            raise LedgerUnavailable(f"cannot open the ledger {path}: {describe(error)}") from None
        self._commits = GroupCommit(self._db, self._lock)
        try:
            self._open(check)
        except sqlite3.OperationalError as error:
            self._commits.close()
            self._db.close()
            raise LedgerUnavailable(f"cannot open the ledger {path}: {describe(error)}") from None
        except sqlite3.DatabaseError as error:
            self._commits.close()
            self._db.close()
            raise LedgerDamaged(path, describe(error)) from None

    def _open(self, check: bool) -> None:
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        if check:
            verdict = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
        self._db.executescript(_SCHEMA + itemindex.SCHEMA + monitorstore.SCHEMA)
        if self._db.execute("SELECT NOT EXISTS (SELECT 1 FROM files)").fetchone()[0]:  # nothing from before
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('local_originals_kept', '1')")
        self._migrate()

    def close(self) -> None:
        self._commits.close()
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        """Bring the ledger up to SCHEMA_VERSION; every step only adds (tables are created above)."""
        if self.get_meta("schema_version") == str(SCHEMA_VERSION):
            return  # up to date: no write, so a reader (status, find) takes no lock
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version < 2:
                itemindex.migrate(db, self.clock())
            present = {column[1] for column in db.execute("PRAGMA table_info(files)")}
            for column, declaration in _ADDED_COLUMNS.items():  # version 3
                if column not in present:
                    db.execute(f"ALTER TABLE files ADD COLUMN {column} {declaration}")
            if version < SCHEMA_VERSION:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET "
                           "value = excluded.value", (str(SCHEMA_VERSION),))

    # -- plumbing ---------------------------------------------------------

    def _transaction(self, wait: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """A transition: its statements, then (with wait) its return once they are durable (groupcommit)."""
        return self._commits.transaction(wait)

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> FileRow | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return FileRow(**dict(row)) if row else None

    def _update(self, row_id: int, expected: tuple[str, ...], **fields: Any) -> FileRow:
        """Set fields (column names from this module only) on a row in one of the expected states; return it.

        Texts that come from outside (reason, answer, problem) are stored as _outside() makes them.
        """
        for name in ("reason", "answer", "problem"):
            if isinstance(fields.get(name), str):
                fields[name] = _outside(fields[name])
        sets = ", ".join(f"{name} = ?" for name in fields)
        sql = (f"UPDATE files SET {sets} WHERE id = ? AND state IN ({', '.join('?' for _ in expected)}) "
               "RETURNING *")
        with self._transaction() as db:
            row = db.execute(sql, (*fields.values(), row_id, *expected)).fetchone()
        if row is None:
            raise LookupError(f"ledger row {row_id} is not in state {expected}")
        return FileRow(**dict(row))

    # -- the life of a file -------------------------------------------------

    def begin_claim(self, source: str, name: str, origin: str, size: int, mtime: float) -> int:
        """Record that a file is about to be moved into work/; return its row id."""
        return self._insert_claims(source, [(name, origin, size, mtime)])[0]

    def begin_claims(self, source: str, entries: Sequence[Seen]) -> list[int]:
        """begin_claim for several files (with name, origin, size, mtime) in one transaction; ids in order."""
        return self._insert_claims(source, [(e.name, e.origin, e.size, e.mtime) for e in entries])

    def _insert_claims(self, source: str, files: list[tuple[str, str, int, float]]) -> list[int]:
        now = self.clock()
        with self._transaction() as db:
            return [_row_id(db.execute("INSERT INTO files (source, name, origin, state, size, mtime, seen_at) "
                                       "VALUES (?, ?, ?, 'claiming', ?, ?, ?)",
                                       (source, stored(name), stored(origin), size, mtime, now)))
                    for name, origin, size, mtime in files]

    def claimed(self, row_id: int) -> None:
        self._update(row_id, (FileState.CLAIMING,), state=FileState.CLAIMED, claimed_at=self.clock())

    def forget(self, *row_ids: int) -> None:
        """Drop rows whose claim never happened (the file stayed in, or left, its source)."""
        with self._transaction() as db:
            db.executemany("DELETE FROM files WHERE id = ? AND state = 'claiming'", [(i,) for i in row_ids])

    def queued(self, row_id: int, kind: str, sha256: str, size: int, details: dict[str, Any]) -> None:
        self.queued_many([(row_id, kind, sha256, size, details)])

    def queued_many(self, rows: list[tuple[int, str, str, int, dict[str, Any]]]) -> None:
        """Validated files, in one transaction: claiming or claimed -> queued."""
        now = self.clock()
        with self._transaction() as db:
            for row_id, kind, sha256, size, details in rows:
                changed = db.execute(
                    "UPDATE files SET state = 'queued', kind = ?, sha256 = ?, size = ?, details = ?, "
                    "claimed_at = COALESCE(claimed_at, ?) WHERE id = ? AND state IN ('claiming', 'claimed')",
                    (kind, sha256, size, json.dumps(details, ensure_ascii=False), now, row_id)).rowcount
                if changed != 1:
                    raise LookupError(f"ledger row {row_id} is not being claimed")

    def take_next(self, now: float | None = None) -> FileRow | None:
        """Mark the oldest due queued file 'uploading' and return it, or None if nothing is due."""
        now = self.clock() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                "UPDATE files SET state = 'uploading', attempts = attempts + 1 WHERE id = ("
                " SELECT id FROM files WHERE state = 'queued' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT 1) RETURNING *", (now,)).fetchone()
        return FileRow(**dict(row)) if row else None

    def take_due(self, now: float, share: int, most: int) -> list[FileRow]:
        """Mark up to most of the oldest due queued files 'uploading' in one commit; return them in order.

        A backlog is shared among share workers: each takes its part of what is due (at
        least one, at most most), so a few files are not all taken by one worker.
        """
        with self._transaction() as db:
            due = int(db.execute("SELECT COUNT(*) FROM files WHERE state = 'queued' AND next_attempt_at <= ?",
                                 (now,)).fetchone()[0])
            if not due:
                return []
            rows = db.execute(
                "UPDATE files SET state = 'uploading', attempts = attempts + 1 WHERE id IN ("
                " SELECT id FROM files WHERE state = 'queued' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT ?) RETURNING *",
                (now, max(1, min(most, due // max(share, 1))))).fetchall()
        taken = [FileRow(**dict(row)) for row in rows]
        return sorted(taken, key=lambda row: (row.next_attempt_at, row.id))

    def untake(self, *row_ids: int) -> None:
        """Files taken but not sent (the worker stops, or uploads pause): back to the queue, the attempt undone."""
        with self._transaction() as db:
            db.executemany("UPDATE files SET state = 'queued', attempts = MAX(attempts - 1, 0) "
                           "WHERE id = ? AND state = 'uploading'", [(row_id,) for row_id in row_ids])

    def take(self, row_id: int) -> FileRow | None:
        """Mark one queued file 'uploading' (for `send`); None if it is not queued."""
        with self._transaction() as db:
            row = db.execute("UPDATE files SET state = 'uploading', attempts = attempts + 1 "
                             "WHERE id = ? AND state = 'queued' RETURNING *", (row_id,)).fetchone()
        return FileRow(**dict(row)) if row else None

    def requeue(self, row_id: int, reason: str, next_attempt_at: float, http_status: int | None = None,
                answer: Any = None) -> None:
        """A transient failure: back to the queue, due again at next_attempt_at (the attempt counts).

        answer, if given, is kept with the row (an unreadable answer and how many there were).
        """
        fields: dict[str, Any] = {} if answer is None else {"answer": json.dumps(answer, ensure_ascii=False)}
        self._update(row_id, (FileState.UPLOADING,), state=FileState.QUEUED, reason=reason,
                     next_attempt_at=next_attempt_at, http_status=http_status, **fields)

    def requeue_paused(self, row_id: int, reason: str, http_status: int | None = None) -> None:
        """Uploads are paused (wrong key or URL): back to the queue, due at once, the attempt not counted."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE files SET state = 'queued', reason = ?, http_status = ?, next_attempt_at = ?, "
                "attempts = MAX(attempts - 1, 0) WHERE id = ? AND state = 'uploading'",
                (_outside(reason), http_status, self.clock(), row_id)).rowcount
        if changed != 1:
            raise LookupError(f"ledger row {row_id} is not uploading")

    def interrupted(self, row_id: int) -> None:
        """After a restart: an upload whose answer was not recorded goes back to the queue, due at once."""
        self._update(row_id, (FileState.UPLOADING,), state=FileState.QUEUED, reason="interrupted by a restart",
                     next_attempt_at=0)

    def answered(self, row_id: int, verdict: Verdict, reason: str, *, http_status: int | None = None,
                 answer: Any = None, uploaded: bool = False, sha256: str | None = None,
                 size: int | None = None) -> FileRow:
        """Record the verdict (CaiaSoft's, or the gateway's own refusal) before the file is placed; return the row.

        The row is leased to the caller for PLACE_LEASE_SECONDS: the Placer does not take
        it meanwhile (the caller places it at once; after a crash, recover() does).
        """
        if verdict not in (Verdict.ACCEPTED, Verdict.REFUSED):
            raise ValueError(f"a file is answered as accepted or refused, not {verdict}")
        fields: dict[str, Any] = dict(
            state=FileState.ANSWERED, verdict=verdict, reason=reason, http_status=http_status,
            answer=json.dumps(answer, ensure_ascii=False) if answer is not None else None,
            problem=None, place_failures=0, next_attempt_at=self.clock() + PLACE_LEASE_SECONDS)
        if uploaded:
            fields["uploaded_at"] = self.clock()
        if sha256 is not None:
            fields["sha256"] = sha256
        if size is not None:
            fields["size"] = size
        return self._update(row_id, (FileState.CLAIMING, FileState.CLAIMED, FileState.UPLOADING), **fields)

    def placing(self, row_id: int, final_path: Path) -> FileRow:
        """The final path is reserved: answered -> archiving (accepted) or refusing (refused); return the row."""
        with self._transaction() as db:
            row = db.execute(
                "UPDATE files SET final_path = ?, state = CASE verdict WHEN 'accepted' THEN 'archiving' "
                "ELSE 'refusing' END WHERE id = ? AND state = 'answered' RETURNING *",
                (str(final_path), row_id)).fetchone()
        if row is None:
            raise LookupError(f"ledger row {row_id} is not answered")
        return FileRow(**dict(row))

    def placing_many(self, targets: list[tuple[int, Path]]) -> list[FileRow]:
        """placing() for several rows (row id, reserved final path) in one commit; return those that were
        answered (a row placed by someone else meanwhile is left out), in the order given."""
        placed = []
        with self._transaction() as db:
            for row_id, final_path in targets:
                row = db.execute(
                    "UPDATE files SET final_path = ?, state = CASE verdict WHEN 'accepted' THEN 'archiving' "
                    "ELSE 'refusing' END WHERE id = ? AND state = 'answered' RETURNING *",
                    (str(final_path), row_id)).fetchone()
                if row is not None:
                    placed.append(FileRow(**dict(row)))
        return placed

    def place_failed(self, row_id: int, problem: str, next_attempt_at: float) -> None:
        """Placing failed on the folder (permissions, space, a file in the way): try again at next_attempt_at."""
        with self._transaction() as db:
            db.execute("UPDATE files SET problem = ?, next_attempt_at = ?, place_failures = place_failures + 1 "
                       "WHERE id = ? AND state IN ('answered', 'archiving', 'refusing')",
                       (_outside(problem), next_attempt_at, row_id))

    def stuck(self, row_id: int, problem: str) -> None:
        """The file itself cannot be placed: it stays in work/, shown by `status`, tried again at the next start."""
        with self._transaction() as db:
            db.execute("UPDATE files SET state = 'stuck', problem = ?, finished_at = ? WHERE id = ? AND state IN "
                       "('claiming', 'claimed', 'answered', 'archiving', 'refusing')",
                       (_outside(problem), self.clock(), row_id))

    def unstick(self) -> int:
        """stuck -> answered (or back to its reserved path), due at once: one more try; return how many."""
        with self._transaction() as db:
            count: int = db.execute(
                "UPDATE files SET state = CASE WHEN final_path IS NULL THEN 'answered' "
                "WHEN verdict = 'accepted' THEN 'archiving' ELSE 'refusing' END, "
                "next_attempt_at = 0, finished_at = NULL WHERE state = 'stuck' AND verdict IS NOT NULL").rowcount
        return count

    def take_placement(self, now: float | None = None) -> FileRow | None:
        """The oldest row whose placing is due (a retry, or a lease that ran out), leased anew; None if none."""
        now = self.clock() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                "UPDATE files SET next_attempt_at = ? WHERE id = ("
                " SELECT id FROM files WHERE state IN ('answered', 'archiving', 'refusing') AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT 1) RETURNING *", (now + PLACE_LEASE_SECONDS, now)).fetchone()
        return FileRow(**dict(row)) if row else None

    def next_placement_due(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt_at) FROM files "
                                   "WHERE state IN ('answered', 'archiving', 'refusing')").fetchone()
        due: float | None = row[0]
        return due

    def problems(self, limit: int = 20) -> list[FileRow]:
        """Rows waiting on a placing problem, or stuck: what `status` lists with its reason."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM files WHERE (state IN ('answered', 'archiving', 'refusing') AND problem IS NOT NULL) "
                "OR state = 'stuck' ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [FileRow(**dict(row)) for row in rows]

    def finished(self, row_id: int, final_path: Path) -> None:
        """The file is in its final place (which may differ from the one chosen, after a clash).

        Lazy: committed with the next batch, not waited for. Until then (or if the process
        dies first) the row stays archiving/refusing, which recovery and the placer finish
        again at the same place (file and sidecar are already there and synced).
        """
        with self._transaction(wait=False) as db:
            changed = db.execute(
                "UPDATE files SET state = CASE state WHEN 'archiving' THEN 'archived' ELSE 'refused' END, "
                "final_path = ?, finished_at = ?, problem = NULL WHERE id = ? AND state IN ('archiving', 'refusing')",
                (str(final_path), self.clock(), row_id)).rowcount
        if changed != 1:
            raise LookupError(f"ledger row {row_id} is not being placed")

    def reopen(self, row_id: int, name: str) -> None:
        """`retry`: a refused file goes back to 'claimed' (validated again, then uploaded)."""
        self._update(row_id, (FileState.REFUSED,), state=FileState.CLAIMED, name=stored(name), final_path=None,
                     reason=None, http_status=None, answer=None, attempts=0, next_attempt_at=0, finished_at=None,
                     claimed_at=self.clock(), verdict=None, problem=None, place_failures=0)

    def adopt(self, name: str, size: int, origin: str) -> int:
        """Record a file found in work/ with no row (the database was lost); return its row id."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO files (source, name, origin, state, size, seen_at, claimed_at) "
                "VALUES ('recovered', ?, ?, 'claimed', ?, ?, ?)",
                (stored(name), stored(origin), size, self.clock(), self.clock()))
            return _row_id(cursor)

    # -- questions ------------------------------------------------------------

    def get(self, row_id: int) -> FileRow | None:
        return self._one("SELECT * FROM files WHERE id = ?", (row_id,))

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
            chunk = row_ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            with self._lock:
                rows = self._db.execute(f"SELECT * FROM files WHERE id IN ({marks}) ORDER BY id", chunk).fetchall()
            found += [FileRow(**dict(row)) for row in rows]
        return found

    def in_state(self, *states: str) -> list[FileRow]:
        marks = ", ".join("?" for _ in states)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY id", states).fetchall()
        return [FileRow(**dict(row)) for row in rows]

    def find_refused(self, final_path: Path) -> FileRow | None:
        return self._one("SELECT * FROM files WHERE state = 'refused' AND final_path = ? "
                         "ORDER BY id DESC LIMIT 1", (str(final_path),))

    def next_due_at(self) -> float | None:
        """When the earliest queued file becomes due, or None if the queue is empty."""
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt_at) FROM files WHERE state = 'queued'").fetchone()
        due: float | None = row[0]
        return due

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    def count_finished_since(self, state: str, since: float) -> int:
        with self._lock:
            count: int = self._db.execute("SELECT COUNT(*) FROM files WHERE state = ? AND finished_at >= ?",
                                          (state, since)).fetchone()[0]
        return count

    def oldest_open(self) -> FileRow | None:
        marks = ", ".join("?" for _ in OPEN_STATES)
        return self._one(f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY seen_at, id LIMIT 1",
                         OPEN_STATES)

    def recent(self, state: str, limit: int) -> list[FileRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM files WHERE state = ? ORDER BY finished_at DESC, id DESC "
                                    "LIMIT ?", (state, limit)).fetchall()
        return [FileRow(**dict(row)) for row in rows]

    def known_work_names(self) -> set[str]:
        marks = ", ".join("?" for _ in OPEN_STATES)
        with self._lock:
            rows = self._db.execute(f"SELECT id, name FROM files WHERE state IN ({marks}, 'stuck')",
                                    OPEN_STATES).fetchall()
        return {work_name(row_id, loaded(name)) for row_id, name in rows}

    # -- sources that keep their originals until the outcome is known (SFTP) --------

    def held(self, source: str) -> set[tuple[str, int, float]]:
        """(origin, size, mtime) of this source's files taken but not yet removed from the source."""
        with self._lock:
            rows = self._db.execute("SELECT origin, size, mtime FROM files WHERE source = ? AND released_at IS NULL",
                                    (source,)).fetchall()
        return {(loaded(origin), size, mtime) for origin, size, mtime in rows}

    def to_release(self, source: str, taken_before: float | None = None) -> list[FileRow]:
        """This source's files whose outcome is known but whose original is still in the source
        (only those taken before taken_before, if given)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM files WHERE source = ? AND released_at IS NULL AND state IN "
                                    "('archived', 'refused') AND seen_at <= ? ORDER BY id",
                                    (source, float("inf") if taken_before is None else taken_before)).fetchall()
        return [FileRow(**dict(row)) for row in rows]

    def released(self, row_id: int) -> None:
        self._update(row_id, FINAL_STATES, released_at=self.clock())

    def moved_when_taken(self, *row_ids: int) -> None:
        """These files were moved out of their source when taken: no original is left to release."""
        now = self.clock()
        with self._transaction() as db:
            db.executemany("UPDATE files SET released_at = ? WHERE id = ? AND released_at IS NULL",
                           [(now, row_id) for row_id in row_ids])

    def release_rows_from_before_kept_originals(self, local_sources: list[str]) -> int:
        """Once per ledger: rows of local sources from before originals could stay are marked released
        (back then every local file was moved out when taken). Return how many rows were marked."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM meta WHERE key = 'local_originals_kept'").fetchone():
                return 0
            marks = ", ".join("?" for _ in local_sources)
            count = db.execute(f"UPDATE files SET released_at = seen_at WHERE released_at IS NULL "
                               f"AND source IN ({marks})", local_sources).rowcount if local_sources else 0
            db.execute("INSERT INTO meta VALUES ('local_originals_kept', '1')")
            return count

    # -- the NCIP journal's checkpoint and the status feed's memory -------------------

    def checkpoint(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT device, inode, fingerprint, fingerprint_length, offset FROM checkpoints "
                                   "WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def set_checkpoint(self, name: str, device: int, inode: int, fingerprint: str, fingerprint_length: int,
                       offset: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                       "device = excluded.device, inode = excluded.inode, fingerprint = excluded.fingerprint, "
                       "fingerprint_length = excluded.fingerprint_length, offset = excluded.offset, "
                       "updated_at = excluded.updated_at",
                       (name, device, inode, fingerprint, fingerprint_length, offset, self.clock()))

    def feed_seen(self, kind: str, barcode: str, day: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM feed_seen WHERE kind = ? AND barcode = ? AND day = ?",
                                    (kind, barcode, day)).fetchone() is not None

    def remember_feed(self, kind: str, barcode: str, day: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO feed_seen VALUES (?, ?, ?, ?)", (kind, barcode, day, self.clock()))

    # -- meta (small named values: last auth failure, etc.) -----------------

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       (key, value))

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None


def _row_id(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just added."""
    if cursor.lastrowid is None:
        raise AssertionError("INSERT added no row")
    return cursor.lastrowid
