"""Time is not trusted: a wall clock stepped either way neither stalls retries nor deletes the archive.

The real daemon and CLI run under a wall clock the test steps (tests/faketime.py,
libfaketime); their monotonic clock is the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gateway.backoff import SteadyClock
from gateway.ledger import Ledger
from gateway import status

from conftest import wait_for
from faketime import SteppedClock

pytestmark = pytest.mark.e2e


def barcode_list(number: int) -> bytes:
    return "".join(f"3123400{number:04d}{line:03d}\n" for line in range(5)).encode()


def cli(site, clock: SteppedClock, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(site.config_file), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **clock.env()})


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
    wait_for(lambda: failed_attempts(simulator) >= before + 2, timeout=30,
             message="the retries to go on at backoff_max_seconds, not an hour later")
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
        row_id = ledger.begin_claim("print", "slip.xml", "/aleph/print/slip.xml", 10, 0.0)
        ledger.claimed(row_id)
        seen = ledger.row(row_id).seen_at
        report = status.collect(ledger, now=seen - 3600)
    finally:
        ledger.close()
    assert report["oldest_pending"]["age_seconds"] == 0
    assert "waiting 0s" in status.render(report)
