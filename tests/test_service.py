"""The gateway as a service: sd_notify and the watchdog, SIGHUP reloads, the detached daemon."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import wait_for

from gateway.runtime.daemonize import PidFile

pytestmark = pytest.mark.e2e


def test_ready_status_watchdog_and_stopping(site, simulator, daemon_factory, notify_socket):
    daemon = daemon_factory(site.config_file, env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000"})
    wait_for(lambda: notify_socket.lines("READY=1"), message="READY=1")
    (site.source / "a_barcode").write_text("31234001234567\n")
    wait_for(
        lambda: "STATUS=queued 0, uploaded today 1, errors today 0" in notify_socket.lines("STATUS="),
        message="a STATUS line counting the upload",
    )
    wait_for(lambda: len(notify_socket.lines("WATCHDOG=1")) >= 3, message="periodic watchdog pings")
    assert daemon.stop() == 0
    assert notify_socket.lines()[-1] == "STOPPING=1"


def test_a_hung_upload_stops_the_watchdog_pings(site, simulator, daemon_factory, notify_socket):
    site.write(simulator.url, timeout_seconds=120)  # the read timeout is far away
    daemon = daemon_factory(site.config_file, env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000"})
    wait_for(lambda: len(notify_socket.lines("WATCHDOG=1")) >= 2, message="pings while healthy")
    simulator.queue_faults("hang")
    (site.source / "a_barcode").write_text("31234001234567\n")
    wait_for(lambda: re.search(r"uploader-\d has not checked in", daemon.output()), message="the hang to be noticed")
    noticed = time.monotonic()
    with pytest.raises(AssertionError, match="timed out"):
        wait_for(
            lambda: notify_socket.since(noticed + 0.05, "WATCHDOG=1"),
            timeout=2.5,
            message="no watchdog ping while the upload hangs",
        )
    daemon.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "service.stopping" in daemon.output(), message="the first SIGTERM to be taken")
    assert daemon.process.poll() is None, "still finishing the hung upload"
    daemon.process.send_signal(signal.SIGTERM)  # the second one: exit now, even mid-upload
    assert daemon.process.wait(10) == 1


def test_sighup_with_a_valid_config_reloads_it(site, simulator, daemon_factory, tmp_path):
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: "service.started" in daemon.output(), message="start")
    second = tmp_path / "paging"
    second.mkdir()
    site.config_file.write_text(
        site.config_file.read_text() + f'\n[[sources]]\nname = "paging"\npath = "{second}"\nsettle_seconds = 0.2\n'
    )
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "config.reloaded" in daemon.output(), message="the reload")
    (second / "p_barcode").write_text("31234001234567\n")
    wait_for(lambda: [p.name for p in site.archived()] == ["p_barcode"], message="the new source to work")
    assert site.sidecar(site.archived()[0])["source"] == "paging"
    assert daemon.stop() == 0


def test_sighup_with_an_invalid_config_keeps_the_old_one_and_says_why(site, simulator, daemon_factory):
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: "service.started" in daemon.output(), message="start")
    good = site.config_file.read_text()
    site.config_file.write_text(good.replace("[[sources]]", '[[sources]]\nwatch_mode = "fast"'))
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "config.reload_refused" in daemon.output(), message="the refusal")
    assert "sources[0].watch_mode: unknown key" in daemon.output()
    (site.source / "still_barcode").write_text("31234001234567\n")
    wait_for(lambda: len(site.archived()) == 1, message="the old config to keep working")
    assert daemon.stop() == 0


def test_daemon_detaches_holds_the_pidfile_and_refuses_a_second_start(site, simulator, tmp_path):
    pidfile = tmp_path / "gateway.pid"
    command = [
        sys.executable,
        "-m",
        "gateway",
        "-c",
        str(site.config_file),
        "daemon",
        "--pidfile",
        str(pidfile),
        "--user",
        "root",
    ]  # tests run as root; a start as root must say so
    started = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), message="the pidfile"))
    try:
        os.kill(pid, 0)  # alive, and not the process we started (that one returned)
        assert PidFile(pidfile).holder() == pid
        (site.source / "d_barcode").write_text("31234001234567\n")
        wait_for(lambda: len(site.archived()) == 1, message="the daemon to work")
        again = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert again.returncode == 1
        assert f"already running (pid {pid}" in again.stderr
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pidfile.exists(), message="the pidfile to be removed on stop")
        wait_for(lambda: not _alive(pid), message="the daemon to exit")
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    log = (site.log_dir / "gateway.log").read_text()
    assert "service.started" in log and "service.stopped" in log


def test_a_stale_pidfile_does_not_block_a_start(tmp_path):
    pidfile = tmp_path / "gateway.pid"
    pidfile.write_text("999999\n")  # left by a kill -9: nobody holds its lock
    assert PidFile(pidfile).holder() is None
    with PidFile(pidfile):
        assert PidFile(pidfile).holder() == os.getpid()
    assert not pidfile.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_a_housekeeping_failure_that_lasts_is_logged_once_a_minute_not_at_every_tick(site, tmp_path):
    import json
    import sqlite3

    from gateway.core import logs
    from gateway.runtime.service import Service

    def full() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    logs.setup(tmp_path / "log", console=False)
    try:
        service = Service(site.load())
        said = [service._housekeeping(full) for _tick in range(5)]  # five ticks of the main loop
    finally:
        logs.setup(None, console=False)
    assert said == ["cannot publish status: OperationalError: database or disk is full"] * 5  # STATUS= every time
    events = [json.loads(line)["event"] for line in (tmp_path / "log" / "gateway.log").read_text().splitlines()]
    assert events.count("service.housekeeping_failed") == 1
