"""What an admin reads names the connection (issue 23): `status`, `find`, `check` and the staff page, on a
config with two CaiaSoft connections ([caiasoft] and [caiasoft.law], each its own simulator and key) and two
NCIP servers; and a config with [caiasoft] alone reads exactly as it did.

Files go through the real pipeline to each simulator; the service's snapshot is published as the service
publishes it; the commands run as real processes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import KEY, LAW_KEY, ncip_table

from gateway.config import loader as config_module
from gateway.config.settings import Web
from gateway.report import find, status
from gateway.runtime.pipeline import Pipeline
from gateway.simulators.ncip import NcipSimulator
from gateway.state import snapshot
from gateway.state.filerow import iso
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient
from gateway.web.server import WebServer

ITEM = "31234001234567"  # requested through both connections
LAW_ITEM = "31234007654321"  # through the law connection only
PAUSED = "CaiaSoft refused the API key (HTTP 401): check caiasoft.law.api_key_file"
NCIP_PROBLEM = "cannot connect to 127.0.0.1:5070: Connection refused"
SLOW = "CaiaSoft did not answer within 5 s"


@pytest.fixture
def ncip_servers():
    servers = [NcipSimulator().start(), NcipSimulator().start()]
    yield servers
    for server in servers:
        server.stop()


@dataclasses.dataclass
class TwoSite:
    """A gateway on temp folders with [caiasoft] and [caiasoft.law], a source for each, two NCIP servers."""

    root: Path
    config_file: Path

    def load(self) -> config_module.Config:
        return config_module.load(self.config_file, environ={})

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config_file, *args)


def run_cli(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config_file), *args], capture_output=True, text=True, timeout=60
    )


def write_two(root: Path, default_url: str, law_url: str, ncip_urls: tuple[str, str]) -> TwoSite:
    for name, key in (("api-key", KEY), ("api-key-law", LAW_KEY)):
        (root / name).write_text(key + "\n")
        (root / name).chmod(0o600)
    for folder in ("print", "law-print"):
        (root / "aleph" / folder).mkdir(parents=True, exist_ok=True)
    config = root / "gateway.toml"
    config.write_text(
        f"""[paths]
state_dir = "{root}/state"
archive_dir = "{root}/archive"
error_dir = "{root}/error"
log_dir = "{root}/log"

[caiasoft]
base_url = "{default_url}"
api_key_file = "{root}/api-key"
timeout_seconds = 5

[caiasoft.law]
base_url = "{law_url}"
api_key_file = "{root}/api-key-law"
timeout_seconds = 5

[[sources]]
name = "print"
path = "{root}/aleph/print"

[[sources]]
name = "law-print"
path = "{root}/aleph/law-print"
caiasoft = "law"
"""
        + ncip_table(ncip_urls[0], root / "ncip.jsonl", timeout_seconds=2)
        + ncip_table(ncip_urls[1], root / "ncip-law.jsonl", timeout_seconds=2).replace("[ncip]", "[ncip.law]")
    )
    return TwoSite(root, config)


@pytest.fixture
def two(tmp_path, simulator, law_simulator, ncip_servers) -> TwoSite:
    return write_two(tmp_path, simulator.url, law_simulator.url, (ncip_servers[0].url, ncip_servers[1].url))


def send(config: config_module.Config, files: list[tuple[str, str, str]]) -> list[int]:
    """Each (connection, name, text) through the real pipeline to its connection's simulator, as `send` does."""
    ledger = Ledger(config.paths.database)
    clients = {c.name: CaiaSoftClient(c, config.key_of(c.name)) for c in config.connections}
    pipeline = Pipeline(config, ledger, clients["default"], clients={"law": clients["law"]})
    inbox = config.paths.state_dir.parent / "inbox"
    ids = []
    try:
        for connection, name, text in files:
            (inbox / connection).mkdir(parents=True, exist_ok=True)
            path = inbox / connection / name
            path.write_text(text)
            row_id = pipeline.admission.adopt_copy(path, connection=connection)
            row = ledger.files.assign(row_id)
            assert row is not None and row.connection == connection
            pipeline.upload(row)
            ids.append(row_id)
        ledger.db.wait_for(ledger.db.durable())
    finally:
        for client in clients.values():
            client.close()
        ledger.close()
    return ids


def queue(database: Path, connection: str, *names: str, source: str = "print", seen: float | None = None) -> None:
    """Files taken for a connection (seen then, if given) and waiting to be sent, as a source takes them."""
    ledger = Ledger(database, clock=time.time if seen is None else lambda: seen)
    try:
        for name in names:
            row_id = ledger.files.begin_claim(source, name, f"/aleph/{name}", 15, time.time(), connection)
            ledger.files.claimed(row_id)
            ledger.files.queued(row_id, "barcodes", "0" * 64, 15, {"items": 1})
        ledger.db.wait_for(ledger.db.durable())
    finally:
        ledger.close()


def ncip_state(behind: int = 0, problem: str | None = None, dead: int = 0) -> snapshot.NcipState:
    return snapshot.NcipState(
        lag_bytes=40 * behind,
        lag_entries=behind,
        last_success=1_795_000_000.0,
        last_problem=problem,
        dead_letters=dead,
        feed_problem=None,
        journal_problem=None,
    )


def source_state() -> snapshot.SourceState:
    return snapshot.SourceState(
        mode="inotify", problem=None, healthy=True, writers_unknown=None, waiting=[], not_taken={}, originals_kept=0
    )


def publish(
    database: Path,
    connections: dict[str, snapshot.ConnectionState],
    servers: dict[str, snapshot.NcipState],
    sources: tuple[str, ...] = ("print", "law-print"),
    now: float | None = None,
) -> None:
    """The snapshot the running service publishes on each housekeeping tick (service.Service._publish)."""
    ledger = Ledger(database)
    try:
        snapshot.publish(
            ledger,
            snapshot.Snapshot(
                pid=os.getpid(),
                updated=now or time.time(),
                sources={name: source_state() for name in sources},
                paused=connections["default"]["paused"],
                ncip=servers.get("default"),
                faults={},
                retention=None,
                connections=connections,
                ncip_servers=servers,
            ),
        )
    finally:
        ledger.close()


def the_law_paused(two: TwoSite) -> None:
    """Files sent through each connection, more waiting for each, the law connection paused (its key refused),
    the law NCIP server failing: as the service would report it."""
    config = two.load()
    send(
        config,
        [
            ("default", "paging_barcode", f"{ITEM}\n"),
            ("law", "law_paging_barcode", f"{ITEM}\n{LAW_ITEM}\n"),
        ],
    )
    queue(config.paths.database, "default", "waiting.barcodes")
    queue(config.paths.database, "law", "law-1.barcodes", "law-2.barcodes", source="law-print")
    publish(
        config.paths.database,
        {
            "default": snapshot.ConnectionState(paused=None, problem=SLOW, sources=["print"]),
            "law": snapshot.ConnectionState(paused=PAUSED, problem=PAUSED, sources=["law-print"]),
        },
        {"default": ncip_state(), "law": ncip_state(behind=3, problem=NCIP_PROBLEM, dead=1)},
    )


# -- status ---------------------------------------------------------------------------------------------


def test_status_names_each_connection_its_files_pause_last_upload_and_ncip_server(two, simulator, law_simulator):
    the_law_paused(two)
    assert [r.name for r in simulator.received] == ["paging_barcode"]
    assert [r.name for r in law_simulator.received] == ["law_paging_barcode"]

    report = json.loads(two.cli("status", "--json").stdout)
    default, law = report["connections"]["default"], report["connections"]["law"]
    assert (default["pending"], default["paused"], default["sources"], default["in_config"]) == (
        1,
        None,
        ["print"],
        True,
    )
    assert (law["pending"], law["paused"], law["sources"], law["in_config"]) == (2, PAUSED, ["law-print"], True)
    assert default["last_upload"]["file"] == "paging_barcode"
    assert law["last_upload"]["file"] == "law_paging_barcode"
    assert report["ncip_servers"]["law"]["lag_entries"] == 3 and report["ncip_servers"]["default"]["lag_entries"] == 0

    result = two.cli("status")
    text = result.stdout
    assert result.returncode == 0, result.stderr
    lines = text.splitlines()
    assert f"UPLOADS TO law PAUSED: {PAUSED}" in lines
    assert not any(line.startswith("UPLOADS PAUSED") for line in lines), "the default connection is not paused"
    assert any(
        line.startswith("CaiaSoft default: 1 waiting to be sent (oldest ")
        and line.endswith(f"last upload paging_barcode at {default['last_upload']['at']}; sources: print")
        for line in lines
    ), text
    assert any(
        line.startswith("CaiaSoft law: PAUSED, 2 waiting to be sent (oldest ")
        and line.endswith(f"last upload law_paging_barcode at {law['last_upload']['at']}; sources: law-print")
        for line in lines
    ), text
    assert [line for line in lines if line.startswith("  problem:")] == [f"  problem: {SLOW}"]  # the pause: above
    assert f"NCIP law: 3 entries (120 bytes) behind, last success {iso(1_795_000_000.0)}, 1 dead letter(s)" in lines
    assert f"  last problem: {NCIP_PROBLEM}" in lines
    assert f"NCIP default: 0 entries (0 bytes) behind, last success {iso(1_795_000_000.0)}, 0 dead letter(s)" in lines
    assert "NCIP relay:" not in text  # the default server's line of a single config: named instead
    assert "pending:        3 (queued 3, uploading 0, other steps 0)" in lines  # all connections together
    assert KEY not in text and LAW_KEY not in text


def test_status_of_a_stopped_service_says_what_the_ledger_knows_of_each_connection(two):
    config = two.load()
    send(config, [("law", "law_paging_barcode", f"{LAW_ITEM}\n")])
    queue(config.paths.database, "law", "law-1.barcodes", source="law-print")
    report = json.loads(two.cli("status", "--json").stdout)
    assert report["service"]["running"] is False
    assert report["connections"]["law"]["pending"] == 1 and report["connections"]["law"]["paused"] is None
    assert report["connections"]["default"]["last_upload"] is None
    assert report["ncip_servers"] == {"default": None, "law": None}
    lines = two.cli("status").stdout.splitlines()
    assert "CaiaSoft default: 0 waiting to be sent, no upload (in the days kept); sources: print" in lines
    ledger = Ledger(config.paths.database)
    try:  # the staff page's report leaves the last uploads out: finding one may read every archived row
        assert status.collect(ledger, settings=config)["connections"]["law"]["last_upload"]["file"] == (
            "law_paging_barcode"
        )
    finally:
        ledger.close()
    assert "NCIP law: not known while the service does not run" in lines


def test_files_queued_for_a_connection_no_longer_in_the_config_are_listed_loudly(site):
    config = site.load()
    queue(config.paths.database, "old", "a.barcodes", "b.barcodes")
    result = run_cli(site.config_file, "status")
    assert result.returncode == 0, result.stderr
    assert (
        "CONNECTION REMOVED: 2 file(s) queued for connection old, which is not in the config: they wait; "
        "add [caiasoft.old] back and reload"
    ) in result.stdout.splitlines()
    assert "CaiaSoft default:" not in result.stdout  # one connection in the config: nothing else changes
    report = json.loads(run_cli(site.config_file, "status", "--json").stdout)
    assert report["connections"]["old"]["in_config"] is False and report["connections"]["old"]["pending"] == 2
    assert report["connections"]["default"]["in_config"] is True


def test_single_connection_status_text_is_as_before(site, simulator):
    """[caiasoft] and [ncip] alone: every line as the status printed before connections were named."""
    site.config_file.write_text(site.config_file.read_text() + ncip_table("http://127.0.0.1:9/"))
    config = site.load()
    assert not config.several
    [row_id] = send_single(config, "paging_barcode", f"{ITEM}\n")
    now = time.time()
    queue(config.paths.database, "default", "waiting.barcodes", seen=now - 120)
    publish(
        config.paths.database,
        {"default": snapshot.ConnectionState(paused=PAUSED, problem=PAUSED, sources=["print"])},
        {"default": ncip_state(behind=2, problem=NCIP_PROBLEM, dead=1)},
        sources=("print",),
        now=now,
    )
    ledger = Ledger(config.paths.database)
    try:
        report = status.collect(ledger, now, settings=config)
        uploaded = ledger.files.get(row_id)
    finally:
        ledger.close()
    assert uploaded is not None
    assert status.render(report) == "\n".join(
        [
            f"service:        running (pid {os.getpid()})",
            "  source print: inotify, ok",
            f"UPLOADS PAUSED: {PAUSED}",
            "pending:        1 (queued 1, uploading 0, other steps 0)",
            "oldest pending: waiting.barcodes from print, waiting 2m 0s, 0 attempt(s)",
            "today:          1 archived, 0 refused",
            "all time:       1 archived, 0 refused",
            f"last upload:    paging_barcode at {iso(uploaded.uploaded_at)}",
            f"NCIP relay:     2 entries (80 bytes) behind, last success {iso(1_795_000_000.0)}, 1 dead letter(s)",
            f"  last problem: {NCIP_PROBLEM}",
        ]
    )
    assert report["connections"]["default"]["pending"] == 1 and report["ncip_servers"]["default"]["lag_entries"] == 2
    text = run_cli(site.config_file, "status").stdout
    assert f"UPLOADS PAUSED: {PAUSED}" in text and "NCIP relay:" in text
    assert "CaiaSoft default" not in text and "NCIP default" not in text and "CONNECTION REMOVED" not in text


def send_single(config: config_module.Config, name: str, text: str) -> list[int]:
    ledger = Ledger(config.paths.database)
    client = CaiaSoftClient(config.caiasoft, config.api_key)
    pipeline = Pipeline(config, ledger, client)
    try:
        path = config.paths.state_dir.parent / name
        path.write_text(text)
        row_id = pipeline.admission.adopt_copy(path)
        row = ledger.files.assign(row_id)
        assert row is not None
        pipeline.upload(row)
        ledger.db.wait_for(ledger.db.durable())
    finally:
        client.close()
        ledger.close()
    return [row_id]


# -- find ------------------------------------------------------------------------------------------------


def test_find_says_which_connection_sent_each_file(two, simulator, law_simulator):
    config = two.load()
    send(config, [("default", "paging_barcode", f"{ITEM}\n"), ("law", "law_paging_barcode", f"{ITEM}\n")])
    found = json.loads(two.cli("find", ITEM, "--json").stdout)
    assert {entry["file"]: entry["connection"] for entry in found} == {
        "paging_barcode": "default",
        "law_paging_barcode": "law",
    }
    text = two.cli("find", ITEM).stdout
    assert "    source    send (CaiaSoft connection law)" in text.splitlines()
    assert "    source    send (CaiaSoft connection default)" in text.splitlines()


def test_find_of_a_file_retention_removed_names_no_connection(two):
    """Retention keeps a compact row per item (retiredstore): it has no connection; find says nothing of it."""
    config = two.load()
    [row_id] = send(config, [("law", "law_paging_barcode", f"{LAW_ITEM}\n")])
    ledger = Ledger(config.paths.database)
    try:
        row = ledger.files.get(row_id)
        assert row is not None and row.final_path
        ledger.files.released(row_id)
        day = Path(row.final_path).parent
        ledger.retired.begin_pruning(str(day), time.time())  # as retention removes a day (archive.retention)
        shutil.rmtree(day)
        assert ledger.retired.compact(str(day), time.time()) == 1
        ledger.retired.end_pruning(str(day))
        ledger.db.wait_for(ledger.db.durable())
    finally:
        ledger.close()
    [entry] = json.loads(two.cli("find", LAW_ITEM, "--json").stdout)
    assert entry["file"] == "law_paging_barcode" and entry["connection"] is None and entry["earlier_removed"] == 0
    text = two.cli("find", LAW_ITEM).stdout
    assert "    source    send\n" in text and "CaiaSoft connection" not in text


def test_find_with_one_connection_prints_as_before(site, simulator):
    config = site.load()
    send_single(config, "paging_barcode", f"{ITEM}\n")
    text = run_cli(site.config_file, "find", ITEM).stdout
    assert "    source    send\n" in text and "CaiaSoft connection" not in text
    [entry] = json.loads(run_cli(site.config_file, "find", ITEM, "--json").stdout)
    assert entry["connection"] == "default"
    # a sidecar from before connections were named: the default's, said only with several
    old = {key: value for key, value in entry.items() if key != "connection"}
    assert find.connection_of(old) == "default" and "CaiaSoft connection" not in find.render(ITEM, [old])
    assert "(CaiaSoft connection default)" in find.render(ITEM, [old], several=True)


# -- check --------------------------------------------------------------------------------------------------


def test_check_contacts_each_connection_with_its_own_key_and_names_the_one_refused(two, law_simulator):
    law_simulator.key = "not-the-key-the-law-connection-has"
    config = two.load()
    result = two.cli("check")
    out = result.stdout
    assert result.returncode == 1, out
    assert f"ok    CaiaSoft default {config.caiasoft.base_url}\n        reached in " in out
    assert f"FAIL  CaiaSoft law {law_simulator.url}\n        CaiaSoft refused the API key (HTTP 401)" in out
    assert "1 problem(s) found" in out
    for number, (source, connection) in enumerate((("print", "default"), ("law-print", "law"))):
        assert f"ok    sources[{number}] {source}: {two.root}/aleph/{source} (to CaiaSoft {connection})\n" in out
    for server in config.ncip_servers:
        assert f"ok    NCIP server {server.name} {server.url}\n" in out
        assert f"ok    NCIP {server.name}: version and agencies not checked" in out
    assert f"ok    ncip.law.journal {two.root}/ncip-law.jsonl" in out
    assert KEY not in out + result.stderr and LAW_KEY not in out + result.stderr

    law_simulator.key = LAW_KEY
    fixed = two.cli("check")
    assert fixed.returncode == 0 and f"ok    CaiaSoft law {law_simulator.url}\n" in fixed.stdout, fixed.stdout


def test_check_probes_each_ncip_server_named(two, ncip_servers):
    result = two.cli("check", "--ncip-item", ITEM)
    assert result.returncode == 0, result.stdout
    for table, server in zip(("ncip", "ncip.law"), ncip_servers, strict=True):
        assert f"ok    NCIP [{table}] LookupItem {ITEM} at {server.url} (version " in result.stdout


def test_check_asks_only_the_ncip_server_named_about_the_item(two, ncip_servers):
    """--ncip NAME: a library's barcode is asked of its own ALEPH only; an unknown name is a usage error."""
    result = two.cli("check", "--ncip-item", ITEM, "--ncip", "law")
    assert result.returncode == 0, result.stdout
    assert f"ok    NCIP [ncip.law] LookupItem {ITEM} at {ncip_servers[1].url} (version " in result.stdout
    assert "NCIP [ncip] LookupItem" not in result.stdout
    assert [m.action for m in ncip_servers[0].received] == [] and ncip_servers[1].received
    wrong = two.cli("check", "--ncip-item", ITEM, "--ncip", "music")
    assert wrong.returncode == 2 and "'music'" in wrong.stderr and "default, law" in wrong.stderr


def test_check_offline_names_each_source_connection_and_journal(two, simulator, law_simulator, ncip_servers):
    for server in (simulator, law_simulator, *ncip_servers):
        server.stop()  # not contacted: nothing to answer
    result = two.cli("check", "--offline")
    assert result.returncode == 0, result.stdout
    assert "(to CaiaSoft law)" in result.stdout and "(to CaiaSoft default)" in result.stdout
    assert f"ok    ncip.journal {two.root}/ncip.jsonl" in result.stdout
    assert "ok    CaiaSoft and NCIP not contacted (--offline)" in result.stdout


def test_check_of_a_single_connection_names_none(site, simulator):
    result = run_cli(site.config_file, "check")
    assert result.returncode == 0, result.stdout
    assert f"ok    CaiaSoft {simulator.url}\n        reached in " in result.stdout
    assert f"ok    sources[0] print: {site.source}\n" in result.stdout
    assert "CaiaSoft default" not in result.stdout


# -- the staff page --------------------------------------------------------------------------------------------


def test_staff_page_shows_each_connection_and_the_connection_of_each_file(two):
    the_law_paused(two)
    queue(two.load().paths.database, "gone", "left.barcodes")
    config = dataclasses.replace(two.load(), web=Web("127.0.0.1:0", None))
    server = WebServer(config).start()
    try:
        today = requests.get(server.url, timeout=10).text
        found = requests.get(server.url + "find", params={"barcode": ITEM}, timeout=10).text
    finally:
        server.stop()
    assert (
        f"Uploads to the CaiaSoft connection law are paused: {PAUSED}. Files of law-print wait in the queue "
        "until its API key is fixed; the other connections send as usual."
    ) in today
    assert "ALEPH&#39;s NCIP server law: " + NCIP_PROBLEM in today
    assert (
        "1 NCIP journal entries could not be relayed to ALEPH (server law) (dead letters, kept in error_dir/ncip/law)"
        in (today)
    )
    assert '<td class="name">law</td><td class="sources">law-print</td><td class="waiting">2</td>' in today
    assert f'<td class="uploads">PAUSED: {PAUSED}</td>' in today
    assert '<td class="name">default</td><td class="sources">print</td><td class="waiting">1</td>' in today
    assert f'<td class="uploads">failing: {SLOW}</td>' in today
    assert "1 file(s) wait for the CaiaSoft connection gone, which is no longer in the configuration" in today
    assert '<tr class="ncip-server"><td class="name">law</td><td class="behind">3</td>' in today
    assert "<th>Connection</th>" in found
    assert found.count('<td class="connection">law</td>') == 1
    assert found.count('<td class="connection">default</td>') == 1
    assert KEY not in today + found and LAW_KEY not in today + found


def test_staff_page_of_a_single_connection_shows_no_connection(site, simulator):
    config = site.load()
    send_single(config, "paging_barcode", f"{ITEM}\n")
    server = WebServer(dataclasses.replace(config, web=Web("127.0.0.1:0", None))).start()
    try:
        today = requests.get(server.url, timeout=10).text
        found = requests.get(server.url + "find", params={"barcode": ITEM}, timeout=10).text
    finally:
        server.stop()
    assert 'id="connections"' not in today and "ncip-server" not in today
    assert "Connection" not in found and 'class="connection"' not in found and "paging_barcode" in found
