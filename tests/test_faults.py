"""Fault injection against the real daemon: each fault stays where it arose (issue: containment).

Where permissions matter the daemon runs as an unprivileged user (tests/unprivileged.py):
root reads and writes everything, so a root daemon would never meet these faults.
For every fault: the service keeps running, the other files flow, the item's reason is
in `status`, and a file CaiaSoft accepted is uploaded once.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Daemon, wait_for
from sharedfixtures import NotifySocket, fill

GOOD = "31234000000001\n"


def barcodes(number: int) -> str:
    return f"3123400000{number:04d}\n"


def uploads(simulator) -> collections.Counter:
    return collections.Counter(received.name for received in simulator.received)


def status_text(site, runner=None, *extra: str) -> subprocess.CompletedProcess:
    if runner is None:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "-c", str(site.config_file), "status", *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
    return runner.run("-c", str(site.config_file), "status", *extra)


def status_says(site, words: str, runner=None) -> str | None:
    out = status_text(site, runner).stdout
    return out if words in out else None


def start_as_user(site, runner, started: list) -> Daemon:
    daemon = Daemon(
        site.config_file, command=runner.prefix() + [str(runner.executable)], clean_env=True, env=runner.environment()
    ).start()
    started.append(daemon)
    return daemon


@pytest.fixture
def started():
    daemons: list[Daemon] = []
    yield daemons
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.kill()


def test_files_the_service_cannot_read_are_set_aside_and_the_rest_flows(
    unprivileged_site, gateway_install, simulator, started
):
    site, runner = unprivileged_site, gateway_install
    # in work/ from before a restart, owned by another user, unreadable: recovery must not die on it
    stray = site.state / "work" / "00000042.left_barcode"
    stray.parent.mkdir(exist_ok=True)
    runner.give(stray.parent)
    stray.write_text(GOOD)
    stray.chmod(0o600)  # root's
    # in the source: one of another user's, one of the service user's own with mode 000
    other = site.source / "other_barcode"
    other.write_text(barcodes(2))
    other.chmod(0o600)
    zero = site.source / "zero_barcode"
    zero.write_text(barcodes(3))
    runner.give(zero)
    zero.chmod(0)
    for number in range(4, 7):
        good = site.source / f"good{number}_barcode"
        good.write_text(barcodes(number))
        runner.give(good)
    daemon = start_as_user(site, runner, started)
    wait_for(lambda: len(site.archived()) == 3, timeout=30, message="the readable files archived")
    [refused] = wait_for(lambda: site.refused(), message="the unreadable file in work/ refused")
    assert "cannot be read" in site.sidecar(refused)["reason"]
    out = wait_for(lambda: status_says(site, "zero_barcode", runner), message="the source's files in status")
    assert "other_barcode: cannot be taken: Permission denied" in out
    assert "zero_barcode: cannot be taken: Permission denied" in out
    assert "left_barcode" in out and "cannot be read" in out  # recent errors
    assert daemon.process.poll() is None, "the service keeps running"
    assert max(uploads(simulator).values()) == 1
    log = (site.log_dir / "gateway.log").read_text()
    assert "cannot join thread" not in log and "worker_crashed" not in log
    assert daemon.stop() == 0


def test_an_archive_folder_the_service_cannot_write_keeps_the_answer_and_never_uploads_again(
    unprivileged_site, gateway_install, simulator, started
):
    site, runner = unprivileged_site, gateway_install
    os.chown(site.archive, 0, 0)  # root's, 0750: the service cannot write it
    for number in range(3):
        path = site.source / f"list{number}_barcode"
        path.write_text(barcodes(number))
        runner.give(path)
    daemon = start_as_user(site, runner, started)
    out = wait_for(
        lambda: status_says(site, "WAITING TO BE PLACED", runner), timeout=30, message="the placing problem in status"
    )
    assert "Permission denied" in out and str(site.archive) in out
    wait_for(lambda: len(simulator.received) == 3, message="three uploads")
    for _ in range(2):  # restarts while the folder is still wrong: nothing is sent again
        assert daemon.stop() == 0
        daemon = start_as_user(site, runner, started)
        running = f"running (pid {daemon.process.pid})"
        out = wait_for(
            lambda running=running: status_says(site, running, runner),
            timeout=30,
            message="the restarted service running",
        )
        assert "WAITING TO BE PLACED" in out
    assert daemon.process.poll() is None
    runner.give(site.archive)  # the admin fixes the owner: the gateway resumes by itself
    wait_for(lambda: len(site.archived()) == 3, timeout=30, message="all three archived")
    assert len(simulator.received) == 3, "a file CaiaSoft answered is never uploaded again"
    assert all(site.sidecar(path)["outcome"] == "accepted" for path in site.archived())
    assert "WAITING" not in status_text(site, runner).stdout
    assert daemon.stop() == 0


def test_a_blocked_error_folder_holds_only_the_refused_file(unprivileged_site, gateway_install, simulator, started):
    site, runner = unprivileged_site, gateway_install
    os.chown(site.error, 0, 0)
    bad = site.source / "notes.txt"
    bad.write_text("a letter to the library, not a request file\n")
    runner.give(bad)
    for number in range(3):
        path = site.source / f"ok{number}_barcode"
        path.write_text(barcodes(number))
        runner.give(path)
    daemon = start_as_user(site, runner, started)
    wait_for(lambda: len(site.archived()) == 3, timeout=30, message="the good files archived past the blocked one")
    out = wait_for(lambda: status_says(site, "WAITING TO BE PLACED", runner), message="the refused file waiting")
    assert "notes.txt" in out and str(site.error) in out
    runner.give(site.error)
    [refused] = wait_for(lambda: site.refused(), timeout=30, message="the refused file placed once fixed")
    assert site.sidecar(refused)["outcome"] == "refused"
    assert max(uploads(simulator).values()) == 1
    assert daemon.stop() == 0


def test_a_full_archive_disk_pauses_placing_and_resumes_when_space_is_freed(
    site, simulator, daemon_factory, small_tmpfs
):
    filler = fill(small_tmpfs(site.archive))
    for number in range(2):
        (site.source / f"full{number}_barcode").write_text(barcodes(number))
    notify = NotifySocket(site.root / "notify.sock")
    daemon = daemon_factory(site.config_file, env={"NOTIFY_SOCKET": notify.path})
    out = wait_for(lambda: status_says(site, "WAITING TO BE PLACED"), timeout=30, message="the disk-full reason")
    assert "No space left on device" in out
    line = wait_for(
        lambda: [line for line in notify.lines("STATUS=") if "PLACING PAUSED" in line],
        timeout=15,
        message="systemd's status line saying why",
    )[0]
    notify.close()
    assert "No space left on device" in line and str(site.archive) in line
    assert daemon.process.poll() is None
    filler.unlink()
    wait_for(lambda: len(site.archived()) == 2, timeout=30, message="archived once there is space")
    assert len(simulator.received) == 2
    log = (site.log_dir / "gateway.log").read_text()
    assert "the filesystem is full" in log and "permission" not in log.lower().split("file.place_failed")[1][:400]
    assert daemon.stop() == 0


def test_a_damaged_ledger_is_a_clear_message_and_exit_2_for_run_and_status(site):
    site.state.mkdir(parents=True)
    database = site.state / "gateway.db"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE filler (x)")
    connection.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(300),) for _ in range(200)])
    connection.commit()
    connection.close()
    with open(database, "r+b") as handle:  # garbage over every page after the first
        handle.seek(4096)
        handle.write(os.urandom(os.path.getsize(database) - 4096))
    command = [sys.executable, "-m", "gateway", "-c", str(site.config_file)]
    run = subprocess.run([*command, "run"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert str(database) in run.stderr and "move the file aside" in run.stderr and "Traceback" not in run.stderr
    shown = subprocess.run([*command, "status"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 2 and str(database) in shown.stderr and "Traceback" not in shown.stderr
    as_json = subprocess.run([*command, "status", "--json"], capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 2 and str(database) in json.loads(as_json.stdout)["error"]
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "caiasoft-gateway.service").read_text()
    assert "RestartPreventExitStatus=2" in unit  # so systemd waits for the admin instead of looping


def test_daemon_exits_1_when_another_instance_holds_the_state_lock(site, simulator, daemon_factory, tmp_path):
    daemon = daemon_factory(site.config_file)
    wait_for(
        lambda: (site.state / "gateway.lock").exists() and status_says(site, "running"),
        message="the first gateway running",
    )
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "-c",
            str(site.config_file),
            "daemon",
            "--pidfile",
            str(tmp_path / "other.pid"),
            "--user",
            "root",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1 and "another gateway" in second.stderr
    assert daemon.stop() == 0


def test_sighup_while_an_upload_hangs_reloads_at_once(site, simulator, daemon_factory):
    site.write(simulator.url, timeout_seconds=30, extra_caiasoft="upload_workers = 1")
    simulator.queue_faults("hang")
    (site.source / "first_barcode").write_text(barcodes(1))
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: status_says(site, "uploading 1"), message="the first upload hanging")
    daemon.process.send_signal(signal.SIGHUP)
    started = time.monotonic()
    log = site.log_dir / "gateway.log"
    wait_for(lambda: '"config.reloaded"' in log.read_text(), timeout=10, message="the reload")
    assert time.monotonic() - started < 5, "the reload waited for the hung upload"
    (site.source / "second_barcode").write_text(barcodes(2))
    wait_for(lambda: len(site.archived()) == 1, timeout=15, message="new work flows while the old upload hangs")
    assert daemon.process.poll() is None
    daemon.kill()


def test_retry_goes_on_past_a_file_it_cannot_move_and_leaves_no_copy_behind(unprivileged_site, gateway_install):
    site, runner = unprivileged_site, gateway_install
    scan = site.root / "b_barcode"
    scan.write_bytes(b"\x00scan")
    runner.give(scan)
    runner.run("-c", str(site.config_file), "send", str(scan))
    [refused] = site.refused()
    refused.write_text(GOOD)  # the admin fixed it
    # and put one there by hand, as root, in a day folder of root's: the service user can link it, not move it
    by_hand = site.error / "2026" / "01" / "01" / "a_barcode"
    by_hand.parent.mkdir(parents=True)
    by_hand.write_text(barcodes(2))
    runner.give(by_hand)
    result = runner.run("-c", str(site.config_file), "retry", "--all")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    assert "a_barcode: cannot retry: Permission denied" in result.stdout
    assert "b_barcode: back in the queue" in result.stdout
    assert site.refused() == [by_hand]
    assert sorted(path.name.split(".", 1)[1] for path in (site.state / "work").iterdir()) == ["b_barcode"]
    assert "a_barcode" not in status_text(site, runner).stdout  # no claim left behind in the ledger


def test_a_full_state_dir_is_named_by_status_and_files_are_taken_once_there_is_space(
    site, simulator, daemon_factory, small_tmpfs
):
    small_tmpfs(site.state, "8m")  # room for the ledger's write-ahead log to grow once the filler is gone
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: status_says(site, "running"), message="the gateway running")
    filler = fill(site.state)  # the ledger cannot grow, nothing can be copied into work/
    (site.source / "late_barcode").write_text(GOOD)
    out = wait_for(lambda: status_says(site, "STATE_DIR: "), timeout=15, message="status naming the full state_dir")
    assert f"STATE_DIR: {site.state} is full" in out
    assert json.loads(status_text(site, None, "--json").stdout)["state_dir_problem"].startswith(f"{site.state} is full")
    assert daemon.process.poll() is None
    filler.unlink()
    wait_for(lambda: len(site.archived()) == 1, timeout=90, message="taken and sent once there is space")
    assert "STATE_DIR" not in status_text(site).stdout
    assert daemon.stop() == 0


def test_status_tells_a_service_that_runs_but_cannot_report_from_one_that_stopped(tmp_path):
    from gateway.report import status
    from gateway.state import snapshot
    from gateway.state.ledger import Ledger

    ledger = Ledger(tmp_path / "gateway.db")
    try:
        for pid in (os.getpid(), 2**22 + 1):  # this process (alive), a pid above pid_max (gone)
            snapshot.publish(
                ledger, snapshot.Snapshot(pid=pid, updated=1000.0, sources={}, paused=None, ncip=None, faults={})
            )
            report = status.collect(ledger, now=1000.0 + 95)
            assert report["service"]["running"] is (pid == os.getpid())
            shown = status.render(report)
            assert ("NOT REPORTING for 1m 35s" in shown) is (pid == os.getpid()), shown
    finally:
        ledger.close()


def test_the_oldest_pending_file_shows_its_problem_not_its_verdict_as_last_problem(tmp_path):
    from gateway.core.states import Verdict
    from gateway.report import status
    from gateway.state.ledger import Ledger

    ledger = Ledger(tmp_path / "gateway.db")
    try:
        row_id = ledger.files.adopt("slip.xml", 10, str(tmp_path / "slip.xml"))
        ledger.files.answered(row_id, Verdict.ACCEPTED, "accepted", uploaded=True)
        assert status.collect(ledger)["oldest_pending"]["last_problem"] is None  # not "accepted"
        ledger.files.place_failed(row_id, "cannot place it in /archive: Permission denied", 0.0)
        assert (
            status.collect(ledger)["oldest_pending"]["last_problem"] == "cannot place it in /archive: Permission denied"
        )
    finally:
        ledger.close()
