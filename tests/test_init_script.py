"""The SysV init script (hosts without systemd) starts the gateway as its user with CAP_LEASE and nothing else."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, wait_for

pytestmark = pytest.mark.e2e

SCRIPT = REPO / "conf" / "caiasoft-gateway.init"
CAP_LEASE = 1 << 28


def capabilities(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: int(value, 16) for key, value in (line.split(":\t") for line in lines if line.startswith("Cap"))}


def test_start_status_stop_as_the_service_user_with_cap_lease_only(unprivileged_site, gateway_install):
    site = unprivileged_site
    pidfile = site.root / "run" / "gateway.pid"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "PIDFILE": str(pidfile),
        "GATEWAY": str(gateway_install.executable),
        "GATEWAY_USER": gateway_install.user,
        "CAIASOFT_GATEWAY_CONFIG": str(site.config_file),
    }

    def script(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(SCRIPT), action], capture_output=True, text=True, timeout=120, env=env)

    stopped = script("status")
    assert stopped.returncode == 3 and "not running" in stopped.stdout, stopped.stdout + stopped.stderr  # LSB
    started = script("start")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), message="the pidfile"))
    try:
        assert os.stat(f"/proc/{pid}").st_uid == gateway_install.uid
        caps = capabilities(pid)
        assert caps["CapEff"] == caps["CapPrm"] == caps["CapAmb"] == CAP_LEASE, caps
        status = script("status")
        assert status.returncode == 0 and "running" in status.stdout, status.stdout + status.stderr
        restarted = script("restart")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        wait_for(lambda: not running(pid), message="the first gateway to exit on restart")
        pid = int(
            wait_for(
                lambda: pidfile.exists() and pidfile.read_text().strip() != str(pid) and pidfile.read_text().strip(),
                message="the restarted gateway's pidfile",
            )
        )
        assert running(pid) and script("status").returncode == 0
    finally:
        stopped = script("stop")
    assert stopped.returncode == 0 and not pidfile.exists(), stopped.stderr
    wait_for(lambda: not running(pid), message="the gateway to exit")
    assert script("status").returncode == 3


def test_a_stale_pidfile_is_not_running_and_stop_removes_it_at_once(tmp_path):
    """A pidfile left by a crash (its pid gone, or reused by another program): status says 1, stop exits 0 and
    removes it without waiting; no process is signalled."""
    pidfile = tmp_path / "gateway.pid"
    bystander = subprocess.Popen(["sleep", "600"])  # a live process that is not the gateway
    try:
        for pid in ("999999999", str(bystander.pid)):
            pidfile.write_text(pid + "\n")
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PIDFILE": str(pidfile), "STOP_SECONDS": "600"}
            status = subprocess.run(["sh", str(SCRIPT), "status"], capture_output=True, text=True, env=env, timeout=30)
            assert status.returncode == 1 and "pidfile" in status.stdout, status.stdout + status.stderr
            stop = subprocess.run(["sh", str(SCRIPT), "stop"], capture_output=True, text=True, env=env, timeout=30)
            assert stop.returncode == 0 and not pidfile.exists(), stop.stdout + stop.stderr
            assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def running(pid: int) -> bool:
    """True while the process lives (a zombie left to an init that does not reap does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("form", [["--user", "USER", "--pidfile", "PIDFILE"], ["--pidfile=PIDFILE", "--user", "USER"]])
def test_a_daemon_started_with_user_or_pidfile_equals_is_known_as_running(unprivileged_site, gateway_install, form):
    """`daemon --user U --pidfile P` and `daemon --pidfile=P` (started by hand, not by the script): status says
    running, stop stops that process and only then removes the pidfile."""
    site = unprivileged_site
    run = site.root / "run"
    run.mkdir()
    gateway_install.give(run)
    pidfile = run / "gateway.pid"
    arguments = [
        str(pidfile)
        if word == "PIDFILE"
        else gateway_install.user
        if word == "USER"
        else word.replace("PIDFILE", str(pidfile))
        for word in form
    ]
    started = subprocess.run(
        [str(gateway_install.executable), "-c", str(site.config_file), "daemon", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=gateway_install.environment(),
        stdin=subprocess.DEVNULL,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), message="the pidfile"))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "PIDFILE": str(pidfile),
        "GATEWAY": str(gateway_install.executable),
        "GATEWAY_USER": gateway_install.user,
        "CAIASOFT_GATEWAY_CONFIG": str(site.config_file),
    }
    try:
        status = subprocess.run(["sh", str(SCRIPT), "status"], capture_output=True, text=True, env=env, timeout=60)
        assert status.returncode == 0 and f"running (pid {pid})" in status.stdout, status.stdout + status.stderr
        stop = subprocess.run(["sh", str(SCRIPT), "stop"], capture_output=True, text=True, env=env, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert not running(pid) and not pidfile.exists()
    finally:
        if running(pid):
            os.kill(pid, 15)
