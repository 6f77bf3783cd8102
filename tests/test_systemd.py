"""The shipped systemd unit passes `systemd-analyze verify` clean."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

UNIT = REPO / "systemd" / "caiasoft-gateway.service"
INSTALLED_PATH = "/usr/local/bin/caiasoft-gateway"


# `systemd-analyze security` exposure of the unit, times ten: 1.9 before CAP_LEASE was granted,
# 1.6 since (the capability costs 0.1; PrivateMounts, ProtectProc and RemoveIPC gained 0.5).
EXPOSURE_LIMIT = 16


def _analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run tools/install-test-deps (apt-get install systemd)"
    return analyze


def _unit_copy(tmp_path: Path) -> Path:
    """The unit, with ExecStart pointing at this checkout's installed command (verify insists it
    exists) and nothing else changed."""
    script = Path(sys.executable).with_name("caiasoft-gateway")
    assert script.exists()
    text = UNIT.read_text()
    assert text.count(INSTALLED_PATH) == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_PATH, str(script)))
    return copy


def test_unit_verifies_clean(tmp_path):
    copy = _unit_copy(tmp_path)
    result = subprocess.run([_analyze(), "verify", "--man=no", str(copy)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_unit_is_no_more_exposed_than_before_it_got_cap_lease(tmp_path):
    copy = _unit_copy(tmp_path)
    result = subprocess.run([_analyze(), "security", "--offline=true", f"--threshold={EXPOSURE_LIMIT}", str(copy)],
                            capture_output=True, text=True, cwd=tmp_path)
    overall = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert result.returncode == 0, f"exposure above {EXPOSURE_LIMIT / 10}: {overall or result.stdout + result.stderr}"
    assert overall, result.stdout + result.stderr


def test_unit_grants_cap_lease_and_nothing_else():
    """The open-writer check (a read lease on ALEPH's files) needs CAP_LEASE; no other capability is given."""
    settings = [line.strip() for line in UNIT.read_text().splitlines() if "Capabilit" in line
                and not line.lstrip().startswith("#")]
    assert settings == ["CapabilityBoundingSet=CAP_LEASE", "AmbientCapabilities=CAP_LEASE"]


def _service_section() -> dict[str, list[str]]:
    """The [Service] settings of the unit as systemd reads them: key -> values, comments dropped."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_keeps_its_promises(tmp_path):
    """Sandboxing as systemd-analyze judges it; the service's own settings as systemd parses them."""
    copy = _unit_copy(tmp_path)
    result = subprocess.run([_analyze(), "security", "--offline=true", "--json=short", str(copy)],
                            capture_output=True, text=True, cwd=tmp_path)
    verdicts = {check["json_field"]: check for check in json.loads(result.stdout)}
    for field in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                  "SystemCallArchitectures", "SystemCallFilter_mount", "SystemCallFilter_module",
                  "SystemCallFilter_reboot", "SystemCallFilter_swap", "UserOrDynamicUser"):
        assert verdicts[field]["set"], verdicts[field]["description"]
    assert "strict" in verdicts["ProtectSystem"]["description"]
    service = _service_section()
    for key, value in (("Type", "notify"), ("ExecReload", "/bin/kill -HUP $MAINPID"), ("Restart", "on-failure"),
                       ("RestartPreventExitStatus", "2"), ("StateDirectory", "caiasoft-gateway"),
                       ("LogsDirectory", "caiasoft-gateway"), ("ConfigurationDirectory", "caiasoft-gateway")):
        assert service.get(key) == [value], (key, service.get(key))
    assert int(service["WatchdogSec"][0]) > 0


def test_sysusers_then_tmpfiles_make_the_user_and_folders_in_a_scratch_root(tmp_path):
    """The README's install step 2, into a scratch root instead of the real system."""
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        (tmp_path / "etc" / name).write_text(Path(f"/etc/{name}").read_text())
    for command in (["systemd-sysusers", f"--root={tmp_path}", str(REPO / "systemd" / "caiasoft-gateway.sysusers")],
                    ["systemd-tmpfiles", f"--root={tmp_path}", "--create",
                     str(REPO / "systemd" / "caiasoft-gateway.tmpfiles")]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    [user] = [line for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
              if line.startswith("caiasoft-gateway:")]
    assert user.endswith(":/var/lib/caiasoft-gateway:/usr/sbin/nologin")
    uid = int(user.split(":")[2])
    for folder in ("archive", "error"):
        info = (tmp_path / "var/lib/caiasoft-gateway" / folder).stat()
        assert (info.st_mode & 0o7777, info.st_uid) == (0o2750, uid)
