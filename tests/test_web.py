"""The staff page over plain HTTP: a real WebServer on loopback reading a real ledger (the pages' DOM contract,
its headers, basic auth, escaping, redaction, that it never writes, the 14 days' figures, a failing page).
The browser's view of the same page is tests/test_web_browser.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import io
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import KEY, ncip_table, wait_for
from peers import free_port
from printfiles import print_file, record

from gateway.cli import main as cli
from gateway.config.settings import Web
from gateway.core import logs
from gateway.core.printfile import Record
from gateway.core.states import Verdict
from gateway.report import find
from gateway.runtime.pipeline import Pipeline
from gateway.state import schema, snapshot
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient
from gateway.web import data, users
from gateway.web.server import NICENESS, WebServer

NOW = dt.datetime(2026, 11, 28, 12, 0).timestamp()  # noon, local time: the page's "today" is 2026-11-28
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
DENIED = "31234009999990"  # the simulator denies it (conftest)
HOSTILE = "<script>alert(1)</script>.xml"


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def ledger(site, clock):
    made = Ledger(site.load().paths.database, clock=clock)
    yield made
    made.close()


@pytest.fixture
def serve(site, clock):
    """Start the staff page for the site on a free loopback port (users_file: with basic auth)."""
    started: list[WebServer] = []

    def start(users_file: Path | None = None) -> WebServer:
        config = dataclasses.replace(site.load(), web=Web("127.0.0.1:0", users_file))
        server = WebServer(config, clock).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _durable(ledger: Ledger) -> None:
    """What this thread wrote is committed (finished() is lazy), so the page's own connection sees it."""
    ledger.db.wait_for(ledger.db.durable())


def _through(
    ledger: Ledger,
    clock: Clock,
    name: str,
    records: list[Record],
    verdict: Verdict | None,
    folder: Path,
    answer: dict | None = None,
) -> int:
    """One file's life in the ledger at clock.now: taken, its records kept, queued, then (with a verdict)
    answered and placed in folder's day folder."""
    row_id = ledger.files.begin_claim("print", name, f"/aleph/print/{name}", 100, clock.now)
    ledger.files.claimed(row_id)
    ledger.items.store_records([row_id], [(row_id, r) for r in records])
    items = sum(len(r.barcodes) for r in records)
    ledger.files.queued(row_id, "xml", "0" * 64, 100, {"records": len(records), "items": items})
    if verdict is not None:
        ledger.files.assign(row_id)
        reason = "accepted" if verdict == Verdict.ACCEPTED else "CaiaSoft refused the file: Bad Format"
        ledger.files.answered(row_id, verdict, reason, answer=answer, uploaded=True)
        target = folder / dt.date.fromtimestamp(clock.now).strftime("%Y/%m/%d") / name
        ledger.files.placing(row_id, target)
        ledger.files.finished(row_id, target)
    _durable(ledger)
    return row_id


def _answer(*results: tuple[str, str | bool, str]) -> dict:
    return {
        "success": True,
        "error": "",
        "results": [{"item": item, "deny": deny, "istatus": istatus} for item, deny, istatus in results],
    }


def _cells(page: str, row_class: str) -> list[dict[str, str]]:
    """The cells of each <tr class=row_class>, by their class, as text."""
    rows = re.findall(rf'<tr class="{row_class}">(.*?)</tr>', page, re.S)
    return [
        {
            cls: html.unescape(re.sub(r"<[^>]+>", " ", text)).strip()
            for cls, text in re.findall(r'<td class="([^"]+)">(.*?)</td>', row, re.S)
        }
        for row in rows
    ]


def _element(page: str, tag: str, id_: str) -> str:
    found = re.search(rf'<{tag} id="{id_}"[^>]*>(.*?)</{tag}>', page, re.S)
    assert found, f"no <{tag} id={id_}>"
    return found.group(1)


# -- headers, methods, paths --------------------------------------------------------


def test_every_answer_is_read_only_with_a_strict_policy_and_no_script(serve, ledger):
    server = serve()
    url = server.url
    answers = {
        "today": requests.get(url),
        "find": requests.get(url + "find", params={"barcode": "31234000000001"}),
        "find empty": requests.get(url + "find?barcode="),
        "style": requests.get(url + "style.css"),
        "metrics": requests.get(url + "metrics"),
        "no page": requests.get(url + "nothing/here"),
        "file not digits": requests.get(url + "file/abc"),
        "file unicode digits": requests.get(url + "file/%D9%A1"),  # an Arabic-Indic one: not an id
        "file path": requests.get(url + "file/1/../2"),
        "no such file": requests.get(url + "file/999"),
        "post": requests.post(url, data={"barcode": "x"}),
        "put": requests.put(url + "find"),
        "delete": requests.delete(url + "file/1"),
        "head": requests.head(url),
    }
    codes = {what: answer.status_code for what, answer in answers.items()}
    assert codes == {
        "today": 200,
        "find": 200,
        "find empty": 200,
        "style": 200,
        "metrics": 200,
        "no page": 404,
        "file not digits": 404,
        "file unicode digits": 404,
        "file path": 404,
        "no such file": 404,
        "post": 405,
        "put": 405,
        "delete": 405,
        "head": 200,
    }
    for what, answer in answers.items():
        assert {name: answer.headers.get(name) for name in HEADERS} == HEADERS, what
        assert "<script" not in answer.text.lower() and " style=" not in answer.text, what
    assert answers["post"].headers["Allow"] == "GET, HEAD"
    assert answers["head"].content == b"" and int(answers["head"].headers["Content-Length"]) > 0
    assert answers["style"].headers["Content-Type"] == "text/css; charset=utf-8"
    assert answers["today"].headers["Content-Type"] == "text/html; charset=utf-8"
    assert "The ledger has no file 999." in answers["no such file"].text
    metrics = requests.get(url + "metrics").text
    for line in (
        'caiasoft_gateway_web_requests_total{code="200",page="today"} 2.0',  # GET and HEAD
        'caiasoft_gateway_web_requests_total{code="404",page="file"} 4.0',
        'caiasoft_gateway_web_requests_total{code="405",page="today"} 1.0',
        'caiasoft_gateway_web_requests_total{code="404",page="other"} 1.0',
        'caiasoft_gateway_web_requests_total{code="200",page="metrics"} 1.0',
    ):
        assert line in metrics


# -- what the pages show --------------------------------------------------------------


def test_today_find_and_file_show_what_the_pipeline_did_escaped_and_without_the_key(site, serve, ledger, clock):
    """A file with an item CaiaSoft denies, under a hostile name, and a file the gateway refuses (which holds the
    API key in its text) go through the real pipeline and the simulator; the pages say so, escaped and redacted."""
    config = site.load()
    client = CaiaSoftClient(config.caiasoft, config.api_key)
    pipeline = Pipeline(config, ledger, client)
    inbox = site.root / "inbox"
    inbox.mkdir()
    hostile = inbox / '<img src=x onerror=alert(1)>&"x".hold_req'
    hostile.write_text(record(1) + record(9999990, prefix="3123400"))
    broken = inbox / "broken.hold_req"
    broken.write_bytes(print_file(3, replace={2: f"## - XML_XSL\n<printout><z13-title>{KEY}</z13-title></section>\n"}))
    ids = []
    for path in (hostile, broken):
        row_id = pipeline.admission.adopt_copy(path)
        row = ledger.files.assign(row_id)
        if row is not None:
            pipeline.upload(row)
        ids.append(row_id)
    client.close()
    _durable(ledger)
    accepted, refused = (ledger.files.get(row_id) for row_id in ids)
    assert (accepted.state, refused.state) == ("archived", "refused")
    ledger.db.connection.execute(  # as an older version stored a reason: the key in it, raw
        "UPDATE files SET reason = ? WHERE id = ?", (f"{refused.reason} (key {KEY})", refused.id)
    )
    url = serve().url

    today = requests.get(url).text
    shown_name = html.escape('<img src=x onerror=alert(1)>&"x".hold_req', quote=False)
    assert _cells(today, "day")[0] == {
        "date": "2026-11-28",
        "sent": "1",
        "refused": "1",
        "items-sent": "2",
        "items-denied": "1",
    }
    counts = _element(today, "dl", "counts")
    assert re.search(r'id="count-sent">1<', counts) and re.search(r'id="count-refused">1<', counts)
    denied = re.findall(r"<tr>(<td class=\"item\">.*?)</tr>", _element(today, "table", "denied"), re.S)
    assert denied == [
        f'<td class="item">{DENIED}</td><td class="reason">Invalid Stop Code</td><td class="file">'
        f'<a href="/file/{accepted.id}">{shown_name.replace(chr(34), "&#34;")}</a></td>'
    ]
    refused_rows = _element(today, "table", "refused")
    assert f'<a href="/file/{refused.id}">broken.hold_req</a>' in refused_rows
    assert "not well-formed" in refused_rows and "[redacted]" in refused_rows

    found = requests.get(url + "find", params={"barcode": DENIED}).text
    [hit] = _cells(found, "hit")
    assert hit["answer"] == "denied: Invalid Stop Code"
    assert hit["request"] == "010003990" and hit["pickup"] == "Main Library Circulation Desk"
    assert hit["sent"] == data.when(NOW) and hit["where"] == '<img src=x onerror=alert(1)>&"x".hold_req'
    assert f'<td class="where"><a href="/file/{accepted.id}">' in found
    newest, older = _cells(requests.get(url + "find", params={"barcode": "31234070000001"}).text, "hit")
    assert newest["answer"].startswith("not requested: the file was refused (refused by the gateway: record 2 of 3")
    assert older["answer"] == "requested" and older["where"] == hit["where"]

    page = requests.get(url + f"file/{accepted.id}").text
    assert f"<h1>{shown_name.replace(chr(34), '&#34;')}</h1>" in page
    items = _cells(page, "item")
    assert [(item["barcode"], item["answer"]) for item in items] == [
        ("31234070000001", "requested"),
        (DENIED, "denied: Invalid Stop Code"),
    ]
    assert "&lt;z30-barcode&gt;31234009999990&lt;/z30-barcode&gt;" in _element(page, "pre", "text")
    broken_page = requests.get(url + f"file/{refused.id}").text
    assert "not well-formed" in _element(broken_page, "dd", "reason")
    assert "[redacted]" in _element(broken_page, "pre", "text")

    for answer in (today, found, page, broken_page, requests.get(url + "metrics").text):
        assert KEY not in answer and "<img" not in answer and "<script" not in answer


def test_a_hostile_name_in_the_ledger_is_text_on_every_page(serve, ledger, clock, tmp_path):
    row_id = _through(
        ledger, clock, HOSTILE, [Record(number=1, line=1, barcodes=("31234000000042",))], Verdict.REFUSED, tmp_path
    )
    odd = _through(
        ledger,
        clock,
        "slip\x1b]0;owned\x07\udce9.hold_req",  # a terminal escape and a byte that is not UTF-8
        [Record(number=1, line=1, barcodes=("31234000000043",))],
        None,
        tmp_path,
    )
    url = serve().url
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;.xml"
    pages = [
        requests.get(url).text,
        requests.get(url + "find", params={"barcode": "31234000000042"}).text,
        requests.get(url + f"file/{row_id}").text,
        requests.get(url + f"file/{odd}").text,
        requests.get(url + "find", params={"barcode": HOSTILE}).text,
    ]
    assert f'<a href="/file/{row_id}">{escaped}</a>' in pages[0]
    assert f'<a href="/file/{row_id}">{escaped}</a>' in pages[1]
    assert f"<h1>{escaped}</h1>" in pages[2]
    assert "<h1>slip\\x1b]0;owned\\x07\\xe9.hold_req</h1>" in pages[3]
    assert (
        f'value="{escaped}"' in pages[4]
        and f"Never seen: no request file the gateway has taken carried {escaped}" in pages[4]
    )
    for page in pages:
        assert "<script>" not in page and "\x1b" not in page


def test_the_14_days_count_what_was_archived_refused_and_denied(serve, ledger, clock, tmp_path):
    day = 86400
    archive, errors = tmp_path / "archive", tmp_path / "error"

    def at(days_ago: int, hour: int = 10) -> None:
        clock.now = dt.datetime.combine(dt.date(2026, 11, 28) - dt.timedelta(days=days_ago), dt.time(hour)).timestamp()

    at(14)  # outside the window
    _through(ledger, clock, "old.hold_req", [Record(number=1, line=1, barcodes=("A0",))], Verdict.ACCEPTED, archive)
    at(13, hour=0)  # the first minute of the window's first day
    _through(
        ledger,
        clock,
        "a.hold_req",
        [Record(number=1, line=1, barcodes=("A1", "A2"))],
        Verdict.ACCEPTED,
        archive,
        _answer(("A1", "N", "Item Requested"), ("A2", "Y", "Item Not Found")),
    )
    at(13, hour=23)
    _through(ledger, clock, "b.hold_req", [Record(number=1, line=1, barcodes=("B1",))], Verdict.ACCEPTED, archive)
    at(5)
    _through(ledger, clock, "c.hold_req", [Record(number=1, line=1, barcodes=("C1",))], Verdict.REFUSED, errors)
    at(0, hour=8)
    today = _through(
        ledger,
        clock,
        "d.hold_req",
        [Record(number=1, line=1, barcodes=("D1",)), Record(number=2, line=9, barcodes=("D2", "D3"))],
        Verdict.ACCEPTED,
        archive,
        _answer(("D1", True, "Invalid Stop Code"), ("D2", "N", "Item Requested"), ("D3", "y", "Item Out")),
    )
    at(0, hour=9)
    _through(ledger, clock, "e.hold_req", [Record(number=1, line=1, barcodes=("E1",))], Verdict.REFUSED, errors)
    _through(ledger, clock, "f.hold_req", [Record(number=1, line=1, barcodes=("F1",))], None, archive)
    clock.now = NOW + day / 4  # 18:00

    page = requests.get(serve().url).text
    rows = _cells(page, "day")
    assert len(rows) == 14 and [row["date"] for row in rows] == [
        (dt.date(2026, 11, 28) - dt.timedelta(days=back)).isoformat() for back in range(14)
    ]
    figures = {row["date"]: (row["sent"], row["refused"], row["items-sent"], row["items-denied"]) for row in rows}
    assert {date: value for date, value in figures.items() if value != ("0", "0", "0", "0")} == {
        "2026-11-28": ("1", "1", "3", "2"),
        "2026-11-23": ("0", "1", "0", "0"),
        "2026-11-15": ("2", "0", "3", "1"),
    }
    counts = _element(page, "dl", "counts")
    assert [
        re.search(rf'id="count-{what}">(\d+)<', counts).group(1) for what in ("sent", "refused", "waiting", "denied")
    ] == [
        "1",
        "1",
        "1",
        "2",
    ]
    assert re.findall(
        r'<td class="item">(.*?)</td><td class="reason">(.*?)</td>', _element(page, "table", "denied")
    ) == [
        ("D1", "Invalid Stop Code"),
        ("D3", "Item Out"),
    ]
    assert f'href="/file/{today}"' in _element(page, "table", "denied")
    assert re.findall(r'<td class="file"><a href="/file/\d+">(.*?)</a>', _element(page, "table", "refused")) == [
        "e.hold_req",
        "c.hold_req",
    ]
    chart = _element(page, "svg", "chart")
    assert len(re.findall(r'<rect class="bar"', chart)) == 14 * 3
    assert "<title>2026-11-15: 2 files sent</title>" in chart and "<title>2026-11-28: 2 items denied</title>" in chart
    assert 'role="img" aria-label="' in page


def test_the_figures_are_read_through_the_finished_index_only(ledger):
    """At a million files the page reads the files finished in its window, never the ledger's history."""
    statements: list[str] = []
    ledger.db.connection.set_trace_callback(statements.append)
    try:
        assert ledger.files.finished_figures(NOW - 86400, NOW) == {}
        assert ledger.files.denied_between(NOW - 86400, NOW, 10) == []
    finally:
        ledger.db.connection.set_trace_callback(None)
    assert len(statements) == 2
    for sql in statements:
        plan = " ".join(row[3] for row in ledger.db.connection.execute("EXPLAIN QUERY PLAN " + sql))
        assert "SEARCH files USING INDEX files_done (state=? AND finished_at>? AND finished_at<?)" in plan, plan
        assert "SCAN files" not in plan, plan


# -- the service's state --------------------------------------------------------------


def test_the_page_says_when_the_service_is_down_paused_or_behind_on_ncip(site, simulator, serve, ledger, clock):
    site.write(simulator.url, extra=ncip_table("http://127.0.0.1:9/ncip", site.root / "ncip.jsonl"))
    url = serve().url
    down = requests.get(url).text
    assert "<li>The gateway service is not running:" in _element(down, "ul", "attention")
    assert "Not known while the gateway service is not running." in _element(down, "section", "ncip")

    state = snapshot.Snapshot(pid=os.getpid(), updated=clock.now, sources={}, paused=None, ncip=None, faults={})
    snapshot.publish(ledger, state)
    assert '<p id="all-well">Nothing needs you.</p>' in requests.get(url).text

    snapshot.publish(
        ledger,
        {
            **state,
            "paused": "CaiaSoft refused the API key (HTTP 401)",
            "faults": {"placer": "cannot write the archive: Permission denied"},
            "ncip": snapshot.NcipState(
                lag_bytes=300,
                lag_entries=3,
                last_success=None,
                last_problem="cannot reach 127.0.0.1:9: Connection refused",
                dead_letters=2,
                feed_problem=None,
                journal_problem=None,
            ),
        },
    )
    page = requests.get(url).text
    said = re.findall(r"<li>(.*?)</li>", _element(page, "ul", "attention"), re.S)
    assert said[0].startswith("Uploads are paused: CaiaSoft refused the API key (HTTP 401).")
    assert any(
        line.startswith("ALEPH&#39;s NCIP server: cannot reach 127.0.0.1:9: Connection refused (3 ") for line in said
    )
    assert any(line.startswith("2 NCIP journal entries could not be relayed") for line in said)
    assert "placer is paused after a fault: cannot write the archive: Permission denied" in said
    ncip = _element(page, "section", "ncip")
    assert 'id="ncip-behind">3<' in ncip and 'id="ncip-dead">2<' in ncip

    unreachable = snapshot.SourceState(
        mode="sftp",
        problem="cannot reach sftp://aleph.example.edu/print: Connection refused",
        healthy=True,
        writers_unknown=None,
        waiting=[],
        not_taken={"usm50.hold_req": "cannot be taken: Permission denied"},
        originals_kept=0,
    )
    snapshot.publish(ledger, {**state, "sources": {"remote": unreachable}})
    said = re.findall(r"<li>(.*?)</li>", _element(requests.get(url).text, "ul", "attention"), re.S)
    assert said[0].startswith("Source remote: cannot reach sftp://aleph.example.edu/print: Connection refused.")
    assert "Source remote: usm50.hold_req cannot be taken: Permission denied" in said

    clock.now += 3600  # the service published nothing for an hour, and its pid (this process) still runs
    assert "has not reported for 60 minute(s)" in _element(requests.get(url).text, "ul", "attention")


def test_before_the_gateway_ever_ran_the_page_says_so_and_creates_no_ledger(site, serve):
    url = serve().url
    page = requests.get(url).text
    assert "has never run with this configuration" in _element(page, "ul", "attention")
    assert len(_cells(page, "day")) == 14
    assert '<p id="none">Never seen' in requests.get(url + "find", params={"barcode": "X1"}).text
    assert requests.get(url + "file/1").status_code == 404
    assert not site.load().paths.database.exists()


def test_while_the_service_makes_its_ledger_the_page_says_it_has_nothing_yet(site, serve):
    """The service's first start: the file exists before its tables do (or before its version is written)."""
    database = site.load().paths.database
    database.parent.mkdir(parents=True, exist_ok=True)
    made = sqlite3.connect(database)
    made.execute("PRAGMA journal_mode=WAL")
    url = serve().url
    assert requests.get(url).status_code == 200, "no tables yet"
    made.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    made.commit()
    page = requests.get(url)
    assert page.status_code == 200 and len(_cells(page.text, "day")) == 14, "no version yet"
    assert requests.get(url + "find", params={"barcode": "X1"}).status_code == 200
    made.close()


def test_a_ledger_of_another_version_is_not_upgraded_by_the_page(site, serve, ledger):
    ledger.db.set_meta("schema_version", str(schema.SCHEMA_VERSION - 1))
    answer = requests.get(serve().url)
    assert answer.status_code == 500 and "start the service once" in answer.text
    assert ledger.db.get_meta("schema_version") == str(schema.SCHEMA_VERSION - 1)


def test_a_page_that_fails_answers_500_and_the_next_request_is_served(serve, ledger, monkeypatch):
    real, failed = data.today, []

    def fails_once(*args):
        if not failed:
            failed.append(True)
            raise RuntimeError("the disk said no")
        return real(*args)

    monkeypatch.setattr(data, "today", fails_once)
    url = serve().url
    first = requests.get(url)
    assert first.status_code == 500 and "This page could not be made: RuntimeError: the disk said no" in first.text
    assert {name: first.headers.get(name) for name in HEADERS} == HEADERS
    assert requests.get(url).status_code == 200
    assert 'caiasoft_gateway_web_requests_total{code="500",page="today"} 1.0' in requests.get(url + "metrics").text


# -- find without the backfill writes nothing -------------------------------------------


def test_a_new_install_has_nothing_to_backfill_and_the_page_does_not_say_it_has(site, serve, ledger):
    assert ledger.items.backfill_due() is not None  # every new ledger starts with the backfill due
    page = requests.get(serve().url + "find", params={"barcode": "X1"}).text
    assert '<p id="none">Never seen' in page and 'id="backfill"' not in page, "no folder from before the index"


def test_find_on_the_page_writes_nothing_and_says_older_files_are_not_indexed_yet(site, serve, clock):
    """A ledger from before the item index, with an older sidecar: the page never backfills (a read-only
    page takes no write lock); once `find` has run, the page finds the older file too."""
    config = site.load()
    database, archive = config.paths.database, config.paths.archive_dir
    database.parent.mkdir(parents=True)
    old = sqlite3.connect(database)
    old.executescript(schema.FILES_SCHEMA)
    old.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    old.commit()
    old.close()
    folder = archive / "2026" / "10" / "01"
    folder.mkdir(parents=True)
    (folder / "old.hold_req").write_text(record(42, prefix="3123400"))
    (folder / "old.hold_req.json").write_text(
        json.dumps(
            {
                "file": "old.hold_req",
                "outcome": "accepted",
                "times": {"claimed": "2026-10-01T09:00:01+00:00", "uploaded": "2026-10-01T09:00:02+00:00"},
                "caiasoft_answer": _answer(("31234000000042", "N", "Item Requested")),
            }
        )
    )
    ledger = Ledger(database, clock=clock)  # the service upgrades it (and would keep it open)
    try:
        assert ledger.items.backfill_due() is not None
        observer = sqlite3.connect(database)
        version = observer.execute("PRAGMA data_version").fetchone()[0]
        files = [database, database.with_name(database.name + "-wal")]
        before = [(path.stat().st_mtime_ns, path.stat().st_size) for path in files]
        url = serve().url
        page = requests.get(url + "find", params={"barcode": "31234000000042"}).text
        assert '<p id="none">Never seen' in page and 'id="backfill"' in page and "caiasoft-gateway find" in page
        for path in ("", "file/1", "metrics"):
            requests.get(url + path)
        assert observer.execute("PRAGMA data_version").fetchone()[0] == version
        assert [(path.stat().st_mtime_ns, path.stat().st_size) for path in files] == before
        assert ledger.items.backfill_due() is not None

        find.find(ledger, "31234000000042", [archive, config.paths.error_dir])  # `find` reads the sidecars once
        page = requests.get(url + "find", params={"barcode": "31234000000042"}).text
        [hit] = _cells(page, "hit")
        assert hit["answer"] == "requested" and hit["where"] == str(folder / "old.hold_req")
        assert 'id="backfill"' not in page
        observer.close()
    finally:
        ledger.close()


def test_find_reads_never_seen_and_pruned_by_retention_differently(serve, ledger, clock, tmp_path):
    archive = tmp_path / "archive"
    clock.now = NOW - 40 * 86400
    row_id = _through(
        ledger,
        clock,
        "gone.hold_req",
        [Record(number=1, line=1, barcodes=("31234000000077",), request_number="000004602")],
        Verdict.ACCEPTED,
        archive,
        _answer(("31234000000077", "N", "Item Requested")),
    )
    ledger.files.released(row_id)
    day = str(Path(ledger.files.get(row_id).final_path).parent)
    clock.now = NOW
    ledger.retired.begin_pruning(day, NOW - 86400)
    ledger.retired.compact(day, NOW - 86400)
    ledger.retired.end_pruning(day)
    url = serve().url
    [hit] = _cells(requests.get(url + "find", params={"barcode": "31234000000077"}).text, "hit")
    assert hit["where"].startswith("gone.hold_req: pruned by retention on 2026-11-27")
    assert hit["answer"] == "requested" and hit["request"] == "000004602"
    never = requests.get(url + "find", params={"barcode": "31234000000078"}).text
    assert "pruned" not in never and '<p id="none">Never seen: no request file' in never


def test_find_gives_each_ncip_update_of_the_status_feed_to_the_file_taken_before_it(
    site, simulator, serve, ledger, clock, tmp_path
):
    site.write(
        simulator.url,
        extra=ncip_table("http://127.0.0.1:9/ncip", site.root / "ncip.jsonl") + '\n[ncip.feed]\ncollection = "LAW"\n',
    )
    item = "31234000000088"
    clock.now = NOW - 2 * 86400
    first = _through(
        ledger, clock, "first.hold_req", [Record(number=1, line=1, barcodes=(item,))], Verdict.ACCEPTED, tmp_path
    )
    clock.now += 3600
    ledger.ncip.remember_feed("retrieved", item, "20261126")
    clock.now += 3600
    ledger.ncip.remember_feed("refiled", item, "20261126")
    clock.now = NOW - 3600
    second = _through(
        ledger, clock, "second.hold_req", [Record(number=1, line=1, barcodes=(item,))], Verdict.ACCEPTED, tmp_path
    )
    clock.now += 1800
    ledger.ncip.remember_feed("retrieved", item, "20261128")
    page = requests.get(serve().url + "find", params={"barcode": item}).text
    newest, oldest = _cells(page, "hit")
    assert f'href="/file/{second}"' in page and f'href="/file/{first}"' in page
    assert newest["ncip"] == "check-out (CaiaSoft retrieved it) 2026-11-28 11:30"
    assert oldest["ncip"] == (
        "check-out (CaiaSoft retrieved it) 2026-11-26 13:00 check-in (CaiaSoft refiled it) 2026-11-26 14:00"
    )


def test_an_empty_or_overlong_barcode_gives_the_form_again_with_a_message(serve, ledger):
    url = serve().url
    for typed, said in (
        ("", "Type or scan an item&#39;s barcode."),
        ("   ", "Type or scan an item&#39;s barcode."),
        ("9" * 65, "That is too long for a barcode (at most 64 characters)."),
    ):
        answer = requests.get(url + "find", params={"barcode": typed})
        assert answer.status_code == 200 and f'<p id="message">{said}</p>' in answer.text
        assert '<form id="find" action="/find" method="get"' in answer.text
    assert requests.get(url + "find?" + "&".join(f"x{n}=1" for n in range(50))).status_code == 200


# -- basic auth and the users file ------------------------------------------------------------


def test_with_a_users_file_every_path_needs_a_right_name_and_password(serve, ledger, tmp_path):
    users_file = tmp_path / "web-users"
    users.add_user(users_file, "desk", "correct horse")
    url = serve(users_file).url
    for path in ("", "find?barcode=1", "file/1", "style.css", "metrics", "nothing"):
        for auth in (None, ("desk", "wrong"), ("nobody", "correct horse"), ("desk", "")):
            answer = requests.get(url + path, auth=auth)
            assert answer.status_code == 401, (path, auth)
            assert answer.headers["WWW-Authenticate"] == 'Basic realm="caiasoft-gateway", charset="UTF-8"'
            assert {name: answer.headers.get(name) for name in HEADERS} == HEADERS
    assert requests.post(url, auth=("desk", "wrong")).status_code == 401
    assert requests.get(url, headers={"Authorization": "Basic !!!not-base64"}).status_code == 401
    assert requests.get(url, auth=("desk", "correct horse")).status_code == 200
    assert requests.get(url + "style.css", auth=("desk", "correct horse")).status_code == 200
    assert requests.post(url, auth=("desk", "correct horse")).status_code == 405
    users.add_user(users_file, "ärzt", "zwölf Boxkämpfer")  # added while it runs, a name beyond ASCII
    answer = requests.get(url, headers={"Authorization": "Basic " + _basic("ärzt", "zwölf Boxkämpfer")})
    assert answer.status_code == 200


def test_refused_logins_are_in_the_log_once_a_minute_with_how_many(serve, ledger, tmp_path):
    users_file = tmp_path / "web-users"
    users.add_user(users_file, "desk", "correct horse")
    url = serve(users_file).url
    logs.setup(tmp_path / "log", console=False)  # the events as the page's log has them, one JSON object a line

    def refused() -> list[dict]:
        lines = (tmp_path / "log" / logs.LOG_FILE_NAME).read_text().splitlines()
        return [event for event in map(json.loads, lines) if event["event"] == "web.login_refused"]

    try:
        assert requests.get(url).status_code == 401  # no login given: a browser's first ask, not logged
        for guess in ("guessed-1", "guessed-2", "guessed-3"):
            assert requests.get(url, auth=("desk", guess)).status_code == 401
        said = refused()
        assert [(event["user"], event["refused"]) for event in said] == [("desk", 1)], "once, then once a minute"
        assert "guessed-" not in (tmp_path / "log" / logs.LOG_FILE_NAME).read_text(), "never the password"
    finally:
        logs.setup(None, console=False)


def _basic(name: str, password: str) -> str:
    import base64

    return base64.b64encode(f"{name}:{password}".encode()).decode()


def test_the_users_file_is_private_and_refuses_names_that_would_break_it(tmp_path):
    path = tmp_path / "web-users"
    old = os.umask(0)
    try:
        users.add_user(path, "desk", "one")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users.add_user(path, "librarian", "two")
    users.add_user(path, "desk", "three")  # a new password: still one line for desk
    lines = path.read_text().splitlines()
    assert [line.partition(":")[0] for line in lines] == ["librarian", "desk"]
    assert all(
        re.fullmatch(r"[a-z]+:scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}", line) for line in lines
    )
    known = users.load_users(path)
    assert users.verify(known, "desk", "three") and not users.verify(known, "desk", "one")
    assert users.verify(known, "librarian", "two") and not users.verify(known, "nobody", "two")
    assert not users.verify({"desk": "scrypt$not$a$hash"}, "desk", "three")
    for name in ("", "a:b", "a b", "a\tb", "a\nb", "a\x1bb", "a\u202eb", "x" * 65):
        with pytest.raises(ValueError):
            users.add_user(path, name, "pw")
    with pytest.raises(ValueError):
        users.add_user(path, "desk", "")
    assert users.load_users(path).keys() == {"librarian", "desk"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web-users"]  # no temporary file left


# -- the commands -------------------------------------------------------------------------


def test_web_user_writes_the_users_file_and_says_which_key_is_missing(site, simulator, monkeypatch, capsys):
    users_file = site.root / "web-users"
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret words\n"))
    assert cli.main(["-c", str(site.config_file), "web-user", "desk", "--password-stdin"]) == 2
    assert "web.users_file is not set" in capsys.readouterr().err
    site.write(simulator.url, extra=f'\n[web]\nlisten = "127.0.0.1:9465"\nusers_file = "{users_file}"\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret words\n"))
    assert cli.main(["-c", str(site.config_file), "web-user", "desk", "--password-stdin"]) == 0
    assert "desk: added in" in capsys.readouterr().out
    assert users.verify(users.load_users(users_file), "desk", "s3cret words")
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert cli.main(["-c", str(site.config_file), "web-user", "desk", "--password-stdin"]) == 2
    assert cli.main(["-c", str(site.config_file), "web-user", "de:sk", "--password-stdin"]) == 2
    assert "cannot hold ':'" in capsys.readouterr().err
    assert users.verify(users.load_users(users_file), "desk", "s3cret words")


def test_the_web_command_serves_until_sigterm_and_needs_a_web_table(site, simulator, capsys):
    assert cli.main(["-c", str(site.config_file), "web"]) == 2
    assert "has no [web] table" in capsys.readouterr().err
    port = free_port()
    site.write(simulator.url, extra=f'\n[web]\nlisten = "127.0.0.1:{port}"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "web"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def answers() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
            except requests.ConnectionError:
                assert process.poll() is None, process.communicate()
                return False

        wait_for(answers, message="the staff page to answer")
        niceness = min(os.getpriority(os.PRIO_PROCESS, 0) + NICENESS, 19)
        assert os.getpriority(os.PRIO_PROCESS, process.pid) == niceness, "the page yields the CPU to uploads"
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, errors
    assert "web.started" in errors and f"http://127.0.0.1:{port}/" in errors and "web.stopped" in errors
    assert not site.load().paths.database.exists()  # the service never ran: the page made no ledger


def test_the_file_page_shows_only_files_in_the_gateways_own_folders(site, serve, ledger, clock, tmp_path):
    """A row changed by hand to name a file elsewhere, or a day folder made a link to another folder by ALEPH's
    user: the page shows nothing of what is there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("TOP-SECRET-CONTENT\n")
    outside = _through(ledger, clock, "secret.txt", [], Verdict.ACCEPTED, elsewhere.parent / "elsewhere-days")
    ledger.db.connection.execute(
        "UPDATE files SET final_path = ? WHERE id = ?", (str(elsewhere / "secret.txt"), outside)
    )
    archive = site.load().paths.archive_dir
    (archive / "2026" / "12").mkdir(parents=True)
    (archive / "2026" / "12" / "31").symlink_to(elsewhere)  # a day folder that leads elsewhere
    linked = _through(ledger, clock, "secret.txt", [], Verdict.ACCEPTED, tmp_path)
    ledger.db.connection.execute(
        "UPDATE files SET final_path = ? WHERE id = ?", (str(archive / "2026" / "12" / "31" / "secret.txt"), linked)
    )
    url = serve().url
    for row_id in (outside, linked):
        page = requests.get(url + f"file/{row_id}")
        assert page.status_code == 200 and "TOP-SECRET-CONTENT" not in page.text
    assert users.name_problem("#desk"), "a name the users file would read as a comment"
