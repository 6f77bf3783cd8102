"""History costs nothing: running totals kept by the ledger itself, no scan of history on the steady path,
the totals computed once when an older ledger is upgraded, and every page verified at a quiet moment.

(How long things take at a million archived files is measured in bench/history.py, not here.)"""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
from conftest import wait_for
from test_end_to_end import barcode_list

from gateway.core.states import FileState
from gateway.report import find, status
from gateway.state.check import LedgerCheck
from gateway.state.ledger import SCHEMA_VERSION, Ledger

DENIED = "31234009999990"  # the simulator fixture denies it
SCANNED_TABLES = ("files", "records", "items")


def scanned(db: sqlite3.Connection, statements: list[str]) -> list[str]:
    """The statements whose plan reads a whole history table (a SCAN of it, not a SEARCH)."""
    found = []
    for sql in dict.fromkeys(statements):
        if not sql.lstrip().upper().startswith("SELECT"):
            continue
        plan = " | ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        if any(f"SCAN {table}" in plan.split(" USING ")[0] or f"SCAN {table} " in plan for table in SCANNED_TABLES):
            found.append(f"{sql} -> {plan}")
    return found


@pytest.fixture
def history(site, simulator, daemon_factory):
    """A ledger written by the real service: archived files (one with a denied item) and a refused one."""
    for number in range(5):
        (site.source / f"list-{number}_barcode").write_bytes(barcode_list(number))
    (site.source / "denied_barcode").write_bytes(f"{DENIED}\n31234000000001\n".encode())
    (site.source / "junk_barcode").write_bytes(b"\x00\x01 not text\n")  # refused: binary, not a barcode list
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: len(site.archived()) == 6 and len(site.refused()) == 1, timeout=60, message="7 files finished")
    assert daemon.stop() == 0
    return site


def direct_counts(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())


def test_the_running_totals_agree_with_the_rows_after_a_real_run(history):
    ledger = Ledger(history.state / "gateway.db")
    try:
        assert (
            {state.value: count for state, count in ledger.files.counts().items()}
            == direct_counts(ledger.db.connection)
            == {"archived": 6, "refused": 1}
        )
        assert ledger.alerts.finished_by_source() == {("print", FileState.ARCHIVED): 6, ("print", FileState.REFUSED): 1}
        assert ledger.alerts.denied_items_by_source() == {"print": 1}
        report = status.collect(ledger)
        assert report["counts"]["archived"] == 6 and report["counts"]["refused"] == 1
    finally:
        ledger.close()


def test_an_older_ledger_gets_its_totals_counted_once_at_the_upgrade(history):
    database = history.state / "gateway.db"
    with sqlite3.connect(database) as db:  # as the release before wrote it: schema 4, no totals, no triggers
        for trigger in ("file_totals_insert", "file_totals_update", "file_totals_delete"):
            db.execute(f"DROP TRIGGER {trigger}")
        db.execute("DROP TABLE file_totals")
        db.execute("DROP INDEX files_done")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    ledger = Ledger(database)
    try:
        assert ledger.files.counts() == {FileState.ARCHIVED: 6, FileState.REFUSED: 1}
        assert ledger.alerts.denied_items_by_source() == {"print": 1}
        row_id = ledger.files.begin_claim("print", "new_barcode", "/print/new_barcode", 15, time.time())
        assert ledger.files.counts()[FileState.CLAIMING] == 1, "kept by the triggers from then on"
        ledger.files.forget(row_id)
        assert FileState.CLAIMING not in ledger.files.counts()
        assert ledger.db.get_meta("schema_version") == str(SCHEMA_VERSION)
    finally:
        ledger.close()


def test_status_find_and_the_services_questions_search_and_never_scan_history(history):
    ledger = Ledger(history.state / "gateway.db")
    statements: list[str] = []
    ledger.db.connection.set_trace_callback(statements.append)
    try:
        status.collect(ledger)
        find.find(ledger, "31234000000001", [history.archive])
        ledger.files.counts()
        ledger.alerts.finished_by_source()
        ledger.alerts.denied_items_by_source()
        ledger.files.count_finished_since(FileState.ARCHIVED, time.time() - 86400)
        ledger.files.problems(limit=1)
        ledger.files.oldest_open()
        ledger.files.in_state(FileState.QUEUED)
        ledger.files.next_due_at()
        ledger.files.next_placement_due()
        assert len(statements) > 10, "the trace saw the questions"
        ledger.db.connection.set_trace_callback(None)
        assert scanned(ledger.db.connection, statements) == []
        assert scanned(ledger.db.connection, ["SELECT state, COUNT(*) FROM files GROUP BY state"]), "the check can fail"
    finally:
        ledger.close()


def test_a_damaged_page_found_at_a_quiet_moment_ends_the_check_as_a_damaged_ledger(tmp_path):
    database = tmp_path / "gateway.db"
    ledger = Ledger(database)
    for number in range(400):
        ledger.files.begin_claim("print", f"file-{number:04d}-" + "x" * 200, f"/print/{number}", 15, 1.0)
    ledger.close()
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size, pages = db.execute("PRAGMA page_size").fetchone()[0], db.execute("PRAGMA page_count").fetchone()[0]
    assert pages > 10
    with open(database, "r+b") as handle:  # one page of the files table, in the middle
        handle.seek(page_size * (pages // 2))
        handle.write(os.urandom(page_size))
    Ledger(database).close()  # opening does not read every page: the service starts

    check = LedgerCheck(database, first_seconds=0, every_seconds=3600)
    check.start()
    wait_for(lambda: check.ended, timeout=30, message="the check to end")
    assert isinstance(check.fatal, sqlite3.DatabaseError), check.fatal


def test_a_sound_ledger_is_verified_and_the_check_rests(tmp_path):
    database = tmp_path / "gateway.db"
    Ledger(database).close()
    check = LedgerCheck(database, first_seconds=0, every_seconds=3600)
    check.start()
    try:
        wait_for(lambda: check.verified, timeout=30, message="a clean pass")
        assert check.fatal is None and check.fault is None and not check.ended, "it rests until the next pass"
    finally:
        check.stop()
        check.join(10)
