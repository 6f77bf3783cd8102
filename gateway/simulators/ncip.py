"""An NCIP responder on loopback, for dry runs and tests.

It validates every NCIP 2 message it receives against the official schema
(ncip_v2_02.xsd), where the xmlschema package is installed (the `simulators`
extra), and answers CheckOutItem / CheckInItem like ALEPH: a
response with the item, or a Problem. Problems per item: problems={"BARCODE":
"Unknown Item"}. Scripted faults for the next requests: queue_faults("503",
"temporary", "drop", "garbage").
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import defusedxml.ElementTree as SafeET

from gateway.ncip.messages import NS, SCHEMA_URL, element
from gateway.simulators import LoopbackServer

if TYPE_CHECKING:
    import xmlschema

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "ncip" / "ncip_v2_02.xsd"
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
    action: str
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


def _find(root: ET.Element, *path: str) -> str | None:
    """Text at a path of local names below root (namespace or not; v1 Value children read too)."""
    elements = [root]
    for name in path:
        elements = [child for element in elements for child in element.iter() if child.tag.rsplit("}", 1)[-1] == name]
        if not elements:
            return None
    texts = [(child.tag.rsplit("}", 1)[-1], child.text.strip()) for child in elements[0].iter()
             if child.text and child.text.strip()]
    values = [text for name, text in texts if name == "Value"]  # v1: Scheme/Value pairs
    return values[-1] if values else texts[0][1] if texts else None


class NcipSimulator(LoopbackServer):
    """Faults for queue_faults(): '503' (any HTTP status), 'temporary' (a Temporary Processing Failure
    Problem), 'garbage' (not NCIP), 'drop' (connection closed without an answer)."""

    kind = "ncip-simulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, problems: dict[str, str] | None = None,
                 validate: bool | None = None, delay: float = 0.0):
        """validate: True checks every NCIP 2 message against the schema (needs xmlschema), False never,
        None where xmlschema is installed."""
        if validate and not can_validate():
            raise RuntimeError("checking NCIP messages against the schema needs the xmlschema package: "
                               "pip install 'aleph-caiasoft-gateway[simulators]'")
        super().__init__(host, port, _handler_for(self))
        self.problems = dict(problems or {})
        self.validate = can_validate() if validate is None else validate
        self.delay = delay

    @property
    def url(self) -> str:
        return self.address + "/"

    def parse(self, body: bytes) -> Received:
        root = SafeET.fromstring(body, forbid_dtd=False)
        version = "2" if root.tag.startswith(f"{{{NS}}}") else "1"
        action = "checkout" if any(e.tag.endswith("CheckOutItem") for e in root.iter()) else "checkin"
        errors = schema_errors(body) if version == "2" and self.validate else []
        return Received(
            action=action, item=_find(root, "ItemIdentifierValue") or "", version=version,
            user=_find(root, "UserIdentifierValue"), request_id=_find(root, "RequestIdentifierValue"),
            profile=_find(root, "ApplicationProfileType"), from_agency=_find(root, "FromAgencyId"),
            to_agency=_find(root, "ToAgencyId"), valid=not errors, errors=errors, body=body)

    def answer(self, message: Received, problem: str | None) -> bytes:
        """A v2 response: the item (and user, due date) or a Problem."""
        sub = element
        root = ET.Element(f"{{{NS}}}NCIPMessage", {f"{{{NS}}}version": SCHEMA_URL})
        response = sub(root, "CheckOutItemResponse" if message.action == "checkout" else "CheckInItemResponse")
        if problem:
            found = sub(response, "Problem")
            sub(found, "ProblemType", problem)
            sub(found, "ProblemDetail", f"simulated: {problem}")
            sub(found, "ProblemElement", "ItemIdentifierValue")
            sub(found, "ProblemValue", message.item)
        else:
            sub(sub(response, "ItemId"), "ItemIdentifierValue", message.item)
            if message.action == "checkout":
                sub(sub(response, "UserId"), "UserIdentifierValue", message.user or "")
                sub(response, "DateDue", "2099-12-31T23:59:59")
        answer: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return answer


def _handler_for(sim: NcipSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/xml") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                message = sim.parse(body)
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
            sim.record(message)
            problem: str | None
            if not message.valid:
                problem = "Invalid Message"
            elif fault == "temporary":
                problem = "Temporary Processing Failure"
            else:
                problem = sim.problems.get(message.item)
            self._send(200, sim.answer(message, problem))

    return Handler
