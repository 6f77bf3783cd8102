"""Time is not trusted: a wall clock stepped either way neither stalls retries nor deletes the archive.

The real daemon and CLI run under a wall clock the test steps (tests/faketime.py,
libfaketime); their monotonic clock is the real one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for
from faketime import SteppedClock
from peers import MailBox, alerts_table, free_port
from test_history import scanned

from gateway.core.backoff import Backoff, SteadyClock
from gateway.monitor import alerttexts
from gateway.monitor.events import Conditions
from gateway.monitor.monitor import Monitor
from gateway.report import status
from gateway.state.ledger import Ledger

pytestmark = pytest.mark.e2e


def barcode_list(number: int) -> bytes:
    return "".join(f"3123400{number:04d}{line:03d}\n" for line in range(5)).encode()


def cli(site, clock: SteppedClock, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **clock.env()},
    )


def set_backoff(site, seconds: float) -> None:
    """Every retry waits between seconds/2 and seconds (the site's own backoff is a fraction of a second)."""
    text = site.config_file.read_text()
    for key in ("backoff_initial_seconds", "backoff_max_seconds"):
        line = next(line for line in text.splitlines() if line.startswith(f"{key} = "))
        text = text.replace(line, f"{key} = {seconds}")
    site.config_file.write_text(text)


def failed_attempts(simulator) -> int:
    """Uploads the simulator answered with a fault (503 here), not with its answer."""
    return sum(1 for item in simulator.received if item.answered is None)


def test_a_clock_stepped_back_an_hour_during_an_outage_delays_no_retry(site, simulator, daemon_factory, tmp_path):
    set_backoff(site, 2.0)
    clock = SteppedClock(tmp_path)
    simulator.queue_faults(*["503"] * 1000)  # CaiaSoft is down
    daemon = daemon_factory(site.config_file, env=clock.env())
    (site.source / "l1_barcode").write_bytes(barcode_list(1))
    wait_for(lambda: failed_attempts(simulator) >= 1, timeout=30, message="a first attempt, refused with 503")

    clock.step("-1h")  # NTP or an admin sets the clock back while the file waits for its retry
    before = failed_attempts(simulator)
    wait_for(
        lambda: failed_attempts(simulator) >= before + 2,
        timeout=30,
        message="the retries to go on at backoff_max_seconds, not an hour later",
    )
    report = json.loads(cli(site, clock, "status", "--json").stdout)
    assert report["oldest_pending"]["file"] == "l1_barcode"
    assert report["oldest_pending"]["age_seconds"] >= 0, "a file seen 'after now' has waited 0 s, not -1 h"
    assert "waiting -" not in cli(site, clock, "status").stdout

    simulator.clear_faults()  # CaiaSoft is back
    wait_for(lambda: len(site.archived()) == 1, timeout=30, message="the file to be archived once CaiaSoft is up")
    assert daemon.stop() == 0


def test_a_wait_left_by_an_earlier_run_is_capped_at_backoff_max_seconds(site, simulator, daemon_factory, tmp_path):
    """The clock stepped back between two runs: a retry instant the first run wrote is an hour ahead."""
    set_backoff(site, 2.0)
    clock = SteppedClock(tmp_path)
    simulator.queue_faults(*["503"] * 1000)
    first = daemon_factory(site.config_file, env=clock.env())
    (site.source / "l2_barcode").write_bytes(barcode_list(2))
    wait_for(lambda: failed_attempts(simulator) >= 1, timeout=30, message="a first attempt, refused with 503")
    assert first.stop() == 0
    simulator.clear_faults()
    clock.step("-1h")
    second = daemon_factory(site.config_file, env=clock.env())
    wait_for(lambda: len(site.archived()) == 1, timeout=30, message="the file to be sent within backoff_max_seconds")
    assert second.stop() == 0
    assert '"waits_capped": 1' in (site.log_dir / "gateway.log").read_text()


def test_the_steady_clock_does_not_move_when_the_wall_clock_steps():
    wall, monotonic = [1_800_000_000.0], [100.0]
    steady = SteadyClock(wall=lambda: wall[0], monotonic=lambda: monotonic[0])
    assert steady() == 1_800_000_000.0
    wall[0] -= 3600  # stepped back
    monotonic[0] += 5
    assert steady() == 1_800_000_005.0
    wall[0] += 40 * 86400  # and forward
    monotonic[0] += 5
    assert steady() == 1_800_000_010.0


def test_status_never_shows_a_negative_wait(tmp_path):
    """A file seen at a wall-clock time later than now (the clock stepped back since) has waited 0 s."""
    ledger = Ledger(tmp_path / "gateway.db")
    try:
        row_id = ledger.files.begin_claim("print", "slip.xml", "/aleph/print/slip.xml", 10, 0.0)
        ledger.files.claimed(row_id)
        seen = ledger.files.row(row_id).seen_at
        report = status.collect(ledger, now=seen - 3600)
    finally:
        ledger.close()
    assert report["oldest_pending"]["age_seconds"] == 0
    assert "waiting 0s" in status.render(report)


def archive_one_file(site, simulator, daemon_factory) -> Path:
    """Run the daemon on the real clock until one file is archived; return it."""
    daemon = daemon_factory(site.config_file)
    (site.source / "l3_barcode").write_bytes(barcode_list(3))
    wait_for(lambda: len(site.archived()) == 1, timeout=30, message="a file archived")
    assert daemon.stop() == 0
    return site.archived()[0]


def test_a_start_with_the_clock_forty_days_ahead_deletes_nothing_and_says_why(
    site, simulator, daemon_factory, tmp_path
):
    site.write(simulator.url, extra="\n[archive]\nretention_days = 30\n")
    archived = archive_one_file(site, simulator, daemon_factory)
    clock = SteppedClock(tmp_path, "+40d")  # a bad NTP answer, a wrong RTC, an admin's typo
    daemon = daemon_factory(site.config_file, env=clock.env())
    log = site.log_dir / "gateway.log"
    wait_for(lambda: "archive.prune_held" in log.read_text(), timeout=30, message="retention to say it holds back")
    assert archived.is_file() and site.sidecar(archived)["sha256"], "today's archive is kept, file and sidecar"
    held = json.loads(cli(site, clock, "status", "--json").stdout)["retention_held"]
    assert "ahead of the ledger's time" in held and "40 day(s)" in held
    assert "RETENTION HELD: " in cli(site, clock, "status").stdout
    assert daemon.stop() == 0
    assert archived.is_file()

    # the next start, with the clock still ahead, holds the days back again: the first run marked the time it
    # counted from, not the clock's; a file taken meanwhile under that clock does not make it "agree" either
    held_before = log.read_text().count("archive.prune_held")
    (site.source / "late_barcode").write_bytes(b"31234000003001\n")
    again = daemon_factory(site.config_file, env=clock.env())
    wait_for(
        lambda: log.read_text().count("archive.prune_held") > held_before,
        timeout=30,
        message="retention to hold back again",
    )
    wait_for(lambda: not (site.source / "late_barcode").exists(), timeout=30, message="the late file taken")
    assert again.stop() == 0
    assert archived.is_file() and "archive.pruned" not in log.read_text(), "nothing removed at any start"
    restarted = daemon_factory(site.config_file, env=clock.env())
    wait_for(
        lambda: log.read_text().count("archive.prune_held") > held_before + 1,
        timeout=30,
        message="retention to hold back at a third start",
    )
    assert restarted.stop() == 0
    assert archived.is_file()

    # the clock was right after all (the gateway was stopped that long): the admin says so, and find tells the
    # item's file was removed by retention rather than listing a path that is gone
    vouched = cli(site, clock, "prune", "--trust-clock")
    assert vouched.returncode == 0, vouched.stderr
    assert not archived.exists()
    found = cli(site, clock, "find", "31234000003000")
    day = "-".join(archived.parent.parts[-3:])  # the day it was archived on, by the real clock
    assert f"path      (archived {day}, removed by retention on " in found.stdout, found.stdout
    assert str(archived) not in found.stdout, "never a path that is gone"


def test_retention_counts_days_from_the_ledgers_time_and_find_says_what_it_removed(tmp_path):
    """Days older than retention_days by the ledger's time go (and find says so); those only the clock calls
    old are held, with the reason."""
    from gateway.archive.folders import Folder
    from gateway.archive.retention import Retention
    from gateway.core.printfile import Record
    from gateway.report import find

    day = dt.datetime(2026, 11, 2, 12, 0)
    ledger = Ledger(tmp_path / "gateway.db", clock=lambda: day.timestamp())
    archive = Folder(tmp_path / "archive")
    row_id = ledger.files.begin_claim("print", "slip.xml", "/aleph/print/slip.xml", 10, day.timestamp())
    ledger.files.claimed(row_id)
    ledger.items.store_records([row_id], [(row_id, Record(number=1, line=1, barcodes=("31234000000017",)))])
    ledger.files.queued(row_id, "xml", "0" * 64, 10, {})
    ledger.files.assign(row_id)
    ledger.files.answered(row_id, "accepted", "ok", http_status=200, uploaded=True)
    target = archive.choose("slip.xml", day)
    ledger.files.placing(row_id, target)
    target.write_bytes(b"<slip/>")
    ledger.files.finished(row_id, target)
    for later in (15, 45):  # two more days in the archive, with nothing of the ledger's in them
        archive.choose("other.xml", day + dt.timedelta(days=later)).with_name("other.xml").write_bytes(b"<x/>")

    ledger_time = day.timestamp() + 35 * 86400  # what the ledger saw last: 35 days after the slip was archived
    ledger.prunes.mark_clock(ledger_time)
    wall, monotonic = [ledger_time + 40 * 86400], [0.0]  # and the clock, 40 days further ahead
    statements: list[str] = []
    ledger.db.connection.set_trace_callback(statements.append)
    retention = Retention(ledger, wall=lambda: wall[0], monotonic=lambda: monotonic[0])
    removed = retention.prune(archive, 30)
    ledger.db.connection.set_trace_callback(None)
    assert scanned(ledger.db.connection, statements) == [], "the ledger's time costs no scan of its history"
    assert removed == [target.parent], "only the day older than 30 days by the ledger's time"
    assert not target.exists()
    assert sorted(path.name for path in archive.root.rglob("other.xml")) == ["other.xml", "other.xml"]
    assert retention.problem and "held 1 day folder(s) back" in retention.problem

    found = find.find(ledger, "31234000000017", [])
    assert found[0]["pruned_at"] is not None and found[0]["path_exists"] is False
    assert "(archived 2026-11-02, removed by retention on 2026-12-07)" in find.render("31234000000017", found)
    ledger.close()


class OffsetClock:
    """The real wall clock plus an offset a test steps (for parts that take a clock: the alert sender)."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def alerting(site, simulator):
    """A Monitor with a sender, on an OffsetClock, sending to a port; stopped after the test."""
    made = []

    def start(port: int, interval: float = 3600, after: float = 900):
        site.write(simulator.url, extra=alerts_table(port, interval=interval, after=after))
        clock = OffsetClock()
        ledger = Ledger(site.state / "gateway.db")
        monitor = Monitor(site.load(), ledger, clock=clock)
        made.append((monitor, ledger))
        monitor.start()
        monitor.sender.backoff = Backoff(0.2, 0.5)
        monitor.sender.start()
        return monitor, clock

    yield start
    for monitor, ledger in made:
        monitor.sender.stop()
        monitor.sender.join(30)
        monitor.stop()
        ledger.close()


def refused_alert(name: str) -> dict:
    return alerttexts.refused(name, "print", "refused by the gateway: empty", f"/err/{name}")


def test_alert_delivery_retries_go_on_when_the_clock_steps_back(alerting):
    port = free_port()  # no mail server there yet
    monitor, clock = alerting(port)
    monitor.raise_alert("refused", refused_alert("late.txt"))
    wait_for(lambda: monitor.sender.failures.get("mail", 0) >= 1, message="a failed delivery")
    clock.offset = -3600.0
    failed = monitor.sender.failures["mail"]
    wait_for(
        lambda: monitor.sender.failures.get("mail", 0) >= failed + 2,
        timeout=15,
        message="the retries to go on within the backoff, not an hour later",
    )
    box = MailBox(port).start()
    try:
        box.find("request file refused: late.txt")
    finally:
        box.stop()


def test_a_digest_waits_at_most_min_interval_after_the_clock_steps_back(alerting):
    box = MailBox().start()
    try:
        monitor, clock = alerting(box.port, interval=1)
        monitor.raise_alert("refused", refused_alert("first.txt"))
        box.find("request file refused: first.txt")
        clock.offset = -3600.0  # the first went out 'an hour from now'
        monitor.raise_alert("refused", refused_alert("second.txt"))
        wait_for(
            lambda: len(box.messages) == 2,
            timeout=15,
            message="the next of that kind within min_interval_seconds, not an hour later",
        )
    finally:
        box.stop()


def test_an_unreachable_alert_is_not_put_off_by_the_clock_stepping_back(alerting):
    box = MailBox().start()
    try:
        monitor, clock = alerting(box.port, after=1)
        failing = Conditions(caiasoft_problem="cannot reach CaiaSoft: connection refused")
        monitor.tick(failing)
        clock.offset = -3600.0
        wait_for(
            lambda: monitor.tick(failing) or box.messages,
            timeout=15,
            message="the alert after unreachable_after_seconds, not an hour later",
        )
        box.find("CaiaSoft unreachable")
    finally:
        box.stop()
