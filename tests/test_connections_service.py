"""Two CaiaSoft connections end to end, with the real service: each source's files reach only its connection's
CaiaSoft with its key, a wrong key pauses only that connection, and a reload adds and removes a connection
without losing a queued file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import KEY, wait_for
from test_connections import LAW_KEY, write_two

from gateway.simulators.caiasoft import CaiaSoftSimulator


def status(config_file: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config_file), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    parsed: dict = json.loads(done.stdout)
    return parsed


def archived(root: Path) -> dict[str, dict]:
    """Archived file name -> its sidecar, for the files whose sidecar is written (the name is reserved by an empty
    sidecar before the file is placed; the sidecar's content replaces it whole once it is)."""
    found = {}
    for path in (root / "archive").rglob("*"):
        sidecar = path.with_name(path.name + ".json")
        if path.is_file() and not path.name.endswith(".json") and sidecar.exists() and sidecar.stat().st_size:
            found[path.name] = json.loads(sidecar.read_text())
    return found


def log_events(root: Path, event: str) -> list[dict]:
    log = root / "log" / "gateway.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [entry for entry in map(json.loads, lines) if entry.get("event") == event]


def test_each_source_reaches_only_its_own_connection(tmp_path, daemon_factory):
    with CaiaSoftSimulator(key=KEY) as default_sim, CaiaSoftSimulator(key=LAW_KEY) as law_sim:
        config_file = write_two(tmp_path, default_sim.url, law_sim.url)
        daemon = daemon_factory(config_file)
        (tmp_path / "aleph" / "print" / "main.txt").write_bytes(b"31234005580001\n")
        (tmp_path / "aleph" / "law" / "law.txt").write_bytes(b"31234007770001\n")
        wait_for(lambda: len(archived(tmp_path)) == 2, timeout=60, message="both files archived")
        assert daemon.stop() == 0
    assert [r.name for r in default_sim.received] == ["main.txt"]
    assert [r.name for r in law_sim.received] == ["law.txt"]  # the law simulator takes only the law key
    sidecars = archived(tmp_path)
    assert (sidecars["main.txt"]["connection"], sidecars["main.txt"]["source"]) == ("default", "print")
    assert (sidecars["law.txt"]["connection"], sidecars["law.txt"]["source"]) == ("law", "lawprint")
    log = (tmp_path / "log" / "gateway.log").read_text()
    assert KEY not in log and LAW_KEY not in log
    ok = {entry["file"]: entry["connection"] for entry in log_events(tmp_path, "upload.ok")}
    assert ok == {"main.txt": "default", "law.txt": "law"}


def test_reload_removes_and_adds_a_connection_and_loses_no_file(tmp_path, daemon_factory):
    """law's key is refused, so its files wait; law is removed on reload (they stay queued, said loudly), then
    added back with the right key (they are sent). default's files go on meanwhile."""
    with CaiaSoftSimulator(key=KEY) as default_sim, CaiaSoftSimulator(key=LAW_KEY) as law_sim:
        config_file = write_two(tmp_path, default_sim.url, law_sim.url, law_key="a-wrong-key-1234")
        two_connections = config_file.read_text()
        daemon = daemon_factory(config_file)
        for n in range(3):
            (tmp_path / "aleph" / "law" / f"law-{n}.txt").write_bytes(b"31234007770001\n")
        wait_for(lambda: log_events(tmp_path, "upload.paused"), timeout=60, message="law's uploads paused")
        assert log_events(tmp_path, "upload.paused")[0]["connection"] == "law"
        wait_for(lambda: not list((tmp_path / "aleph" / "law").iterdir()), timeout=60, message="law files taken")

        config_file.write_text(two_connections.split("\n[caiasoft.law]")[0] + "\n")  # law and its source gone
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: log_events(tmp_path, "connection.removed_with_files"), timeout=60, message="the warning")
        (removed,) = log_events(tmp_path, "connection.removed_with_files")
        assert (removed["connection"], removed["files"]) == ("law", 3)
        (tmp_path / "aleph" / "print" / "main.txt").write_bytes(b"31234005580001\n")
        wait_for(lambda: "main.txt" in archived(tmp_path), timeout=60, message="default going on")
        assert status(config_file)["pending"] == 3  # law's files: queued still, never dropped

        (tmp_path / "api-key-law").write_text(LAW_KEY + "\n")
        config_file.write_text(two_connections)
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: len(archived(tmp_path)) == 4, timeout=60, message="law's files sent once law is back")
        assert daemon.stop() == 0
    assert sorted(r.name for r in law_sim.received) == ["law-0.txt", "law-1.txt", "law-2.txt"]
    assert [r.name for r in default_sim.received] == ["main.txt"]
    assert status(config_file)["pending"] == 0
