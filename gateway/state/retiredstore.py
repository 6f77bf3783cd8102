"""What the ledger keeps of files retention removed: one compact row per item, and the days being pruned.

Two tables (ledger schema version 6), created when a ledger is opened:

    retired   one row per barcode whose files retention removed: the newest such file (its
              name, source, path that was, when it was taken and sent), the outcome, the request
              number, CaiaSoft's status for the item, when retention removed it; and how many
              earlier removed files carried the item, since which day
    pruning   the day folders retention has begun to remove and not yet finished (kill -9)

Why a row per barcode, not per file: a file's full row (CaiaSoft's answer, its records and
items) is about 1 KB, and at 500 files a day the files table would grow for ever. `find` about
an item of a removed day needs only: which file, on which day, what came of it, the request
number and CaiaSoft's word for the item. Keyed by barcode, the table is bounded by the
collection (the same items are requested again and again), not by history, so at steady state
the ledger stops growing: the pages the compacted rows leave are reused (and, on a ledger made
with auto_vacuum=INCREMENTAL, given back by vacuum_step). The running totals (file_totals) are
not decremented when a row is removed (gateway/state/schema.py), so "all time" stays all time.

A day is pruned in steps that each survive a kill -9 (gateway/archive/retention.py): begin_pruning
records it (and, in the same transaction, in `pruned`, so `find` says "removed by retention"
from the first moment a file may be gone); the folder is removed; compact() moves the rows of
its files here in batches, each one transaction (compact, then delete); end_pruning forgets
the mark. A day still marked is finished at the next pass, at start first.

Rows kept in full: a file whose original may still be in its source (released_at IS NULL:
the source uses it to know the file was taken), and any row not archived or refused.

Ledger inherits RetiredStore, so these are ledger methods and the ledger stays the one owner of state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.state.itemindex import answers_by_item

if TYPE_CHECKING:  # the database imports the tables' schemas
    from gateway.state.db import LedgerDb

SCHEMA = """
CREATE TABLE IF NOT EXISTS retired (
    barcode         TEXT PRIMARY KEY,
    file            TEXT NOT NULL,
    source          TEXT NOT NULL,
    path            TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    reason          TEXT,
    request_number  TEXT,
    istatus         TEXT,
    deny            TEXT,
    taken           REAL,
    sent            REAL,
    removed_at      REAL NOT NULL,
    earlier         INTEGER NOT NULL DEFAULT 0,
    first_taken     REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pruning (
    folder      TEXT PRIMARY KEY,
    started_at  REAL NOT NULL
);
"""

# the rows of a folder's files: final_path within FOLDER/, by the files_final_path index (named: without
# statistics the planner would take files_done, whose state range holds nearly every row)
FOLDER_ROWS = (
    "SELECT id, source, name, final_path, state, verdict, reason, answer, claimed_at, seen_at, "
    "uploaded_at FROM files INDEXED BY files_final_path WHERE final_path >= ? AND final_path < ? "
    "AND state IN ('archived', 'refused') AND released_at IS NOT NULL LIMIT ?"
)
ITEMS_OF = (
    "SELECT items.barcode, MIN(items.record), records.request_number FROM items LEFT JOIN records ON "
    "records.file_id = items.file_id AND records.number = items.record WHERE items.file_id = ? "
    "GROUP BY items.barcode"
)
# a newer file's item replaces the one kept (the kept one becomes an earlier one); an older one only counts
UPSERT = """
INSERT INTO retired (barcode, file, source, path, outcome, reason, request_number, istatus, deny, taken, sent,
                     removed_at, earlier, first_taken)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)
ON CONFLICT (barcode) DO UPDATE SET
    file = CASE WHEN newer THEN excluded.file ELSE file END,
    source = CASE WHEN newer THEN excluded.source ELSE source END,
    path = CASE WHEN newer THEN excluded.path ELSE path END,
    outcome = CASE WHEN newer THEN excluded.outcome ELSE outcome END,
    reason = CASE WHEN newer THEN excluded.reason ELSE reason END,
    request_number = CASE WHEN newer THEN excluded.request_number ELSE request_number END,
    istatus = CASE WHEN newer THEN excluded.istatus ELSE istatus END,
    deny = CASE WHEN newer THEN excluded.deny ELSE deny END,
    taken = CASE WHEN newer THEN excluded.taken ELSE taken END,
    sent = CASE WHEN newer THEN excluded.sent ELSE sent END,
    removed_at = CASE WHEN newer THEN excluded.removed_at ELSE removed_at END,
    earlier = earlier + 1,
    first_taken = MIN(COALESCE(first_taken, excluded.first_taken), COALESCE(excluded.first_taken, first_taken))
""".replace("newer", "COALESCE(excluded.taken, 0) >= COALESCE(taken, 0)")
COMPACT_BATCH = 50  # files compacted in one transaction: uploads wait at most for one batch
REASON_CHARS = 300  # what is kept of the reason a file was refused
VACUUM_PAGES = 64  # pages given back in one transaction (256 KB of 4 KB pages)


@dataclass(frozen=True)
class Retired:
    """What the ledger keeps of an item whose files retention removed (see the module's docstring)."""

    barcode: str
    file: str
    source: str
    path: str
    outcome: str
    reason: str | None
    request_number: str | None
    istatus: str | None
    deny: str | None
    taken: float | None
    sent: float | None
    removed_at: float
    earlier: int
    first_taken: float | None


def folder_range(folder: str) -> tuple[str, str]:
    """The final_path bounds of the files directly or deeper in folder: FOLDER/ <= path < FOLDER0."""
    return folder + "/", folder + "0"  # '0' is the character after '/'


class RetiredStore:
    """The ledger's compact memory of removed days (ledger.retired)."""

    def __init__(self, db: LedgerDb):
        self.db = db

    def _transaction(self, wait: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # LedgerDb's

    def begin_pruning(self, folder: str, at: float) -> None:
        """Retention is about to remove this day folder: mark it (finished by end_pruning) and record it pruned."""
        with self.db.transaction() as db:
            db.execute("INSERT OR IGNORE INTO pruning VALUES (?, ?)", (folder, at))
            db.execute("INSERT INTO pruned VALUES (?, ?) ON CONFLICT(folder) DO NOTHING", (folder, at))

    def end_pruning(self, folder: str) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM pruning WHERE folder = ?", (folder,))

    def pruning(self) -> list[tuple[str, float]]:
        """The day folders whose pruning a stop or a crash cut short: (folder, when it began), oldest first."""
        with self.db.lock:
            rows = self.db.connection.execute(
                "SELECT folder, started_at FROM pruning ORDER BY started_at, folder"
            ).fetchall()
        return [(str(folder), float(started)) for folder, started in rows]

    def rows_in(self, folder: str) -> int:
        """How many finished files' rows lie in this folder and would be compacted (prune --dry-run)."""
        low, high = folder_range(folder)
        with self.db.lock:
            return int(
                self.db.connection.execute(
                    "SELECT COUNT(*) FROM files INDEXED BY files_final_path WHERE final_path >= ? AND final_path < ? "
                    "AND state IN "
                    "('archived', 'refused') AND released_at IS NOT NULL",
                    (low, high),
                ).fetchone()[0]
            )

    def next_row_path(self, after: str, before: str) -> str | None:
        """The first final_path after `after` and before `before` of a row compact() would take (one seek)."""
        with self.db.lock:
            row = self.db.connection.execute(
                "SELECT final_path FROM files INDEXED BY files_final_path WHERE final_path > ? AND final_path < ? "
                "AND state IN ('archived', 'refused') AND released_at IS NOT NULL ORDER BY final_path LIMIT 1",
                (after, before),
            ).fetchone()
        return None if row is None else str(row[0])

    def compact(self, folder: str, removed_at: float) -> int:
        """Move the rows of up to COMPACT_BATCH files of a removed folder into `retired`; return how many.

        One transaction: the items are kept compact and the file's rows (files, records, items)
        removed together, so a crash leaves either the full rows or the compact ones.
        """
        low, high = folder_range(folder)
        with self.db.transaction() as db:
            rows = db.execute(FOLDER_ROWS, (low, high, COMPACT_BATCH)).fetchall()
            for row in rows:
                db.executemany(UPSERT, _retired_items(db, row, removed_at))
            ids = [(row["id"],) for row in rows]
            db.executemany("DELETE FROM items WHERE file_id = ?", ids)
            db.executemany("DELETE FROM records WHERE file_id = ?", ids)
            db.executemany("DELETE FROM files WHERE id = ?", ids)
        return len(rows)

    def retired_for(self, barcode: str) -> Retired | None:
        with self.db.lock:
            row = self.db.connection.execute("SELECT * FROM retired WHERE barcode = ?", (barcode,)).fetchone()
        return Retired(**dict(row)) if row else None

    # -- giving back the pages compaction freed ------------------------------------

    def free_pages(self) -> int:
        """Pages the ledger holds free, if it can give them back (auto_vacuum=INCREMENTAL); else 0."""
        with self.db.lock:
            if self.db.connection.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                return 0  # a ledger made before: free pages are reused by new rows, the file does not shrink
            return int(self.db.connection.execute("PRAGMA freelist_count").fetchone()[0])

    def vacuum_step(self) -> int:
        """Give back up to VACUUM_PAGES free pages in one short transaction; return how many are left free."""
        with self.db.transaction() as db:
            for _ in range(min(VACUUM_PAGES, int(db.execute("PRAGMA freelist_count").fetchone()[0]))):
                db.execute("PRAGMA incremental_vacuum(1)")  # each step of the pragma frees one page
        return self.free_pages()


def _retired_items(db: sqlite3.Connection, row: sqlite3.Row, removed_at: float) -> Iterable[tuple[Any, ...]]:
    try:
        answers = answers_by_item(json.loads(row["answer"])) if row["answer"] else {}
    except ValueError:
        answers = {}
    outcome = row["verdict"] or ("accepted" if row["state"] == "archived" else "refused")
    reason = None if row["state"] == "archived" or not row["reason"] else str(row["reason"])[:REASON_CHARS]
    taken = row["claimed_at"] or row["seen_at"]
    path = str(row["final_path"])
    for barcode, _record, request_number in db.execute(ITEMS_OF, (row["id"],)).fetchall():
        answer = answers.get(barcode, {})
        yield (
            barcode,
            path.rsplit("/", 1)[-1],
            row["source"],
            path,
            outcome,
            reason,
            request_number,
            _text(answer.get("istatus")),
            _text(answer.get("deny")),
            taken,
            row["uploaded_at"],
            removed_at,
            taken,
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
