"""A CaiaSoft API simulator: a real HTTP server on loopback, for demo, tests and site dry runs.

It speaks the part of CaiaSoft's API the gateway uses: X-API-Key checked on every call,
JSON answers with counts as strings, POST /api/requestfile/v1 taking a
multipart upload, GET /api/circstoplist/v1/ACTIVE. A file is "registered"
when it is an ALEPH print file (one or many <printout> records, each opened by
"## - ..." lines) or a barcode list (plain, or cir-12 <z30-barcode> lines);
anything else gets success: false, as CaiaSoft answers for an unregistered
format. Every upload's bytes are kept in .received, so tests can check that a
file arrived unaltered.

Several keys, as a consortium's CaiaSoft connections ([caiasoft.NAME]) have one each:
keys={"law": "KEY-2", ...} accepts each named key besides key (the "default" collection's;
key=None accepts the named keys alone) and records under which name each upload came
(.received[i].collection, received_by(name)); any other key gets 401, as with one key.
The retrieved/refiled lists and retrievalinfo answer per collection as they always did:
the collection is in their URL, and status_lists and retrievals are keyed by it, whichever
accepted key asks; itemstatus answers from every upload. From the command line:
`caiasoft-gateway simulate caiasoft --key KEY1 --key law=KEY2` (a --key without NAME=, or
default=KEY, is the default collection's). The simulator never logs a key; its banner
prints named keys shortened (a lone key is printed whole, as before: that is how one
learns the key it made up).

Faults are scripted per request: queue_faults("503", "429:2", "drop", "slow:5", "hang").
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET

from gateway.simulators import LoopbackServer

DEFAULT_KEY = "sim-key-0000"
DEFAULT_COLLECTION = "default"  # the collection of the simulator's key (key=), as [caiasoft] is the gateway's
BARCODE = re.compile(r"^[A-Za-z0-9-]{4,32}$")
STOPS = [
    {"stop_code": "MAIN", "description": "Main Library circulation desk"},
    {"stop_code": "LAW", "description": "Law Library"},
]


@dataclass
class Received:
    """One upload as the simulator saw it (the API key is never kept); answered is None after a fault."""

    name: str | None
    field: str
    data: bytes
    form: dict[str, str]
    answered: int | None
    at: float = dataclasses.field(default_factory=time.time)
    collection: str = DEFAULT_COLLECTION  # the name of the key it came with


class CaiaSoftSimulator(LoopbackServer):
    """Faults for queue_faults(): '500'/'503' (status), '429:S' (Retry-After S), 'drop', 'slow:S', 'hang'."""

    kind = "caiasoft-simulator"

    def __init__(
        self,
        key: str | None = DEFAULT_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        upload_field: str = "file",
        deny: dict[str, str] | None = None,
        delay: float = 0.0,
        receipts: Path | None = None,
        keys: dict[str, str] | None = None,
    ):
        super().__init__(host, port, _handler_for(self))
        self.key = key  # the default collection's key; None: only the named keys are accepted
        self.keys = dict(keys or {})  # collection name -> its key, besides key (tests may change one: rotated)
        self.upload_field = upload_field
        self.deny = dict(deny or {})
        self.delay = delay
        self.status_lists: dict[tuple[str, str, str], list[str]] = {}  # (retrieved|refiled, YYYYMMDD, collection)
        # per-item retrieval facts, as retrievalinfo answers them: (YYYYMMDD, collection) -> [{"barcode",
        # "request_id", "retrieval date" (MM-DD-YYYY), "retrieval type", ...}]; what a test leaves out is filled
        # in as CaiaSoft would; their barcodes are in the retrieved list too
        self.retrievals: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.retrievalinfo = True  # False: the endpoint is not there (HTTP 404), as on an account without it
        self.collections: set[str] | None = None  # set: any other collection gets success false (HTTP 200)
        self.item_statuses: dict[str, str] = {}  # what itemstatus answers for a barcode, when set
        self.item_faults: dict[str, str] = {}  # barcode -> the error itemstatus answers for it (success false)
        # open for the simulator's life, closed by stop()
        self.receipts = open(receipts, "a", encoding="utf-8", buffering=1) if receipts else None  # noqa: SIM115

    @property
    def url(self) -> str:
        return self.address

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        super().stop()
        if self.receipts:
            self.receipts.close()

    def collection_of(self, key: str | None) -> str | None:
        """The collection whose key this is, None if no accepted key (the default's first, as it was alone)."""
        if key is None:
            return None
        if self.key is not None and key == self.key:
            return DEFAULT_COLLECTION
        return next((name for name, known in self.keys.items() if known == key), None)

    def received_by(self, collection: str) -> list[Received]:
        """The uploads that came with the named collection's key, in the order received."""
        with self._changed:
            return [item for item in self.received if item.collection == collection]

    def _recorded(self, item: Received) -> None:
        if self.receipts:  # one JSON line per upload, for dry runs and benchmarks
            line: dict[str, Any] = {"at": item.at, "name": item.name, "bytes": len(item.data)}
            if self.keys:  # only with several keys, so a one-key simulator writes the lines it always wrote
                line["collection"] = item.collection
            self.receipts.write(json.dumps(line) + "\n")

    # -- what CaiaSoft would answer ------------------------------------------

    def answer_file(self, name: str | None, data: bytes) -> dict[str, Any]:
        barcodes = _barcodes(data)
        if barcodes is None:
            return {
                "success": False,
                "error": f"File format not registered for {name or 'upload'}: "
                "register it in the Admin Module (File Format)",
                "request_count": "0",
            }
        results = []
        for barcode in barcodes:
            status = self.deny.get(barcode)
            results.append({"item": barcode, "deny": "Y" if status else "N", "istatus": status or "Item Requested"})
        return {"success": True, "error": "", "request_count": str(len(results)), "results": results}


_HEADER_LINE = re.compile(rb"^## -[^\n]*(?:\n|$)", re.MULTILINE)


def _barcodes(data: bytes) -> list[str] | None:
    """Barcodes in an ALEPH print file (one or many slips) or a barcode list; None if CaiaSoft would not know it.

    A print file's records each open with a header block ("## - XML_XSL" lines; the
    first line may be any "##" line) followed by one XML document.
    """
    body = data.removeprefix(b"\xef\xbb\xbf")
    elements = body.lstrip().startswith(b"<z30-barcode>")  # a cir-12 paging list: one element a line, no root
    if body.startswith(b"##"):
        body = body[body.find(b"\n") + 1 :] if b"\n" in body else b""
    if (body.lstrip().startswith(b"<") and not elements) or _HEADER_LINE.match(body):
        barcodes: list[str] = []
        for record in _HEADER_LINE.split(body):
            if not record.strip():
                continue
            try:
                root = SafeET.fromstring(record.strip())
            except (ParseError, ValueError):  # defusedxml's refusals are ValueErrors
                return None
            if root.tag != "printout":
                return None
            barcodes += [e.text.strip() for e in root.iter("z30-barcode") if e.text and e.text.strip()]
        return barcodes
    try:
        lines = [line.strip() for line in data.decode("utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError:
        return None
    if elements:  # read as sites' own code reads it: each line stripped of its tags
        lines = [line.removeprefix("<z30-barcode>").removesuffix("</z30-barcode>").strip() for line in lines]
    return lines if lines and all(BARCODE.match(line) for line in lines) else None


_DISPOSITION = re.compile(rb'(name|filename)="((?:[^"\\]|\\.)*)"')


def _parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str | None, bytes]]:
    """The parts of a multipart/form-data body as (field name, file name or None, bytes)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or not match:
        return []
    delimiter = b"--" + match.group(1).encode("latin-1")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, separator, data = chunk.partition(b"\r\n\r\n")
        if not separator:
            continue
        fields = {key.decode(): value.decode("utf-8", "replace") for key, value in _DISPOSITION.findall(head)}
        if "name" in fields:
            parts.append((fields["name"], fields.get("filename"), data[:-2] if data.endswith(b"\r\n") else data))
    return parts


def _handler_for(sim: CaiaSoftSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "CaiaSoftSimulator/1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and demo read .received
            pass

        def _json(self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _authorised(self) -> str | None:
            """The collection of the request's key; None (answered 401) if the key is not one of the simulator's."""
            collection = sim.collection_of(self.headers.get("X-API-Key"))
            if collection is None:
                self._json(401, {"success": False, "error": "Invalid API key"})
            return collection

        def _apply_fault(self) -> bool:
            """Act out a scripted fault; return True if the request was answered (or dropped) by it."""
            fault = sim.next_fault()
            if sim.delay:
                time.sleep(sim.delay)
            if fault is None:
                return False
            kind, _, argument = fault.partition(":")
            if kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return True
            if kind == "hang":
                sim._stopping.wait()
                self.close_connection = True
                return True
            if kind == "slow":
                time.sleep(float(argument or 5))
                return False
            if kind == "429":
                self._json(429, {"success": False, "error": "Too many requests"}, {"Retry-After": argument or "1"})
                return True
            self._json(int(kind), {"success": False, "error": f"Simulated server error {kind}"})
            return True

        def do_GET(self) -> None:
            if self._authorised() is None or self._apply_fault():
                return
            if self.path.rstrip("/") == "/api/circstoplist/v1/ACTIVE":
                self._json(200, {"success": True, "error": "", "count": str(len(STOPS)), "stops": STOPS})
            elif self.path.startswith(("/api/retrievedlist/v1/", "/api/refiledlist/v1/", "/api/retrievalinfo/v1/")):
                self._list()
            elif self.path.startswith("/api/itemstatus/v1/"):
                barcode = self.path.rsplit("/", 1)[-1]
                if barcode in sim.item_faults:  # a failure for this item alone, in an HTTP 200
                    self._json(200, {"success": False, "error": sim.item_faults[barcode], "barcode": barcode})
                    return
                seen = any(barcode in (_barcodes(r.data) or []) for r in sim.received)
                status = sim.item_statuses.get(barcode) or (
                    "In Queue for Physical Retrieval" if seen else "Item In at Rest"
                )
                self._json(200, {"success": True, "error": "", "barcode": barcode, "status": status})
            else:
                self._json(404, {"success": False, "error": f"Unknown endpoint {self.path}"})

        def _list(self) -> None:
            """retrievedlist / refiledlist (barcodes) and retrievalinfo (per-item facts), FROM/TO/COLLECTION."""
            parts = self.path.strip("/").split("/")
            if len(parts) != 6:
                self._json(400, {"success": False, "error": "use /api/KIND/v1/FROM/TO/COLLECTION"})
                return
            endpoint, start, end, collection = parts[1], parts[3], parts[4], unquote(parts[5])
            if endpoint == "retrievalinfo" and not sim.retrievalinfo:
                self._json(404, {"success": False, "error": f"Unknown endpoint {self.path}"})
                return
            if sim.collections is not None and collection not in sim.collections:
                self._json(
                    200,
                    {
                        "success": False,
                        "error": f"Invalid collection code: {collection}",
                        "count": "0",
                        "barcodes": [],
                        "items": [],
                    },
                )
                return
            facts = [
                _retrieval_item(item, day, where)
                for (day, where), items in sorted(sim.retrievals.items())
                if where == collection and start <= day <= end
                for item in items
            ]
            if endpoint == "retrievalinfo":  # its count is a number, where the lists' counts are strings
                self._json(200, {"success": True, "error": "", "count": len(facts), "items": facts})
                return
            kind = endpoint[: -len("list")]
            barcodes = [
                barcode
                for (listed, day, where), items in sorted(sim.status_lists.items())
                if listed == kind and where == collection and start <= day <= end
                for barcode in items
            ]
            if kind == "retrieved":
                barcodes += [item["barcode"] for item in facts if item["barcode"] not in barcodes]
            self._json(200, {"success": True, "error": "", "count": str(len(barcodes)), "barcodes": barcodes})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            collection = self._authorised()
            if collection is None:
                return
            if self.path.rstrip("/") != "/api/requestfile/v1":
                self._json(404, {"success": False, "error": f"Unknown endpoint {self.path}"})
                return
            parts = _parse_multipart(self.headers.get("Content-Type", ""), body)
            files = [(name, filename, data) for name, filename, data in parts if name == sim.upload_field]
            form = {
                name: data.decode("utf-8", "replace")
                for name, filename, data in parts
                if name != sim.upload_field and filename is None
            }
            receipt = None
            if files:  # recorded on receipt: a dropped or hung answer still means CaiaSoft may have the file
                _, filename, data = files[0]
                receipt = Received(filename, sim.upload_field, data, form, answered=None, collection=collection)
                sim.record(receipt)
            if self._apply_fault():
                return
            if receipt is None:
                self._json(400, {"success": False, "error": f"No file in form field '{sim.upload_field}'"})
                return
            receipt.answered = 200
            self._json(200, sim.answer_file(receipt.name, receipt.data))

    return Handler


def _retrieval_item(given: dict[str, Any], day: str, collection: str) -> dict[str, Any]:
    """A retrievalinfo item as CaiaSoft writes it (keys with spaces, the date MM-DD-YYYY), from a test's fields."""
    return {
        "barcode": "",
        "collection": collection,
        "requestor": "Storage Reader",
        "request_id": "",
        "retrieval_job": "8982",
        "retrieval date": f"{day[4:6]}-{day[6:8]}-{day[:4]}",
        "retrieval type": "PYR",
        **given,
    }
