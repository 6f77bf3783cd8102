"""NCIP transports against the simulator on loopback: HTTP body, query and form; raw sockets that close,
stay open or dribble; the total deadline and the size cap."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from test_ncip import settings

from gateway.ncip import messages
from gateway.ncip.answers import UnreadableAnswer
from gateway.ncip.journal import JournalEntry
from gateway.ncip.relay import NcipClient
from gateway.ncip.transport import NcipUnavailable, for_settings
from gateway.simulators.ncip import NcipSimulator

VARIANTS = [  # (simulator options, send_as)
    (dict(transport="http"), "body"),
    (dict(transport="http"), "query"),
    (dict(transport="http"), "form"),
    (dict(transport="tcp", socket_mode="close"), "body"),
    (dict(transport="tcp", socket_mode="open"), "body"),
    (dict(transport="tcp", socket_mode="dribble"), "body"),
    (dict(transport="tcp", socket_mode="open", preamble=True), "body"),
]
IDS = ["http-body", "http-query", "http-form", "tcp-close", "tcp-open", "tcp-dribble", "tcp-httpish"]


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("options,send_as", VARIANTS, ids=IDS)
def test_every_transport_in_both_versions(options, send_as, version):
    sim = NcipSimulator(problems={"GONE": "Unknown Item"}, track_loans=True, **options).start()
    client = NcipClient(
        settings(
            url=sim.url,
            version=version,
            send_as=send_as,
            timeout_seconds=5,
            done_problems_checkout=("Loan cannot be renewed (no change in due date)",),
            done_problems_checkin=("Item Not Checked Out",),
        )
    )
    try:
        verdicts = [
            client.send(entry)
            for entry in (
                JournalEntry("checkout", "B-1", stop="LAW", request_id="R-1"),
                JournalEntry("checkout", "B-1", stop="LAW"),  # repeated: ALEPH's "no change in due date"
                JournalEntry("checkin", "B-1"),
                JournalEntry("checkin", "B-1"),  # repeated: "Item Not Checked Out"
                JournalEntry("checkin", "GONE"),
            )
        ]
    finally:
        client.close()
        sim.stop()
    assert [answer.verdict for answer in verdicts] == ["done", "already", "done", "already", "refused"], [
        answer.reason for answer in verdicts
    ]
    assert {answer.version for answer in verdicts} == {version}, "answered in the version it was asked in"
    received = sim.received
    assert [(r.action, r.item, r.version) for r in received] == [("checkout", "B-1", version)] * 2 + [
        ("checkin", "B-1", version)
    ] * 2 + [("checkin", "GONE", version)]
    assert all(r.valid for r in received), [r.errors for r in received]
    assert received[0].user == "CAIA-LAW" and received[0].request_id == "R-1"
    assert {r.transport for r in received} == {"tcp" if options["transport"] == "tcp" else send_as}
    if options["transport"] == "http" and send_as == "body":
        assert received[0].content_type == "text/xml; charset=UTF-8"


def test_the_content_type_is_configurable():
    sim = NcipSimulator().start()
    client = NcipClient(settings(url=sim.url, content_type="application/xml"))
    try:
        assert client.send(JournalEntry("checkin", "1")).verdict == "done"
    finally:
        client.close()
        sim.stop()
    assert sim.received[0].content_type == "application/xml"


class Silent:
    """A raw-socket peer that misbehaves: accepts, reads, then writes what it is told, slowly or forever."""

    def __init__(self, write: bytes = b"", forever: bool = False, pause: float = 0.0, first: bytes = b""):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.write, self.forever, self.pause, self.first = write, forever, pause, first
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.server.getsockname()[1]}"

    def _serve(self) -> None:
        connection, _ = self.server.accept()
        with connection:
            connection.recv(65536)
            try:
                connection.sendall(self.first)
                while not self.stop.is_set():
                    connection.sendall(self.write)
                    if not self.forever:
                        break
                    self.stop.wait(self.pause)
                self.stop.wait(30)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.server.close()


def test_a_raw_socket_that_never_completes_its_answer_hits_the_total_deadline():
    peer = Silent(b"<NCIPMessage><CheckInItemResponse>", forever=True, pause=0.05)  # dribbles, never ends
    transport = for_settings(settings(url=peer.url, timeout_seconds=1, max_answer_bytes=10_000_000))
    started = time.monotonic()
    try:
        with pytest.raises(NcipUnavailable, match="within timeout_seconds"):
            transport.exchange(b"<NCIPMessage/>")
    finally:
        peer.close()
    assert time.monotonic() - started < 3, "one total deadline, not one per read"


def test_an_http_answer_that_dribbles_forever_hits_the_total_deadline():
    peer = Silent(
        b"x",
        forever=True,
        pause=0.05,
        first=b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 100000\r\n\r\n<NCIPMessage>",
    )
    transport = for_settings(settings(url=peer.url.replace("tcp:", "http:") + "/ncip", timeout_seconds=1))
    started = time.monotonic()
    try:
        with pytest.raises(NcipUnavailable, match="within timeout_seconds"):
            transport.exchange(b"<NCIPMessage/>")
    finally:
        peer.close()
    assert time.monotonic() - started < 3


def test_an_http_answer_above_the_cap_is_refused():
    peer = Silent(b"x" * 20_000, first=b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n")
    transport = for_settings(settings(url=peer.url.replace("tcp:", "http:") + "/", max_answer_bytes=4096))
    try:
        with pytest.raises(UnreadableAnswer, match="larger than max_answer_bytes"):
            transport.exchange(b"<NCIPMessage/>")
    finally:
        peer.close()


def test_a_raw_socket_answer_above_the_cap_is_refused():
    peer = Silent(b"<NCIPMessage>" + b"x" * 20_000, forever=True)
    transport = for_settings(settings(url=peer.url, timeout_seconds=5, max_answer_bytes=4096))
    try:
        with pytest.raises(UnreadableAnswer, match="larger than max_answer_bytes"):
            transport.exchange(b"<NCIPMessage/>")
    finally:
        peer.close()


def test_a_raw_socket_closed_without_an_answer_is_unavailable():
    sim = NcipSimulator(transport="tcp").start()
    sim.queue_faults("drop")
    transport = for_settings(settings(url=sim.url, version="1"))
    try:
        with pytest.raises(NcipUnavailable, match="without an answer"):
            transport.exchange(messages.build(settings(version="1"), JournalEntry("checkin", "1")))
    finally:
        sim.stop()


def test_nothing_listening_is_unavailable_not_a_crash():
    with socket.create_server(("127.0.0.1", 0)) as reserved:
        port = reserved.getsockname()[1]
    for url in (f"tcp://127.0.0.1:{port}", f"http://127.0.0.1:{port}/ncip"):
        with pytest.raises(NcipUnavailable, match="connect"):
            for_settings(settings(url=url, timeout_seconds=2)).exchange(b"<NCIPMessage/>")


def test_an_unreadable_answer_is_its_own_verdict_with_an_excerpt():
    sim = NcipSimulator().start()
    sim.queue_faults("garbage")
    client = NcipClient(settings(url=sim.url))
    try:
        answer = client.send(JournalEntry("checkin", "1"))
    finally:
        client.close()
        sim.stop()
    assert answer.verdict == "unreadable" and answer.excerpt == "<html>not NCIP</html>"


@pytest.mark.parametrize(
    "body",
    [
        b'<NCIPMessage version="http://www.niso.org/ncip/v1_0/imp1/dtd/ncip_v1_0.dtd"></NCIPMessage>',
        b'<NCIPMessage version="http://www.niso.org/ncip/v1_0/imp1/dtd/ncip_v1_0.dtd"><LookupItemResponse>'
        b"<ItemIdentifierValue>1</ItemIdentifierValue></LookupItemResponse></NCIPMessage>",
        b'<NCIPMessage xmlns="http://www.niso.org/2008/ncip"><CheckOutItemResponse/></NCIPMessage>',
    ],
    ids=["empty-message", "another-service", "the-other-action"],
)
def test_an_answer_without_the_entrys_response_is_not_taken_for_done(body):
    """No Problem is not proof enough: the answer must be the check-in's response, else it is retried."""
    peer = Silent(write=body)
    client = NcipClient(settings(url=peer.url, timeout_seconds=5))
    try:
        answer = client.send(JournalEntry("checkin", "1"))
    finally:
        client.close()
        peer.close()
    assert answer.verdict == "unreadable", answer
    assert "answer is not a CheckInItemResponse" in answer.reason and answer.excerpt == body.decode()


class OneRequestPerConnection:
    """An HTTP peer that answers one request on each connection, then closes it without saying so first
    (no Connection: close), as a server does with an idle kept-alive connection."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        self.request_lines: list[bytes] = []
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/ncip"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(65536)
                self.request_lines.append(data.split(b"\r\n", 1)[0])
                body = b"<NCIPMessage>%d</NCIPMessage>" % self.connections
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            self.closed.set()  # closed right after the answer (the client reads it from its buffer)

    def close(self) -> None:
        self.server.close()


def test_a_kept_alive_connection_the_server_closed_is_opened_again_before_sending():
    peer = OneRequestPerConnection()
    transport = for_settings(settings(url=peer.url, timeout_seconds=5))
    try:
        assert transport.exchange(b"<NCIPMessage/>") == b"<NCIPMessage>1</NCIPMessage>"
        assert peer.closed.wait(5), "the peer closed the first connection"
        assert transport.exchange(b"<NCIPMessage/>") == b"<NCIPMessage>2</NCIPMessage>", "no failed first try"
    finally:
        transport.close()
        peer.close()
    assert peer.connections == 2


def test_a_proxy_named_in_the_environment_is_honoured(monkeypatch):
    proxy = OneRequestPerConnection()
    monkeypatch.setenv("HTTP_PROXY", proxy.url.rsplit("/", 1)[0])
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    transport = for_settings(settings(url="http://ncip.example.invalid:8991/ncip", timeout_seconds=5))
    try:
        assert transport.exchange(b"<NCIPMessage/>") == b"<NCIPMessage>1</NCIPMessage>"
    finally:
        transport.close()
        proxy.close()
    assert proxy.request_lines == [b"POST http://ncip.example.invalid:8991/ncip HTTP/1.1"]
