"""The status feed against the CaiaSoft simulator, answering as CaiaSoft's API guide shows: status phrases,
retrievalinfo's spaced keys; order kept, unknown statuses never guessed, failures never read as empty."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re

import pytest
from conftest import KEY, ncip_table

from gateway.config.loader import ConfigError
from gateway.core.errors import ApiError
from gateway.monitor.events import Events
from gateway.ncip.feed import Feed, classify, retrieval
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient

TODAY = dt.date(2026, 11, 27)
DAY = "20261127"


class Recorded(Events):
    """The monitor's interface, keeping what the feed told it."""

    def __init__(self) -> None:
        self.unknown: list[tuple[str, str, str, str]] = []

    def status_unknown(self, barcode: str, status: str, day: str, collection: str) -> None:
        self.unknown.append((barcode, status, day, collection))


@pytest.fixture
def feed(site, simulator, tmp_path):
    journal = tmp_path / "ncip.jsonl"
    site.write(
        simulator.url,
        extra=ncip_table("tcp://127.0.0.1:5991", journal)
        + """
[ncip.feed]
collection = "ANNEX"
lookback_days = 0
""",
    )
    config = site.load()
    client = CaiaSoftClient(config.caiasoft, config.api_key)
    site.state.mkdir(parents=True, exist_ok=True)
    made = Feed(config.ncip, client, Ledger(site.state / "gateway.db"), events=Recorded())
    made.entries = lambda: [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
    made.actions = lambda: [(entry["action"], entry["item"]) for entry in made.entries()]
    yield made
    client.close()


def test_retrievals_keep_their_request_id_and_the_order_of_their_date_and_go_to_user_id(feed, simulator):
    simulator.retrievals[(DAY, "ANNEX")] = [  # the simulator writes them as CaiaSoft does: "retrieval date" MM-DD-YYYY
        {"barcode": "SECOND", "request_id": "TN4561"},
        {"barcode": "FIRST", "request_id": "", "retrieval date": "11-26-2026"},  # a late line of yesterday's job
    ]
    simulator.status_lists[("retrieved", DAY, "ANNEX")] = ["NO-FACTS"]
    assert feed.poll(TODAY) == 3
    assert feed.entries() == [
        {"action": "checkout", "item": "FIRST", "id": f"feed-retrieved-{DAY}-FIRST"},
        {"action": "checkout", "item": "SECOND", "request_id": "TN4561", "id": f"feed-retrieved-{DAY}-SECOND"},
        {"action": "checkout", "item": "NO-FACTS", "id": f"feed-retrieved-{DAY}-NO-FACTS"},
    ], "no stop in any entry: no endpoint gives one, so the relay uses ncip.user_id"
    assert feed.poll(TODAY) == 0, "each journaled once"


# CaiaSoft's item statuses as its API guide lists them (DOMAIN.md), written out here, not taken from the code's defaults
IN_THE_FACILITY = [
    "Item In at Rest",
    "In Queue for Refile",
    "In Queue for Physical Retrieval",
    "In Queue for E-Retrieval",
    "In Queue for SH-I-P Service",
    "In Queue for De-accession",
    "Pulled for E-Retrieval",
]
OUT_OF_IT = ["Out on Physical Retrieval", "Out on SH-I-P Service"]
IN_THEN = [("checkout", "B-1"), ("checkin", "B-1")]  # retrieved, then refiled: ends checked in
OUT_THEN = [("checkin", "B-1"), ("checkout", "B-1")]  # refiled, then retrieved again: ends checked out


@pytest.mark.parametrize(
    "status,expected",
    [
        *[(status, IN_THEN) for status in (*IN_THE_FACILITY, "Item In at Rest on 08-02-2018", "  item in at REST  ")],
        *[(status, OUT_THEN) for status in (*OUT_OF_IT, "Out on Physical Retrieval on 08-02-2018")],
    ],
)
def test_an_item_retrieved_and_refiled_the_same_day_ends_as_its_status_says_now(feed, simulator, status, expected):
    simulator.retrievals[(DAY, "ANNEX")] = [{"barcode": "B-1"}]
    simulator.status_lists[("refiled", DAY, "ANNEX")] = ["B-1"]
    simulator.item_statuses["B-1"] = status
    feed.poll(TODAY)
    assert feed.actions() == expected


@pytest.mark.parametrize(
    "status",
    [
        "In",
        "Refiled",
        "Item not Found",
        "Item has been Deaccessioned",
        "Item Restricted from this API Key",
        "Something CaiaSoft adds next year",
    ],
)
def test_a_status_the_gateway_does_not_know_journals_nothing_for_that_item_and_is_named(feed, simulator, status):
    simulator.retrievals[(DAY, "ANNEX")] = [{"barcode": "ODD"}, {"barcode": "PLAIN"}]
    simulator.status_lists[("refiled", DAY, "ANNEX")] = ["ODD", "BACK"]
    simulator.item_statuses["ODD"] = status
    assert feed.poll(TODAY) == 2
    assert feed.actions() == [("checkout", "PLAIN"), ("checkin", "BACK")], "the other items go on"
    assert feed.events.unknown == [("ODD", status, DAY, "ANNEX")]
    problem = feed.held_problem()
    assert f"ODD ({DAY}): CaiaSoft status {status!r} not known" in problem and "in_statuses or out_statuses" in problem

    feed.poll(TODAY)
    assert len(feed.events.unknown) == 1, "alerted once, not at every read"
    simulator.item_statuses["ODD"] = "Item In at Rest"  # or the admin adds the phrase to in_statuses
    assert feed.poll(TODAY) == 2
    assert feed.actions()[-2:] == [("checkout", "ODD"), ("checkin", "ODD")]
    assert feed.held == {} and feed.held_problem() is None


@pytest.mark.parametrize(
    "status,expected",
    [
        ("Item In at Rest", [("checkin", "B-1"), ("checkout", "B-1"), ("checkin", "B-1")]),
        ("Out on Physical Retrieval on 11-27-2026", [("checkin", "B-1"), ("checkout", "B-1")]),
    ],
)
def test_movements_seen_at_two_reads_of_one_day_still_end_as_caiasoft_has_the_item(feed, simulator, status, expected):
    simulator.status_lists[("refiled", DAY, "ANNEX")] = ["B-1"]  # back from yesterday's loan
    feed.poll(TODAY)
    simulator.retrievals[(DAY, "ANNEX")] = [{"barcode": "B-1"}]  # later that day: out again, and perhaps back
    simulator.item_statuses["B-1"] = status
    feed.poll(TODAY)
    assert feed.actions() == expected
    entries = feed.entries()
    assert len({entry["id"] for entry in entries}) == len(entries), "an entry journaled again has an id of its own"
    feed.poll(TODAY)
    assert feed.actions() == expected, "nothing new: nothing more"


def test_retrieved_at_one_read_refiled_and_out_again_at_the_next_ends_checked_out(feed, simulator):
    simulator.retrievals[(DAY, "ANNEX")] = [{"barcode": "B-1"}]
    feed.poll(TODAY)
    simulator.status_lists[("refiled", DAY, "ANNEX")] = ["B-1"]
    simulator.item_statuses["B-1"] = "Out on Physical Retrieval"
    feed.poll(TODAY)
    assert feed.actions() == [("checkout", "B-1"), ("checkin", "B-1"), ("checkout", "B-1")]


def test_a_failure_for_one_item_holds_back_that_item_only(feed, simulator):
    simulator.retrievals[(DAY, "ANNEX")] = [
        {"barcode": "LOST"},
        {"barcode": "PLAIN"},
        {"barcode": "NO-DATE", "retrieval date": "someday"},
        {"request_id": "X"},
    ]
    simulator.status_lists[("refiled", DAY, "ANNEX")] = ["LOST", "NO-DATE", "BACK"]
    simulator.item_faults["LOST"] = "Item not Found"  # itemstatus answers HTTP 200 with success false for it
    assert feed.poll(TODAY) == 2
    assert feed.actions() == [("checkout", "PLAIN"), ("checkin", "BACK")]
    problem = feed.held_problem()
    assert f"LOST ({DAY}): CaiaSoft's status of LOST: CaiaSoft answered with a failure: Item not Found" in problem
    assert f"NO-DATE ({DAY}):" in problem and "unreadable 'retrieval date' (someday)" in problem
    assert "1 retrievalinfo item(s) unreadable" in problem and '"request_id": "X"' in problem
    simulator.queue_faults("503")  # CaiaSoft itself failing is not one item's problem: the read fails
    with pytest.raises(ApiError, match="HTTP 503"):
        feed.poll(TODAY)


def test_an_electronic_retrieval_checks_nothing_out(feed, simulator):
    simulator.retrievals[(DAY, "ANNEX")] = [
        {"barcode": "SCANNED", "retrieval type": "ERT"},
        {"barcode": "LENT", "retrieval type": "PYR"},
    ]
    assert feed.poll(TODAY) == 1
    assert feed.actions() == [("checkout", "LENT")]
    assert feed.poll(TODAY) == 0, "the scan is remembered as seen"


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


def test_a_retrievalinfo_item_without_its_documented_fields_is_an_error_with_an_excerpt(feed, simulator):
    simulator.retrievals[(DAY, "ANNEX")] = [{"barcode": "B-1", "retrieval date": None, "retrieved": "2026-11-27"}]
    simulator.status_lists[("retrieved", DAY, "ANNEX")] = ["B-1"]
    feed.poll(TODAY)
    assert feed.entries() == [], "never journaled as if CaiaSoft had said nothing"
    assert re.search(
        r"B-1 \(20261127\): .*item B-1 has no 'retrieval date', expected MM-DD-YYYY: .*\"retrieved\"",
        feed.held_problem(),
    )


def test_without_retrievalinfo_the_lists_still_feed_the_journal(feed, simulator):
    simulator.retrievalinfo = False
    simulator.status_lists[("retrieved", DAY, "ANNEX")] = ["B-1"]
    assert feed.poll(TODAY) == 1
    assert feed.entries() == [{"action": "checkout", "item": "B-1", "id": f"feed-retrieved-{DAY}-B-1"}]


def test_retrievalinfo_items_are_read_by_their_documented_keys():
    fact = retrieval(
        {
            "barcode": 31234000012345,
            "collection": "NN",
            "requestor": "A Reader",
            "request_id": "TN4561",
            "retrieval_job": "8982",
            "retrieval date": "08-28-2018",
            "retrieval type": "ERT",
        },
        "test",
    )
    assert (fact.barcode, fact.request_id, fact.type, fact.at) == (
        "31234000012345",
        "TN4561",
        "ERT",
        dt.datetime(2018, 8, 28),
    )
    assert retrieval({"barcode": "1", "retrieval date": "08-28-2018", "request_id": ""}, "test").request_id is None
    for item, words in [
        ({"Barcode": "1", "retrieval date": "08-28-2018"}, "an item has no 'barcode'"),
        ({"barcode": "1", "retrieval date": "28.08.2018"}, "unreadable 'retrieval date' (28.08.2018)"),
        ("not an object", "an item is not an object"),
    ]:
        with pytest.raises(ApiError, match=words.replace("(", r"\(").replace(")", r"\)")):
            retrieval(item, "test")


def test_statuses_are_compared_as_caiasofts_phrases(feed):
    settings = feed.feed
    assert classify("Out on Physical Retrieval on 08-02-2018", settings) == "out"
    assert classify("Out on SH-I-P Service on 8/2/2018 14:05", settings) == "out"
    assert classify("In Queue for Refile", settings) == "in"
    assert classify("item   in at rest", settings) == "in"
    assert classify("Out", settings) is None and classify("", settings) is None


def test_what_the_feed_remembers_covers_only_the_days_it_reads(feed, simulator):
    simulator.status_lists[("retrieved", DAY, "ANNEX")] = ["B-1"]
    assert feed.poll(TODAY) == 1
    assert feed.ledger.ncip.feed_seen("retrieved", "B-1", DAY)
    tomorrow = TODAY + dt.timedelta(days=1)  # lookback_days = 0: yesterday is read no more
    feed.poll(tomorrow)
    assert not feed.ledger.ncip.feed_seen("retrieved", "B-1", DAY), "forgotten: the ledger does not grow with history"


@pytest.mark.parametrize(
    "path", ["", "/api/retrievalinfo/v1/{from}/{collection}"], ids=["not-asked", "a-path-caiasoft-refuses"]
)
def test_without_a_retrievalinfo_path_caiasoft_takes_the_lists_still_feed_the_journal(feed, simulator, path):
    feed.feed = dataclasses.replace(feed.feed, retrievalinfo_path=path)
    simulator.retrievals[(DAY, "ANNEX")] = [{"barcode": "B-1", "request_id": "TN1"}]  # in the retrieved list too
    assert feed.poll(TODAY) == 1
    assert feed.entries() == [{"action": "checkout", "item": "B-1", "id": f"feed-retrieved-{DAY}-B-1"}]
    assert feed._without_retrievalinfo == bool(path), "a path answered with HTTP 400 is not asked again"


@pytest.mark.parametrize(
    "path",
    [
        "api/no-slash/{from}",
        "/api/retrievalinfo/v1/{day}/{collection}",
        "/api/x?collection={collection}",
        "/api/x/{from} /{to}",
    ],
)
def test_a_retrievalinfo_path_with_other_placeholders_or_characters_is_refused(site, simulator, tmp_path, path):
    site.write(
        simulator.url,
        extra=ncip_table("tcp://127.0.0.1:5991", tmp_path / "ncip.jsonl")
        + f'\n[ncip.feed]\ncollection = "ANNEX"\nretrievalinfo_path = "{path}"\n',
    )
    with pytest.raises(ConfigError, match="ncip.feed.retrievalinfo_path"):
        site.load()


@pytest.mark.parametrize("call", ["retrievalinfo", "itemstatus"])
def test_a_refused_key_fails_the_read_it_is_never_one_items_or_endpoints_problem(feed, simulator, call):
    simulator.retrievals[(DAY, "ANNEX")] = [{"barcode": "B-1"}]
    simulator.status_lists[("refiled", DAY, "ANNEX")] = ["B-1"]
    passed = {"retrievalinfo": 0, "itemstatus": 3}[call]  # the calls of a read before it: retrievalinfo, 2 lists
    simulator.queue_faults(*["slow:0"] * passed, "401")
    with pytest.raises(ApiError, match="HTTP 401"):
        feed.poll(TODAY)
    assert feed.entries() == [] and feed.held == {} and not feed._without_retrievalinfo


def test_an_answer_that_echoes_the_api_key_is_quoted_without_it(feed, simulator):
    simulator.retrievals[(DAY, "ANNEX")] = [{"barcode": "B-1", "retrieval date": "someday", "requestor": KEY}]
    feed.poll(TODAY)
    problem = feed.held_problem()
    assert problem and "unreadable 'retrieval date'" in problem and '"requestor": "[redacted]"' in problem
    assert KEY not in problem
