"""Readiness with the real daemon: unfinished ends wait (and say so in status), marker files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import SAMPLES, wait_for

pytestmark = pytest.mark.e2e

SLIP = (SAMPLES / "hold-request-slip-0001.xml").read_bytes()


def status(site) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout


def events(site, name: str) -> list[dict]:
    log = site.log_dir / "gateway.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [event for event in map(json.loads, lines) if event.get("event") == name]


def test_a_slip_cut_off_mid_document_waits_in_status_and_is_taken_whole_when_finished(site, simulator, daemon_factory):
    cut = SLIP.index(b"</section-01>")
    path = site.source / "slip.xml"
    path.write_bytes(SLIP[:cut])  # ALEPH paused here, longer than settle_seconds
    daemon = daemon_factory(site.config_file)
    shown = wait_for(
        lambda: [line for line in status(site).splitlines() if "incomplete, waiting: slip.xml" in line],
        timeout=20,
        message="status to show the slip as incomplete, waiting",
    )
    assert "the XML stops before its document is closed" in shown[0]
    assert site.refused() == [] and simulator.received == []
    with open(path, "ab") as writer:  # the writer finishes
        writer.write(SLIP[cut:])
    [received] = simulator.wait_for(1)
    assert received.data == SLIP
    wait_for(lambda: site.archived(), message="the whole slip archived")
    assert site.archived()[0].read_bytes() == SLIP and site.refused() == []
    wait_for(lambda: "incomplete, waiting" not in status(site), timeout=20, message="status to drop the slip")
    assert daemon.stop() == 0


def test_an_unfinished_end_is_taken_as_it_is_once_unchanged_for_the_grace_period(site, simulator, daemon_factory):
    grace = 1.0
    site.write(simulator.url, extra_source=f"incomplete_grace_seconds = {grace}\n")
    cut_slip = SLIP[: SLIP.index(b"</printout>")]
    (site.source / "slip.xml").write_bytes(cut_slip)
    (site.source / "list_barcode").write_bytes(b"31234001234567\n31234001234568")  # no final newline
    daemon = daemon_factory(site.config_file)
    wait_for(
        lambda: len(site.refused()) == 1 and len(site.archived()) == 1,
        timeout=30,
        message="the cut-off slip refused and the list sent, after the grace period",
    )
    [refused] = site.refused()
    assert refused.read_bytes() == cut_slip
    assert site.sidecar(refused)["reason"].startswith("refused by the gateway: ")
    assert [upload.data for upload in simulator.received] == [b"31234001234567\n31234001234568"]
    waited = {event["file"]: event for event in events(site, "file.incomplete_waiting")}
    taken = {event["file"]: event for event in events(site, "file.incomplete_taken")}
    assert set(waited) == set(taken) == {"slip.xml", "list_barcode"}
    assert "no newline" in waited["list_barcode"]["reason"]
    for name in waited:
        assert taken[name]["unchanged_seconds"] >= grace, "taken before the grace period was over"
    assert daemon.stop() == 0


def test_marker_mode_takes_a_file_once_its_marker_exists_and_never_uploads_markers(site, simulator, daemon_factory):
    site.write(simulator.url, extra_source='ready_marker = "{name}.done"\n')
    (site.source / "a_barcode").write_bytes(b"31234001234567\n")
    (site.source / "a_barcode.done").write_bytes(b"")
    (site.source / "b_barcode").write_bytes(b"31234001234568\n")
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: site.archived(), message="a_barcode archived")
    wait_for(
        lambda: sorted(p.name for p in site.source.iterdir()) == ["b_barcode"],
        message="a's marker removed once a was taken; b waits for its own",
    )
    wait_for(
        lambda: "waiting: b_barcode: waiting for its marker" in status(site),
        timeout=20,
        message="status to say b waits for its marker",
    )
    (site.source / "b_barcode.done").write_bytes(b"")
    wait_for(lambda: len(site.archived()) == 2 and list(site.source.iterdir()) == [], message="b taken, marker gone")
    assert sorted(upload.name for upload in simulator.received) == ["a_barcode", "b_barcode"]
    assert daemon.stop() == 0
