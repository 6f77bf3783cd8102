"""One gateway for several libraries (docs/operations.md): a consortium's central host reads each member's ALEPH
print folder over SFTP (two real sshd on loopback), sends each member's files with the member's own CaiaSoft key
and relays each member's journal to the member's own NCIP server; one member's NCIP server down delays only that
member's entries."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import KEY, wait_for
from sshd import Sshd
from test_connections_service import archived

from gateway.cli import demo
from gateway.config import loader as config_module
from gateway.simulators.caiasoft import CaiaSoftSimulator
from gateway.simulators.ncip import NcipSimulator

LAW_KEY = "law-member-key-3f9a0b"


@pytest.fixture
def members(tmp_path):
    """Two members' ALEPH hosts: an sshd each, serving its print folder."""
    hosts = {name: Sshd(tmp_path / f"sshd-{name}").start() for name in ("main", "law")}
    yield hosts
    for host in hosts.values():
        host.stop()


@pytest.fixture
def main_ncip():
    """The main library's NCIP server (law's is started by the test, once it is "back")."""
    sim = NcipSimulator().start()
    yield sim
    sim.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sftp_source(name: str, host: Sshd, folder: Path, connection: str) -> str:
    return f"""
[[sources]]
name = "{name}"
url = "{host.url(folder)}"
known_hosts_file = "{host.known_hosts}"
private_key_file = "{host.client_key}"
settle_seconds = 0.3
keep_original_seconds = 0
poll_seconds = 0.2
timeout_seconds = 5
caiasoft = "{connection}"
"""


def consortium_config(root: Path, members: dict[str, Sshd], caiasoft: dict[str, str], ncip: dict[str, str]) -> Path:
    law_key = root / "api-key-law"
    law_key.write_text(LAW_KEY + "\n")
    law_key.chmod(0o600)
    extra = f"""
[caiasoft.law]
base_url = "{caiasoft["law"]}"
api_key_file = "{law_key}"
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5
"""
    for name, connection in (("main", "default"), ("law", "law")):
        folder = root / "remote" / name
        folder.mkdir(parents=True)
        extra += sftp_source(name, members[name], folder, connection)
    extra += f"""
[ncip]
url = "{ncip["main"]}"
from_agency = "CAIA"
to_agency = "MAIN"
user_id = "CAIASOFT"
journal = "{root}/state/ncip.jsonl"
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.3

[ncip.law]
url = "{ncip["law"]}"
from_agency = "CAIA"
to_agency = "LAW"
user_id = "CAIA-LAW"
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.3
"""
    return demo.write_config(
        root,
        caiasoft["main"],
        KEY,
        local_source=False,
        extra=extra,
        caiasoft_extra="backoff_initial_seconds = 0.05\nbackoff_max_seconds = 0.5",
    )


def journal(config_file: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "gateway", "-c", str(config_file), "journal", *args], check=True, timeout=60)


def test_one_gateway_serves_two_libraries(tmp_path, members, main_ncip, daemon_factory):
    law_ncip_port = free_port()  # law's NCIP server is down at first: nothing listens there
    with CaiaSoftSimulator(key=KEY) as main_caiasoft, CaiaSoftSimulator(key=LAW_KEY) as law_caiasoft:
        config_file = consortium_config(
            tmp_path,
            members,
            {"main": main_caiasoft.url, "law": law_caiasoft.url},
            {"main": main_ncip.url, "law": f"tcp://127.0.0.1:{law_ncip_port}"},
        )
        daemon = daemon_factory(config_file)
        (tmp_path / "remote" / "main" / "main-slip.txt").write_bytes(b"31234005580001\n")
        (tmp_path / "remote" / "law" / "law-slip.txt").write_bytes(b"31234007770001\n")
        for item in ("LAW-1", "LAW-2"):
            journal(config_file, "checkout", item, "--ncip", "law")
        for item in ("MAIN-1", "MAIN-2"):
            journal(config_file, "checkout", item)
        wait_for(lambda: len(archived(tmp_path)) == 2, timeout=60, message="each member's file archived")
        for member in ("main", "law"):  # taken from each member's host, deleted there once sent
            wait_for(lambda m=member: not list((tmp_path / "remote" / m).iterdir()), timeout=60, message=member)
        wait_for(lambda: len(main_ncip.received) == 2, timeout=60, message="main's entries relayed")
        assert [m.item for m in main_ncip.received] == ["MAIN-1", "MAIN-2"]  # law's server down held none of them

        law_ncip = NcipSimulator(port=law_ncip_port, transport="tcp").start()  # law's ALEPH is back
        try:
            wait_for(lambda: len(law_ncip.received) == 2, timeout=60, message="law's entries relayed")
        finally:
            law_ncip.stop()
        assert daemon.stop() == 0
    assert [(m.item, m.to_agency, m.user) for m in law_ncip.received] == [
        ("LAW-1", "LAW", "CAIA-LAW"),
        ("LAW-2", "LAW", "CAIA-LAW"),
    ]
    assert all(m.to_agency == "MAIN" for m in main_ncip.received)
    assert [r.name for r in main_caiasoft.received] == ["main-slip.txt"]
    assert [r.name for r in law_caiasoft.received] == ["law-slip.txt"]
    sidecars = archived(tmp_path)
    assert sidecars["law-slip.txt"]["connection"] == "law" and sidecars["law-slip.txt"]["source"] == "law"
    assert sidecars["main-slip.txt"]["connection"] == "default"
    log = (tmp_path / "log" / "gateway.log").read_text()
    assert KEY not in log and LAW_KEY not in log
    assert json.loads((tmp_path / "state" / "ncip-law.jsonl").read_text().splitlines()[0])["item"] == "LAW-1"


def test_the_documented_consortium_config_loads(tmp_path):
    """docs/configuration.md's "One gateway for several libraries" is a whole file (tests/test_docs_config.py
    pastes the other blocks into the sample): it loads as written, each member on its own connection and server."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    section = doc.split("## One gateway for several libraries", 1)[1]
    block = section.split("```toml whole-file\n", 1)[1].split("```", 1)[0]
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(block)
    settings = config_module.load_settings(config_file)
    assert [(s.name, s.caiasoft, s.is_sftp) for s in settings.sources] == [
        ("main", "default", True),
        ("law", "law", True),
    ]
    assert [(n.name, n.to_agency) for n in settings.ncip_servers] == [("default", "MAIN"), ("law", "LAW")]
    assert [n.journal.name for n in settings.ncip_servers] == ["ncip.jsonl", "ncip-law.jsonl"]
