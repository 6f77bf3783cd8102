"""Retention covers the ledger: removed days leave one compact row per item, error_dir stays unless asked,
the ledger stops growing, and a kill -9 during a prune leaves no half-removed day.

In-process tests drive gateway.archive.retention on a real ledger and real folders with an
injected clock; the end-to-end ones run the real daemon (under a stepped wall clock,
tests/faketime.py) and the real CLI.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for
from faketime import SteppedClock

from gateway.archive.folders import Folder
from gateway.archive.retention import Retention
from gateway.core.printfile import Record
from gateway.core.states import FileState, Verdict
from gateway.report import find
from gateway.state.ledger import Ledger
from gateway.state.retiredstore import FOLDER_ROWS

TODAY = dt.datetime(2026, 12, 12, 12, 0)


class Moment:
    """A wall clock a test sets (the ledger's and retention's)."""

    def __init__(self, when: dt.datetime):
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def place(
    ledger: Ledger,
    clock: Moment,
    folder: Folder,
    when: dt.datetime,
    name: str,
    barcodes: tuple[str, ...],
    request: str,
    verdict: Verdict = Verdict.ACCEPTED,
    reason: str = "ok",
) -> tuple[int, Path]:
    """A file taken, answered and placed on that day, through the ledger's own transitions; its id and path."""
    clock.now = when.timestamp()
    row_id = ledger.files.begin_claim("print", name, f"/aleph/print/{name}", 10, when.timestamp())
    ledger.files.claimed(row_id)
    ledger.files.moved_when_taken(row_id)
    ledger.items.store_records(
        [row_id], [(row_id, Record(number=1, line=1, barcodes=barcodes, request_number=request))]
    )
    ledger.files.queued(row_id, "xml", "0" * 64, 10, {})
    ledger.files.assign(row_id)
    answer = {
        "success": verdict == Verdict.ACCEPTED,
        "results": [
            {
                "item": barcode,
                "deny": "Y" if barcode.endswith("9") else "N",
                "istatus": "Item Not Available" if barcode.endswith("9") else "Item Requested",
            }
            for barcode in barcodes
        ],
    }
    ledger.files.answered(row_id, verdict, reason, http_status=200, answer=answer, uploaded=True)
    target = folder.choose(name, when)
    ledger.files.placing(row_id, target)
    target.write_bytes(b"<slip/>")
    ledger.files.finished(row_id, target)
    ledger.db.wait_for(ledger.db.durable())
    return row_id, target


@pytest.fixture
def history(tmp_path):
    """A ledger with two old archive days, an old error day and a recent archive day."""
    clock = Moment(TODAY)
    ledger = Ledger(tmp_path / "gateway.db", clock=clock)
    archive, errors = Folder(tmp_path / "archive"), Folder(tmp_path / "error")
    rows = {
        "a": place(
            ledger, clock, archive, dt.datetime(2026, 11, 2, 9), "a.xml", ("31234000000011", "31234000000029"), "REQ-A"
        ),
        "d": place(ledger, clock, archive, dt.datetime(2026, 11, 3, 9), "d.xml", ("31234000000011",), "REQ-D"),
        "r": place(
            ledger,
            clock,
            errors,
            dt.datetime(2026, 11, 2, 10),
            "r.xml",
            ("31234000000037",),
            "REQ-R",
            Verdict.REFUSED,
            "refused by CaiaSoft: Invalid Stop Code",
        ),
        "c": place(ledger, clock, archive, dt.datetime(2026, 12, 10, 9), "c.xml", ("31234000000011",), "REQ-C"),
    }
    clock.now = TODAY.timestamp()
    ledger.prunes.mark_clock(TODAY.timestamp())
    yield ledger, clock, archive, errors, rows
    ledger.close()


def retention(ledger: Ledger, clock: Moment) -> Retention:
    return Retention(ledger, wall=clock, monotonic=lambda: 0.0)


def test_removed_days_leave_one_compact_row_per_item_and_find_tells_removed_from_unknown(history):
    ledger, clock, archive, errors, rows = history
    removed = retention(ledger, clock).prune(archive, 30, errors, 0)

    assert removed == [rows["a"][1].parent, rows["d"][1].parent], "the two archive days older than 30 days"
    assert rows["c"][1].is_file(), "a recent day stays"
    assert rows["r"][1].is_file() and ledger.files.get(rows["r"][0]) is not None, "error_dir is kept unless asked"
    for key in ("a", "d"):
        assert ledger.files.get(rows[key][0]) is None and ledger.items.records_of(rows[key][0]) == [], (
            "the full rows are gone"
        )
    assert ledger.items.items_for("31234000000029") == []
    assert ledger.files.counts()[FileState.ARCHIVED] == 3, "all-time totals outlive compaction"
    assert ledger.retired.pruning() == [], "every day was finished"

    [denied] = find.find(ledger, "31234000000029", [])
    assert (denied["outcome"], denied["request_number"], denied["caiasoft"]) == (
        Verdict.ACCEPTED,
        "REQ-A",
        {"deny": "Y", "istatus": "Item Not Available"},
    )
    text = find.render("31234000000029", [denied])
    assert "path      (archived 2026-11-02, removed by retention on 2026-12-12)" in text
    assert str(rows["a"][1]) not in text, "never a path that is gone"
    assert "request REQ-A" in text and "Item Not Available (DENIED)" in text

    recent, older = find.find(ledger, "31234000000011", [])
    assert recent["path"] == str(rows["c"][1]) and recent["path_exists"], "newest first: the file still there"
    assert older["path"] == str(rows["d"][1]) and older["request_number"] == "REQ-D" and older["pruned_at"]
    assert older["earlier_removed"] == 1, "a.xml carried it too, and went"
    assert "1 earlier file(s) since 2026-11-02, also removed by retention" in find.render(
        "31234000000011", [recent, older]
    )

    [refused] = find.find(ledger, "31234000000037", [])
    assert refused["path_exists"] and refused["outcome"] == Verdict.REFUSED
    assert find.find(ledger, "31234000099999", []) == []
    assert "in no request file" in find.render("31234000099999", [])


def test_error_days_go_only_when_the_admin_asks(history):
    ledger, clock, archive, errors, rows = history
    retention(ledger, clock).prune(archive, 30, errors, 0)
    assert rows["r"][1].is_file()
    removed = retention(ledger, clock).prune(archive, 30, errors, 7)
    assert removed == [rows["r"][1].parent] and not rows["r"][1].exists()
    assert ledger.files.get(rows["r"][0]) is None
    [refused] = find.find(ledger, "31234000000037", [])
    assert refused["outcome"] == Verdict.REFUSED and refused["reason"] == "refused by CaiaSoft: Invalid Stop Code"
    assert "(refused 2026-11-02, removed by retention on 2026-12-12)" in find.render("31234000000037", [refused])
    assert ledger.files.counts()[FileState.REFUSED] == 1


def test_the_rows_of_days_removed_by_hand_are_compacted_unless_the_archive_looks_unmounted(history):
    ledger, clock, archive, errors, rows = history
    shutil.rmtree(archive.root)  # an empty folder: what an unmounted share's mount point looks like
    archive.root.mkdir()
    assert retention(ledger, clock).prune(archive, 30) == []
    assert ledger.files.get(rows["a"][0]) is not None, "nothing compacted on an empty archive_dir's word"

    rows["c"][1].parent.mkdir(parents=True)  # the recent day is back: the share is there, the old days are gone
    removed = retention(ledger, clock).prune(archive, 30)
    assert removed == [rows["a"][1].parent, rows["d"][1].parent]
    assert (
        ledger.files.get(rows["a"][0]) is None
        and ledger.files.get(rows["d"][0]) is None
        and ledger.files.get(rows["c"][0])
    )
    assert "(archived 2026-11-02, removed by retention on 2026-12-12)" in find.render(
        "31234000000029", find.find(ledger, "31234000000029", [])
    )


def test_a_mark_that_is_no_day_folder_of_ours_removes_nothing(history, tmp_path):
    """The ledger's marks are checked before anything is removed: a folder elsewhere, or a day that is a link."""
    ledger, clock, archive, errors, rows = history
    elsewhere = tmp_path / "elsewhere" / "2026" / "11" / "01"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keep.txt").write_text("not the gateway's")
    link = archive.root / "2026" / "11" / "05"
    link.symlink_to(elsewhere)
    for folder in (elsewhere, link):
        ledger.retired.begin_pruning(str(folder), clock.now)
    retention(ledger, clock).prune(archive, 30, errors, 0)
    assert (elsewhere / "keep.txt").is_file() and link.is_symlink()
    assert ledger.retired.pruning() == [], "the marks are dropped, with a warning"


def test_a_file_indexed_from_its_sidecar_before_the_index_is_told_removed_too(history):
    ledger, clock, archive, errors, rows = history
    old = archive.root / "2026" / "10" / "01"
    old.mkdir(parents=True)
    (old / "pre.xml").write_bytes(b"<x/>")
    (old / "pre.xml.json").write_text("{}")
    ledger.items.store_backfill([("31234000000045", 1, str(old / "pre.xml.json"))], done=True)
    retention(ledger, clock).prune(archive, 30, errors, 0)
    [entry] = find.find(ledger, "31234000000045", [archive.root, errors.root])
    assert entry["pruned_at"] and entry["outcome"] == Verdict.ACCEPTED
    assert "(archived 2026-10-01, removed by retention on 2026-12-12)" in find.render("31234000000045", [entry])


def test_a_new_ledger_gives_back_the_pages_compaction_freed(tmp_path):
    clock = Moment(dt.datetime(2026, 11, 2, 9))
    ledger = Ledger(tmp_path / "gateway.db", clock=clock)
    archive = Folder(tmp_path / "archive")
    try:
        assert ledger.db.connection.execute("PRAGMA auto_vacuum").fetchone()[0] == 2, (
            "INCREMENTAL, set before any table"
        )
        ids = ledger.files.begin_claims("print", [_Seen(f"f{number}.xml") for number in range(400)])
        with ledger.db.transaction() as db:  # 400 files archived on the old day, their records and items
            for row_id in ids:
                ledger.items.store_records(
                    [row_id],
                    [
                        (
                            row_id,
                            Record(
                                number=1, line=1, barcodes=(f"3123400{row_id:07d}",), header="## - XML_XSL " + "x" * 600
                            ),
                        )
                    ],
                )
                db.execute(
                    "UPDATE files SET state = 'archived', released_at = 1, finished_at = ?, final_path = ? "
                    "WHERE id = ?",
                    (clock.now, str(archive.root / "2026/11/02" / f"f{row_id}.xml"), row_id),
                )
        (archive.root / "2026/11/02").mkdir(parents=True)
        ledger.close()
        ledger = Ledger(tmp_path / "gateway.db", clock=clock)
        ledger.db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = (tmp_path / "gateway.db").stat().st_size
        clock.now = TODAY.timestamp()
        ledger.prunes.mark_clock(clock.now)
        retention(ledger, clock).prune(archive, 30)
        assert ledger.retired.free_pages() == 0, "every freed page given back"
        ledger.db.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        after = (tmp_path / "gateway.db").stat().st_size
        assert after < before / 2, (before, after)
        assert ledger.retired.retired_for(f"3123400{ids[-1]:07d}") is not None
    finally:
        ledger.close()


class _Seen:
    def __init__(self, name: str):
        self.name, self.origin, self.size, self.mtime = name, f"/aleph/print/{name}", 10, 0.0


def test_a_ledger_of_the_release_before_is_indexed_once_and_keeps_its_history(history, tmp_path):
    ledger, clock, archive, errors, rows = history
    ledger.close()
    with sqlite3.connect(tmp_path / "gateway.db") as db:  # as schema 5 wrote it
        db.execute("DROP INDEX files_final_path")
        db.execute("DROP TABLE retired")
        db.execute("DROP TABLE pruning")
        db.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    reopened = Ledger(tmp_path / "gateway.db", clock=clock)
    try:
        detail = [row[3] for row in reopened.db.connection.execute(f"EXPLAIN QUERY PLAN {FOLDER_ROWS}", ("a", "b", 1))]
        assert any("USING INDEX files_final_path" in step for step in detail), detail
        assert reopened.files.counts()[FileState.ARCHIVED] == 3 and reopened.files.get(rows["a"][0]) is not None
        assert retention(reopened, clock).prune(archive, 30) == [rows["a"][1].parent, rows["d"][1].parent]
    finally:
        reopened.close()


# -- the real daemon and CLI ---------------------------------------------------------------------------


def cli(site, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def barcode_list(number: int) -> bytes:
    """The same five barcodes for the same number, every day: the items a site requests again and again."""
    return "".join(f"3123450{number:04d}{line:03d}\n" for line in range(5)).encode()


def day_folder(root: Path, day: dt.date) -> Path:
    return root / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"


@pytest.mark.e2e
def test_a_week_of_service_runs_keeps_recent_days_errors_and_a_ledger_that_stops_growing(
    site, simulator, daemon_factory, tmp_path
):
    """Each day (a stepped wall clock) the service starts, prunes, takes 20 files and stops: 8 days."""
    site.write(simulator.url, extra="\n[archive]\nretention_days = 2\n")
    clock = SteppedClock(tmp_path)
    today = dt.date.today()
    sizes = []
    for number in range(8):
        clock.step(f"+{number}d")
        daemon = daemon_factory(site.config_file, env=clock.env())
        for file in range(20):
            (site.source / f"d{number}_{file}_barcode").write_bytes(barcode_list(file))
        if number == 0:
            (site.source / "d0_bad_barcode").write_bytes(b"\x00\x01\x02 not text\n")
        day = day_folder(site.archive, today + dt.timedelta(days=number))
        wait_for(
            lambda day=day: (
                day.is_dir()
                and len([p for p in day.iterdir() if not p.name.endswith(".json")]) == 20
                and not any(site.source.iterdir())
            ),
            timeout=60,
            message=f"day {number}'s files archived",
        )
        if number == 0:
            wait_for(lambda: len(site.refused()) == 1, timeout=30, message="the binary file refused")
        assert daemon.stop() == 0
        sizes.append((site.state / "gateway.db").stat().st_size)

    kept = sorted(p.relative_to(site.archive).as_posix() for p in site.archive.glob("*/*/*"))
    # a stop of a day is within what the clock may be ahead of the ledger's time (retention.CLOCK_AHEAD_SECONDS):
    # each start counts from the clock, so the run of day 7 removed the days older than 2 days before day 7
    assert kept == [f"{today + dt.timedelta(days=number):%Y/%m/%d}" for number in (5, 6, 7)], kept
    [refused] = site.refused()
    assert refused.name == "d0_bad_barcode" and refused.is_file(), "error_dir stays (error_retention_days = 0)"
    # 20 files a day through the ledger (about 30 KB of rows a day, 120 KB over the last three days without
    # compaction): it grows until retention starts removing (day 4), then no more; the pages of each removed
    # day are reused or given back (a few pages either way: where the B-trees split differs from day to day)
    assert sizes[-1] <= sizes[4] + 6 * 4096, sizes

    env = clock.env()
    gone = cli(site, "find", "31234500000000", env=env)  # carried every day: the recent files and the removed ones
    assert gone.returncode == 0 and "also removed by retention" in gone.stdout, gone.stdout
    day0 = f"{today:%Y-%m-%d}"
    report = json.loads(cli(site, "find", "31234500000000", "--json", env=env).stdout)
    assert [entry["path_exists"] for entry in report] == [True, True, True, False]
    removed = report[-1]
    assert removed["pruned_at"] and removed["earlier_removed"] == 4 and removed["first_taken"].startswith(day0)
    unknown = cli(site, "find", "31234599999999", env=env)
    assert unknown.returncode == 1 and "in no request file" in unknown.stdout
    status = json.loads(cli(site, "status", "--json", env=env).stdout)
    assert status["counts"]["archived"] == 160 and status["counts"]["refused"] == 1, "all-time totals"


def old_day_with_many_files(site, count: int) -> tuple[Path, int, Path]:
    """An archive day 40 days old holding count files, one of them with a ledger row; and a recent file."""
    clock = Moment(dt.datetime.now() - dt.timedelta(days=40))
    ledger = Ledger(site.state / "gateway.db", clock=clock)
    try:
        archive, errors = Folder(site.archive), Folder(site.error)
        when = dt.datetime.fromtimestamp(clock.now)
        row_id, target = place(ledger, clock, archive, when, "old.xml", ("31234600000019",), "REQ-OLD")
        place(ledger, clock, errors, when, "bad.xml", ("31234600000027",), "REQ-BAD", Verdict.REFUSED, "refused")
        for number in range(count):
            (target.parent / f"filler-{number:05d}.xml").write_bytes(b"<x/>")
        recent = place(ledger, clock, archive, dt.datetime.now(), "new.xml", ("31234600000035",), "REQ-NEW")[1]
        clock.now = dt.datetime.now().timestamp()
        ledger.prunes.mark_clock(clock.now)
    finally:
        ledger.close()
    return target, row_id, recent


def entries(folder: Path) -> int:
    try:
        with os.scandir(folder) as found:
            return sum(1 for _ in found)
    except FileNotFoundError:
        return 0


def pruning_marks(site) -> list[str]:
    db = sqlite3.connect(f"{(site.state / 'gateway.db').as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return [row[0] for row in db.execute("SELECT folder FROM pruning")]
    except sqlite3.OperationalError:
        return []  # the service has not opened (and upgraded) the ledger yet
    finally:
        db.close()


@pytest.mark.e2e
def test_a_kill_9_during_a_prune_leaves_no_half_removed_day(site, simulator, daemon_factory):
    site.write(simulator.url, extra="\n[archive]\nretention_days = 30\n")
    old, row_id, recent = old_day_with_many_files(site, 20000)
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: pruning_marks(site), timeout=60, interval=0.001, message="the old day marked as being pruned")
    wait_for(lambda: entries(old.parent) < 20002, timeout=60, interval=0.001, message="its files going")
    daemon.kill()  # SIGKILL while the folder is being removed
    assert pruning_marks(site) == [str(old.parent)], "cut short: the day is still marked"
    left = entries(old.parent)
    assert 0 < left < 20002, f"the kill landed while the day was half-removed ({left} entries left)"

    again = daemon_factory(site.config_file)
    wait_for(
        lambda: not pruning_marks(site) and not old.parent.exists(),
        timeout=60,
        message="the next start to finish the day",
    )
    assert again.stop() == 0
    assert "archive.prune_resumed_day" in (site.log_dir / "gateway.log").read_text()
    assert recent.is_file() and len(site.refused()) == 1, "nothing else went"
    found = cli(site, "find", "31234600000019")
    assert "path      (archived " in found.stdout and ", removed by retention on " in found.stdout, found.stdout
    assert str(old) not in found.stdout, "never a path that is gone"
    assert "request REQ-OLD" in found.stdout
    ledger = Ledger(site.state / "gateway.db")
    try:
        assert ledger.files.get(row_id) is None, "its row compacted"
    finally:
        ledger.close()


@pytest.mark.e2e
def test_prune_dry_run_says_what_would_go_and_prune_refuses_while_the_service_runs(site, simulator, daemon_factory):
    site.write(simulator.url, extra="\n[archive]\nretention_days = 30\n")
    old, row_id, recent = old_day_with_many_files(site, 3)
    dry = cli(site, "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {old.parent}: 4 file(s), 1 ledger row(s) compacted" in dry.stdout, dry.stdout
    assert "refused files are kept (error_retention_days = 0)" in dry.stdout
    assert old.is_file() and str(recent.parent) not in dry.stdout, "a dry run removes nothing"

    daemon = daemon_factory(site.config_file)
    wait_for(lambda: not old.parent.exists(), timeout=30, message="the service's own pass at start")
    busy = cli(site, "prune")
    assert busy.returncode == 1 and "prunes by itself" in busy.stderr
    assert daemon.stop() == 0
    assert "nothing would be removed" in cli(site, "prune", "--dry-run").stdout
    done = cli(site, "prune")
    assert done.returncode == 0 and "nothing to remove" in done.stdout, done.stdout


@pytest.mark.e2e
def test_the_retention_bench_smoke_run_compacts_and_prints_its_figures(tmp_path):
    """bench/retention.py cannot rot (speed itself is not tested)."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parent.parent / "bench" / "retention.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == [], "the benchmark removes its temp folder"
    figures = json.loads(result.stdout.strip().splitlines()[-1])["retention"]
    assert figures["days_removed"] == 15 and figures["rows_left"] < figures["rows"] and figures["retired_items"]
    assert figures["find_removed_says"] is True


def test_a_day_folder_that_cannot_be_removed_holds_back_that_day_only_and_is_named(tmp_path):
    """A mount point in an old day (it cannot be removed: EBUSY) is a real file system refusing, as a root-owned or
    immutable file would for the service's user: the other days still go, and the problem names the day."""
    clock = Moment(TODAY)
    ledger = Ledger(tmp_path / "gateway.db", clock=clock)
    archive = Folder(tmp_path / "archive")
    try:
        _, stuck = place(ledger, clock, archive, dt.datetime(2026, 11, 2, 9), "a.xml", ("31234000000011",), "R-A")
        _, gone = place(ledger, clock, archive, dt.datetime(2026, 11, 3, 9), "b.xml", ("31234000000029",), "R-B")
        busy = stuck.parent / "busy"
        busy.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(busy)], check=True)
        try:
            clock.now = TODAY.timestamp()
            ledger.prunes.mark_clock(clock.now)
            kept = retention(ledger, clock)
            assert kept.prune(archive, 30) == [gone.parent], "the day that can go goes"
            assert not gone.exists() and busy.is_dir()
            assert kept.problem and f"could not remove 1 day folder(s), first {stuck.parent}" in kept.problem
            assert [folder for folder, _ in ledger.retired.pruning()] == [str(stuck.parent)], "marked: tried again"
            assert kept.prune(archive, 30) == [] and kept.problem, "tried again, still named, nothing else lost"
        finally:
            subprocess.run(["umount", "-l", str(busy)], check=False)
        again = retention(ledger, clock)
        assert again.prune(archive, 30) == [stuck.parent] and again.problem is None, "once it can go, it goes"
        assert ledger.retired.pruning() == []
    finally:
        ledger.close()


def test_when_retention_has_compacted_every_file_status_reads_without_a_lock_and_says_so(tmp_path):
    """The files table emptied by retention: opening the ledger writes nothing (a reader never waits on the
    service's write), and `status` tells an upload long ago from none at all."""
    import sqlite3
    import threading

    from gateway.report import status

    clock = Moment(TODAY)
    database = tmp_path / "gateway.db"
    ledger = Ledger(database, clock=clock)
    archive = Folder(tmp_path / "archive")
    try:
        place(ledger, clock, archive, dt.datetime(2026, 10, 2, 9), "a.xml", ("31234000000011",), "R-A")
        clock.now = TODAY.timestamp()
        ledger.prunes.mark_clock(clock.now)
        retention(ledger, clock).prune(archive, 30)
        assert ledger.db.connection.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0, "every row compacted"
    finally:
        ledger.close()
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the service in the middle of a write
    answered: list[dict] = []

    def read() -> None:
        reader = Ledger(database)
        try:
            answered.append(status.collect(reader))
        finally:
            reader.close()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        wait_for(lambda: answered, timeout=10, message="status while the service writes (no lock taken)")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        thread.join(35)
    [report] = answered
    assert report["counts"]["archived"] == 1 and report["last_upload"] is None
    assert "last upload:    none in the days kept (the older ones were removed by retention)" in status.render(report)


def test_the_prune_command_exits_1_naming_a_day_it_could_not_remove(site, simulator):
    from gateway.cli.prune import prune

    site.write(simulator.url, extra="\n[archive]\nretention_days = 30\n")
    settings = site.load()
    long_ago = dt.datetime.now() - dt.timedelta(days=40)
    clock = Moment(long_ago)
    ledger = Ledger(settings.paths.database, clock=clock)
    try:
        _, stuck = place(ledger, clock, Folder(settings.paths.archive_dir), long_ago, "a.xml", ("31234000000011",), "R")
        ledger.prunes.mark_clock(dt.datetime.now().timestamp())
    finally:
        ledger.close()
    busy = stuck.parent / "busy"
    busy.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(busy)], check=True)
    try:
        lines, code = prune(settings, dry_run=False)
    finally:
        subprocess.run(["umount", "-l", str(busy)], check=False)
    assert code == 1 and lines[-1].startswith(
        f"not done: retention could not remove 1 day folder(s), first {stuck.parent}"
    )
