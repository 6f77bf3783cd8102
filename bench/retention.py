"""Benchmark: retention over years of history. The first pass over a large ledger, then a day's pass.

It builds a ledger of N archived files (1,000,000 by default: five and a half years at 500 a
day) with their records and items, and an archive_dir with a (empty) day folder for each day,
then runs gateway.archive.retention as the service does (passes of at most PRUNE_PASS_SECONDS, one after
another) with retention_days = 30, and measures:
  first pass      until every day older than 30 days is removed and its rows compacted, and the
                  freed pages given back: wall time, passes, the longest compaction batch and
                  vacuum step (each one transaction: what an upload may wait behind)
  ledger bytes    before, after, and after one more day (500 files in, a day out): it stays flat
  a day's pass    the next day's pass: one day removed
  find            `find` (in process) for an item of a removed day, and for a recent one

How the ledger is built (the documented bulk path): one model file goes through the ledger's own
transitions (claimed, its record and items stored, queued, sent, answered, placed, finished);
its row is then repeated in SQL up to N, each copy with its own id, name, times (500 a day,
ending now), final path in that day's folder, request number, five barcodes out of a collection
of 100,000 items (so items are requested again, as in a real collection), and CaiaSoft's answer
naming those barcodes. The day folders are empty: the figures are the ledger's, not the file
system's.

Prints a table and one JSON line of figures. `--rows 100000` picks the size; `--smoke` is a tiny
run for the tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.archive.folders import Folder  # noqa: E402
from gateway.archive.retention import Retention  # noqa: E402
from gateway.core import logs
from gateway.core.printfile import Record  # noqa: E402
from gateway.core.states import Verdict  # noqa: E402
from gateway.report import find  # noqa: E402
from gateway.runtime.service import PRUNE_PASS_SECONDS  # noqa: E402
from gateway.state.ledger import Ledger  # noqa: E402

PER_DAY = 500
RETENTION_DAYS = 30
COLLECTION = 100_000
BATCH = 100_000


class TimedLedger(Ledger):
    """The ledger, timing each transaction retention runs: a compaction batch, a vacuum step."""

    longest_compaction = 0.0
    longest_vacuum = 0.0

    def compact(self, folder: str, removed_at: float) -> int:
        began = time.monotonic()
        try:
            return super().compact(folder, removed_at)
        finally:
            self.longest_compaction = max(self.longest_compaction, time.monotonic() - began)

    def vacuum_step(self) -> int:
        began = time.monotonic()
        try:
            return super().vacuum_step()
        finally:
            self.longest_vacuum = max(self.longest_vacuum, time.monotonic() - began)


def barcode_sql(index: int) -> str:
    return f"printf('31234%09d', (n * 5 + {index}) % {COLLECTION})"


def build(root: Path, rows: int, now: float, per_day: int) -> tuple[Path, Folder]:
    """A ledger of `rows` archived files ending at now, and the archive with a folder per day."""
    database = root / "gateway.db"
    archive = Folder(root / "archive")
    step = 86400 / per_day
    start = now - rows * step
    clock = [start]
    ledger = Ledger(database, clock=lambda: clock[0])
    try:
        row_id = ledger.files.begin_claim("print", "model.xml", "/aleph/print/model.xml", 2048, start)
        ledger.files.claimed(row_id)
        ledger.files.moved_when_taken(row_id)
        record = Record(
            number=1,
            line=1,
            header="## - XML_XSL",
            form_name="hold-request-slip",
            barcodes=tuple(f"3123400000000{i}" for i in range(5)),
            request_number="REQ",
            request_id="ID",
            pickup_location="MAIN",
        )
        ledger.items.store_records([row_id], [(row_id, record)])
        ledger.files.queued(row_id, "xml", "0" * 64, 2048, {"records": 1, "form_names": ["hold-request-slip"]})
        ledger.files.assign(row_id)
        ledger.files.answered(
            row_id,
            Verdict.ACCEPTED,
            "ok",
            http_status=200,
            uploaded=True,
            answer={
                "success": True,
                "error": "",
                "request_count": "5",
                "results": [{"item": f"3123400000000{i}", "deny": "N", "istatus": "Item Requested"} for i in range(5)],
            },
        )
        target = archive.choose("model.xml", dt.datetime.fromtimestamp(start))
        ledger.files.placing(row_id, target)
        ledger.files.finished(row_id, target)
        ledger.db.wait_for(ledger.db.durable())
    finally:
        ledger.close()
    import sqlite3

    db = sqlite3.connect(database)
    columns = [row[1] for row in db.execute("PRAGMA table_info(files)") if row[1] != "id"]
    results = ", ".join(
        f"json_object('item', {barcode_sql(i)}, 'deny', 'N', 'istatus', 'Item Requested')" for i in range(5)
    )
    changed = {
        "name": "'slip' || n || '.xml'",
        "origin": "'/aleph/print/slip' || n || '.xml'",
        "seen_at": ":start + n * :step",
        "claimed_at": ":start + n * :step",
        "uploaded_at": ":start + n * :step + 1",
        "finished_at": ":start + n * :step + 2",
        "released_at": ":start + n * :step + 2",
        "final_path": ":root || '/' || strftime('%Y/%m/%d', :start + n * :step, 'unixepoch', 'localtime') "
        "|| '/slip' || n || '.xml'",
        "answer": f"json_object('success', json('true'), 'error', '', 'request_count', '5', "
        f"'results', json_array({results}))",
    }
    select = ", ".join(changed.get(column, f"f.{column}") for column in columns)
    args = {"start": start, "step": step, "root": str(archive.root), "model": row_id}
    barcodes = "json_array(" + ", ".join(barcode_sql(i) for i in range(5)) + ")"
    for low in range(1, rows, BATCH):
        high = min(rows, low + BATCH)
        window = f"WITH RECURSIVE k(n) AS (SELECT {low} UNION ALL SELECT n + 1 FROM k WHERE n + 1 < {high}) "
        db.execute(
            f"INSERT INTO files (id, {', '.join(columns)}) {window}"
            f"SELECT :model + n, {select} FROM k JOIN files AS f ON f.id = :model",
            args,
        )
        db.execute(
            f"INSERT INTO records {window}SELECT :model + n, 1, 1, r.header, r.form_name, {barcodes}, "
            f"'REQ' || n, r.request_id, r.pickup_location, NULL, NULL "
            f"FROM k JOIN records AS r ON r.file_id = :model",
            args,
        )
        for index in range(5):
            db.execute(
                f"INSERT OR IGNORE INTO items (barcode, file_id, record) {window}"
                f"SELECT {barcode_sql(index)}, :model + n, 1 FROM k",
                args,
            )
        db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    day = dt.date.fromtimestamp(start)
    while day <= dt.date.fromtimestamp(now):
        (archive.root / f"{day:%Y/%m/%d}").mkdir(parents=True, exist_ok=True)
        day += dt.timedelta(days=1)
    return database, archive


def passes(retention: Retention, archive: Folder, days: int) -> tuple[int, int]:
    """Run passes as the service does until one finishes; return (passes, days removed)."""
    count = removed = 0
    while True:
        count += 1
        removed += len(retention.prune(archive, days, budget=PRUNE_PASS_SECONDS))
        if not retention.unfinished:
            return count, removed


def measure(work: Path, rows: int, per_day: int = PER_DAY, days: int = RETENTION_DAYS) -> dict[str, Any]:
    now = time.time()
    began = time.monotonic()
    database, archive = build(work, rows, now, per_day)
    built = time.monotonic() - began
    figures: dict[str, Any] = {
        "rows": rows,
        "per_day": per_day,
        "retention_days": days,
        "build_s": round(built, 1),
        "bytes_before": database.stat().st_size,
    }
    wall = [now]
    ledger = TimedLedger(database)
    try:
        ledger.prunes.mark_clock(now)
        retention = Retention(ledger, wall=lambda: wall[0])
        began = time.monotonic()
        count, removed = passes(retention, archive, days)
        figures.update(
            first_pass_s=round(time.monotonic() - began, 2),
            passes=count,
            days_removed=removed,
            longest_compaction_ms=round(ledger.longest_compaction * 1000, 1),
            longest_vacuum_step_ms=round(ledger.longest_vacuum * 1000, 1),
        )
        ledger.db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        figures["bytes_after"] = database.stat().st_size
        figures["rows_left"] = ledger.db.connection.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        figures["retired_items"] = ledger.db.connection.execute("SELECT COUNT(*) FROM retired").fetchone()[0]
        old = f"31234{0:09d}"  # the model's first barcode: an item of the oldest day
        began = time.monotonic()
        found = find.find(ledger, old, [])
        figures["find_removed_ms"] = round((time.monotonic() - began) * 1000, 2)
        figures["find_removed_says"] = bool(found) and all(
            entry["pruned_at"] for entry in found if not entry["path_exists"]
        )
        # the next day: 500 files in (copies of today's), one day out
        next_day = dt.date.fromtimestamp(now) + dt.timedelta(days=1)
        (archive.root / f"{next_day:%Y/%m/%d}").mkdir(parents=True, exist_ok=True)
        last = ledger.db.connection.execute("SELECT MAX(id) FROM files").fetchone()[0]
        with ledger.db.transaction() as db:  # the last day's files again, with their records and items
            columns = [row[1] for row in db.execute("PRAGMA table_info(files)")]
            shift = {
                "id": f"id + {per_day}",
                "seen_at": "seen_at + 86400",
                "claimed_at": "claimed_at + 86400",
                "uploaded_at": "uploaded_at + 86400",
                "finished_at": "finished_at + 86400",
                "released_at": "released_at + 86400",
                "name": "name || '.next'",
                "final_path": f"'{archive.root}/{next_day:%Y/%m/%d}/' || id || '.xml'",
            }
            db.execute(
                f"INSERT INTO files ({', '.join(columns)}) SELECT "
                f"{', '.join(shift.get(column, column) for column in columns)} FROM files "
                f"WHERE id > ? ORDER BY id",
                (last - per_day,),
            )
            db.execute(
                f"INSERT INTO records SELECT file_id + {per_day}, number, line, header, form_name, barcodes, "
                "request_number, request_id, pickup_location, problem, problem_line FROM records "
                "WHERE file_id > ?",
                (last - per_day,),
            )
            db.execute(
                f"INSERT INTO items SELECT barcode, file_id + {per_day}, record, sidecar FROM items WHERE file_id > ?",
                (last - per_day,),
            )
        wall[0] = now + 86400
        ledger.longest_compaction = ledger.longest_vacuum = 0.0
        retention = Retention(ledger, wall=lambda: wall[0])  # the next day's start: the ledger's time is that day
        began = time.monotonic()
        passes(retention, archive, days)
        figures["day_pass_s"] = round(time.monotonic() - began, 3)
        figures["day_longest_transaction_ms"] = round(max(ledger.longest_compaction, ledger.longest_vacuum) * 1000, 1)
        ledger.db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        figures["bytes_next_day"] = database.stat().st_size
    finally:
        ledger.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny run (2,000 rows, 100 a day, retention_days = 5), for the tests"
    )
    args = parser.parse_args()
    rows = 2000 if args.smoke else args.rows
    work = Path(tempfile.mkdtemp(prefix="caiasoft-retention-bench-"))
    logs.setup(work / "log", console=False)  # the pass's log lines go to work/log/gateway.log, not the table
    try:
        figures = measure(work, rows, *((100, 5) if args.smoke else ()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    megabytes = 1024 * 1024
    print(
        f"ledger of {rows:,} archived files ({figures['bytes_before'] / megabytes:.0f} MB), retention_days = "
        f"{figures['retention_days']}, {figures['per_day']} files a day"
    )
    print(
        f"first pass: {figures['first_pass_s']} s in {figures['passes']} pass(es) of at most "
        f"{PRUNE_PASS_SECONDS:.0f} s, {figures['days_removed']} days; longest compaction batch "
        f"{figures['longest_compaction_ms']} ms, vacuum step {figures['longest_vacuum_step_ms']} ms"
    )
    print(
        f"ledger after: {figures['bytes_after'] / megabytes:.1f} MB ({figures['rows_left']:,} full rows, "
        f"{figures['retired_items']:,} items kept compact); the next day: "
        f"{figures['bytes_next_day'] / megabytes:.1f} MB"
    )
    print(
        f"a day's pass: {figures['day_pass_s']} s, longest transaction {figures['day_longest_transaction_ms']} ms; "
        f"find for an item of a removed day: {figures['find_removed_ms']} ms"
    )
    print(json.dumps({"retention": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
