"""`check --as-service`: check with the installed unit's user, groups, capability and API key credential."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import KEY

from gateway.cli import asservice

CAP_LEASE_HELD = "CAP_LEASE held"


def write_unit(folder: Path, executable: Path, *service: str, dropins: dict[str, str] | None = None) -> Path:
    unit = folder / "caiasoft-gateway.service"
    unit.write_text(
        "[Unit]\nDescription=test\n[Service]\nType=notify\n"
        f"ExecStart={executable} run\n" + "".join(line + "\n" for line in service)
    )
    for name, text in (dropins or {}).items():
        unit.with_name(unit.name + ".d").mkdir(exist_ok=True)
        (unit.with_name(unit.name + ".d") / name).write_text(text)
    return unit


def test_the_unit_and_its_drop_ins_are_read_as_systemd_reads_them(tmp_path):
    unit = write_unit(
        tmp_path,
        Path("/usr/local/bin/caiasoft-gateway"),
        "User=caiasoft-gateway",
        "SupplementaryGroups=first",
        "AmbientCapabilities=CAP_LEASE",
        dropins={
            "b-site.conf": "[Service]\nSupplementaryGroups=\nSupplementaryGroups=aleph\n"
            "LoadCredential=caiasoft-api-key:/etc/caiasoft-gateway/api-key\n",
            "a-newer.conf": "[Service]\nProtectProc=invisible\n# User=not-this\n",
        },
    )
    identity = asservice.read_unit(unit)
    assert (identity.user, identity.supplementary, identity.capabilities) == (
        "caiasoft-gateway",
        ["aleph"],
        ["CAP_LEASE"],
    )
    assert identity.credentials == {"caiasoft-api-key": "/etc/caiasoft-gateway/api-key"}
    assert identity.exec_start == "/usr/local/bin/caiasoft-gateway"
    assert asservice.version_warnings(identity, 252) == []
    warnings = asservice.version_warnings(identity, 239)
    assert (
        len(warnings) == 2
        and "LoadCredential= (systemd 247 and later)" in warnings[0]
        and "api_key_file" in warnings[0]
        and "ProtectProc=" in warnings[1]
        and "newer-systemd.conf" in warnings[1]
    )


def test_a_unit_that_cannot_be_followed_is_named(tmp_path):
    with pytest.raises(asservice.AsServiceError, match="cannot read the unit"):
        asservice.read_unit(tmp_path / "missing.service")
    unit = write_unit(tmp_path, Path("/bin/true"), "User=no-such-user-here")
    with pytest.raises(asservice.AsServiceError, match="User=no-such-user-here does not exist"):
        asservice.command(asservice.read_unit(unit), Path("/"), ["check"])


def test_check_as_the_unit_with_its_user_capability_and_credential(unprivileged_site, gateway_install):
    """The key handed over as LoadCredential= (root's file, unreadable by the user): check as the service reads it
    from the credentials folder, holds CAP_LEASE, and the folder is gone afterwards."""
    site = unprivileged_site
    text = site.config_file.read_text()
    site.config_file.write_text("\n".join(line for line in text.splitlines() if not line.startswith("api_key_file")))
    os.chown(site.key_file, 0, 0)  # root's alone: only a credential can bring it to the service
    unit = write_unit(
        site.root,
        gateway_install.executable,
        f"User={gateway_install.user}",
        "AmbientCapabilities=CAP_LEASE",
        f"LoadCredential=caiasoft-api-key:{site.key_file}",
    )
    before = set(Path("/tmp").glob("caiasoft-gateway-credentials-*"))
    result = subprocess.run(
        [str(gateway_install.executable), "-c", str(site.config_file), "check", "--as-service", "--unit", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        env=gateway_install.environment(),
    )
    said = result.stdout + result.stderr
    assert result.returncode == 0 and "all checks passed" in said, said
    assert f"user {gateway_install.user} (uid {gateway_install.uid})" in said and "credential caiasoft-api-key" in said
    assert CAP_LEASE_HELD in said and KEY not in said
    assert set(Path("/tmp").glob("caiasoft-gateway-credentials-*")) == before

    plain = subprocess.run(
        [*gateway_install.command("-c", str(site.config_file), "check", "--offline")],
        capture_output=True,
        text=True,
        timeout=120,
        env=gateway_install.environment(),
    )
    assert plain.returncode != 0 and "no API key" in plain.stdout  # without the unit's credential


def test_check_as_root_says_it_proves_little_and_how_to_check_as_the_service(site):
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "check", "--offline"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "caiasoft-gateway check --as-service" in result.stdout, result.stdout


def test_every_check_warns_when_the_running_systemd_is_older_than_the_installed_unit(tmp_path, monkeypatch):
    unit = write_unit(
        tmp_path,
        Path("/usr/local/bin/caiasoft-gateway"),
        "User=caiasoft-gateway",
        dropins={"newer-systemd.conf": "[Service]\nProtectClock=yes\n"},
    )
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    systemctl = bin_folder / "systemctl"  # RHEL 8's, as far as `systemctl --version` tells
    systemctl.write_text("#!/bin/sh\necho 'systemd 239 (239-74.el8_8)'\necho '+PAM +AUDIT'\n")
    systemctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}:{os.environ['PATH']}")
    assert asservice.systemd_version() == 239
    [warning] = asservice.installed_unit_warnings(unit)
    assert "systemd 239 does not know ProtectClock= (systemd 245 and later)" in warning
    assert asservice.installed_unit_warnings(tmp_path / "not-installed.service") == []
    systemctl.write_text("#!/bin/sh\necho 'systemd 252 (252.38-1~deb12u1)'\n")
    assert asservice.installed_unit_warnings(unit) == []


def test_the_units_sandbox_is_compared_with_every_folder_the_gateway_writes(tmp_path):
    unit = write_unit(
        tmp_path,
        Path("/usr/local/bin/caiasoft-gateway"),
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "StateDirectory=caiasoft-gateway",
        "LogsDirectory=caiasoft-gateway",
        "ReadWritePaths=-/var/lib/prometheus/node-exporter",
        dropins={"site.conf": "[Service]\nReadWritePaths=/exlibris/print\n"},
    )
    identity = asservice.read_unit(unit)
    folders = [
        ("paths.state_dir", Path("/var/lib/caiasoft-gateway")),
        ("paths.log_dir", Path("/var/log/caiasoft-gateway")),
        ("sources[0].path", Path("/exlibris/print/")),
        ("sources[1].path", Path("/exlibris/print-other")),
        ("paths.archive_dir", Path("/exlibris/caiasoft-state/archive")),
        ("paths.error_dir", Path("/tmp/e")),
        ("ncip.journal (its folder)", Path("/home/aleph/journal")),
    ]
    problems = asservice.sandbox_problems(identity, folders)
    assert len(problems) == 4, problems
    assert problems[0].startswith("sources[1].path /exlibris/print-other is read-only for the service")
    assert (
        "ReadWritePaths=/exlibris/print-other" in problems[0] and "--writable-path /exlibris/print-other" in problems[0]
    )
    assert problems[1].startswith("paths.archive_dir /exlibris/caiasoft-state/archive is read-only")
    assert "PrivateTmp=yes" in problems[2] and "ProtectHome=" in problems[3]
    # in a scratch root, the unit's paths are the root's
    root = tmp_path / "host"
    assert asservice.sandbox_problems(identity, [("paths.state_dir", root / "var/lib/caiasoft-gateway")], root) == []
    assert asservice.sandbox_problems(identity, [("paths.state_dir", root / "srv/state")], root) != []
    # a unit without ProtectSystem= takes nothing away
    assert asservice.sandbox_problems(asservice.read_unit(write_unit(tmp_path, Path("/bin/true"))), folders[:5]) == []


def test_check_as_service_fails_a_state_folder_outside_the_units_writable_paths(unprivileged_site, gateway_install):
    """The state folder on the print folder's filesystem, as the docs advise, but not in ReadWritePaths=: the service
    would find it read-only, so `check --as-service` FAILs it with the fix; the drop-in line makes it pass."""
    site = unprivileged_site
    unit = write_unit(
        site.root,
        gateway_install.executable,
        f"User={gateway_install.user}",
        "AmbientCapabilities=CAP_LEASE",
        "ProtectSystem=strict",
        *(f"ReadWritePaths={path}" for path in (site.source, site.archive, site.error, site.log_dir)),
    )

    def check() -> tuple[int, str]:
        result = subprocess.run(
            [
                str(gateway_install.executable),
                "-c",
                str(site.config_file),
                "check",
                "--as-service",
                "--offline",
                "--unit",
                str(unit),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=gateway_install.environment(),
        )
        return result.returncode, result.stdout + result.stderr

    code, said = check()
    assert code == 1 and "1 problem(s) found" in said, said
    assert f"paths.state_dir {site.state} is read-only for the service (ProtectSystem=strict" in said
    assert f"ReadWritePaths={site.state}" in said
    (site.root / "caiasoft-gateway.service.d").mkdir()
    (site.root / "caiasoft-gateway.service.d" / "site.conf").write_text(f"[Service]\nReadWritePaths={site.state}\n")
    code, said = check()
    assert code == 0 and "all checks passed" in said and "every folder the gateway writes is writable" in said, said


def test_the_folders_compared_are_every_one_the_config_has_the_gateway_write(site):
    from conftest import ncip_table

    from gateway.cli.checks import service_folders

    (site.root / "prom").mkdir()
    site.write(
        "http://127.0.0.1:9",
        extra=ncip_table("http://127.0.0.1:9", site.root / "ncip" / "journal.jsonl")
        + f'\n[metrics]\nlisten = ""\ntextfile = "{site.root / "prom" / "gateway.prom"}"\n',
    )
    folders = dict(service_folders(site.load()))
    assert folders == {
        "paths.state_dir": site.state,
        "paths.archive_dir": site.archive,
        "paths.error_dir": site.error,
        "paths.log_dir": site.log_dir,
        "ncip.journal (its folder)": site.root / "ncip",
        "metrics.textfile (its folder)": site.root / "prom",
        "sources[0].path": site.source,
    }
