"""An NCIP responder on loopback, for dry runs and tests: ALEPH's NCIP server as sites reach it.

Transports: "http" serves POST with the message as the body, POST with the
message URL-encoded (form), and GET URL?MESSAGE (ALEPH's web server style);
"tcp" is a raw socket like ALEPH's NCIP port. It takes the message alone
(framing "bare") or wrapped in an HTTP/1.0 request written on the socket
("POST PATH HTTP/1.0", Content-Length, Content-Type, a blank line, the message
unencoded: framing "http10", as the most used open-source ALEPH client writes
it). socket_mode says what it does after writing its answer: "close" (closes
the connection), "open" (keeps it open), "dribble" (writes the answer a few
bytes at a time, then keeps it open). status_line says whether an answer starts
with an HTTP status line and headers: by default yes over "http", no over
"tcp" (preamble=True adds one there); status_line=False over "http" answers
the NCIP XML alone and closes, as ALEPH's NCIP port can.

It answers in the version it was asked in (v1 the way ALEPH writes it: DOCTYPE,
nested ProcessingError, ALEPH's wording), validates every version 2 message
against the official schema (ncip_v2_02.xsd) where the xmlschema package is
installed (the `simulators` extra), and answers CheckOutItem,
CheckInItem and LookupItem: the item, or a Problem. Problems per item:
problems={"BARCODE": "Unknown Item"}. track_loans=True answers like ALEPH for a
repeated check-out ("Loan cannot be renewed (no change in due date)") and a
check-in of an item not on loan ("Item Not Checked Out", "Item not on loan.").
Scripted faults for the next requests: queue_faults("503", "temporary",
"drop", "garbage").
"""

from __future__ import annotations

import codecs
import importlib.util
import re
import socket
import socketserver
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit

import defusedxml.ElementTree as SafeET

from gateway.ncip.answers import complete
from gateway.ncip.messages import NS
from gateway.simulators import LoopbackServer
from gateway.simulators.ncip_answers import ALREADY_ON_LOAN, Outcome, write

if TYPE_CHECKING:
    import xmlschema

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "ncip" / "ncip_v2_02.xsd"
SERVICES = {"CheckOutItem": "checkout", "CheckInItem": "checkin", "LookupItem": "lookup"}
HTTPISH_PREAMBLE = b"\r\nHTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n"
DRIBBLE_BYTES = 16
DRIBBLE_PAUSE = 0.002
MAX_REQUEST_BYTES = 1024 * 1024
_schema: xmlschema.XMLSchema | None = None
_schema_lock = threading.Lock()


def can_validate() -> bool:
    """True where the xmlschema package is installed (the `simulators` extra; the test extra has it)."""
    return importlib.util.find_spec("xmlschema") is not None


def schema() -> xmlschema.XMLSchema:
    """The NCIP 2.02 schema (loaded once; needs the xmlschema package)."""
    global _schema
    with _schema_lock:
        if _schema is None:
            import xmlschema

            _schema = xmlschema.XMLSchema(str(SCHEMA_FILE))
        return _schema


def schema_errors(body: bytes) -> list[str]:
    """Why an NCIP 2 message does not validate (empty if it does)."""
    return [str(error.reason or error) for error in schema().iter_errors(body.decode("utf-8"))]


@dataclass
class Received:
    action: str  # checkout | checkin | lookup
    item: str
    user: str | None
    request_id: str | None
    profile: str | None
    from_agency: str | None
    to_agency: str | None
    version: str
    valid: bool
    errors: list[str] = field(default_factory=list)
    body: bytes = b""
    transport: str = ""  # body | form | query | tcp
    content_type: str = ""
    framing: str = ""  # tcp: http10 | bare
    head: bytes = b""  # tcp with framing http10: the request line and headers, as received


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, *path: str) -> str | None:
    """Text at a path of local names below root (namespace or not; v1 Value children read too)."""
    elements = [root]
    for name in path:
        elements = [child for element in elements for child in element.iter() if _local(child.tag) == name]
        if not elements:
            return None
    texts = [
        (_local(child.tag), child.text.strip()) for child in elements[0].iter() if child.text and child.text.strip()
    ]
    values = [text for name, text in texts if name == "Value"]  # v1: Scheme/Value pairs
    return values[-1] if values else texts[0][1] if texts else None


class NcipSimulator(LoopbackServer):
    """Faults for queue_faults(): '503' (any HTTP status; on a raw socket: closed without an answer),
    'temporary' (a Temporary Processing Failure Problem), 'garbage' (not NCIP), 'drop' (connection
    closed without an answer)."""

    kind = "ncip-simulator"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        problems: dict[str, str] | None = None,
        validate: bool | None = None,
        delay: float = 0.0,
        transport: str = "http",
        socket_mode: str = "close",
        preamble: bool = False,
        track_loans: bool = False,
        answer_version: str | None = None,
        status_line: bool | None = None,
    ):
        """validate: True checks every NCIP 2 message against the schema (needs xmlschema), False never,
        None where xmlschema is installed. status_line: None answers with one over http, without over tcp
        (unless preamble)."""
        if validate and not can_validate():
            raise RuntimeError(
                "checking NCIP messages against the schema needs the xmlschema package: "
                "pip install 'aleph-caiasoft-gateway[simulators]'"
            )
        if transport == "tcp":
            super().__init__(host, port, _socket_handler_for(self), _TcpServer)
        else:
            super().__init__(host, port, _http_handler_for(self))
        self.transport = transport
        self.socket_mode = socket_mode
        self.status_line = (transport != "tcp" or preamble) if status_line is None else status_line
        self.problems = dict(problems or {})
        self.validate = can_validate() if validate is None else validate
        self.delay = delay
        self.track_loans = track_loans
        self.answer_version = answer_version  # None: the version asked in; "1"/"2": a server set up otherwise
        self.loans: dict[str, str] = {}  # item -> user, with track_loans

    @property
    def url(self) -> str:
        if self.transport == "tcp":
            host, port = self._server.server_address[:2]
            return f"tcp://{host if isinstance(host, str) else host.decode()}:{port}"
        return self.address + "/"

    def parse(
        self, body: bytes, transport: str = "", content_type: str = "", framing: str = "", head: bytes = b""
    ) -> Received:
        root = SafeET.fromstring(body, forbid_dtd=False)
        version = "2" if root.tag.startswith(f"{{{NS}}}") else "1"
        service = next((_local(child.tag) for child in root if _local(child.tag) in SERVICES), "CheckInItem")
        errors = schema_errors(body) if version == "2" and self.validate else []
        return Received(
            action=SERVICES[service],
            item=_find(root, "ItemIdentifierValue") or "",
            version=version,
            user=_find(root, "UserIdentifierValue"),
            request_id=_find(root, "RequestIdentifierValue"),
            profile=_find(root, "ApplicationProfileType"),
            from_agency=_find(root, "FromAgencyId"),
            to_agency=_find(root, "ToAgencyId"),
            valid=not errors,
            errors=errors,
            body=body,
            transport=transport,
            content_type=content_type,
            framing=framing,
            head=head,
        )

    def outcome(self, message: Received, fault: str | None) -> Outcome:
        """What ALEPH would say to this message (called once per recorded message)."""
        if not message.valid:
            return Outcome("Invalid Message")
        if fault == "temporary":
            return Outcome("Temporary Processing Failure")
        if message.item in self.problems:
            return Outcome(self.problems[message.item])
        with self._changed:
            on_loan = self.loans.get(message.item)
            if message.action == "lookup":
                return Outcome(
                    title=f"Simulated title of {message.item}",
                    circulation_status="On Loan" if on_loan else "Available On Shelf",
                )
            if self.track_loans and message.action == "checkout" and on_loan:
                return Outcome("User Ineligible To Check Out This Item", ALREADY_ON_LOAN)
            if self.track_loans and message.action == "checkin" and not on_loan:
                return Outcome("Item Not Checked Out")
            if message.action == "checkout":
                self.loans[message.item] = message.user or ""
            else:
                self.loans.pop(message.item, None)
        return Outcome(user=message.user or "")

    def answer(self, message: Received, fault: str | None = None) -> bytes:
        """Record the message and return the answer, in the version it was asked in."""
        self.record(message)
        service = {value: key for key, value in SERVICES.items()}[message.action]
        return write(self.answer_version or message.version, service, message.item, self.outcome(message, fault))


def _http_handler_for(sim: NcipSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "text/xml; charset=UTF-8") -> None:
            if not sim.status_line and status == 200:  # the XML alone, then close: what ALEPH's NCIP port may do
                self.close_connection = True
                self.wfile.write(body)
                return
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            query = urlsplit(self.path).query
            self._handle(unquote_to_bytes(query), "query", "")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            content_type = self.headers.get("Content-Type", "")
            if not body.lstrip().startswith((b"<", codecs.BOM_UTF8)):  # URL-encoded, whatever its label says
                self._handle(unquote_to_bytes(body.decode("ascii", "replace")), "form", content_type)
            else:
                self._handle(body, "body", content_type)

        def _handle(self, body: bytes, transport: str, content_type: str) -> None:
            try:
                message = sim.parse(body, transport, content_type)
            except (ET.ParseError, ValueError) as error:
                self._send(400, f"not XML: {error}".encode(), "text/plain")
                return
            fault = sim.next_fault()
            if sim.delay:
                time.sleep(sim.delay)
            if fault == "drop":
                sim.record(message)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault and fault.isdigit():
                self._send(int(fault), b"simulated failure", "text/plain")
                return
            if fault == "garbage":
                self._send(200, b"<html>not NCIP</html>", "text/html")
                return
            self._send(200, sim.answer(message, fault))

    return Handler


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def _socket_handler_for(sim: NcipSimulator) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            connection: socket.socket = self.request
            connection.settimeout(10)
            data = bytearray()
            try:
                while not _whole_request(data) and len(data) < MAX_REQUEST_BYTES:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, body = _split_request(bytes(data))
                content_type = _header(head, "Content-Type")
                message = sim.parse(body, "tcp", content_type, "http10" if head else "bare", head)
            except (OSError, ET.ParseError, ValueError):
                return
            fault = sim.next_fault()
            if sim.delay:
                time.sleep(sim.delay)
            if fault == "drop" or (fault and fault.isdigit()):
                if fault == "drop":
                    sim.record(message)
                return  # closed without an answer
            answer = b"<html>not NCIP</html>" if fault == "garbage" else sim.answer(message, fault)
            if sim.status_line:
                answer = HTTPISH_PREAMBLE + answer
            try:
                if sim.socket_mode == "dribble":
                    for start in range(0, len(answer), DRIBBLE_BYTES):
                        connection.sendall(answer[start : start + DRIBBLE_BYTES])
                        time.sleep(DRIBBLE_PAUSE)
                else:
                    connection.sendall(answer)
                if sim.socket_mode in ("open", "dribble"):
                    connection.settimeout(None)
                    while not sim._stopping.is_set():  # until the client closes
                        connection.settimeout(0.2)
                        try:
                            if not connection.recv(1024):
                                return
                        except TimeoutError:
                            continue
            except OSError:
                return

    return Handler


_REQUEST_LINE = re.compile(rb"\A\s*(POST|GET) +(\S+) +HTTP/1\.[01]\r?\n")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def _whole_request(data: bytes | bytearray) -> bool:
    """True once data holds a whole request: a bare NCIP message, or an HTTP request's head and its body."""
    if not _REQUEST_LINE.match(data):
        return complete(data)
    end = _HEAD_END.search(data)
    if end is None:
        return False
    length = _header(bytes(data[: end.start()]), "Content-Length")
    return len(data) - end.end() >= int(length) if length.isdigit() else complete(data)


def _split_request(data: bytes) -> tuple[bytes, bytes]:
    """(head, message) of what a client wrote: head is empty for a bare message. A body URL-encoded (it does not
    start with '<') is decoded; the most used ALEPH client sends it unencoded, labelled as a form."""
    if not _REQUEST_LINE.match(data):
        return b"", data
    end = _HEAD_END.search(data)
    if end is None:
        raise ValueError("an HTTP request without the blank line that ends its head")
    head, body = data[: end.start()].lstrip(), data[end.end() :]
    length = _header(head, "Content-Length")
    if length.isdigit():
        body = body[: int(length)]
    if not body.lstrip().startswith((b"<", codecs.BOM_UTF8)):
        body = unquote_to_bytes(body.decode("ascii", "replace").replace("+", " "))
    return head, body


def _header(head: bytes, name: str) -> str:
    """The value of one header in an HTTP request's head ('' if absent)."""
    for line in head.decode("latin-1").splitlines()[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return ""
