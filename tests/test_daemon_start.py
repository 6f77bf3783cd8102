"""`daemon` refuses a start that cannot work before it detaches, with exit 2 and the reason on the terminal,
and drops to --user the way the init script does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for

pytestmark = pytest.mark.e2e


def daemon(
    config: Path, pidfile: Path, *more: str, command: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(command or [sys.executable, "-m", "gateway"]),
            "-c",
            str(config),
            "daemon",
            "--pidfile",
            str(pidfile),
            *more,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_a_missing_pidfile_folder_is_refused_before_detaching(site, tmp_path):
    pidfile = tmp_path / "run" / "caiasoft-gateway" / "gateway.pid"
    result = daemon(site.config_file, pidfile, "--user", "root")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the pidfile's folder {pidfile.parent} does not exist" in result.stderr
    assert "Traceback" not in result.stderr and not site.log_dir.exists()  # nothing ran


def test_root_without_user_is_refused(site, tmp_path):
    assert os.geteuid() == 0, "run as root (CI does)"
    result = daemon(site.config_file, tmp_path / "gateway.pid")
    assert result.returncode == 2 and "started as root" in result.stderr and "--user" in result.stderr, result.stderr
    assert not (tmp_path / "gateway.pid").exists() and not site.state.exists()


def test_unknown_user_is_refused(site, tmp_path):
    result = daemon(site.config_file, tmp_path / "gateway.pid", "--user", "no-such-user-here")
    assert result.returncode == 2 and "--user no-such-user-here: there is no such user" in result.stderr


def test_a_state_folder_the_user_cannot_write_is_named_not_a_traceback(unprivileged_site, gateway_install):
    site = unprivileged_site
    os.chown(site.state, 0, 0)  # a fresh host: the folder is root's, the service user cannot write it
    run = site.root / "run"
    run.mkdir()
    gateway_install.give(run)
    result = daemon(
        site.config_file, run / "gateway.pid", command=gateway_install.command(), env=gateway_install.environment()
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        f"the state folder (paths.state_dir) {site.state} is not writable by uid {gateway_install.uid}" in result.stderr
    )
    assert "Traceback" not in result.stderr and not (run / "gateway.pid").exists()


def test_a_log_folder_that_cannot_be_made_is_named(unprivileged_site, gateway_install):
    site = unprivileged_site
    site.log_dir.rmdir()
    os.chown(site.root, 0, 0)
    os.chmod(site.root, 0o755)  # the user cannot make the log folder in it
    run = site.root / "run"
    run.mkdir()
    gateway_install.give(run)
    result = daemon(
        site.config_file, run / "gateway.pid", command=gateway_install.command(), env=gateway_install.environment()
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the log folder (paths.log_dir) {site.log_dir} does not exist and cannot be made" in result.stderr


def test_user_drops_root_to_the_service_user_and_it_works(unprivileged_site, gateway_install):
    site = unprivileged_site
    run = site.root / "run"
    run.mkdir()
    gateway_install.give(run)
    pidfile = run / "gateway.pid"
    result = subprocess.run(
        [
            str(gateway_install.executable),
            "-c",
            str(site.config_file),
            "daemon",
            "--pidfile",
            str(pidfile),
            "--user",
            gateway_install.user,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=gateway_install.environment(),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), message="the pidfile"))
    try:
        assert os.stat(f"/proc/{pid}").st_uid == gateway_install.uid
        (site.source / "u_barcode").write_text("31234001234567\n")
        archived = wait_for(site.archived, message="the file archived")
        assert os.stat(archived[0]).st_uid == gateway_install.uid  # not a root-owned archive
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), message="the daemon to stop")


def test_a_lock_file_left_by_root_is_named(unprivileged_site, gateway_install):
    site = unprivileged_site
    (site.state / "gateway.lock").write_text("")  # a start as root before: the file is root's
    run = site.root / "run"
    run.mkdir()
    gateway_install.give(run)
    result = daemon(
        site.config_file, run / "gateway.pid", command=gateway_install.command(), env=gateway_install.environment()
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{site.state / 'gateway.lock'} belongs to uid 0" in result.stderr and "Traceback" not in result.stderr


def test_an_archive_folder_the_user_cannot_write_is_refused_before_detaching(unprivileged_site, gateway_install):
    """`check` FAILs an archive or error folder the service cannot write; `daemon` refuses to start on one."""
    site = unprivileged_site
    for folder, key in ((site.archive, "archive_dir"), (site.error, "error_dir")):
        folder.mkdir(exist_ok=True)
        os.chown(folder, 0, 0)
        os.chmod(folder, 0o755)
        run = site.root / f"run-{key}"
        run.mkdir()
        gateway_install.give(run)
        result = daemon(
            site.config_file, run / "gateway.pid", command=gateway_install.command(), env=gateway_install.environment()
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"(paths.{key}) {folder} is not writable by uid {gateway_install.uid}" in result.stderr
        assert not (run / "gateway.pid").exists()
        gateway_install.give(folder)


def test_a_pidfile_left_by_root_is_named(unprivileged_site, gateway_install):
    site = unprivileged_site
    run = site.root / "run"
    run.mkdir()
    gateway_install.give(run)
    (run / "gateway.pid").write_text("1\n")  # root's, from a start as root
    os.chmod(run / "gateway.pid", 0o644)
    result = daemon(
        site.config_file, run / "gateway.pid", command=gateway_install.command(), env=gateway_install.environment()
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the pidfile {run / 'gateway.pid'} belongs to uid 0" in result.stderr and "remove it" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_on_a_read_only_state_folder_exits_2_naming_it_and_read_write_paths(site):
    """What ProtectSystem=strict does to a state folder outside the unit's writable paths: a read-only bind mount
    (a mount namespace of its own). `run` says which folder and the fix, exit 2 (no restart loop), no traceback."""
    site.state.mkdir(exist_ok=True)
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            str(site.state),
            sys.executable,
            "-m",
            "gateway",
            "-c",
            str(site.config_file),
            "run",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the state folder (paths.state_dir) {site.state} is on a read-only filesystem" in result.stderr
    assert f"ReadWritePaths={site.state}" in result.stderr and "Traceback" not in result.stderr
