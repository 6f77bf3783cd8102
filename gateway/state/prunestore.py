"""What retention keeps in the ledger: the day folders it removed, and the ledger's own idea of the time.

One table, created when a ledger is opened (CREATE TABLE IF NOT EXISTS):

    pruned    one row per day folder retention removed (its path), and when (written as the day
              is marked for removal: RetiredStore.begin_pruning, gateway/state/retiredstore.py)

`find` tells an item whose file went with such a folder from one that was moved
away or never seen. The newest time the ledger recorded (a file's step, or the
mark retention leaves at each pass, meta 'retention_clock') is what a clock
that jumped far ahead is measured against (gateway/archive/retention.py).

Ledger inherits PruneStore, so these are ledger methods and the ledger stays the
one owner of state.
"""

from __future__ import annotations

import math
import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the database imports the tables' schemas
    from gateway.state.db import LedgerDb


SCHEMA = """
CREATE TABLE IF NOT EXISTS pruned (
    folder      TEXT PRIMARY KEY,
    removed_at  REAL NOT NULL
);
"""

CLOCK_KEY = "retention_clock"  # meta: the time of retention's last pass, as it trusted it


class PruneStore:
    """The ledger's record of what retention removed (ledger.prunes)."""

    def __init__(self, db: LedgerDb):
        self.db = db

    def _transaction(self, wait: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # LedgerDb's

    def pruned_at(self, folder: str) -> float | None:
        """When retention removed this day folder, or None if it did not."""
        with self.db.lock:
            row = self.db.connection.execute("SELECT removed_at FROM pruned WHERE folder = ?", (folder,)).fetchone()
        return float(row[0]) if row else None

    def mark_clock(self, at: float) -> None:
        """Retention's pass: the ledger has seen the time reach at (meta CLOCK_KEY)."""
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (CLOCK_KEY, repr(at)),
            )

    def clock_mark(self) -> float | None:
        """The time retention's last pass counted from (mark_clock), or None if no pass has marked one."""
        with self.db.lock:
            mark = self.db.connection.execute("SELECT value FROM meta WHERE key = ?", (CLOCK_KEY,)).fetchone()
        try:
            value = float(mark[0]) if mark is not None else None
        except ValueError:  # not a number: no mark
            return None
        return value if value is not None and math.isfinite(value) and value > 0 else None

    def newest_time(self) -> float | None:
        """The latest time the ledger recorded for a file (seen or finished): what retention counts from in a
        ledger no pass has marked yet (clock_mark). None for a ledger that has recorded nothing yet."""
        with self.db.lock:
            files = self.db.connection.execute(
                "SELECT MAX(COALESCE((SELECT seen_at FROM files WHERE id = (SELECT MAX(id) FROM files)), 0), "
                "COALESCE((SELECT MAX(finished_at) FROM files), 0))"
            ).fetchone()[0]
        newest = float(files or 0)
        return newest if math.isfinite(newest) and newest > 0 else None
