"""Benchmark: what years of history cost. The same service and commands on a small and a large ledger.

For each size N (30 and 1,000,000 by default) it builds a ledger of N archived files, with
their records and items, then measures:
  idle CPU        the running service with nothing to do, over --idle seconds (% of one core)
  status          `caiasoft-gateway status` and `status --json`, wall time (median of 5)
  find            `caiasoft-gateway find BARCODE` for an item archived years ago (median of 5)
  retry --all     with nothing in error_dir (median of 5)
  first archived  from the service's start until a file dropped before it is archived
  RSS             the service's peak resident memory

How the ledger is built (the documented bulk path): the real gateway sends the sample files
(two slips and a cir-12 barcode list, 30 files in all) to the CaiaSoft simulator, so every
row, record and item is written by the gateway's own code. Those 30 archived files are then
repeated in SQL up to N: each copy keeps every column of its model and changes only the id,
the name (a number suffix), the times (spread evenly over the five years before now) and the
barcodes (the copy's number appended), so `find` has one file per barcode, as in real life.
The archive folders are not copied: the figures are the ledger's, not the file system's.

Prints a table and one JSON line of figures. `--rows 30,100000` picks the sizes; `--smoke` is a
tiny run for the tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PYTHON, ledger_value, machine, make_files, start_gateway, start_simulator, wait_until, write_config  # noqa: E402

YEARS = 5
MODEL_FILES = 30
REPEAT = 5  # runs of each command; the median is shown


def build_ledger(root: Path, url: str, rows: int) -> tuple[Path, str]:
    """A ledger of `rows` archived files under root; return the config file and an old barcode."""
    source = root / "print"
    config = write_config(root, url, source, settle=0.2)
    make_files(source, MODEL_FILES)
    gateway = start_gateway(config, root)
    try:
        wait_until(
            lambda: ledger_value(root, "SELECT COUNT(*) FROM files WHERE state = 'archived'") == MODEL_FILES,
            timeout=300,
            what="the model files to be archived",
        )
    finally:
        gateway.stop()
    database = root / "state" / "gateway.db"
    with sqlite3.connect(database) as db:
        repeat(db, rows)
        archived = db.execute("SELECT COUNT(*) FROM files WHERE state = 'archived'").fetchone()[0]
        if archived != rows:
            raise RuntimeError(f"the ledger holds {archived} archived files, not {rows}")
        old = db.execute(
            "SELECT barcode FROM items ORDER BY file_id LIMIT 1 OFFSET ?", (max(0, rows // 10),)
        ).fetchone()[0]
    return config, old


def repeat(db: sqlite3.Connection, rows: int) -> None:
    """Copy the model files (and their records and items) until the ledger holds `rows` archived files."""
    models = [row[0] for row in db.execute("SELECT id FROM files WHERE state = 'archived' ORDER BY id")]
    copies = rows - len(models)
    if copies <= 0:
        return
    columns = [row[1] for row in db.execute("PRAGMA table_info(files)") if row[1] != "id"]
    now = time.time()
    span = YEARS * 365 * 86400
    first = db.execute("SELECT MAX(id) FROM files").fetchone()[0] + 1
    db.execute("CREATE TEMP TABLE model (slot INTEGER PRIMARY KEY, id INTEGER)")
    db.executemany("INSERT INTO model VALUES (?, ?)", enumerate(models))
    changed = {
        "name": "name || '.' || n",
        "origin": "origin || '.' || n",
        "seen_at": ":start + n * :step",
        "claimed_at": ":start + n * :step",
        "uploaded_at": ":start + n * :step + 0.1",
        "finished_at": ":start + n * :step + 0.2",
        "released_at": "CASE WHEN released_at IS NULL THEN NULL ELSE :start + n * :step + 0.2 END",
        "final_path": "final_path || '.' || n",
    }
    select = ", ".join(changed.get(column, column) for column in columns)
    args = {"start": now - span, "step": span / copies, "first": first, "count": len(models)}
    batch = 100_000
    for low in range(0, copies, batch):
        high = min(copies, low + batch)
        window = f"WITH RECURSIVE k(n) AS (SELECT {low} UNION ALL SELECT n + 1 FROM k WHERE n + 1 < {high}) "
        join = "FROM k JOIN model ON model.slot = k.n % :count JOIN files AS f ON f.id = model.id"
        db.execute(f"INSERT INTO files (id, {', '.join(columns)}) {window}SELECT :first + n, {select} {join}", args)
        db.execute(
            f"INSERT INTO records {window}SELECT :first + n, r.number, r.line, r.header, r.form_name, "
            f"r.barcodes, r.request_number, r.request_id, r.pickup_location, r.problem, r.problem_line "
            f"FROM k JOIN model ON model.slot = k.n % :count JOIN records AS r ON r.file_id = model.id",
            args,
        )
        db.execute(
            f"INSERT INTO items {window}SELECT i.barcode || '-' || n, :first + n, i.record, i.sidecar "
            f"FROM k JOIN model ON model.slot = k.n % :count JOIN items AS i ON i.file_id = model.id",
            args,
        )
        db.commit()
    db.execute("DROP TABLE model")
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a service that ran for years has it: its log written back


def ledger_bytes(root: Path) -> int:
    """gateway.db with its write-ahead log."""
    return sum(path.stat().st_size for path in (root / "state").glob("gateway.db*"))


def command(config: Path, *args: str) -> float:
    """Seconds one gateway command takes, median of REPEAT runs."""
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        subprocess.run([PYTHON, "-m", "gateway", "-c", str(config), *args], capture_output=True, timeout=600)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def service(config: Path, root: Path, idle: float) -> dict[str, float]:
    """Start the service with one new file waiting: time to archive it, then idle CPU, then RSS."""
    before = ledger_value(root, "SELECT COUNT(*) FROM files WHERE state = 'archived'")
    make_files(root / "print", 1)
    (root / "print" / "hold-request-slip-000000.xml").rename(root / "print" / "new-slip.xml")
    gateway = start_gateway(config, root)
    started = time.monotonic()
    try:
        wait_until(
            lambda: ledger_value(root, "SELECT COUNT(*) FROM files WHERE state = 'archived'") == before + 1,
            timeout=600,
            what="the new file to be archived",
        )
        first = time.monotonic() - started
        time.sleep(min(idle, 5))  # let start-up work (backfills, first ticks) finish before idling is measured
        cpu = gateway.cpu_seconds()
        time.sleep(idle)
        idle_cpu = (gateway.cpu_seconds() - cpu) / idle * 100
        rss = gateway.peak_rss_mb()
    finally:
        gateway.stop()
    return {"first_archived_s": round(first, 2), "idle_cpu_percent": round(idle_cpu, 2), "rss_mb": round(rss, 1)}


def measure(work: Path, url: str, rows: int, idle: float) -> dict[str, Any]:
    root = work / f"ledger-{rows}"
    root.mkdir()
    started = time.monotonic()
    config, barcode = build_ledger(root, url, rows)
    built = time.monotonic() - started
    figures: dict[str, Any] = {
        "rows": rows,
        "build_s": round(built, 1),
        "ledger_mb": round(ledger_bytes(root) / 2**20, 1),
    }
    figures["status_s"] = round(command(config, "status"), 3)
    figures["status_json_s"] = round(command(config, "status", "--json"), 3)
    figures["find_s"] = round(command(config, "find", barcode), 3)
    figures["retry_all_s"] = round(command(config, "retry", "--all"), 3)
    figures |= service(config, root, idle)
    return figures


def print_table(sizes: list[dict[str, Any]]) -> None:
    labels = [
        ("idle service CPU (% of a core)", "idle_cpu_percent"),
        ("status (s)", "status_s"),
        ("status --json (s)", "status_json_s"),
        ("find BARCODE (s)", "find_s"),
        ("retry --all, nothing in error (s)", "retry_all_s"),
        ("start until a new file is archived (s)", "first_archived_s"),
        ("RSS (MB)", "rss_mb"),
        ("ledger size (MB)", "ledger_mb"),
    ]
    header = f"{'figure':40}" + "".join(f"{format(size['rows'], ',') + ' rows':>16}" for size in sizes)
    print(header)
    for label, key in labels:
        print(f"{label:40}" + "".join(f"{size[key]:>16}" for size in sizes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="30,1000000", help="ledger sizes, comma-separated")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle service measured")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the tests")
    parser.add_argument("--keep", action="store_true", help="keep the ledgers (their folder is printed)")
    args = parser.parse_args()
    rows = [30, 300] if args.smoke else [int(size) for size in args.rows.split(",")]
    idle = 1.0 if args.smoke else args.idle
    work = Path(tempfile.mkdtemp(prefix="gateway-history-"))
    simulator, url = start_simulator("caiasoft", work)
    try:
        sizes = [measure(work, url, size, idle) for size in rows]
    finally:
        simulator.stop()
        if args.keep:
            print(f"ledgers kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(sizes)
    print(json.dumps({"machine": machine(), "history": sizes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
