"""Defects found by attacking several connections (issue 23), each with the test that shows it fixed: reloads
in quick succession, what the staff page and the messages say of a named connection or NCIP server."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from conftest import KEY, ncip_table, wait_for
from peers import MailBox, alerts_table, body
from test_connections import LAW_KEY, write_two
from test_connections_monitor import two_ncip_servers
from test_connections_service import archived, log_events
from test_web import NOW, Clock, _cells, _through

from gateway.cli import demo
from gateway.config import loader as config_module
from gateway.config.settings import Web
from gateway.core.printfile import Record
from gateway.core.states import Verdict
from gateway.monitor.events import Conditions
from gateway.monitor.monitor import SOURCE_PROBLEM_SECONDS, Monitor
from gateway.ncip import journal
from gateway.ncip.journal import JournalEntry
from gateway.runtime.parts import Parts
from gateway.runtime.pipeline import Pipeline
from gateway.simulators.caiasoft import CaiaSoftSimulator
from gateway.simulators.ncip import NcipSimulator
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient
from gateway.web.server import WebServer

# -- a second reload while a relay waits for its predecessor ----------------------------------------------------


class HeldNcip:
    """An NCIP simulator whose answers wait until released: a relay's entry stays in flight as long as a test
    needs (arrived is set when a message is in hand)."""

    def __init__(self) -> None:
        self.sim = NcipSimulator().start()
        self.arrived = threading.Event()
        self.release = threading.Event()
        answer = self.sim.answer

        def held(message, fault=None):  # type: ignore[no-untyped-def]
            self.arrived.set()
            self.release.wait(30)
            return answer(message, fault)

        self.sim.answer = held  # type: ignore[method-assign]

    def items(self) -> list[str]:
        return [message.item for message in self.sim.received]


def test_a_second_reload_while_the_relay_waits_for_its_predecessor_does_not_stop_it_for_good(tmp_path):
    """Reload twice while the relay has an entry in flight: the first reload's relay waits for the old one (two
    never tail one journal at once); the second reload's relay must wait for that same old one, not for the first
    reload's, which never started and never will. Before the fix it waited for ever: later entries were never
    relayed, and status said 0 behind."""
    ncip = HeldNcip()
    config_file = demo.write_config(
        tmp_path, "http://127.0.0.1:1", KEY, extra=ncip_table(ncip.sim.url, tmp_path / "ncip.jsonl")
    )
    config = config_module.load(config_file, environ={})
    ledger = Ledger(config.paths.database)
    first = Parts(config, ledger)
    first.start()
    made = [first]
    try:
        journal.append(config.ncip.journal, JournalEntry("checkout", "ITEM-1"))
        assert ncip.arrived.wait(30), "the first entry in flight"
        first.stop()  # a reload: the relay ends after the entry in hand
        second = Parts(config, ledger)
        made.append(second)
        second.start(previous=first)
        assert second.relay is not None and second.relay.ident is None  # deferred: the old relay still runs
        second.stop()  # another reload before the old relay ended
        third = Parts(config, ledger)
        made.append(third)
        third.start(previous=second)
        ncip.release.set()

        def third_relay_started() -> bool:
            third.start_deferred()  # as the service's main loop does at each turn
            return third.relay is not None and third.relay.ident is not None

        wait_for(third_relay_started, timeout=30, message="the relay of the last reload started")
        journal.append(config.ncip.journal, JournalEntry("checkout", "ITEM-2"))
        wait_for(lambda: "ITEM-2" in ncip.items(), timeout=30, message="an entry journaled after both reloads")
    finally:
        ncip.release.set()
        for parts in made:
            parts.stop(time.monotonic() + 30)
            parts.close()
        ledger.close()
        ncip.sim.stop()
    assert ncip.items() == ["ITEM-1", "ITEM-2"]  # each once: two relays never sent one entry


# -- the staff page's find and a named NCIP server's feed ---------------------------------------------------------


def test_the_staff_page_find_shows_what_a_named_servers_feed_journaled(site, simulator, tmp_path):
    """[ncip.law.feed] without [ncip.feed]: find on the staff page gives the law feed's check-out to the file
    taken before it. Before the fix the page asked only whether [ncip] had a feed, so it said "not known here"
    and never read what the law feed journaled."""
    law = ncip_table("http://127.0.0.1:9/ncip", site.root / "law.jsonl").replace("[ncip]", "[ncip.law]")
    site.write(
        simulator.url,
        extra=ncip_table("http://127.0.0.1:9/ncip", site.root / "ncip.jsonl")
        + law
        + '\n[ncip.law.feed]\ncollection = "LAW"\n',
    )
    config = site.load()
    assert config.ncip is not None and config.ncip.feed is None and config.ncip_named[0].feed is not None
    item = "31234007770088"
    clock = Clock(NOW - 3600)
    ledger = Ledger(config.paths.database, clock=clock)
    server = None
    try:
        taken = _through(
            ledger, clock, "law.hold_req", [Record(number=1, line=1, barcodes=(item,))], Verdict.ACCEPTED, tmp_path
        )
        clock.now += 1800
        ledger.ncip.remember_feed("retrieved", item, "20261128", connection="law")
        server = WebServer(dataclasses.replace(config, web=Web("127.0.0.1:0", None)), clock).start()
        page = requests.get(server.url + "find", params={"barcode": item}, timeout=30).text
    finally:
        if server is not None:
            server.stop()
        ledger.close()
    (hit,) = _cells(page, "hit")
    assert f'href="/file/{taken}"' in page
    assert hit["ncip"] == "check-out (CaiaSoft retrieved it) 2026-11-28 11:30"


# -- what a named connection's upload problems tell the admin to check ---------------------------------------------


class OddCaiaSoft:
    """A CaiaSoft stand-in on loopback answering every call as `answer` says: redirect, key, html, big, slow."""

    def __init__(self) -> None:
        self.answer = "redirect"
        odd = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, kind, body = {
                    "redirect": (302, "text/html", b""),
                    "key": (401, "application/json", b'{"success": false, "error": "Invalid API key"}'),
                    "html": (200, "text/html", b"<html>maintenance</html>"),
                    "big": (200, "application/json", json.dumps({"success": True, "pad": "x" * 4096}).encode()),
                    "slow": (200, "application/json", b'{"success": true}'),
                }[odd.answer]
                if odd.answer == "slow":
                    time.sleep(3)
                self.send_response(status)
                self.send_header("Location", "https://elsewhere.example/")
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _reply

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def odd_caiasoft() -> Iterator[OddCaiaSoft]:
    odd = OddCaiaSoft()
    yield odd
    odd.server.shutdown()
    odd.server.server_close()


def test_a_named_connections_upload_problems_name_its_own_keys(tmp_path, odd_caiasoft):
    """A redirect, a refused key, an answer cut at max_answer_bytes, a deadline and unreadable answers on
    [caiasoft.law]: each reason names law's key (caiasoft.law.base_url ...), the one to change. Before the fix
    they named [caiasoft]'s keys, which do not govern law."""
    config_file = write_two(tmp_path, "http://127.0.0.1:1", odd_caiasoft.url)
    config_file.write_text(
        config_file.read_text().replace(
            "[caiasoft.law]\n",
            "[caiasoft.law]\nmax_answer_bytes = 1024\ndeadline_seconds = 1\nunreadable_answer_retries = 0\n",
        )
    )
    config = config_module.load(config_file, environ={})
    law = config.connection("law")
    assert law is not None
    client = CaiaSoftClient(law, config.key_of("law"))
    slip = tmp_path / "law-slip.txt"
    slip.write_text("31234007770001\n")
    reasons = {}
    try:
        for answer in ("redirect", "key", "big", "slow"):
            odd_caiasoft.answer = answer
            reasons[answer] = client.upload(slip, slip.name, "text").reason
        odd_caiasoft.answer = "html"
        pipeline = Pipeline(config, Ledger(config.paths.database), None, clients={"law": client})
        try:
            row_id = pipeline.admission.adopt_copy(slip, connection="law")
            pipeline.upload(pipeline.ledger.files.assign(row_id))
            reasons["html"] = pipeline.ledger.files.row(row_id).reason or ""
        finally:
            pipeline.ledger.close()
    finally:
        client.close()
    assert "check caiasoft.law.base_url and requestfile_path" in reasons["redirect"]
    assert "check caiasoft.law.api_key_file" in reasons["key"]
    assert "caiasoft.law.max_answer_bytes" in reasons["big"]
    assert "(caiasoft.law.deadline_seconds)" in reasons["slow"]
    assert "(caiasoft.law.unreadable_answer_retries)" in reasons["html"]
    for reason in reasons.values():
        assert "caiasoft.base_url" not in reason and "caiasoft.max_answer_bytes" not in reason
        assert LAW_KEY not in reason


# -- what an alert about a named NCIP server's journal tells the admin to set -------------------------------------


def test_an_unreadable_journal_of_a_named_server_says_to_set_its_own_journal_key(tmp_path):
    """The alert for [ncip.law]'s journal names ncip.law.journal, the key that moves it; before the fix it said
    ncip.journal, [ncip]'s, which does not."""
    mailbox = MailBox().start()
    config_file = write_two(
        tmp_path,
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        extra=two_ncip_servers(tmp_path) + alerts_table(mailbox.port),
    )
    config = config_module.load(config_file, environ={})
    ledger = Ledger(config.paths.database)
    now = [1_000_000.0]
    monitor = Monitor(config, ledger, clock=lambda: now[0], steady=lambda: now[0])
    monitor.start()
    assert monitor.sender is not None
    monitor.sender.start()
    try:
        unreadable = Conditions(
            connections={"default": (None, None), "law": (None, None)},
            ncip_servers={"default": (None, 0, None), "law": (None, 0, "it is a symbolic link: not followed")},
        )
        monitor.tick(unreadable)
        now[0] += SOURCE_PROBLEM_SECONDS + 1
        monitor.tick(unreadable)
        text = body(mailbox.find("the NCIP journal"))
    finally:
        monitor.sender.stop()
        monitor.sender.join(30)
        monitor.stop()
        ledger.close()
        mailbox.stop()
    assert str(tmp_path / "ncip-law.jsonl") in text
    assert "or set ncip.law.journal to the real file" in text and "set ncip.journal" not in text


# -- a reload adding back a named NCIP server whose checkpoint file is gone ----------------------------------------


def test_a_reload_adding_a_server_whose_checkpoint_is_gone_is_refused_and_the_rest_goes_on(tmp_path, daemon_factory):
    """[ncip.law] removed, its checkpoint file deleted (or damaged), then added back by a reload: the reload is
    refused, naming the file, and everything else goes on with the config it had. Before the fix the reload
    stopped the running parts, then the checkpoint stopped the whole gateway (exit 2): every connection and
    source of the consortium down for one server's file."""
    extra = two_ncip_servers(tmp_path)
    config_file = demo.write_config(tmp_path, "http://127.0.0.1:1", KEY, 0.2, extra=extra)
    with_law = config_file.read_text()
    without_law = with_law.split("\n[ncip.law]")[0] + "\n"
    checkpoint = tmp_path / "state" / "ncip-checkpoint-law"
    first = daemon_factory(config_file)
    wait_for(checkpoint.exists, timeout=60, message="law's checkpoint file made")
    wait_for(lambda: log_events(tmp_path, "service.started"), timeout=60, message="the first start")
    assert first.stop() == 0

    checkpoint.unlink()  # an admin tidying up after removing the server
    with CaiaSoftSimulator(key=KEY) as caiasoft:
        config_file.write_text(without_law.replace("http://127.0.0.1:1", caiasoft.url, 1))
        daemon = daemon_factory(config_file)
        wait_for(lambda: len(log_events(tmp_path, "service.started")) == 2, timeout=60, message="the restart")
        config_file.write_text(with_law.replace("http://127.0.0.1:1", caiasoft.url, 1))
        daemon.process.send_signal(signal.SIGHUP)
        (refused,) = wait_for(
            lambda: log_events(tmp_path, "config.reload_refused"), timeout=60, message="the reload refused"
        )
        assert any(str(checkpoint) in problem and "ncip.law" in problem for problem in refused["problems"])
        (tmp_path / "aleph" / "print" / "after.txt").write_bytes(b"31234005580001\n")
        wait_for(lambda: "after.txt" in archived(tmp_path), timeout=60, message="the default connection going on")
        assert daemon.process.poll() is None
        assert daemon.stop() == 0
    assert not log_events(tmp_path, "config.reloaded")
