"""Several NCIP servers ([ncip] and [ncip.law]): each its own journal, relay, checkpoint file, dead letters and
feed memory; one server down never holds up the other's entries. Real relays against NCIP simulators on loopback,
the real `journal` command and the real daemon."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ncip_table, wait_for

from gateway.config.loader import Config
from gateway.core.backoff import Backoff
from gateway.monitor.events import Events
from gateway.ncip import journal
from gateway.ncip.feed import Feed
from gateway.ncip.journal import JournalEntry
from gateway.ncip.probe import lookup
from gateway.ncip.relay import Relay
from gateway.simulators.ncip import NcipSimulator
from gateway.state.checkpointfile import FILE_NAME, CheckpointMissing, read
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient

PROBLEMS = {"UNKNOWN-1": "Unknown Item", "IN-ALREADY": "Item Not Checked Out"}
TODAY = dt.date(2026, 11, 27)
DAY = "20261127"


def server_tables(default_url: str, law_url: str, root: Path, law_journal: bool = True, more: str = "") -> str:
    """[ncip] and [ncip.law], fast backoffs; law's journal given, or left to its default (ncip-law.jsonl)."""
    quick = {"timeout_seconds": 2, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.3}
    law = ncip_table(law_url, root / "law.jsonl" if law_journal else None, **quick).replace("[ncip]", "[ncip.law]")
    return ncip_table(default_url, root / "ncip.jsonl", **quick) + more + law


@pytest.fixture
def law():
    """The second library's NCIP server."""
    sim = NcipSimulator(problems=PROBLEMS, validate=True).start()
    yield sim
    sim.stop()


@pytest.fixture
def main_ncip():
    """The first library's NCIP server ([ncip])."""
    sim = NcipSimulator(problems=PROBLEMS, validate=True).start()
    yield sim
    sim.stop()


class Heard(Events):
    """What the relays and feeds told their listener, with the connection each named."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str | None, str]] = []  # (outcome, item, connection)
        self.unknown: list[tuple[str, str]] = []  # (barcode, connection)

    def ncip_entry(self, outcome, entry, reason=None, dead_letters=None, connection="default") -> None:
        self.entries.append((str(outcome), (entry or {}).get("item"), connection))

    def status_unknown(self, barcode, status, day, collection, connection="default") -> None:
        self.unknown.append((barcode, connection))


class Servers:
    """A site with [ncip] and [ncip.law]: its config, ledger and the relays made on them."""

    def __init__(self, site, config: Config):
        self.site = site
        self.config = config
        self.by_name = {server.name: server for server in config.ncip_servers}
        site.state.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(site.state / "gateway.db")
        self.events = Heard()

    def journal(self, name: str) -> Path:
        return self.by_name[name].journal

    def add(self, name: str, action: str, *items: str) -> None:
        for item in items:
            journal.append(self.journal(name), JournalEntry(action, item))

    def relay(self, name: str) -> Relay:
        made = Relay(self.by_name[name], self.ledger, self.config.paths.error_dir, events=self.events)
        made.fault_backoff = Backoff(0.01, 0.05)
        return made

    def reopen(self) -> None:
        """A restart: the ledger closed and opened again (new relays are made after this)."""
        self.ledger.close()
        self.ledger = Ledger(self.site.state / "gateway.db")

    def relayed(self, name: str) -> bool:
        return relayed(self.site.state, name, self.journal(name))


def relayed(state: Path, name: str, journal_path: Path) -> bool:
    """Whether a server's checkpoint file (in state) is past the end of its journal."""
    saved = read(state / (FILE_NAME if name == "default" else f"{FILE_NAME}-{name}"))
    return bool(saved and saved.position and saved.position["offset"] == journal_path.stat().st_size)


@pytest.fixture
def servers(site, simulator, main_ncip, law):
    site.write(simulator.url, extra=server_tables(main_ncip.url, law.url, site.root))
    made = Servers(site, site.load())
    yield made
    made.ledger.close()


@contextlib.contextmanager
def running(*relays: Relay) -> Iterator[None]:
    for relay in relays:
        relay.start()
    try:
        yield
    finally:
        for relay in relays:
            relay.stop()
        for relay in relays:
            relay.join(10)
        assert not any(relay.is_alive() for relay in relays), "every relay ended"


def items(sim: NcipSimulator) -> list[tuple[str, str]]:
    return [(received.action, received.item) for received in sim.received]


def letters(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


def test_each_servers_entries_reach_only_that_server_in_order(servers, main_ncip, law):
    servers.add("default", "checkout", "D-1", "D-2", "D-3")
    servers.add("law", "checkout", "L-1", "L-2")
    servers.add("default", "checkin", "D-1")
    servers.add("law", "checkin", "L-1", "L-2")
    first, second = servers.relay("default"), servers.relay("law")
    assert (first.name, second.name) == ("ncip-relay", "ncip-relay-law"), "a reload tells them apart by name"
    assert servers.journal("law") != servers.journal("default")
    with running(first, second):
        wait_for(lambda: servers.relayed("default") and servers.relayed("law"), timeout=20, message="both relayed")
    assert items(main_ncip) == [("checkout", "D-1"), ("checkout", "D-2"), ("checkout", "D-3"), ("checkin", "D-1")]
    assert items(law) == [("checkout", "L-1"), ("checkout", "L-2"), ("checkin", "L-1"), ("checkin", "L-2")]
    assert all(received.valid for received in (*main_ncip.received, *law.received))
    assert sorted(servers.events.entries) == sorted(
        [("done", item, "default") for item in ("D-1", "D-2", "D-3", "D-1")]
        + [("done", item, "law") for item in ("L-1", "L-2", "L-1", "L-2")]
    ), "each entry told with its own server's name"


def closed_port() -> socket.socket:
    """A loopback port bound but not listening: a connection to it is refused at once (a server that is down)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    return holder


def test_a_server_that_is_down_delays_only_its_own_entries_which_follow_in_order_when_it_is_up(
    site, simulator, main_ncip
):
    holder = closed_port()
    port = holder.getsockname()[1]
    site.write(simulator.url, extra=server_tables(main_ncip.url, f"http://127.0.0.1:{port}/", site.root))
    servers = Servers(site, site.load())
    later: NcipSimulator | None = None
    try:
        servers.add("law", "checkout", "L-1", "L-2", "L-3")
        servers.add("default", "checkout", *(f"D-{number}" for number in range(8)))
        first, second = servers.relay("default"), servers.relay("law")
        with running(first, second):
            wait_for(lambda: servers.relayed("default"), timeout=20, message="the default server's entries")
            wait_for(lambda: second.last_problem, message="the law relay retrying its first entry")
            assert [item for _, item in items(main_ncip)] == [f"D-{number}" for number in range(8)]
            assert second.checkpoint.position() is None, "law's first entry is still waiting"
            assert first.last_problem is None and first.lag()[1] == 0
            assert second.lag()[1] == 3, "its three entries wait"
            holder.close()  # the server comes up, on the same port
            later = NcipSimulator(port=port, problems=PROBLEMS, validate=True).start()
            servers.add("law", "checkin", "L-1")
            wait_for(lambda: servers.relayed("law"), timeout=20, message="law's entries once its server is up")
        assert items(later) == [("checkout", "L-1"), ("checkout", "L-2"), ("checkout", "L-3"), ("checkin", "L-1")]
        assert len(main_ncip.received) == 8, "nothing of law's went to the other server"
        assert second.last_problem is None
    finally:
        holder.close()
        if later is not None:
            later.stop()
        servers.ledger.close()


def test_checkpoints_are_independent_across_a_restart_and_no_entry_is_sent_twice(servers, main_ncip, law):
    servers.add("default", "checkin", "D-1", "D-2")
    servers.add("law", "checkin", "L-1", "L-2", "L-3")
    with running(servers.relay("default"), servers.relay("law")):
        wait_for(lambda: servers.relayed("default") and servers.relayed("law"), timeout=20, message="both relayed")
    state = servers.site.state
    default_file, law_file = read(state / FILE_NAME), read(state / f"{FILE_NAME}-law")
    assert default_file.position["offset"] == servers.journal("default").stat().st_size
    assert law_file.position["offset"] == servers.journal("law").stat().st_size
    assert default_file.position["inode"] != law_file.position["inode"], "each file holds its own journal's place"

    servers.reopen()  # a restart: new ledger, new relays, each server going on from its own checkpoint
    servers.add("law", "checkout", "L-4")
    servers.add("default", "checkout", "D-3")
    with running(servers.relay("law"), servers.relay("default")):
        wait_for(lambda: servers.relayed("default") and servers.relayed("law"), timeout=20, message="the new ones")
    assert [item for _, item in items(main_ncip)] == ["D-1", "D-2", "D-3"], "none again, none skipped"
    assert [item for _, item in items(law)] == ["L-1", "L-2", "L-3", "L-4"], "none again, none skipped"
    with sqlite3.connect(state / "gateway.db") as db:
        made = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'ncip_checkpoint_made%'").fetchall())
    db.close()
    assert set(made) == {"ncip_checkpoint_made", "ncip_checkpoint_made:law"}, "each server's file known as made"


def test_counts_and_a_missing_file_are_each_servers_own_and_only_the_default_takes_an_older_ledgers_place(tmp_path):
    database = tmp_path / "gateway.db"
    Ledger(database).close()
    with sqlite3.connect(database) as db:  # the release before the checkpoint file kept [ncip]'s place here
        db.execute("INSERT INTO checkpoints VALUES ('ncip-journal', 2049, 7, ?, 64, 640, 0)", ("ab" * 32,))
        db.execute("INSERT INTO counters VALUES ('ncip_entries_total:done', 5)")
    db.close()
    ledger = Ledger(database)
    try:
        law = ledger.ncip.journal_checkpoint("law")  # opened first: it must not take [ncip]'s place or counts
        assert law.position() is None and law.counts()["done"] == 0
        assert ledger.ncip.ncip_counts("law")["done"] == 0 and ledger.ncip.ncip_counts()["done"] == 5
        default = ledger.ncip.journal_checkpoint()
        assert default.position()["offset"] == 640 and default.counts()["done"] == 5, "moved into [ncip]'s file"
        ledger.ncip.count_ncip_entry("done", "law")
        ledger.ncip.count_ncip_entry("dead_letter", "law")
        ledger.ncip.count_ncip_entry("already")
        assert ledger.ncip.ncip_counts("law") == {"done": 1, "already": 0, "dead_letter": 1}
        assert ledger.ncip.ncip_counts() == {"done": 5, "already": 1, "dead_letter": 0}
        law.save({"device": 1, "inode": 2, "offset": 10, "fingerprint": "00", "fingerprint_length": 1})
    finally:
        ledger.close()
    again = Ledger(database)
    try:
        assert again.ncip.ncip_counts("law") == {"done": 1, "already": 0, "dead_letter": 1}, "read from its file"
        assert again.ncip.ncip_counts()["done"] == 5
    finally:
        again.close()
    (tmp_path / f"{FILE_NAME}-law").unlink()  # law's file lost: law alone must not start over
    third = Ledger(database)
    try:
        with pytest.raises(CheckpointMissing, match=f"{FILE_NAME}-law"):
            third.ncip.journal_checkpoint("law")
        assert third.ncip.journal_checkpoint().position()["offset"] == 640, "the default's is untouched"
    finally:
        third.close()


def test_dead_letters_name_their_server_and_each_relay_counts_its_own(servers, main_ncip, law):
    servers.add("default", "checkout", "UNKNOWN-1", "D-1")
    servers.add("law", "checkout", "L-1", "UNKNOWN-1", "L-2")
    with open(servers.journal("law"), "ab") as handle:
        handle.write(b"not an entry\n")
    first, second = servers.relay("default"), servers.relay("law")
    with running(first, second):
        wait_for(lambda: servers.relayed("default") and servers.relayed("law"), timeout=20, message="both relayed")
    error = servers.config.paths.error_dir
    own, laws = letters(error / "ncip"), letters(error / "ncip" / "law")
    assert [(letter["connection"], letter["entry"]["item"]) for letter in own] == [("default", "UNKNOWN-1")]
    assert [(letter["connection"], letter.get("entry", {}).get("item")) for letter in laws] == [
        ("law", "UNKNOWN-1"),
        ("law", None),
    ]
    assert laws[0]["journal"] == str(servers.journal("law")) and laws[1]["line"] == "not an entry"
    assert (first.dead_letters.count(), second.dead_letters.count()) == (1, 2)
    assert [item for _, item in items(main_ncip)] == ["UNKNOWN-1", "D-1"]
    assert [item for _, item in items(law)] == ["L-1", "UNKNOWN-1", "L-2"]
    assert ("dead_letter", "UNKNOWN-1", "law") in servers.events.entries
    assert ("dead_letter", "UNKNOWN-1", "default") in servers.events.entries
    servers.reopen()
    assert (servers.relay("default").dead_letters.count(), servers.relay("law").dead_letters.count()) == (1, 2), (
        "counted again from the files after a restart, each its own"
    )


@pytest.fixture
def feeds(site, simulator, tmp_path):
    """A feed for [ncip] (collection ANNEX) and one for [ncip.law] (collection LAWANNEX), on one CaiaSoft key."""
    site.write(
        simulator.url,
        extra=server_tables("tcp://127.0.0.1:5991", "tcp://127.0.0.1:5992", tmp_path)
        + '\n[ncip.feed]\ncollection = "ANNEX"\nlookback_days = 2\n'
        + '\n[ncip.law.feed]\ncollection = "LAWANNEX"\nlookback_days = 0\n',
    )
    config = site.load()
    client = CaiaSoftClient(config.caiasoft, config.api_key)
    site.state.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(site.state / "gateway.db")
    heard = Heard()
    made = {server.name: Feed(server, client, ledger, events=heard) for server in config.ncip_servers}
    yield made, ledger, heard
    ledger.close()
    client.close()


def entries(path: Path) -> list[tuple[str, str]]:
    return [(line["action"], line["item"]) for line in map(json.loads, path.read_text().splitlines())]


def test_two_libraries_sharing_a_barcode_each_journal_it_and_forget_only_their_own(feeds, simulator):
    made, ledger, heard = feeds
    default, law = made["default"], made["law"]
    assert (default.name, law.name) == ("ncip-feed", "ncip-feed-law")
    simulator.status_lists[("retrieved", DAY, "ANNEX")] = ["SHARED", "ANNEX-ONLY"]
    simulator.status_lists[("retrieved", DAY, "LAWANNEX")] = ["SHARED"]
    assert default.poll(TODAY) == 2
    assert law.poll(TODAY) == 1, "the other library's checkout of the same barcode is not this one's"
    assert entries(default.settings.journal) == [("checkout", "SHARED"), ("checkout", "ANNEX-ONLY")]
    assert entries(law.settings.journal) == [("checkout", "SHARED")]
    assert ledger.ncip.feed_seen("retrieved", "SHARED", DAY) and ledger.ncip.feed_seen(
        "retrieved", "SHARED", DAY, "law"
    )
    assert not ledger.ncip.feed_seen("retrieved", "ANNEX-ONLY", DAY, "law")
    assert (default.poll(TODAY), law.poll(TODAY)) == (0, 0), "each journaled once"

    earlier = "20261125"  # inside [ncip]'s lookback (2 days), outside law's (0)
    ledger.ncip.remember_feed("refiled", "OLD", earlier)
    ledger.ncip.remember_feed("refiled", "OLD", earlier, "law")
    law.poll(TODAY)
    assert not ledger.ncip.feed_seen("refiled", "OLD", earlier, "law"), "law forgets the days it reads no more"
    assert ledger.ncip.feed_seen("refiled", "OLD", earlier), "but not what [ncip]'s feed still reads"
    default.poll(TODAY + dt.timedelta(days=3))
    assert not ledger.ncip.feed_seen("refiled", "OLD", earlier) and not ledger.ncip.feed_seen(
        "retrieved", "SHARED", DAY
    )
    assert ledger.ncip.feed_seen("retrieved", "SHARED", DAY, "law"), "[ncip]'s forgetting leaves law's rows"


def test_an_unknown_status_is_told_with_the_feeds_server(feeds, simulator):
    made, _ledger, heard = feeds
    simulator.status_lists[("retrieved", DAY, "LAWANNEX")] = ["ODD"]
    simulator.status_lists[("refiled", DAY, "LAWANNEX")] = ["ODD"]
    simulator.item_statuses["ODD"] = "Somewhere Else Entirely"
    assert made["law"].poll(TODAY) == 0
    assert heard.unknown == [("ODD", "law")]
    assert "[ncip.law.feed]" in made["law"].held_problem(), "the problem names the table to fix"


def journal_command(config_file: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config_file), "journal", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_journal_command_writes_the_named_servers_journal_and_refuses_an_unknown_name(site, simulator):
    site.write(simulator.url, extra=server_tables("tcp://127.0.0.1:5991", "tcp://127.0.0.1:5992", site.root, False))
    law_journal = site.root / "ncip-law.jsonl"  # law's journal by default: beside [ncip]'s, named after it
    run = journal_command(site.config_file, "checkout", "L-7", "--ncip", "law", "--stop", "LAW")
    assert run.returncode == 0, run.stderr
    assert entries(law_journal) == [("checkout", "L-7")] and not (site.root / "ncip.jsonl").exists()
    run = journal_command(site.config_file, "checkin", "D-7")
    assert run.returncode == 0, run.stderr
    assert entries(site.root / "ncip.jsonl") == [("checkin", "D-7")] and entries(law_journal) == [("checkout", "L-7")]
    run = journal_command(site.config_file, "checkin", "X-1", "--ncip", "music")
    assert run.returncode == 2
    assert str(site.config_file) in run.stderr and "'music'" in run.stderr
    assert "default ([ncip])" in run.stderr and "law ([ncip.law])" in run.stderr, run.stderr
    assert entries(site.root / "ncip.jsonl") == [("checkin", "D-7")] and entries(law_journal) == [("checkout", "L-7")]


def test_the_probe_asks_the_server_it_is_given_and_names_it_when_asked(servers, main_ncip, law):
    found = lookup(servers.by_name["law"], "L-9", named=True)
    assert [(received.action, received.item) for received in law.received] == [("lookup", "L-9")]
    assert main_ncip.received == []
    assert [finding.mark for finding in found] == ["ok", "ok"]
    assert all("[ncip.law]" in finding.what for finding in found), found
    plain = lookup(servers.by_name["default"], "UNKNOWN-1")
    assert plain[0].what == "NCIP version" and plain[1].what.startswith("NCIP LookupItem UNKNOWN-1 at ")
    assert plain[1].mark == "FAIL" and len(main_ncip.received) == 1


@pytest.mark.e2e
def test_the_daemon_relays_each_servers_journal_to_its_server_and_logs_the_connection(
    site, simulator, main_ncip, law, daemon_factory
):
    site.write(simulator.url, extra=server_tables(main_ncip.url, law.url, site.root))
    journals = {"default": site.root / "ncip.jsonl", "law": site.root / "law.jsonl"}
    for name, (action, *listed) in (
        ("default", ("checkout", "D-1", "D-2")),
        ("law", ("checkout", "L-1", "UNKNOWN-1", "L-2")),
    ):
        for item in listed:
            journal.append(journals[name], JournalEntry(action, item))
    daemon = daemon_factory(site.config_file)
    wait_for(
        lambda: all(relayed(site.state, name, path) for name, path in journals.items()),
        timeout=30,
        message="both relayed",
    )
    assert [item for _, item in items(main_ncip)] == ["D-1", "D-2"]
    assert [item for _, item in items(law)] == ["L-1", "UNKNOWN-1", "L-2"]
    assert daemon.stop() == 0
    events = [json.loads(line) for line in (site.log_dir / "gateway.log").read_text().splitlines()]
    relayed_by = {
        name: [event["item"] for event in events if event["event"] == "ncip.ok" and event.get("connection") == name]
        for name in journals
    }
    assert relayed_by == {"default": ["D-1", "D-2"], "law": ["L-1", "L-2"]}, "each line names its server"
    assert [event["connection"] for event in events if event["event"] == "ncip.refused"] == ["law"]
    assert [letter["connection"] for letter in letters(site.error / "ncip" / "law")] == ["law"]
    assert letters(site.error / "ncip") == [], "the default server refused nothing"
    assert not [event for event in events if event["event"] == "monitor.failed"], "the monitor heard each entry"
    assert read(site.state / FILE_NAME).counts == {"done": 2, "already": 0, "dead_letter": 0}
    assert read(site.state / f"{FILE_NAME}-law").counts == {"done": 2, "already": 0, "dead_letter": 1}, (
        "each server's entries counted in its own file"
    )
