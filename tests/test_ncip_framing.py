"""NCIP framed as ALEPH's clients frame it: an HTTP/1.0 request written on a raw socket to the NCIP port (the
default for tcp://), the bare message (the other choice), answers without an HTTP status line (on tcp:// and
http://), the form's content type and UniqueRequestId's agency. Every framing keeps the total deadline and the
answer cap; `check --ncip-item` (probe.lookup) works over each."""

from __future__ import annotations

import socket
import threading

import defusedxml.ElementTree as SafeET
import pytest
from test_ncip import settings

from gateway.ncip import messages, probe
from gateway.ncip.answers import UnreadableAnswer, complete
from gateway.ncip.journal import JournalEntry
from gateway.ncip.relay import NcipClient
from gateway.ncip.transport import NcipUnavailable, for_settings
from gateway.simulators.ncip import NcipSimulator
from gateway.simulators.ncip_answers import Outcome, write

FORM = "application/x-www-form-urlencoded"


class Peer:
    """A loopback server for one connection: records what the client wrote until it holds a whole NCIP message,
    writes answer, then closes, or keeps writing `more` (every 50 ms, for at most 30 s) and stays open."""

    def __init__(self, answer: bytes, more: bytes = b"", keep_open: bool = False):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.answer, self.more, self.keep_open = answer, more, keep_open
        self.received = b""
        self.done = threading.Event()
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.getsockname()[1])

    def url(self, scheme: str = "tcp", path: str = "") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        try:
            connection, _ = self.server.accept()
        except OSError:
            return
        with connection:
            data = b""
            try:
                connection.settimeout(10)
                while not complete(data):
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.received = data
                self.done.set()
                connection.sendall(self.answer)
                if self.more or self.keep_open:
                    for _ in range(600):
                        if self.stop.wait(0.05):
                            break
                        if self.more:
                            connection.sendall(self.more)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.server.close()


def checkin_answer(version: str) -> bytes:
    return write(version, "CheckInItem", "1", Outcome())


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("path,target", [("", "/"), ("/ncip", "/ncip")], ids=["no-path", "a-path"])
def test_tcp_writes_an_http_1_0_request_around_the_message_by_default(path, target, version):
    """As the most used open-source ALEPH client does: POST PATH HTTP/1.0, Content-Length, Content-Type (form),
    a blank line, then the XML itself, not URL-encoded."""
    peer = Peer(checkin_answer(version))
    client = NcipClient(settings(url=peer.url("tcp", path), version=version))
    try:
        answer = client.send(JournalEntry("checkin", "1"))
    finally:
        client.close()
        peer.close()
    assert answer.verdict == "done", answer.reason
    message = messages.build(settings(version=version), JournalEntry("checkin", "1"))
    assert (
        peer.received
        == (f"POST {target} HTTP/1.0\r\nContent-Length: {len(message)}\r\nContent-Type: {FORM}\r\n\r\n").encode()
        + message
    )


def test_bare_framing_writes_the_message_alone():
    peer = Peer(checkin_answer("1"))
    client = NcipClient(settings(url=peer.url(), version="1", framing="bare"))
    try:
        assert client.send(JournalEntry("checkin", "1")).verdict == "done"
    finally:
        client.close()
        peer.close()
    assert peer.received == messages.build(settings(version="1"), JournalEntry("checkin", "1"))


def test_the_http_1_0_framing_carries_the_configured_form_content_type():
    peer = Peer(checkin_answer("1"))
    client = NcipClient(settings(url=peer.url(), version="1", form_content_type="text/html; charset=UTF-8"))
    try:
        assert client.send(JournalEntry("checkin", "1")).verdict == "done"
    finally:
        client.close()
        peer.close()
    assert b"\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n<?xml" in peer.received


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize(
    "framing,status_line",
    [("http10", False), ("http10", True), ("bare", False), ("bare", True)],
    ids=["http10", "http10-status-line", "bare", "bare-status-line"],
)
def test_the_simulated_ncip_port_takes_both_framings(framing, status_line, version):
    sim = NcipSimulator(
        transport="tcp", track_loans=True, status_line=status_line, problems={"GONE": "Unknown Item"}
    ).start()
    client = NcipClient(
        settings(url=sim.url, version=version, framing=framing, done_problems_checkin=("Item Not Checked Out",))
    )
    try:
        verdicts = [
            client.send(entry).verdict
            for entry in (
                JournalEntry("checkout", "B-1", stop="LAW", request_id="R-1"),
                JournalEntry("checkin", "B-1"),
                JournalEntry("checkin", "B-1"),
                JournalEntry("checkin", "GONE"),
            )
        ]
    finally:
        client.close()
        sim.stop()
    assert verdicts == ["done", "done", "already", "refused"]
    received = sim.received
    assert all(r.valid for r in received), [r.errors for r in received]  # version 2: the official schema
    assert {(r.framing, r.version) for r in received} == {(framing, version)}
    assert received[0].user == "CAIA-LAW" and received[0].request_id == "R-1"
    if framing == "http10":
        assert received[0].head.startswith(b"POST / HTTP/1.0\r\n") and received[0].content_type == FORM
        assert received[0].body.startswith(b"<?xml"), "the message travels unencoded"
    else:
        assert received[0].head == b""


@pytest.mark.parametrize("version", ["1", "2"])
def test_an_http_answer_without_a_status_line_is_read_not_taken_for_a_broken_connection(version):
    """ALEPH's NCIP port can answer an HTTP request with the NCIP XML alone, then close."""
    sim = NcipSimulator(status_line=False, track_loans=True, problems={"GONE": "Unknown Item"}).start()
    client = NcipClient(
        settings(
            url=sim.url,
            version=version,
            done_problems_checkin=("Item Not Checked Out",),
            done_problems_checkout=("Loan cannot be renewed",),
        )
    )
    try:
        answers = [
            client.send(entry)
            for entry in (
                JournalEntry("checkout", "B-1"),
                JournalEntry("checkout", "B-1"),
                JournalEntry("checkin", "B-1"),
                JournalEntry("checkin", "B-1"),
                JournalEntry("checkin", "GONE"),
            )
        ]
    finally:
        client.close()
        sim.stop()
    assert [answer.verdict for answer in answers] == ["done", "already", "done", "already", "refused"], [
        answer.reason for answer in answers
    ]
    assert len(sim.received) == 5 and all(r.valid for r in sim.received)


def checkin_through(peer: Peer, url: str, **options: object):
    """One check-in sent by the relay's client to peer; the Answer."""
    client = NcipClient(settings(url=url, version="1", **options))
    try:
        return client.send(JournalEntry("checkin", "1"))
    finally:
        client.close()
        peer.close()


@pytest.mark.parametrize(
    "head", [b"", b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n"], ids=["no-status-line", "status-line"]
)
def test_blank_lines_before_an_http_answer_are_skipped(head):
    peer = Peer(b"\r\n\r\n\n" + head + checkin_answer("1"), keep_open=not head)  # bare: the connection stays open
    answer = checkin_through(peer, peer.url("http", "/ncip"))
    assert answer.verdict == "done", answer.reason
    assert peer.received.startswith(b"POST /ncip HTTP/1.1\r\n")


@pytest.mark.parametrize(
    "scheme,head",
    [
        ("tcp", b"ALEPH NCIP server 5991 ready\r\n"),  # a banner: dropped, as ALEPH's clients keep <NCIPMessage on
        ("http", b"ALEPH NCIP server 5991 ready\r\n"),
        ("http", b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n"),  # no Content-Length: ends with its message
    ],
    ids=["tcp-banner", "http-banner", "http-no-length"],
)
def test_answers_from_a_server_that_stays_open_end_with_their_ncip_message(scheme, head):
    peer = Peer(head + checkin_answer("1"), keep_open=True)
    answer = checkin_through(peer, peer.url(scheme, "/ncip"), timeout_seconds=5)
    assert answer.verdict == "done", answer.reason


def test_an_unreadable_answer_without_a_status_line_is_unreadable_with_its_excerpt():
    peer = Peer(b"Server busy, try later\n")
    answer = checkin_through(peer, peer.url("http", "/"))
    assert answer.verdict == "unreadable" and answer.excerpt == "Server busy, try later\n"


WHERE = [("tcp", {}), ("tcp", {"framing": "bare"}), ("http", {})]
WHERE_IDS = ["tcp-http10", "tcp-bare", "http-no-status-line"]


@pytest.mark.parametrize("scheme,options", WHERE, ids=WHERE_IDS)
def test_every_framing_keeps_the_total_deadline(scheme, options):
    peer = Peer(b"<NCIPMessage><CheckInItemResponse>", more=b" ")  # starts an answer and never ends it
    transport = for_settings(
        settings(url=peer.url(scheme, "/"), timeout_seconds=1, max_answer_bytes=10_000_000, **options)
    )
    try:
        with pytest.raises(NcipUnavailable, match="within timeout_seconds"):
            transport.exchange(b"<NCIPMessage></NCIPMessage>")
    finally:
        transport.close()
        peer.close()


@pytest.mark.parametrize("scheme,options", WHERE, ids=WHERE_IDS)
def test_every_framing_keeps_the_answer_cap(scheme, options):
    peer = Peer(b"<NCIPMessage>" + b"x" * 20_000, keep_open=True)
    transport = for_settings(settings(url=peer.url(scheme, "/"), timeout_seconds=5, max_answer_bytes=4096, **options))
    try:
        with pytest.raises(UnreadableAnswer, match="larger than max_answer_bytes") as caught:
            transport.exchange(b"<NCIPMessage></NCIPMessage>")
    finally:
        transport.close()
        peer.close()
    assert caught.value.excerpt.startswith("<NCIPMessage>xxx")


def test_an_http_error_status_without_an_ncip_message_on_the_socket_is_unavailable_and_retried():
    peer = Peer(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nbusy\r\n")
    client = NcipClient(settings(url=peer.url(), version="1"))
    try:
        answer = client.send(JournalEntry("checkin", "1"))
    finally:
        client.close()
        peer.close()
    assert answer.verdict == "temporary" and answer.http_status == 503, answer
    assert "answered HTTP 503" in answer.reason


def test_an_ncip_problem_behind_an_http_error_status_on_the_socket_is_read():
    problem = write("1", "CheckInItem", "1", Outcome("Unknown Item"))
    peer = Peer(b"HTTP/1.0 500 Internal Server Error\r\n\r\n" + problem)
    client = NcipClient(settings(url=peer.url(), version="1"))
    try:
        answer = client.send(JournalEntry("checkin", "1"))
    finally:
        client.close()
        peer.close()
    assert answer.verdict == "refused" and "Unknown Item" in answer.reason


def test_the_form_content_type_is_configurable():
    """One ALEPH client labels the URL-encoded message text/html; charset=UTF-8."""
    sim = NcipSimulator().start()
    client = NcipClient(settings(url=sim.url, send_as="form", form_content_type="text/html; charset=UTF-8"))
    try:
        assert client.send(JournalEntry("checkin", "1")).verdict == "done"
    finally:
        client.close()
        sim.stop()
    assert sim.received[0].transport == "form" and sim.received[0].content_type == "text/html; charset=UTF-8"


def _request_agency(body: bytes) -> str | None:
    root = SafeET.fromstring(body, forbid_dtd=False)
    return root.findtext("CheckOutItem/UniqueRequestId/UniqueAgencyId/Value")


def test_unique_request_id_carries_the_requesting_agency_by_default_and_the_other_when_asked():
    entry = JournalEntry("checkout", "31234001234567", request_id="000004521")
    assert _request_agency(messages.build(settings(version="1"), entry)) == "CAIA"  # from_agency
    assert _request_agency(messages.build(settings(version="1", request_agency="to"), entry)) == "ALEPH"
    root = SafeET.fromstring(messages.build(settings(version="1"), entry), forbid_dtd=False)
    assert root.findtext("CheckOutItem/UniqueItemId/UniqueAgencyId/Value") == "ALEPH", "items stay ALEPH's"


LOOKUPS = [
    (dict(transport="http"), {}),
    (dict(transport="http", status_line=False), {}),
    (dict(transport="tcp"), {}),
    (dict(transport="tcp", status_line=True), {}),
    (dict(transport="tcp"), {"framing": "bare"}),
]
LOOKUP_IDS = ["http", "http-no-status-line", "tcp-http10", "tcp-http10-status-line", "tcp-bare"]


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("options,overrides", LOOKUPS, ids=LOOKUP_IDS)
def test_check_ncip_item_works_over_every_framing(options, overrides, version):
    sim = NcipSimulator(**options).start()
    try:
        findings = probe.lookup(settings(url=sim.url, version=version, **overrides), "31234001234567")
    finally:
        sim.stop()
    assert [finding.mark for finding in findings] == ["ok", "ok"], findings
    assert "ALEPH knows the item" in findings[1].detail
    assert [(r.action, r.item, r.valid) for r in sim.received] == [("lookup", "31234001234567", True)]
    if options["transport"] == "tcp":  # the finding says how the message travelled
        assert ("the message alone" if overrides else "framed as HTTP/1.0") in findings[1].what


def _config(tmp_path, url: str, **more: object):
    from conftest import ncip_table
    from test_config import minimal, write

    return write(tmp_path, minimal(tmp_path) + ncip_table(url, tmp_path / "ncip.jsonl", **more))


def test_config_defaults_to_http_1_0_framing_and_the_requesting_agency(tmp_path):
    from gateway.config.loader import load

    ncip = load(_config(tmp_path, "tcp://aleph.example.edu:5991/ncip"), environ={}).ncip
    assert ncip is not None
    assert (ncip.framing, ncip.form_content_type, ncip.request_agency) == ("http10", FORM, "from")
    assert ncip.url == "tcp://aleph.example.edu:5991/ncip"


@pytest.mark.parametrize(
    "url,more,key,words",
    [
        ("tcp://aleph.example.edu:5991/ncip", {"framing": "bare"}, "ncip.url", "a PATH has no use"),
        ("tcp://aleph.example.edu:5991", {"framing": "http11"}, "ncip.framing", "http10"),
        ("tcp://aleph.example.edu:5991/a path", {}, "ncip.url", "no spaces"),
        ("tcp://aleph.example.edu:5991/?x=1", {}, "ncip.url", "tcp://HOST:PORT/PATH"),
        (
            "tcp://aleph.example.edu:5991",
            {"form_content_type": "text/xml\r\nX-Injected: 1"},
            "ncip.form_content_type",
            "on one line",
        ),
        ("http://aleph.example.edu:8991/ncip", {"content_type": ""}, "ncip.content_type", "Content-Type"),
        ("tcp://aleph.example.edu:5991", {"request_agency": "ALEPH"}, "ncip.request_agency", "from"),
    ],
    ids=[
        "path-with-bare",
        "unknown-framing",
        "space-in-path",
        "query",
        "header-injection",
        "empty-content-type",
        "request-agency",
    ],
)
def test_config_refuses_framing_values_that_cannot_work(tmp_path, url, more, key, words):
    from test_config import problems_of

    problems = [problem for problem in problems_of(_config(tmp_path, url, **more)) if key in problem]
    assert problems and words in problems[0], problems_of(_config(tmp_path, url, **more))


def test_an_answer_without_a_status_line_through_a_proxy_says_how_to_reach_the_port(monkeypatch):
    """Through requests (a proxy, or https) an answer with no status line cannot be read: the reason says why
    and what to set, instead of a bare "connection failed"."""
    peer = Peer(checkin_answer("1"))
    monkeypatch.setenv("HTTP_PROXY", peer.url("http"))
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    transport = for_settings(settings(url="http://ncip.example.invalid:8991/ncip", timeout_seconds=5))
    try:
        with pytest.raises(NcipUnavailable, match="without an HTTP status line.*no proxy, or with tcp://"):
            transport.exchange(b"<NCIPMessage></NCIPMessage>")
    finally:
        transport.close()
        peer.close()


@pytest.mark.parametrize(
    "arguments,overrides",
    [
        (["--no-status-line"], {}),
        (["--tcp"], {}),
        (["--tcp", "open", "--status-line"], {"framing": "bare"}),
    ],
    ids=["http-no-status-line", "tcp-http10", "tcp-bare-status-line"],
)
def test_simulate_ncip_serves_each_framing_for_a_dry_run(arguments, overrides):
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate", "ncip", "--port", "0", *arguments],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split(" on ")[1].split(",")[0].strip()
        findings = probe.lookup(settings(url=url, version="1", **overrides), "31234001234567")
    finally:
        process.terminate()
        process.wait(10)
    assert [finding.mark for finding in findings] == ["ok", "ok"], findings
