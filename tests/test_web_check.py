"""`check` on the [web] table: the staff page's address can be listened on (or the page is there already), its users
file is there, a regular file, private, readable and names a user who can log in, and its unit can read the ledger.
Real files, real sockets, the real command."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from gateway.cli import checks
from gateway.cli.checks import Result, run_checks, unit_sandbox
from gateway.web.users import add_user


def _web_results(site, web: str | None = None, extra: str = "") -> list[Result]:
    """The [web] lines of `check --offline` for the site, its config first ended with this [web] table (and extra);
    web None: the config as it is (a file changed since is looked at again)."""
    if web is not None:
        site.config_file.write_text(site.config_file.read_text() + extra + "\n[web]\n" + web)
    return [
        result
        for result in run_checks(site.load(), offline=True)
        if "web." in result.what or result.what.startswith("secret")
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _one(results: list[Result], what: str) -> Result:
    [found] = [result for result in results if result.what.startswith(what)]
    return found


def test_a_free_loopback_address_and_no_users_file_pass(site):
    port = _free_port()
    results = _web_results(site, f'listen = "127.0.0.1:{port}"\n')
    assert _one(results, "web.listen") == Result(
        "ok", f"web.listen 127.0.0.1:{port}", "free: the staff page can listen there"
    )
    assert _one(results, "web.users_file").mark == "ok" and "no login" in _one(results, "web.users_file").detail


def test_a_name_that_resolves_to_loopback_is_bound_as_the_page_would(site):
    port = _free_port()
    assert _one(_web_results(site, f'listen = "localhost:{port}"\n'), "web.listen").mark == "ok"


def test_an_address_in_use_names_the_process_holding_it(site):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        listen = _one(_web_results(site, f'listen = "127.0.0.1:{port}"\n'), "web.listen")
    assert listen.mark == "FAIL"
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert f"127.0.0.1:{port} is in use by pid {os.getpid()} ({comm}): stop it or choose another port" == listen.detail


@pytest.mark.parametrize("login", [False, True], ids=["open", "with-users-file"])
def test_the_staff_page_itself_on_the_address_is_no_problem(site, tmp_path, login):
    """check run while the page's unit runs: the address is taken, by the page (its /metrics, or its login)."""
    from gateway.web.server import WebServer

    port = _free_port()
    users = tmp_path / "web-users"
    add_user(users, "desk", "a password")
    _web_results(site, f'listen = "127.0.0.1:{port}"\n' + (f'users_file = "{users}"\n' if login else ""))
    server = WebServer(site.load()).start()
    try:
        listen = _one(_web_results(site), "web.listen")
    finally:
        server.stop()
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert listen == Result(
        "ok", f"web.listen 127.0.0.1:{port}", f"the staff page is running there (pid {os.getpid()} ({comm}))"
    )


def test_an_address_of_no_interface_here_is_named(site, tmp_path):
    users = tmp_path / "web-users"
    add_user(users, "desk", "a password")
    listen = _one(
        _web_results(site, f'listen = "192.0.2.1:9465"\nusers_file = "{users}"\n'), "web.listen"
    )  # TEST-NET-1: on no host
    assert listen == Result("FAIL", "web.listen 192.0.2.1:9465", "192.0.2.1 is not an address of this host")


def test_the_port_of_the_metrics_listener_is_refused(site):
    port = _free_port()
    listen = _one(
        _web_results(site, f'listen = "127.0.0.1:{port}"\n', extra=f'\n[metrics]\nlisten = "0.0.0.0:{port}"\n'),
        "web.listen",
    )
    assert listen.mark == "FAIL" and f"the address of metrics.listen (0.0.0.0:{port})" in listen.detail


def test_a_port_below_1024_is_warned_about_the_unit_cannot_bind_it(site):
    port = next(port for port in range(1023, 900, -1) if _bindable(port))
    listen = _one(_web_results(site, f'listen = "127.0.0.1:{port}"\n'), "web.listen")
    assert listen.mark == "WARN" and "below 1024" in listen.detail and "9465" in listen.detail


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize(
    ("make", "mark", "detail"),
    [
        (lambda path: None, "FAIL", "does not exist: `caiasoft-gateway web-user NAME` makes it with a first user"),
        (lambda path: path.mkdir(), "FAIL", "is not a regular file"),
        (lambda path: path.write_text(""), "FAIL", "holds no user who can log in"),
        (lambda path: path.write_text("# staff\n\n"), "FAIL", "holds no user who can log in"),
    ],
    ids=["missing", "a-folder", "empty", "comments-only"],
)
def test_a_users_file_that_lets_nobody_in_fails(site, tmp_path, make, mark, detail):
    users = tmp_path / "web-users"
    make(users)
    found = _one(_web_results(site, f'users_file = "{users}"\n'), "web.users_file")
    assert (found.mark, found.what) == (mark, f"web.users_file {users}") and found.detail.startswith(detail)


def test_a_users_file_with_users_passes_and_names_a_line_that_cannot_log_in(site, tmp_path):
    users = tmp_path / "web-users"
    add_user(users, "desk", "first password")
    add_user(users, "librarian", "second password")
    results = _web_results(site, f'users_file = "{users}"\n')
    assert _one(results, "web.users_file") == Result("ok", f"web.users_file {users}", "2 user(s)")
    assert not [result for result in results if result.mark != "ok"]

    with users.open("a") as file:
        file.write("clerk:plain-text-password\n")  # a hand edit: not a hash web-user writes
    results = _web_results(site)  # the same config, the users file looked at again
    warned, passed = (result for result in results if result.what == f"web.users_file {users}")
    assert warned.mark == "WARN" and warned.detail.startswith("cannot log in: clerk (not a password hash")
    assert passed == Result("ok", f"web.users_file {users}", "2 user(s)")


def test_a_users_file_others_can_read_is_warned_about_as_the_api_key_is(site, tmp_path):
    users = tmp_path / "web-users"
    add_user(users, "desk", "a password")
    users.chmod(0o644)
    results = _web_results(site, f'users_file = "{users}"\n')
    assert (
        Result(
            "WARN",
            "secret file permissions",
            f"web.users_file {users} is readable by every user: chmod 0600 (or 0640) it",
        )
        in results
    )
    users.chmod(0o640)
    assert "readable by its group" in _one(_web_results(site), "secret file permissions").detail
    users.chmod(0o600)
    assert not [result for result in _web_results(site) if result.what == "secret file permissions"]


def test_check_as_the_service_user_fails_a_users_file_it_cannot_read(unprivileged_site, gateway_install):
    """What `check --as-service` meets when `web-user` ran as root and made the file root's: the page could not
    read it (root reads everything, so a plain check as root cannot tell)."""
    users = unprivileged_site.root / "web-users"
    add_user(users, "desk", "a password")
    os.chown(users, 0, 0)
    port = _free_port()
    with unprivileged_site.config_file.open("a") as config:
        config.write(f'\n[web]\nlisten = "127.0.0.1:{port}"\nusers_file = "{users}"\n')
    result = gateway_install.run("-c", str(unprivileged_site.config_file), "check", "--offline")
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"FAIL  web.users_file {users}\n        cannot be read by {gateway_install.user}: the staff page runs as the "
        "service's user; chown it to that user (mode 0600)"
    ) in result.stdout
    assert f"ok    web.listen 127.0.0.1:{port}\n        free" in result.stdout

    os.chown(users, gateway_install.uid, gateway_install.gid)
    result = gateway_install.run("-c", str(unprivileged_site.config_file), "check", "--offline")
    assert result.returncode == 0 and f"ok    web.users_file {users}\n        1 user(s)" in result.stdout, result.stdout


def _units(folder: Path, state_dir: str | None = None) -> Path:
    """The service's unit and the staff page's, installed in folder as tools/install leaves them; the page's with
    its ReadWritePaths= naming state_dir instead of /var/lib/caiasoft-gateway, if given. Returns the service's."""
    folder.mkdir(parents=True)
    for name in ("caiasoft-gateway.service", checks.WEB_UNIT_NAME):
        shutil.copy(REPO / "systemd" / name, folder / name)
    if state_dir:
        web = folder / checks.WEB_UNIT_NAME
        web.write_text(
            web.read_text().replace("ReadWritePaths=-/var/lib/caiasoft-gateway\n", f"ReadWritePaths=-{state_dir}\n")
        )
    return folder / "caiasoft-gateway.service"


def _web_sandbox(site, unit: Path, root: Path) -> list[Result]:
    if "\n[web]\n" not in site.config_file.read_text():
        site.config_file.write_text(site.config_file.read_text() + f'\n[web]\nlisten = "127.0.0.1:{_free_port()}"\n')
    return [result for result in unit_sandbox(site.load(), unit, root) if "staff page" in result.what]


def test_the_staff_pages_unit_must_let_it_write_the_ledgers_shared_memory(site, tmp_path):
    """tmp_path as the scratch root the units are installed in (the site's state_dir is its /state): outside the page
    unit's ReadWritePaths= (a moved state_dir) is a FAIL with the fix; inside it, ok. Without the page's unit
    installed, nothing is said."""
    unit = _units(tmp_path / "etc/systemd/system")
    [result] = _web_sandbox(site, unit, tmp_path)
    assert result.mark == "FAIL" and result.what == f"the staff page's sandbox ({unit.with_name(checks.WEB_UNIT_NAME)})"
    assert result.detail == (
        f"paths.state_dir {site.state} is read-only for the staff page, which reads the ledger there (a reader "
        "writes gateway.db-shm beside it): systemctl edit caiasoft-gateway-web, add [Service] and "
        f"ReadWritePaths={site.state}, then systemctl restart caiasoft-gateway-web"
    )
    moved = _units(tmp_path / "moved/etc/systemd/system", state_dir="/state")
    assert [(result.mark, result.detail) for result in _web_sandbox(site, moved, tmp_path)] == [
        ("ok", f"it can read the ledger in {site.state}")
    ]
    (unit.with_name(checks.WEB_UNIT_NAME)).unlink()
    assert _web_sandbox(site, unit, tmp_path) == []


def test_check_prints_the_web_lines_and_exits_1_on_a_fail(site):
    port = _free_port()
    with site.config_file.open("a") as config:
        config.write(f'\n[web]\nlisten = "127.0.0.1:{port}"\nusers_file = "{site.root / "no-such-file"}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "check", "--offline"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"ok    web.listen 127.0.0.1:{port}\n        free: the staff page can listen there" in result.stdout
    assert f"FAIL  web.users_file {site.root / 'no-such-file'}\n        does not exist" in result.stdout
    assert "1 problem(s) found" in result.stdout
