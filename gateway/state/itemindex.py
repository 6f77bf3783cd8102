"""What was in each file, and where an item went: the ledger's records and item index.

Two tables in the ledger (added by schema version 2):

    records  one row per record of a print file (or per barcode of a barcode list):
             its header, form name, barcodes, request number, pickup location, problem
    items    barcode -> the file (ledger row) and record that carried it; for files
             archived before the index existed, the sidecar they were read from

Ledger inherits ItemIndex, so these are ledger methods and the ledger stays the one
owner of state. RecordSpool writes the records of files being validated in batches.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.core.names import loaded, stored
from gateway.core.printfile import Record

if TYPE_CHECKING:  # the database imports the tables' schemas
    from gateway.state.db import LedgerDb

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    file_id         INTEGER NOT NULL,
    number          INTEGER NOT NULL,
    line            INTEGER NOT NULL,
    header          TEXT,
    form_name       TEXT,
    barcodes        TEXT NOT NULL,
    request_number  TEXT,
    request_id      TEXT,
    pickup_location TEXT,
    problem         TEXT,
    problem_line    INTEGER,
    PRIMARY KEY (file_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    barcode TEXT NOT NULL,
    file_id INTEGER NOT NULL,
    record  INTEGER NOT NULL,
    sidecar TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (barcode, file_id, record, sidecar)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_file ON items (file_id, record);
"""

ITEMS_FOR_BARCODE = "SELECT barcode, file_id, record, sidecar FROM items WHERE barcode = ?"
SPOOL_RECORDS = 2000  # records held in memory before they are written to the ledger
BACKFILL_FILE_ID = 0  # items read from a sidecar (no ledger row) carry this file_id
BACKFILL_KEY = "items_backfill"  # meta: "pending since <unix time>" or "done"


@dataclass(frozen=True)
class StoredRecord:
    """A record as the ledger keeps it."""

    number: int
    line: int
    header: str | None
    form_name: str | None
    barcodes: tuple[str, ...]
    request_number: str | None
    request_id: str | None
    pickup_location: str | None
    problem: str | None
    problem_line: int | None


@dataclass(frozen=True)
class ItemHit:
    """One file that carried a barcode: its ledger row (file_id > 0) or the sidecar it was read from."""

    barcode: str
    file_id: int
    record: int
    sidecar: str


def migrate(db: sqlite3.Connection, now: float) -> None:
    """Schema 1 -> 2: the tables exist already (CREATE IF NOT EXISTS); files archived before now get backfilled."""
    db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (BACKFILL_KEY, f"pending since {now:.0f}"))


class ItemIndex:
    """Each file's records and the barcode index (ledger.items)."""

    def __init__(self, db: LedgerDb):
        self.db = db

    def store_records(self, fresh: Iterable[int], records: Iterable[tuple[int, Record]]) -> None:
        """In one transaction: forget what files in fresh held before, then store records as (file id, record)."""
        with self.db.transaction() as db:
            for file_id in fresh:
                db.execute("DELETE FROM records WHERE file_id = ?", (file_id,))
                db.execute("DELETE FROM items WHERE file_id = ?", (file_id,))
            for file_id, record in records:
                problem = record.problem
                db.execute(
                    "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        file_id,
                        record.number,
                        record.line,
                        record.header,
                        record.form_name,
                        json.dumps(record.barcodes, ensure_ascii=False),
                        record.request_number,
                        record.request_id,
                        record.pickup_location,
                        problem.message if problem else None,
                        problem.line if problem and not problem.printout else None,
                    ),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO items (barcode, file_id, record) VALUES (?, ?, ?)",
                    [(barcode, file_id, record.number) for barcode in set(record.barcodes)],
                )

    def records_of(self, file_id: int, limit: int = -1) -> list[StoredRecord]:
        """The records of one file, in order (at most limit of them; -1: all)."""
        return _stored(self, "WHERE file_id = ? ORDER BY number LIMIT ?", (file_id, limit))

    def record_of(self, file_id: int, number: int) -> StoredRecord | None:
        found = _stored(self, "WHERE file_id = ? AND number = ?", (file_id, number))
        return found[0] if found else None

    def record_count(self, file_id: int) -> int:
        with self.db.lock:
            return int(
                self.db.connection.execute("SELECT COUNT(*) FROM records WHERE file_id = ?", (file_id,)).fetchone()[0]
            )

    def items_for(self, barcode: str) -> list[ItemHit]:
        """Every file (ledger row or backfilled sidecar) that carried this barcode; uses the index only."""
        with self.db.lock:
            rows = self.db.connection.execute(ITEMS_FOR_BARCODE, (barcode,)).fetchall()
        return [ItemHit(barcode, file_id, record, loaded(sidecar)) for barcode, file_id, record, sidecar in rows]

    def feed_updates(self, barcode: str) -> list[tuple[str, str, float]]:
        """(kind, day YYYYMMDD, when) of what the status feeds journaled for NCIP about this item, oldest first:
        retrieved (a check-out) or refiled (a check-in), whichever NCIP server's feed it was (a named server's
        kinds are stored as NAME/kind: gateway.state.checkpoints.feed_kind). Only the feeds' last lookback_days
        are kept: a small table, read whole for the barcode."""
        with self.db.lock:
            rows = self.db.connection.execute(
                "SELECT kind, day, at FROM feed_seen WHERE barcode = ? ORDER BY at", (barcode,)
            ).fetchall()
        found = [(stored.rpartition("/")[2], day, at) for stored, day, at in rows]  # the kind, of any server
        return [(kind, day, at) for kind, day, at in found if kind in ("retrieved", "refiled")]

    # -- backfill from sidecars written before the index existed -------------------

    def backfill_due(self) -> float | None:
        """The time the index started, if sidecars from before it still have to be read; else None."""
        with self.db.lock:
            row = self.db.connection.execute("SELECT value FROM meta WHERE key = ?", (BACKFILL_KEY,)).fetchone()
        if row is None or not row[0].startswith("pending since "):
            return None
        return float(row[0].removeprefix("pending since "))

    def indexed_path(self, file_id: int, final_path: str) -> bool:
        """True if ledger row file_id is the file at final_path and its records are indexed."""
        with self.db.lock:
            return (
                self.db.connection.execute(
                    "SELECT 1 FROM files WHERE id = ? AND final_path = ? AND EXISTS "
                    "(SELECT 1 FROM records WHERE file_id = ?)",
                    (file_id, final_path, file_id),
                ).fetchone()
                is not None
            )

    def store_backfill(self, items: Iterable[tuple[str, int, str]], done: bool) -> None:
        """Index (barcode, record, sidecar path) read from sidecars; with done, remember the backfill is over."""
        with self.db.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?)",
                [(barcode, BACKFILL_FILE_ID, record, stored(sidecar)) for barcode, record, sidecar in items],
            )
            if done:
                db.execute("UPDATE meta SET value = 'done' WHERE key = ?", (BACKFILL_KEY,))


def _stored(index: ItemIndex, where: str, args: tuple[Any, ...]) -> list[StoredRecord]:
    with index.db.lock:
        rows = index.db.connection.execute(
            "SELECT number, line, header, form_name, barcodes, request_number, request_id, "
            f"pickup_location, problem, problem_line FROM records {where}",
            args,
        ).fetchall()
    return [StoredRecord(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])), *row[5:]) for row in rows]


class RecordSpool:
    """Records of the files being validated, written to the ledger in batches of SPOOL_RECORDS.

    start(file_id) before a file's records; add() is inspect()'s on_record; flush()
    before the file's row moves on (queued, or refused with its sidecar). A file
    validated again (retry, recovery) loses the records it had before.
    """

    def __init__(self, index: ItemIndex):
        self.index = index
        self._file_id = 0
        self._fresh: list[int] = []
        self._pending: list[tuple[int, Record]] = []

    def start(self, file_id: int) -> None:
        self._file_id = file_id
        self._fresh.append(file_id)

    def add(self, record: Record) -> None:
        self._pending.append((self._file_id, record))
        if len(self._pending) >= SPOOL_RECORDS:
            self.flush()

    def flush(self) -> None:
        if self._fresh or self._pending:
            self.index.store_records(self._fresh, self._pending)
            self._fresh, self._pending = [], []


def answers_by_item(answer: Any) -> dict[str, dict[str, Any]]:
    """CaiaSoft's per-item results ({"item", "deny", "istatus"}) by barcode, from a /requestfile answer."""
    results = answer.get("results") if isinstance(answer, dict) else None
    found: dict[str, dict[str, Any]] = {}
    for item in results if isinstance(results, list) else ():
        if isinstance(item, dict) and isinstance(item.get("item"), str):
            found.setdefault(item["item"], {key: item[key] for key in ("deny", "istatus") if key in item})
    return found


def sidecar_records(kind: str | None, records: list[StoredRecord], total: int, answer: Any) -> dict[str, Any]:
    """The sidecar's account of what was in the file, CaiaSoft's answer joined to each barcode."""
    answers = answers_by_item(answer)
    content: dict[str, Any] = {"barcode_count" if kind == "text" else "record_count": total}
    if kind == "text":
        content["barcodes"] = [
            {"barcode": barcode, "line": record.line, **_caiasoft(answers, barcode)}
            for record in records
            for barcode in record.barcodes
        ]
    else:
        content["records"] = list(_records(records, answers))
    if len(records) < total:
        content["records_not_listed"] = total - len(records)
    return content


def _records(records: list[StoredRecord], answers: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for record in records:
        entry: dict[str, Any] = {
            "record": record.number,
            "line": record.line,
            "header": record.header,
            "form_name": record.form_name,
            "items": [{"barcode": barcode, **_caiasoft(answers, barcode)} for barcode in record.barcodes],
            "request_number": record.request_number,
            "request_id": record.request_id,
            "pickup_location": record.pickup_location,
        }
        if record.problem:  # a problem without a line is the record as a whole (a printout that is not XML)
            entry["problem"] = record.problem + (
                f" at line {record.problem_line} of the file" if record.problem_line is not None else ""
            )
        yield {key: value for key, value in entry.items() if value is not None}


def _caiasoft(answers: dict[str, dict[str, Any]], barcode: str) -> dict[str, Any]:
    found = answers.get(barcode)
    return {"caiasoft": found} if found else {}


def is_denied(item: Any) -> bool:
    """True for a per-item result CaiaSoft denied (deny: "Y")."""
    return isinstance(item, dict) and str(item.get("deny", "")).upper() in ("Y", "YES", "TRUE")
