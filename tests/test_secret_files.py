"""Files holding secrets are warned about when other users may read them: the API key file, and the SMTP
relay's alerts.password_file alike (in `check`, and in the real daemon's log when it starts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import wait_for
from peers import alerts_table, free_port

PASSWORD = "s3cret-relay-pass"


@pytest.mark.parametrize(("mode", "words"), [(0o644, "is readable by every user"), (0o640, "is readable by its group")])
def test_a_relay_password_file_others_can_read_is_warned(mode, words, site, simulator, daemon_factory, tmp_path):
    password_file = tmp_path / "smtp-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(mode)
    site.key_file.chmod(0o600)
    site.write(
        simulator.url, extra=alerts_table(free_port(), extra=f'username = "gateway"\npassword_file = "{password_file}"')
    )
    warning = f"alerts.password_file {password_file} {words}"
    checked = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "check", "--offline"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert warning in checked.stdout, checked.stdout
    assert "API key file" not in checked.stdout, "the key file (0600) is not warned about"
    daemon = daemon_factory(site.config_file)
    log = site.log_dir / "gateway.log"
    warned = wait_for(
        lambda: [line for line in log.read_text().splitlines() if '"config.warning"' in line] if log.exists() else None,
        timeout=20,
        message="the warning in the log",
    )
    [detail] = [json.loads(line)["detail"] for line in warned]
    assert detail.startswith(warning), detail
    assert PASSWORD not in log.read_text() + daemon.output() + checked.stdout
    assert daemon.stop() == 0


def test_a_private_relay_password_file_is_not_warned(site, simulator, tmp_path):
    password_file = tmp_path / "smtp-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    site.key_file.chmod(0o600)
    site.write(
        simulator.url, extra=alerts_table(free_port(), extra=f'username = "gateway"\npassword_file = "{password_file}"')
    )
    checked = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "check", "--offline"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "password_file" not in checked.stdout and "WARN  secret file" not in checked.stdout, checked.stdout


@pytest.mark.parametrize("key", ["private_key_file", "private_key_passphrase_file", "password_file"])
def test_an_sftp_login_file_others_can_read_is_warned(key, site, simulator, tmp_path):
    secret = tmp_path / "sftp-secret"
    secret.write_text("not a real key, only its mode matters here\n")
    secret.chmod(0o644)
    site.key_file.chmod(0o600)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    login = f'{key} = "{secret}"' + ("" if key == "private_key_file" else f'\nprivate_key_file = "{tmp_path / "id"}"')
    if key != "private_key_file":
        (tmp_path / "id").write_text("a key\n")
        (tmp_path / "id").chmod(0o600)
    site.write(
        simulator.url,
        extra=f"""
[[sources]]
name = "remote"
url = "sftp://aleph@127.0.0.1:22/print"
known_hosts_file = "{known_hosts}"
{login}
""",
    )
    warnings = site.load().warnings
    assert f"sources[1].{key} {secret} is readable by every user: chmod 0600 (or 0640) it" in warnings, warnings
    secret.chmod(0o600)
    assert not [warning for warning in site.load().warnings if "sources[1]" in warning]
