"""The real `caiasoft-gateway run` as a child process, on temp folders, against the simulator."""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
import time

import pytest
from conftest import KEY, SAMPLES, wait_for

from gateway.state.ledger import Ledger

pytestmark = pytest.mark.e2e


def counts(site) -> dict[str, int]:
    if not site.state.joinpath("gateway.db").exists():
        return {}
    ledger = Ledger(site.state / "gateway.db")
    try:
        return ledger.files.counts()
    finally:
        ledger.close()


def barcode_list(number: int) -> bytes:
    return "".join(f"3123400{number:04d}{line:03d}\n" for line in range(5)).encode()


def test_files_written_in_several_writes_are_uploaded_once_and_intact(site, simulator, daemon_factory):
    site.write(simulator.url, settle_seconds=1.0)
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: "service.started" in daemon.output(), message="the daemon to start")
    expected = {}
    for number in range(4):
        name = f"anx.cir.12.paging2026112{number}_am_barcode"
        data = barcode_list(number)
        for start in range(0, len(data), 30):  # ALEPH appends in bursts, closing in between
            with open(site.source / name, "ab") as handle:
                handle.write(data[start : start + 30])
            time.sleep(0.2)  # the writer's own pace, shorter than settle_seconds
        expected[name] = data
    slip = (SAMPLES / "hold-request-slip-0002.xml").read_bytes()
    (site.source / "hold-request-slip-0002.xml").write_bytes(slip)
    expected["hold-request-slip-0002.xml"] = slip

    wait_for(lambda: len(site.archived()) == len(expected), timeout=30, message="all files archived")
    received = collections.Counter((r.name, r.data) for r in simulator.received)
    assert received == collections.Counter(expected.items()), "each file exactly once, whole"
    for path in site.archived():
        assert path.read_bytes() == expected[path.name]
        info = site.sidecar(path)
        assert info["sha256"] == hashlib.sha256(expected[path.name]).hexdigest()
        assert info["source"] == "print" and info["http_status"] == 200
        assert info["original_path"] == str(site.source / path.name)
    assert daemon.stop() == 0
    assert os.listdir(site.state / "work") == []


def test_kill_9_in_flight_loses_nothing_and_sends_each_file_at_most_twice(site, simulator, daemon_factory):
    files = {f"list-{number:02d}_barcode": barcode_list(number) for number in range(20)}
    for name, data in files.items():
        (site.source / name).write_bytes(data)
    simulator.delay = 0.2  # uploads are in flight long enough to be killed in the middle of one
    first = daemon_factory(site.config_file)
    simulator.wait_for(4, timeout=30)
    first.kill()  # SIGKILL: no cleanup at all
    simulator.delay = 0.0
    daemon_factory(site.config_file)
    wait_for(lambda: counts(site).get("archived") == 20, timeout=60, message="20 files archived after restart")

    sent = collections.Counter(r.data for r in simulator.received)
    assert all(1 <= sent[data] <= 2 for data in files.values()), sent
    assert {p.name: p.read_bytes() for p in site.archived()} == files
    assert os.listdir(site.source) == [] and os.listdir(site.state / "work") == []
    assert set(counts(site)) == {"archived"}


def test_bad_files_land_in_error_with_a_reason_and_the_rest_goes_on(site, simulator, daemon_factory):
    bad = {
        "scan.pdf": b"%PDF-1.4\x00\x00binary",
        "evil.xml": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/shadow">]><printout>&e;</printout>',
        "letter.txt": b"Dear storage team, thank you.\n",
        "latin1_barcode": "31234001234567 Müller\n".encode("latin-1"),
    }
    for name, data in bad.items():
        (site.source / name).write_bytes(data)
    (site.source / "good_barcode").write_bytes(barcode_list(1))
    daemon = daemon_factory(site.config_file)
    wait_for(
        lambda: len(site.refused()) == 4 and len(site.archived()) == 1, timeout=30, message="four refused, one archived"
    )
    reasons = {path.name: site.sidecar(path)["reason"] for path in site.refused()}
    assert "binary" in reasons["scan.pdf"]
    assert "DOCTYPE" in reasons["evil.xml"]
    assert "File format not registered" in reasons["letter.txt"]
    assert "not UTF-8" in reasons["latin1_barcode"]
    assert {p.name: p.read_bytes() for p in site.refused()} == bad, "kept byte for byte"
    assert sorted(r.name for r in simulator.received) == ["good_barcode", "letter.txt"], (
        "files the gateway refuses never reach CaiaSoft"
    )
    assert daemon.stop() == 0


def test_a_wrong_key_pauses_uploads_without_moving_files_to_error(site, simulator, daemon_factory):
    simulator.key = "the-key-was-rotated"
    (site.source / "a_barcode").write_bytes(barcode_list(1))
    daemon = daemon_factory(site.config_file)
    # The pause is logged as the worker closes the gate; the file is back in the queue a moment later.
    wait_for(
        lambda: "upload.paused" in daemon.output() and counts(site).get("queued") == 1,
        message="the pause to be logged and the file to wait in the queue",
    )
    assert site.refused() == []
    simulator.key = KEY  # the admin fixes the key on either side
    wait_for(lambda: len(site.archived()) == 1, timeout=20, message="upload to resume")
    assert daemon.stop() == 0
    assert "upload.resumed" in (site.log_dir / "gateway.log").read_text()


def test_caiasoft_down_then_up_every_file_waits_and_goes(site, simulator, daemon_factory):
    simulator.queue_faults("503", "503", "429:0.2", "drop", "500")
    for number in range(3):
        (site.source / f"l{number}_barcode").write_bytes(barcode_list(number))
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: len(site.archived()) == 3, timeout=30, message="three files archived")
    assert site.refused() == []
    assert daemon.stop() == 0


def test_the_key_appears_in_no_file_the_gateway_wrote(site, simulator, daemon_factory):
    (site.source / "good_barcode").write_bytes(barcode_list(2))
    (site.source / "letter.txt").write_text("not a request\n")
    simulator.queue_faults("401")
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: len(site.archived()) + len(site.refused()) == 2, timeout=30, message="both files done")
    assert daemon.stop() == 0
    written = site.written_files()
    assert any(p.name == "gateway.log" for p in written) and any(p.suffix == ".json" for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), f"API key found in {path}"
    assert KEY not in daemon.output()


def test_sigterm_stops_cleanly_and_a_restart_resumes(site, simulator, daemon_factory):
    simulator.delay = 0.2
    for number in range(6):
        (site.source / f"l{number}_barcode").write_bytes(barcode_list(number))
    first = daemon_factory(site.config_file)
    simulator.wait_for(1, timeout=20)
    assert first.stop(timeout=20) == 0
    state = counts(site)
    assert "uploading" not in state and "claiming" not in state, state
    simulator.delay = 0.0
    second = daemon_factory(site.config_file)
    wait_for(lambda: counts(site).get("archived") == 6, timeout=30, message="all six archived")
    assert second.stop() == 0


def test_a_second_gateway_on_the_same_state_dir_is_refused(site, daemon_factory):
    first = daemon_factory(site.config_file)
    wait_for(lambda: "service.started" in first.output(), message="the first daemon to start")
    second = daemon_factory(site.config_file)
    assert second.process.wait(20) == 1
    assert "another gateway" in second.output()
    assert first.stop() == 0


def test_send_while_the_service_runs_reports_the_real_outcome(site, simulator, daemon_factory, tmp_path):
    """Whichever process uploads the file (send or the service), send reports what CaiaSoft said."""
    import subprocess
    import sys

    daemon = daemon_factory(site.config_file)
    wait_for(lambda: "service.started" in daemon.output(), message="the daemon to start")
    files = []
    for number in range(5):
        files.append(tmp_path / f"manual-{number}_barcode")
        files[-1].write_bytes(barcode_list(number))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "send", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("accepted by CaiaSoft") == 5
    assert len(simulator.received) == 5
    assert daemon.stop() == 0


def test_an_archive_folder_in_the_way_pauses_placing_and_resumes_without_a_second_upload(
    site, simulator, daemon_factory
):
    """The archive folder cannot be made (a file is in the way): the answer is kept, the file waits
    with the reason in `status`, the service keeps running, and once fixed the file is archived,
    uploaded once."""
    site.archive.write_text("not a folder")
    (site.source / "a_barcode").write_bytes(barcode_list(1))
    daemon = daemon_factory(site.config_file)
    simulator.wait_for(1)
    status = wait_for(
        lambda: next((out for out in [_status(site)] if "WAITING TO BE PLACED" in out), None),
        message="the placing problem in status",
    )
    assert "a_barcode" in status and str(site.archive) in status
    assert daemon.process.poll() is None
    site.archive.unlink()  # the admin fixes it; the gateway resumes by itself
    wait_for(lambda: len(site.archived()) == 1, message="the file archived once the folder can be made")
    assert len(simulator.received) == 1
    assert "WAITING" not in _status(site)
    assert daemon.stop() == 0


def _status(site) -> str:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "status"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
