"""The ledger's tables, and bringing an older ledger up to the current schema.

The files, meta, checkpoints and feed_seen tables are declared here; the records and items
tables in gateway/itemindex.py, the alerts and counters tables in gateway/monitorstore.py, the
pruned table in gateway/prunestore.py (created on open, like monitorstore's).
Every migration step only adds: tables are created if missing, columns added if missing.
"""

from __future__ import annotations

import sqlite3

from gateway import itemindex, monitorstore, prunestore

SCHEMA_VERSION = 4  # 2: records and items (gateway/itemindex.py); 3: verdict, problem, place_failures;
                    # 4: alerts and counters (gateway/monitorstore.py; its tables are created on open)

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

ADDED_COLUMNS = {  # columns of SCHEMA_VERSION 3, added to an older ledger's files table when it is opened
    "verdict": "TEXT",
    "problem": "TEXT",
    "place_failures": "INTEGER NOT NULL DEFAULT 0",
}


def create(db: sqlite3.Connection) -> None:
    """Create the tables and indexes a ledger lacks; mark a new, empty ledger as keeping local originals."""
    db.executescript(FILES_SCHEMA + itemindex.SCHEMA + monitorstore.SCHEMA + prunestore.SCHEMA)
    if db.execute("SELECT NOT EXISTS (SELECT 1 FROM files)").fetchone()[0]:  # nothing from before
        db.execute("INSERT OR IGNORE INTO meta VALUES ('local_originals_kept', '1')")


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
    for column, declaration in ADDED_COLUMNS.items():  # version 3
        if column not in present:
            db.execute(f"ALTER TABLE files ADD COLUMN {column} {declaration}")
    if version < SCHEMA_VERSION:
        db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET "
                   "value = excluded.value", (str(SCHEMA_VERSION),))
