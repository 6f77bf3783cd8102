"""Benchmark: ALEPH batch print files (memory and time to validate a big one) and `find` on a big index.

  validate  a print file of --megabytes (default 50) of small hold-request records, validated as the
            pipeline does it (validation.inspect, each record spooled into a ledger), in a child process;
            its peak RSS is compared with the same child validating a one-record file
  find      a ledger of --find-files files of 3 records each: one lookup in process, and the
            `caiasoft-gateway find` command (interpreter start-up included)
Prints a table and one JSON line of figures. `--smoke` runs tiny sizes (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from gateway.cli import demo  # noqa: E402  (the checkout's gateway, also when run as a script)
from gateway.core.printfile import Record  # noqa: E402
from gateway.report import find  # noqa: E402
from gateway.state.ledger import Ledger  # noqa: E402

PYTHON = sys.executable
BATCH = 20_000  # files per ledger transaction while building the find index

# Run in a child, so its peak RSS is the validation's own: argv = print file, ledger path.
VALIDATE = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from gateway.intake import validation
from gateway.state.itemindex import RecordSpool
from gateway.state.ledger import Ledger
path, ledger = Path(sys.argv[1]), Ledger(Path(sys.argv[2]))
row_id = ledger.files.begin_claim("bench", path.name, str(path), path.stat().st_size, 0.0)
spool = RecordSpool(ledger.items)
spool.start(row_id)
started = time.perf_counter()
found = validation.inspect(path, path.name, 60 * 1024 * 1024, on_record=spool.add)
spool.flush()
print(json.dumps({"records": found.details["records"], "seconds": time.perf_counter() - started,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "indexed": ledger.items.record_count(row_id)}))
"""


def small_record(number: int) -> bytes:
    return (
        f'## - XML_XSL\n<?xml version="1.0"?>\n<printout>\n<form-name>hold-request-slip</form-name>\n'
        f"<section-01>\n<z30-barcode>3123409{number:07d}</z30-barcode>\n"
        f"<z37-request-number>{number:09d}</z37-request-number>\n"
        f"<z37-pickup-location>Main Library Circulation Desk</z37-pickup-location>\n"
        f"</section-01>\n</printout>\n"
    ).encode()


def write_print_file(path: Path, megabytes: float) -> int:
    """Write a print file of about megabytes of small records, a record at a time; return the record count."""
    limit, size, count = int(megabytes * 1024 * 1024), 0, 0
    with open(path, "wb") as handle:
        while size < limit:
            count += 1
            data = small_record(count)
            handle.write(data)
            size += len(data)
    return count


def validate(path: Path, work: Path) -> dict:
    ledger = work / f"validate-{path.name}.db"
    result = subprocess.run(
        [PYTHON, "-c", VALIDATE, str(path), str(ledger), str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return json.loads(result.stdout)


def validate_bench(work: Path, megabytes: float) -> dict:
    big, small = work / "weekend.hold_req", work / "one.hold_req"
    records = write_print_file(big, megabytes)
    small.write_bytes(small_record(1))
    baseline, measured = validate(small, work), validate(big, work)
    assert measured["records"] == records == measured["indexed"], measured
    size_mb = big.stat().st_size / 1024 / 1024
    return {
        "file_mb": round(size_mb, 1),
        "records": records,
        "seconds": round(measured["seconds"], 2),
        "mb_per_s": round(size_mb / measured["seconds"], 1),
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "baseline_rss_mb": round(baseline["peak_rss_mb"], 1),
        "rss_growth_mb": round(measured["peak_rss_mb"] - baseline["peak_rss_mb"], 1),
    }


@dataclass(frozen=True)
class _Entry:
    name: str
    origin: str
    size: int
    mtime: float


def find_bench(work: Path, files: int) -> dict:
    """A ledger of files x 3 records; time one lookup in process and the command."""
    database = work / "find" / "state" / "gateway.db"
    database.parent.mkdir(parents=True)
    ledger = Ledger(database)
    started = time.perf_counter()
    for first in range(0, files, BATCH):
        count = min(BATCH, files - first)
        ids = ledger.files.begin_claims(
            "print", [_Entry(f"run{first + n}.hold_req", f"/p/run{first + n}.hold_req", 1, 0.0) for n in range(count)]
        )
        ledger.items.store_records(
            ids,
            [
                (file_id, Record(number=k, line=k, barcodes=(f"39{3 * (first + n) + k:012d}",)))
                for n, file_id in enumerate(ids)
                for k in (1, 2, 3)
            ],
        )
    built = time.perf_counter() - started
    wanted = f"39{3 * (files // 2) + 2:012d}"
    find.backfill(ledger, [])  # the index is new: nothing older to read
    started = time.perf_counter()
    hits = find.find(ledger, wanted, [])
    lookup_ms = (time.perf_counter() - started) * 1000
    ledger.close()
    assert len(hits) == 1 and hits[0]["record"] == 2, hits
    config = demo.write_config(work / "find", "https://caiasoft.invalid", "bench-key-0123456789")  # state/ as above
    started = time.perf_counter()
    command = subprocess.run(
        [PYTHON, "-m", "gateway", "-c", str(config), "find", wanted, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    command_ms = (time.perf_counter() - started) * 1000
    assert command.returncode == 0 and json.loads(command.stdout)[0]["record"] == 2, command.stderr
    return {
        "files": files,
        "items": 3 * files,
        "build_s": round(built, 1),
        "lookup_ms": round(lookup_ms, 2),
        "command_ms": round(command_ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, default=50.0, help="size of the big print file (default 50)")
    parser.add_argument("--find-files", type=int, default=200_000, help="files in the find ledger (default 200000)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script works")
    args = parser.parse_args()
    if args.smoke:
        args.megabytes, args.find_files = 0.5, 2000
    work = Path(tempfile.mkdtemp(prefix="caiasoft-gateway-bench-print-"))
    try:
        figures = {"validate": validate_bench(work, args.megabytes), "find": find_bench(work, args.find_files)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    v, f = figures["validate"], figures["find"]
    rows = [
        (
            f"validate a {v['file_mb']} MB print file, {v['records']} records",
            f"{v['seconds']} s",
            f"{v['mb_per_s']} MB/s, every record indexed in the ledger",
        ),
        (
            "  peak RSS",
            f"{v['peak_rss_mb']} MB",
            f"{v['rss_growth_mb']} MB above validating a one-record file ({v['baseline_rss_mb']} MB)",
        ),
        (
            f"find in a ledger of {f['files']} files ({f['items']} items)",
            f"{f['lookup_ms']} ms",
            "target: well under a second",
        ),
        ("  caiasoft-gateway find (a new process)", f"{f['command_ms']} ms", "interpreter start-up included"),
    ]
    width = max(len(row[0]) for row in rows)
    for label, value, note in rows:
        print(f"{label:<{width}}  {value:>10}  {note}")
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
