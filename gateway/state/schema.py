"""The ledger's tables, and bringing an older ledger up to the current schema.

The files, meta, checkpoints and feed_seen tables are declared here; the records and items
tables in gateway/state/itemindex.py, the alerts and counters tables in gateway/state/monitorstore.py, the
pruned table in gateway/state/prunestore.py and the retired and pruning tables in gateway/state/retiredstore.py
(created on open, like monitorstore's).
Every migration step only adds: tables are created if missing, columns added if missing.
"""

from __future__ import annotations

import sqlite3

from gateway.core import logs
from gateway.state import itemindex, monitorstore, prunestore, retiredstore

log = logs.get("gateway.ledger")

SCHEMA_VERSION = 7  # 2: records and items (gateway/state/itemindex.py); 3: verdict, problem, place_failures;
# 4: alerts and counters (gateway/state/monitorstore.py; its tables are created on open);
# 5: file_totals (kept by triggers) and the files_done index: nothing steady scans history
# 6: retired and pruning (gateway/state/retiredstore.py), the files_final_path index: retention
#    compacts the rows of the days it removes
# 7: files.connection (the CaiaSoft connection a file is for; 'default' for every older row) and the
#    files_connection_due index: each connection's upload workers are assigned its own queued files;
#    files_connection_archived: each connection's last upload at once, however long the history

FILES_SCHEMA = """
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

# Running totals, so that nothing the service or a command does steadily counts history: per source and
# state, the files in it (and, for archived files, the items CaiaSoft denied in them). Triggers keep them in
# the same transaction as the change they count. A file leaves the archived and refused totals only by a state
# change (retry), never by its row being removed, so they stay "all time" when retention compacts old rows.
TOTALS_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_totals (
    source       TEXT NOT NULL,
    state        TEXT NOT NULL,
    files        INTEGER NOT NULL DEFAULT 0,
    denied_items INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, state)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS file_totals_insert AFTER INSERT ON files BEGIN
    INSERT INTO file_totals (source, state, files, denied_items) VALUES (NEW.source, NEW.state, 1, DENIED_NEW)
        ON CONFLICT (source, state) DO UPDATE SET files = files + 1, denied_items = denied_items + DENIED_NEW;
END;
CREATE TRIGGER IF NOT EXISTS file_totals_update AFTER UPDATE OF source, state ON files
WHEN OLD.source IS NOT NEW.source OR OLD.state IS NOT NEW.state BEGIN
    UPDATE file_totals SET files = files - 1, denied_items = denied_items - DENIED_OLD
        WHERE source = OLD.source AND state = OLD.state;
    INSERT INTO file_totals (source, state, files, denied_items) VALUES (NEW.source, NEW.state, 1, DENIED_NEW)
        ON CONFLICT (source, state) DO UPDATE SET files = files + 1, denied_items = denied_items + DENIED_NEW;
END;
CREATE TRIGGER IF NOT EXISTS file_totals_delete AFTER DELETE ON files WHEN OLD.state NOT IN ('archived', 'refused')
BEGIN
    UPDATE file_totals SET files = files - 1 WHERE source = OLD.source AND state = OLD.state;
END;
"""


def _denied(row: str) -> str:
    """SQL for the number of items CaiaSoft denied in an archived row's answer (0 for any other row)."""
    return (
        f"(CASE WHEN {row}.state = 'archived' AND json_valid({row}.answer) THEN (SELECT COUNT(*) FROM "
        f"json_each({row}.answer, '$.results') AS r WHERE json_type(r.value, '$.deny') = 'true' OR "
        f"upper(CAST(json_extract(r.value, '$.deny') AS TEXT)) IN ('Y', 'YES', 'TRUE')) ELSE 0 END)"
    )


TOTALS = TOTALS_SCHEMA.replace("DENIED_NEW", _denied("NEW")).replace("DENIED_OLD", _denied("OLD"))
RECOUNT_TOTALS = f"""
INSERT INTO file_totals (source, state, files, denied_items)
SELECT files.source, files.state, COUNT(*), SUM({_denied("files")}) FROM files GROUP BY files.source, files.state
"""

FINAL_PATH_INDEX = "CREATE INDEX IF NOT EXISTS files_final_path ON files (final_path)"
DONE_INDEX = "CREATE INDEX IF NOT EXISTS files_done ON files (state, finished_at)"  # 'today', 'last upload'

ADDED_COLUMNS = {  # columns of SCHEMA_VERSION 3, added to an older ledger's files table when it is opened
    "verdict": "TEXT",
    "problem": "TEXT",
    "place_failures": "INTEGER NOT NULL DEFAULT 0",
    "connection": "TEXT NOT NULL DEFAULT 'default'",  # version 7
}
CONNECTION_DUE_INDEX = (
    "CREATE INDEX IF NOT EXISTS files_connection_due ON files (connection, next_attempt_at, id) WHERE state = 'queued'"
)
CONNECTION_DONE_INDEX = (  # each connection's last upload (`status`), whatever the others' history
    "CREATE INDEX IF NOT EXISTS files_connection_archived ON files (connection, finished_at) WHERE state = 'archived'"
)


def create(db: sqlite3.Connection) -> None:
    """Create the tables and indexes a ledger lacks; mark a new, empty ledger as keeping local originals."""
    db.executescript(
        FILES_SCHEMA + TOTALS + itemindex.SCHEMA + monitorstore.SCHEMA + prunestore.SCHEMA + retiredstore.SCHEMA
    )
    if db.execute(
        "SELECT NOT EXISTS (SELECT 1 FROM files) AND NOT EXISTS (SELECT 1 FROM meta WHERE key = 'local_originals_kept')"
    ).fetchone()[0]:  # nothing from before; written once, never again: a
        db.execute("INSERT OR IGNORE INTO meta VALUES ('local_originals_kept', '1')")  # reader takes no lock


def current(db: sqlite3.Connection) -> bool:
    """Whether the ledger is at SCHEMA_VERSION (then opening it writes nothing, so a reader takes no lock)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return row is not None and row[0] == str(SCHEMA_VERSION)


def migrate(db: sqlite3.Connection, now: float) -> None:
    """Bring the ledger up to SCHEMA_VERSION, inside the caller's transaction (tables are made by create)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version < 2:
        itemindex.migrate(db, now)
    present = {column[1] for column in db.execute("PRAGMA table_info(files)")}
    for column, declaration in ADDED_COLUMNS.items():  # versions 3 and 7
        if column not in present:
            db.execute(f"ALTER TABLE files ADD COLUMN {column} {declaration}")
    if version < 5:  # once, at the upgrade: count what the triggers count from now on, and index finishing
        _upgrading(version, "counting the files of the ledger's history once (file_totals)")
        db.execute("DELETE FROM file_totals")
        db.execute(RECOUNT_TOTALS)
        _upgrading(version, "indexing the files by state and finish time once (files_done)")
        db.execute(DONE_INDEX)
        if version:
            log.info(
                "ledger.upgrade",
                step="counted and indexed",
                files=db.execute("SELECT COALESCE(SUM(files), 0) FROM file_totals").fetchone()[0],
            )
    if version < 6:  # once: the rows of a day folder, found by their path (retention; `retry NAME`)
        _upgrading(version, "indexing the files' paths once (files_final_path)")
        db.execute(FINAL_PATH_INDEX)
        _upgrading(version, "indexed")
    if version < 7:  # the queued files only (a partial index): a few pages, whatever the history
        db.execute(CONNECTION_DUE_INDEX)
        _upgrading(version, "indexing the archived files by connection once (files_connection_archived)")
        db.execute(CONNECTION_DONE_INDEX)
    if version < SCHEMA_VERSION:
        db.execute(
            "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )


def _upgrading(version: int, step: str) -> None:
    """Log a step of upgrading an existing ledger (of this version; 0: a new one, which is not logged)."""
    if version:
        log.info("ledger.upgrade", step=step)
