"""The status feed against the CaiaSoft simulator: stop, request id and order kept; failures never read as empty."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from gateway.caiasoft import CaiaSoftClient
from gateway.errors import ApiError
from gateway.ledger import Ledger
from gateway.ncip.feed import Feed, retrieval

from conftest import ncip_table

TODAY = dt.date(2026, 11, 27)
DAY = "20261127"


@pytest.fixture
def feed(site, simulator, tmp_path):
    journal = tmp_path / "ncip.jsonl"
    site.write(simulator.url, extra=ncip_table("tcp://127.0.0.1:5991", journal) + """
[ncip.feed]
collection = "ANNEX"
lookback_days = 0
""")
    config = site.load()
    client = CaiaSoftClient(config.caiasoft, config.api_key)
    site.state.mkdir(parents=True, exist_ok=True)
    made = Feed(config.ncip, client, Ledger(site.state / "gateway.db"))
    made.entries = lambda: [json.loads(line) for line in journal.read_text().splitlines()] \
        if journal.exists() else []
    yield made
    client.close()


def test_retrievals_keep_their_stop_request_id_and_time_order(feed, simulator):
    simulator.retrievals[(DAY, "ANNEX")] = [
        {"barcode": "LATE", "stop": "MAIN - Main Library", "request_id": "R-2", "retrieved": "2026-11-27 15:04:00"},
        {"barcode": "EARLY", "stop": "LAW", "request_id": "R-1", "retrieved": "2026-11-27 09:30:00"},
    ]
    simulator.status_lists[("retrieved", DAY, "ANNEX")] = ["NO-FACTS"]
    assert feed.poll(TODAY) == 3
    assert feed.entries() == [
        {"action": "checkout", "item": "EARLY", "stop": "LAW", "request_id": "R-1",
         "id": f"feed-retrieved-{DAY}-EARLY"},
        {"action": "checkout", "item": "LATE", "stop": "MAIN", "request_id": "R-2",
         "id": f"feed-retrieved-{DAY}-LATE"},
        {"action": "checkout", "item": "NO-FACTS", "id": f"feed-retrieved-{DAY}-NO-FACTS"},
    ]
    assert feed.poll(TODAY) == 0, "each journaled once"


def test_an_item_refiled_and_retrieved_the_same_day_ends_as_it_is_now(feed, simulator):
    simulator.retrievals[(DAY, "ANNEX")] = [{"barcode": "OUT-AGAIN", "stop": "LAW"}, {"barcode": "BACK-IN"}]
    simulator.status_lists[("refiled", DAY, "ANNEX")] = ["OUT-AGAIN", "BACK-IN", "PLAIN-REFILE"]
    simulator.item_statuses.update({"OUT-AGAIN": "Out on Retrieval", "BACK-IN": "In"})
    feed.poll(TODAY)
    assert [(e["action"], e["item"]) for e in feed.entries()] == [
        ("checkin", "OUT-AGAIN"), ("checkout", "OUT-AGAIN"),  # refiled, then retrieved again: ends out
        ("checkout", "BACK-IN"), ("checkin", "BACK-IN"),      # retrieved, then refiled: ends in
        ("checkin", "PLAIN-REFILE")]


@pytest.mark.parametrize("fault", ["wrong collection", "503"])
def test_a_failed_list_is_an_error_never_an_empty_list(feed, simulator, fault):
    simulator.status_lists[("refiled", DAY, "ANNEX")] = ["X"]
    if fault == "wrong collection":
        simulator.collections = {"OTHER"}  # HTTP 200, success false
        expected = "CaiaSoft answered with a failure: Invalid collection code: ANNEX"
    else:
        simulator.queue_faults("503")
        expected = "HTTP 503"
    with pytest.raises(ApiError, match=expected.replace("(", r"\(")):
        feed.poll(TODAY)
    assert feed.entries() == []


def test_without_retrievalinfo_the_lists_still_feed_the_journal(feed, simulator):
    simulator.retrievalinfo = False
    simulator.status_lists[("retrieved", DAY, "ANNEX")] = ["B-1"]
    assert feed.poll(TODAY) == 1
    assert feed.entries() == [{"action": "checkout", "item": "B-1", "id": f"feed-retrieved-{DAY}-B-1"}]


@pytest.mark.parametrize("item,expected", [
    ({"Barcode": "1", "Circulation_Stop": "LAW - Law Library", "RequestID": "9"}, ("1", "LAW", "9")),
    ({"item": 123, "stop_code": "MAIN", "date": "20261127093000"}, ("123", "MAIN", None)),
    ({"stop": "MAIN"}, None),
    ("not an object", None),
])
def test_retrievalinfo_items_are_read_leniently(item, expected):
    fact = retrieval(item)
    assert (fact and (fact.barcode, fact.stop, fact.request_id)) == expected or (fact is None and expected is None)
