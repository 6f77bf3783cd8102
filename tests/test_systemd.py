"""The shipped systemd units (the service, and the staff page's) pass `systemd-analyze verify` clean, with and
without the drop-in for newer systemd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

UNIT = REPO / "systemd" / "caiasoft-gateway.service"
WEB_UNIT = REPO / "systemd" / "caiasoft-gateway-web.service"
INSTALLED_PATH = "/usr/local/bin/caiasoft-gateway"


# `systemd-analyze security` exposure of the unit, times ten: 1.9 before CAP_LEASE was granted,
# 1.6 since (the capability costs 0.1; PrivateMounts, ProtectProc and RemoveIPC gained 0.5).
EXPOSURE_LIMIT = 16


def _analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run tools/install-test-deps (apt-get install systemd)"
    return analyze


NEWER = REPO / "systemd" / "newer-systemd.conf"
SITE_DROPIN = "[Service]\nSupplementaryGroups=root\nReadWritePaths=/tmp\n"  # what the install writes, for a site

# The systemd release that first knew each directive the unit and its drop-ins use (systemd's NEWS and
# man pages). RHEL 8 ships systemd 239: the unit itself must use nothing newer; newer-systemd.conf holds the rest.
RHEL8_SYSTEMD = 239
SINCE = {
    "Description": 1,
    "Documentation": 1,
    "After": 1,
    "Wants": 1,
    "Type": 1,
    "ExecStart": 1,
    "ExecReload": 1,
    "Restart": 1,
    "RestartSec": 1,
    "RestartPreventExitStatus": 189,
    "WatchdogSec": 1,
    "TimeoutStopSec": 1,
    "CPUWeight": 232,
    "IOWeight": 232,
    "User": 1,
    "Group": 1,
    "SupplementaryGroups": 1,
    "UMask": 1,
    "StateDirectory": 235,
    "StateDirectoryMode": 235,
    "LogsDirectory": 235,
    "LogsDirectoryMode": 235,
    "ConfigurationDirectory": 235,
    "ConfigurationDirectoryMode": 235,
    "ProtectSystem": 214,
    "ReadWritePaths": 231,
    "ReadOnlyPaths": 231,
    "ProtectHome": 214,
    "PrivateTmp": 1,
    "PrivateMounts": 239,
    "RemoveIPC": 232,
    "PrivateDevices": 1,
    "NoNewPrivileges": 187,
    "ProtectKernelTunables": 232,
    "ProtectKernelModules": 232,
    "ProtectControlGroups": 232,
    "LockPersonality": 235,
    "RestrictRealtime": 231,
    "RestrictNamespaces": 233,
    "RestrictAddressFamilies": 211,
    "SystemCallFilter": 187,
    "SystemCallArchitectures": 187,
    "CapabilityBoundingSet": 1,
    "AmbientCapabilities": 229,
    "WantedBy": 1,
    "ProtectProc": 247,
    "ProtectKernelLogs": 244,
    "ProtectClock": 245,
    "ProtectHostname": 242,
    "RestrictSUIDSGID": 242,
    "LoadCredential": 247,
}


def _unit_folder(tmp_path: Path, newer: bool = True, unit: Path = UNIT) -> Path:
    """A unit search folder as the install leaves it: the unit (ExecStart pointing at this checkout's command,
    which verify insists exists), the site drop-in (the service's only), and newer-systemd.conf where newer is
    set."""
    script = Path(sys.executable).with_name("caiasoft-gateway")
    assert script.exists()
    text = unit.read_text()
    assert text.count(INSTALLED_PATH) == 1
    folder = tmp_path / ("units-newer" if newer else "units-239")
    dropins = folder / f"{unit.name}.d"
    dropins.mkdir(parents=True)
    (folder / unit.name).write_text(text.replace(INSTALLED_PATH, str(script)))
    if unit == UNIT:
        (dropins / "site.conf").write_text(SITE_DROPIN)
    if newer:
        (dropins / NEWER.name).write_text(NEWER.read_text())
    return folder


def _analyze_unit(folder: Path, *args: str, unit: Path = UNIT) -> subprocess.CompletedProcess[str]:
    """systemd-analyze on the unit by name, searched in folder first (so its drop-ins are read too)."""
    return subprocess.run(
        [_analyze(), *args, unit.name],
        capture_output=True,
        text=True,
        cwd=folder,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{folder}:"},
    )


def _directives(path: Path) -> list[str]:
    return [
        line.split("=", 1)[0].strip()
        for line in path.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith(("#", ";", "["))
    ]


@pytest.mark.parametrize("unit", [UNIT, WEB_UNIT], ids=["service", "web"])
@pytest.mark.parametrize("newer", [False, True], ids=["systemd-239", "systemd-247-and-later"])
def test_unit_verifies_clean_with_and_without_the_newer_drop_in(tmp_path, newer, unit):
    result = _analyze_unit(_unit_folder(tmp_path, newer, unit), "verify", "--man=no", unit=unit)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_the_unit_uses_nothing_newer_than_rhel8s_systemd_and_the_drop_in_only_newer():
    unit, newer = _directives(UNIT) + _directives(WEB_UNIT), _directives(NEWER)
    unknown = [name for name in unit + newer if name not in SINCE]
    assert not unknown, f"add the systemd version that introduced {unknown} to SINCE"
    assert [name for name in unit if SINCE[name] > RHEL8_SYSTEMD] == []
    assert newer and all(SINCE[name] > RHEL8_SYSTEMD for name in newer)
    assert "247" in NEWER.read_text() and max(SINCE[name] for name in newer) == 247  # the install's threshold


def test_no_site_group_or_folder_is_hard_coded_in_the_unit():
    assert "SupplementaryGroups" not in _directives(UNIT) and "aleph" not in UNIT.read_text().replace(
        "ALEPH", ""
    ).lower().replace("aleph-caiasoft", "")
    assert [line for line in UNIT.read_text().splitlines() if line.startswith("ReadWritePaths=")] == [
        "ReadWritePaths=-/var/lib/prometheus/node-exporter"
    ]


def test_unit_is_no_more_exposed_than_before_it_got_cap_lease(tmp_path):
    result = _analyze_unit(_unit_folder(tmp_path), "security", "--offline=true", f"--threshold={EXPOSURE_LIMIT}")
    overall = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert result.returncode == 0, f"exposure above {EXPOSURE_LIMIT / 10}: {overall or result.stdout + result.stderr}"
    assert overall, result.stdout + result.stderr


def test_unit_grants_cap_lease_and_nothing_else():
    """The open-writer check (a read lease on ALEPH's files) needs CAP_LEASE; no other capability is given."""
    settings = [
        line.strip()
        for line in UNIT.read_text().splitlines()
        if "Capabilit" in line and not line.lstrip().startswith("#")
    ]
    assert settings == ["CapabilityBoundingSet=CAP_LEASE", "AmbientCapabilities=CAP_LEASE"]


def _service_section(unit: Path = UNIT, wanted: str = "[Service]") -> dict[str, list[str]]:
    """The settings of one section of the unit as systemd reads them: key -> values, comments dropped."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == wanted:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_keeps_its_promises(tmp_path):
    """Sandboxing as systemd-analyze judges it; the service's own settings as systemd parses them."""
    result = _analyze_unit(_unit_folder(tmp_path, newer=False), "security", "--offline=true", "--json=short")
    verdicts = {check["json_field"]: check for check in json.loads(result.stdout)}
    for field in (
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "SystemCallArchitectures",
        "SystemCallFilter_mount",
        "SystemCallFilter_module",
        "SystemCallFilter_reboot",
        "SystemCallFilter_swap",
        "UserOrDynamicUser",
    ):
        assert verdicts[field]["set"], verdicts[field]["description"]
    assert "strict" in verdicts["ProtectSystem"]["description"]
    service = _service_section()
    for key, value in (
        ("Type", "notify"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("StateDirectory", "caiasoft-gateway"),
        ("LogsDirectory", "caiasoft-gateway"),
        ("ConfigurationDirectory", "caiasoft-gateway"),
    ):
        assert service.get(key) == [value], (key, service.get(key))
    assert int(service["WatchdogSec"][0]) > 0


def test_web_unit_runs_the_page_as_the_service_user_with_nothing_more():
    """The staff page's unit: the same user and group as the service, `caiasoft-gateway web`, no capability, no
    privilege to gain, a /tmp of its own, and only the socket families a web page needs."""
    web, service = _service_section(WEB_UNIT), _service_section()
    assert (web["User"], web["Group"]) == (service["User"], service["Group"])
    assert web["ExecStart"] == [f"{INSTALLED_PATH} web"]
    assert web["CapabilityBoundingSet"] == [""] and web["AmbientCapabilities"] == [""]
    assert web["NoNewPrivileges"] == ["yes"] and web["PrivateTmp"] == ["yes"] and web["ProtectHome"] == ["yes"]
    assert sorted(web["RestrictAddressFamilies"][0].split()) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert "SupplementaryGroups" not in web  # it reads no print folder
    assert web["Restart"] == ["on-failure"] and web["RestartPreventExitStatus"] == ["2"]
    assert _service_section(WEB_UNIT, "[Install]")["WantedBy"] == ["multi-user.target"]  # enable works


def test_web_unit_writes_nothing_but_the_ledgers_shared_memory_in_the_state_folder():
    """ProtectSystem=strict; writable only the state folder the service's StateDirectory= makes (a reader of a WAL
    ledger writes gateway.db-shm there), and in it the archive, error and work folders read-only again. No folder
    of its own (StateDirectory= and the like would be written, and chowned, by systemd)."""
    import tomllib

    web, service = _service_section(WEB_UNIT), _service_section()
    paths = tomllib.loads((REPO / "conf" / "gateway.toml").read_text())["paths"]
    state_dir = f"/var/lib/{service['StateDirectory'][0]}"
    assert state_dir == paths["state_dir"]
    assert web["ProtectSystem"] == ["strict"]
    assert web["ReadWritePaths"] == [f"-{state_dir}"]
    assert sorted(web["ReadOnlyPaths"][0].split()) == sorted(
        f"-{folder}" for folder in (paths["archive_dir"], paths["error_dir"], f"{state_dir}/work")
    )
    assert not {"StateDirectory", "LogsDirectory", "RuntimeDirectory", "CacheDirectory"} & set(web)


def test_web_unit_names_its_documentation_as_installed():
    """man caiasoft-gateway, and docs/web.md where tools/install puts docs/*.md (and it is in docs/)."""
    lines = [line for line in WEB_UNIT.read_text().splitlines() if line.startswith("Documentation=")]
    uris = [uri for line in lines for uri in line.removeprefix("Documentation=").split()]
    assert "man:caiasoft-gateway(8)" in uris
    assert "file:///usr/local/share/doc/caiasoft-gateway/docs/web.md" in uris
    for uri in uris:
        if uri.startswith("file://"):
            relative = uri.removeprefix("file:///usr/local/share/doc/caiasoft-gateway/")
            assert (REPO / relative).is_file(), uri


def test_web_unit_is_no_more_exposed_than_the_service(tmp_path):
    result = _analyze_unit(
        _unit_folder(tmp_path, unit=WEB_UNIT),
        "security",
        "--offline=true",
        f"--threshold={EXPOSURE_LIMIT}",
        unit=WEB_UNIT,
    )
    overall = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert result.returncode == 0, f"exposure above {EXPOSURE_LIMIT / 10}: {overall or result.stdout + result.stderr}"
    verdicts = {
        check["json_field"]: check
        for check in json.loads(
            _analyze_unit(
                _unit_folder(tmp_path / "json", newer=False, unit=WEB_UNIT),
                "security",
                "--offline=true",
                "--json=short",
                unit=WEB_UNIT,
            ).stdout
        )
    }
    for field in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "UserOrDynamicUser", "AmbientCapabilities"):
        assert verdicts[field]["set"], verdicts[field]["description"]
    assert "strict" in verdicts["ProtectSystem"]["description"]
    capabilities = [check for name, check in verdicts.items() if name.startswith("CapabilityBoundingSet_")]
    assert capabilities and all(check["set"] for check in capabilities), [
        check["description"] for check in capabilities if not check["set"]
    ]


def test_sysusers_then_tmpfiles_make_the_user_and_folders_in_a_scratch_root(tmp_path):
    """The sysusers and tmpfiles files the install runs, into a scratch root instead of the real system."""
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        (tmp_path / "etc" / name).write_text(Path(f"/etc/{name}").read_text())
    for command in (
        ["systemd-sysusers", f"--root={tmp_path}", str(REPO / "systemd" / "caiasoft-gateway.sysusers")],
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(REPO / "systemd" / "caiasoft-gateway.tmpfiles")],
    ):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    [user] = [
        line for line in (tmp_path / "etc" / "passwd").read_text().splitlines() if line.startswith("caiasoft-gateway:")
    ]
    assert user.endswith(":/var/lib/caiasoft-gateway:/usr/sbin/nologin")
    uid = int(user.split(":")[2])
    for folder in ("archive", "error"):
        info = (tmp_path / "var/lib/caiasoft-gateway" / folder).stat()
        assert (info.st_mode & 0o7777, info.st_uid) == (0o2750, uid)
