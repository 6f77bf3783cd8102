"""Defects found by attacking several connections (issue 23), each with the test that shows it fixed: reloads
in quick succession, what the staff page and the messages say of a named connection or NCIP server."""

from __future__ import annotations

import dataclasses
import threading
import time

import requests
from conftest import KEY, ncip_table, wait_for
from test_web import NOW, Clock, _cells, _through

from gateway.cli import demo
from gateway.config import loader as config_module
from gateway.config.settings import Web
from gateway.core.printfile import Record
from gateway.core.states import Verdict
from gateway.ncip import journal
from gateway.ncip.journal import JournalEntry
from gateway.runtime.parts import Parts
from gateway.simulators.ncip import NcipSimulator
from gateway.state.ledger import Ledger
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
