"""Benchmark: what years of history cost. The same service and commands on a small and a large ledger.

For each size N (30 and 1,000,000 by default) it builds a ledger of N archived files, with
their records and items, then measures:
  idle CPU        the running service with nothing to do, over --idle seconds (% of one core)
  status          `caiasoft-gateway status` and `status --json`, wall time (median of 5)
  find            `caiasoft-gateway find BARCODE` for an item archived years ago (median of 5)
  retry --all     with nothing in error_dir (median of 5)
  first archived  from the service's start until a file dropped before it is archived
  RSS             the service's peak resident memory
  staff page      the read-only page (gateway/web) served by a real WebServer on loopback in this
                  process: Today (GET /, with its 14-day chart), Find an item (GET /find?barcode=
                  for the old item `find` looks up) and One file (GET /file/ID for the model file
                  with the most records, its text on disk); each --page-requests times after one
                  warm-up, one request per connection as the page serves them: median and worst,
                  from connect to the last byte; and the server's very first request (GET /, which
                  opens the ledger and compiles the templates). Target: 200 ms at a million files.

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
import http.client
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
from run import (  # noqa: E402
    PYTHON,
    free_port,
    ledger_value,
    machine,
    make_files,
    start_gateway,
    start_simulator,
    wait_until,
    write_config,
)

YEARS = 5
MODEL_FILES = 30
REPEAT = 5  # runs of each command; the median is shown
PAGE_REQUESTS = 20  # requests to each staff page, after one warm-up; the median and the worst are shown
PAGE_TARGET_MS = 200  # the staff page's answer at a million archived files (issue 24)
PAGES = (("GET / (Today, chart)", "today"), ("GET /find?barcode=", "find"), ("GET /file/ID", "file"))


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


def staff_page(config: Path, root: Path, barcode: str, requests: int) -> dict[str, float]:
    """The staff page's answer times: a real WebServer on loopback, on a copy of the config with a [web] table."""
    from gateway.config.loader import load
    from gateway.web.server import WebServer

    web_config = root / "gateway-web.toml"
    web_config.write_text(config.read_text() + f'\n[web]\nlisten = "127.0.0.1:{free_port()}"\n')
    found = ledger_value(root, f"SELECT file_id FROM items WHERE barcode = '{barcode}'")
    biggest = ledger_value(
        root,
        "SELECT file_id FROM records WHERE file_id IN (SELECT id FROM files ORDER BY id LIMIT "
        f"{MODEL_FILES}) GROUP BY file_id ORDER BY COUNT(*) DESC, file_id LIMIT 1",
    )
    pages = {
        "today": ("/", "<svg"),  # the 14-day chart is drawn
        "find": (f"/find?barcode={barcode}", f'href="/file/{found}"'),  # the file that carried it is found
        "file": (f"/file/{biggest}", "<pre"),  # its text is shown
    }
    server = WebServer(load(web_config)).start()
    figures: dict[str, float] = {}
    try:
        for page, (path, shown) in pages.items():
            first, *times = [page_request(server.port, path, shown) for _ in range(requests + 1)]  # one warm-up
            if page == "today":  # the server's first request: it opens the ledger and compiles the templates
                figures["page_first_ms"] = round(first * 1000, 1)
            figures[f"page_{page}_median_ms"] = round(statistics.median(times) * 1000, 1)
            figures[f"page_{page}_worst_ms"] = round(max(times) * 1000, 1)
    finally:
        server.stop()
    return figures


def page_request(port: int, path: str, shown: str) -> float:
    """Seconds one GET of the staff page takes, from connect to its last byte; RuntimeError unless it answers
    200 with `shown` in the page."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        body = answer.read()
    finally:
        connection.close()
    elapsed = time.perf_counter() - started
    if answer.status != 200 or shown.encode() not in body:
        raise RuntimeError(f"the staff page answered {answer.status} to GET {path} without {shown!r}: {body[:500]!r}")
    return elapsed


def measure(work: Path, url: str, rows: int, idle: float, page_requests: int) -> dict[str, Any]:
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
    figures |= staff_page(config, root, barcode, page_requests)
    figures |= service(config, root, idle)
    return figures


def print_table(sizes: list[dict[str, Any]], page_requests: int) -> None:
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
    print(f"{'page: first request (opens ledger), ms':40}" + "".join(f"{size['page_first_ms']:>16}" for size in sizes))
    for label, page in PAGES:
        print(
            f"{'page ' + label + ', ms':40}"
            + "".join(
                f"{str(size[f'page_{page}_median_ms']) + ' / ' + str(size[f'page_{page}_worst_ms']):>16}"
                for size in sizes
            )
        )
    verdict = ""
    million = [size for size in sizes if size["rows"] >= 1_000_000]
    if million:
        worst = max(million[0][f"page_{page}_worst_ms"] for _, page in PAGES)
        verdict = f": worst {worst} ms, " + ("met" if worst <= PAGE_TARGET_MS else "NOT met")
    print(
        f"staff page: median / worst of {page_requests} requests each after one warm-up; "
        f"target {PAGE_TARGET_MS} ms at 1,000,000 files{verdict}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="30,1000000", help="ledger sizes, comma-separated")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle service measured")
    parser.add_argument(
        "--page-requests",
        type=int,
        default=PAGE_REQUESTS,
        help=f"requests to each staff page, after one warm-up (default {PAGE_REQUESTS})",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the tests")
    parser.add_argument("--keep", action="store_true", help="keep the ledgers (their folder is printed)")
    args = parser.parse_args()
    rows = [30, 300] if args.smoke else [int(size) for size in args.rows.split(",")]
    idle = 1.0 if args.smoke else args.idle
    page_requests = 3 if args.smoke else args.page_requests
    work = Path(tempfile.mkdtemp(prefix="gateway-history-"))
    simulator, url = start_simulator("caiasoft", work)
    try:
        sizes = [measure(work, url, size, idle, page_requests) for size in rows]
    finally:
        simulator.stop()
        if args.keep:
            print(f"ledgers kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(sizes, page_requests)
    print(
        json.dumps(
            {
                "machine": machine(),
                "history": sizes,
                "page": {"requests": page_requests, "target_ms_at_1000000": PAGE_TARGET_MS},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
