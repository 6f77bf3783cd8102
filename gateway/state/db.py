"""The ledger's connection: opening gateway.db, its lock, group commit, and the helpers every part of it shares.

LedgerDb is the base of gateway.state.ledger.Ledger and of the parts it is made of
(gateway/state/transitions.py, gateway/state/filequeries.py, gateway/state/checkpoints.py): they
read under its lock and change rows only through its transactions.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from gateway.core.backoff import STEADY
from gateway.core.errors import GatewayError, LedgerDamaged, describe
from gateway.core.logs import redact
from gateway.core.states import FileState
from gateway.state import schema
from gateway.state.filerow import FileRow
from gateway.state.groupcommit import GroupCommit

COLUMNS = frozenset(field.name for field in dataclass_fields(FileRow))  # the files table's columns


class LedgerUnavailable(GatewayError):
    """gateway.db cannot be opened now (no permission on state_dir, locked, disk full)."""


def outside(text: str) -> str:
    """A text from outside (CaiaSoft's words, an error) as the ledger stores it: registered secrets
    redacted, and a lone surrogate written as its escape (\\ud800): JSON may escape half a UTF-16 pair
    and an undecodable byte of a file name is one, and SQLite takes only valid UTF-8."""
    return redact(text).encode("utf-8", "backslashreplace").decode("utf-8")


def verify(path: Path) -> str | None:
    """Read and check every page of the ledger at path on a read-only connection of its own (PRAGMA
    quick_check), so nobody waits on it; return what is wrong, or None. Its cost grows with the ledger
    (about a second per GB), so the service does it at a quiet moment, not when it opens the ledger.
    Raise sqlite3.DatabaseError if the file cannot be read as a database at all."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return _quick_check(db)
    finally:
        db.close()


def _quick_check(db: sqlite3.Connection) -> str | None:
    verdict = str(db.execute("PRAGMA quick_check(1)").fetchone()[0])
    return None if verdict == "ok" else verdict


def _ours(db: sqlite3.Connection) -> None:
    """Raise sqlite3.DatabaseError if the file holds tables but not the gateway's (its pages were overwritten,
    or it is another program's database): what opening can tell without reading every page."""
    tables = sorted(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    if tables and "files" not in tables:
        raise sqlite3.DatabaseError(f"it holds no gateway ledger (tables: {', '.join(tables[:5])})")


class LedgerDb:
    """An open gateway.db. Thread-safe; safe to open from a second process."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        check: bool = False,
        schedule: Callable[[], float] = STEADY,
    ):
        """Open (or create) the ledger at path.

        clock gives the times recorded (seen, uploaded, finished); schedule the instants
        retries and leases are due at (next_attempt_at): a clock that never steps
        (gateway.core.backoff.SteadyClock), so a wall-clock step moves no wait.

        Raise LedgerDamaged if the file is not a readable SQLite database or holds no
        ledger (with check, every page is verified too: quick_check, whose cost grows
        with the ledger; the service runs it in gateway.state.check instead),
        LedgerUnavailable if it cannot be opened now.
        """
        self.path = path
        self.clock = clock
        self.schedule = schedule
        self.lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.OperationalError) as error:
            raise LedgerUnavailable(f"cannot open the ledger {path}: {describe(error)}") from None
        self._commits = GroupCommit(self.connection, self.lock)
        try:
            self._open(check)
        except sqlite3.OperationalError as error:
            self._commits.close()
            self.connection.close()
            raise LedgerUnavailable(f"cannot open the ledger {path}: {describe(error)}") from None
        except sqlite3.DatabaseError as error:
            self._commits.close()
            self.connection.close()
            raise LedgerDamaged(path, describe(error)) from None

    def _open(self, check: bool) -> None:
        self.connection.row_factory = sqlite3.Row
        # Why a reader (status, find) waits for a lock instead of failing with "database is locked": the busy
        # handler is set before the first read (connect's timeout, and here), every statement runs on its own
        # (autocommit: no read transaction is ever promoted to a write, the one case where SQLite answers BUSY
        # at once rather than risk a deadlock), and SQLite's btree retries every BUSY variant (recovery,
        # snapshot) through the busy handler while no transaction is open. A reader writes only to a new or
        # older ledger (create, migrate): one autocommit statement, or BEGIN IMMEDIATE, both waited for.
        # WAL recovery and cleanup windows are retried inside SQLite and would end in SQLITE_PROTOCOL.
        self.connection.execute("PRAGMA busy_timeout=30000")
        if self.connection.execute("SELECT NOT EXISTS (SELECT 1 FROM sqlite_master)").fetchone()[0]:
            # a new ledger: pages retention's compaction frees can be given back (only settable before the
            # first table; an older ledger reuses its free pages instead, see gateway/state/retiredstore.py)
            self.connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        if check:
            problem = _quick_check(self.connection)
            if problem:
                raise sqlite3.DatabaseError(problem)
        _ours(self.connection)
        schema.create(self.connection)
        if schema.current(self.connection):
            return  # up to date: no write, so a reader (status, find) takes no lock
        with self.transaction() as db:
            schema.migrate(db, self.clock())

    def close(self) -> None:
        self._commits.close()
        with self.lock:
            self.connection.close()

    def transaction(self, wait: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """A transition: its statements, then (with wait) its return once they are durable (groupcommit)."""
        return self._commits.transaction(wait)

    def durable(self) -> int:
        """The commit this thread's last transition joined (see assign_due), for wait_for()."""
        return self._commits.durable()

    def wait_for(self, commit: int) -> None:
        """Return once that commit is durable; raise what it raised (its transitions then never happened)."""
        self._commits.wait_for(commit)

    def fetch_one(self, sql: str, args: tuple[object, ...] = ()) -> FileRow | None:
        with self.lock:
            row = self.connection.execute(sql, args).fetchone()
        return FileRow(**dict(row)) if row else None

    def fetch_all(self, sql: str, args: tuple[object, ...] | list[object] = ()) -> list[FileRow]:
        with self.lock:
            rows = self.connection.execute(sql, args).fetchall()
        return [FileRow(**dict(row)) for row in rows]

    def update(self, row_id: int, expected: tuple[FileState, ...], **fields: Any) -> FileRow:
        """Set fields on a row in one of the expected states; return it.

        The statement names columns of the files table only (anything else is a ValueError);
        every value, and every state, is a bound parameter. Texts that come from outside
        (reason, answer, problem) are stored as outside() makes them.
        """
        unknown = fields.keys() - COLUMNS
        if unknown:
            raise ValueError(f"not columns of the files table: {sorted(unknown)}")
        for name in ("reason", "answer", "problem"):
            if isinstance(fields.get(name), str):
                fields[name] = outside(fields[name])
        sets = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE files SET {sets} WHERE id = ? AND state IN ({', '.join('?' for _ in expected)}) RETURNING *"
        with self.transaction() as db:
            row = db.execute(sql, (*fields.values(), row_id, *expected)).fetchone()
        if row is None:
            raise LookupError(f"ledger row {row_id} is not in state {expected}")
        return FileRow(**dict(row))

    # -- meta (small named values: last auth failure, etc.) -----------------

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value)
            )

    def get_meta(self, key: str) -> str | None:
        with self.lock:
            row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None
