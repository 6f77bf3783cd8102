"""ALEPH print files: many records in one file, each a header block and one whole XML document.

ALEPH's batch print services write one file per print run (``NAME.PRINT-ID``) holding
one record per slip::

    ## - XML_XSL                   <- header block: one or more lines starting "## -"
    ## - (another routing line)       (the file's first line may be any "##" line)
    <?xml version="1.0"?>          <- optional
    <printout> ... </printout>     <- one whole XML document

scan() reads such a file in pieces of at most PIECE_BYTES, splits it at each header
block and parses each record's XML on its own with defusedxml (no DTDs, entities or
external references), keeping only a few fields of the record in hand: memory stays
bounded whatever the size of the file or the number of records. It describes the
records; it never changes a byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pyexpat
from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser, ParseError

BOM = b"\xef\xbb\xbf"
HEADER_MARK = b"## -"        # opens a record; `grep -c '^## - XML_XSL'` counts records the same way
FIRST_LINE_MARK = b"##"      # the file's first line may be any routing line
PIECE_BYTES = 64 * 1024      # longest piece of a line read at once
MAX_VALUE_CHARS = 200        # longest field value kept from a record
MAX_BARCODES_PER_RECORD = 100
WANTED_FIELDS = frozenset({"form-name", "z30-barcode", "z37-request-number", "z37-pickup-location",
                           "z37-doc-number", "z37-item-sequence", "z37-sequence"})
_ENCODING_DECLARATION = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
# What the parser raises for a record it refuses: defusedxml's refusals are ValueErrors (as are
# UnicodeErrors of a declared encoding); an encoding Python does not know is a LookupError.
_REFUSALS = (ParseError, ValueError, LookupError)
_INVALID_TOKEN = pyexpat.errors.codes[pyexpat.errors.XML_ERROR_INVALID_TOKEN]
# Errors expat reports when the data ends inside a document, rather than on bad content.
_ENDED_EARLY = {pyexpat.errors.codes[message] for message in (
    pyexpat.errors.XML_ERROR_NO_ELEMENTS, pyexpat.errors.XML_ERROR_UNCLOSED_TOKEN,
    pyexpat.errors.XML_ERROR_PARTIAL_CHAR, pyexpat.errors.XML_ERROR_UNCLOSED_CDATA_SECTION)}


@dataclass(frozen=True)
class RecordProblem:
    """Why a record's XML is refused, and where: line is counted in the whole file.

    at_end is True when the data simply stopped inside the record (its document was
    never closed), as happens when a file is cut short or still being written.
    """

    message: str
    line: int
    at_end: bool = False


@dataclass(frozen=True)
class Record:
    """One record of a print file (or one barcode of a barcode list), as far as the gateway reads it."""

    number: int                       # 1, 2, ... in the order of the file
    line: int                         # the file line it starts on (its first header line, if any)
    header: str | None = None         # its first header line, e.g. "## - XML_XSL"
    root: str | None = None           # its XML's root element, e.g. "printout"
    form_name: str | None = None      # e.g. "hold-request-slip"
    barcodes: tuple[str, ...] = ()    # z30-barcode values (an item list: the line's barcode)
    request_number: str | None = None  # z37-request-number
    request_id: str | None = None     # z37-doc-number + z37-item-sequence + z37-sequence
    pickup_location: str | None = None  # z37-pickup-location
    problem: RecordProblem | None = None


def looks_like_print_file(head: bytes) -> bool:
    """Given the first bytes of a file, return True if it holds XML (with or without ALEPH headers).

    A file that opens with an ALEPH header line ("## -") is a print file whatever follows: a file of
    headers only, or with text where the XML should be, is refused by its records, not sent as a list."""
    text = head[len(BOM):] if head.startswith(BOM) else head
    if text.startswith(HEADER_MARK):
        return True
    while text.startswith(FIRST_LINE_MARK):
        newline = text.find(b"\n")
        if newline < 0:
            return False
        text = text[newline + 1:]
    return text.lstrip(b" \t\r\n").startswith(b"<")


def declared_encoding(head: bytes) -> str | None:
    """The encoding named in the first record's XML declaration, if it names one."""
    text = head[len(BOM):] if head.startswith(BOM) else head
    while text.startswith(FIRST_LINE_MARK):
        text = text[text.find(b"\n") + 1:] if b"\n" in text else b""
    match = _ENCODING_DECLARATION.match(text.lstrip(b" \t\r\n"))
    return match.group(1).decode("ascii") if match else None


class _Fields:
    """An ElementTree parser target that keeps only the few fields the gateway reports."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.barcodes: list[str] = []
        self.root: str | None = None
        self._current: str | None = None
        self._text: list[str] = []
        self._length = 0

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        if self.root is None:
            self.root = tag
        if tag in WANTED_FIELDS:
            self._current, self._text, self._length = tag, [], 0

    def data(self, text: str) -> None:
        if self._current is not None and self._length < MAX_VALUE_CHARS:
            self._text.append(text)
            self._length += len(text)

    def end(self, tag: str) -> None:
        if tag != self._current:
            return
        value = "".join(self._text).strip()[:MAX_VALUE_CHARS]
        self._current = None
        if not value:
            return
        if tag == "z30-barcode":
            if len(self.barcodes) < MAX_BARCODES_PER_RECORD:
                self.barcodes.append(value)
        else:
            self.values.setdefault(tag, value)

    def close(self) -> None:
        return None


@dataclass
class _Open:
    """The record being read: its header, where it starts, and its parser once XML began."""

    number: int
    line: int
    header: str | None
    xml_line: int = 0
    parser: DefusedXMLParser | None = None
    fields: _Fields = field(default_factory=_Fields)
    problem: RecordProblem | None = None

    def feed(self, piece: bytes, line: int) -> None:
        if self.problem is not None:
            return
        if self.parser is None:
            piece = piece.lstrip(b" \t\r\n")
            if piece.startswith(BOM):
                piece = piece[len(BOM):].lstrip(b" \t\r\n")
            if not piece:
                return
            self.xml_line = line
            self.parser = DefusedXMLParser(target=self.fields, forbid_dtd=True, forbid_entities=True,
                                           forbid_external=True)
        try:
            self.parser.feed(piece)
        except _REFUSALS as error:  # every parser refusal becomes the record's problem
            self.problem = self._problem(error, closing=False)
            if isinstance(error, ParseError) and error.code == _INVALID_TOKEN:
                self.problem = _not_utf8(piece, self.problem)

    def finish(self, last: bool) -> Record:
        if self.problem is None:
            if self.parser is None:
                self.problem = RecordProblem("the record has its header but no XML", self.line, at_end=last)
            else:
                try:
                    self.parser.close()
                except _REFUSALS as error:
                    self.problem = self._problem(error, closing=True, last=last)
        values = self.fields.values
        document, item, sequence = (values.get(name) for name in ("z37-doc-number", "z37-item-sequence",
                                                                   "z37-sequence"))
        return Record(number=self.number, line=self.line, header=self.header, root=self.fields.root,
                      form_name=values.get("form-name"), barcodes=tuple(self.fields.barcodes),
                      request_number=values.get("z37-request-number"),
                      request_id=f"{document}{item}{sequence}" if document and item and sequence else None,
                      pickup_location=values.get("z37-pickup-location"), problem=self.problem)

    def _problem(self, error: Exception, closing: bool, last: bool = False) -> RecordProblem:
        expat = self.parser.parser if self.parser is not None else None
        here = self.xml_line + (expat.CurrentLineNumber - 1 if expat is not None else 0)
        if isinstance(error, DTDForbidden):
            return RecordProblem("its XML has a DOCTYPE declaration; DTDs are refused for safety", here)
        if isinstance(error, EntitiesForbidden):
            return RecordProblem("its XML declares entities; entities are refused for safety", here)
        if isinstance(error, ExternalReferenceForbidden):
            return RecordProblem("its XML refers to an external resource; refused for safety", here)
        if isinstance(error, ParseError):  # expat's own: code and position (line, column) in what was fed
            line = self.xml_line + error.position[0] - 1
            if closing and error.code in _ENDED_EARLY:
                return RecordProblem(f"its XML ends before its document does ({pyexpat.ErrorString(error.code)})",
                                     line, at_end=last)
            words = pyexpat.ErrorString(error.code).removeprefix("not well-formed (").removesuffix(")")
            return RecordProblem(f"its XML is not well-formed ({words})", line)
        return RecordProblem(f"its XML cannot be read ({error})", here)


def _not_utf8(piece: bytes, problem: RecordProblem) -> RecordProblem:
    """An invalid token on a line that is not UTF-8 is its encoding, not its markup: say so."""
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = piece[error.start]
        return RecordProblem(f"its text is not UTF-8 (byte 0x{byte:02X}): ALEPH writes UTF-8; "
                             "a record in another encoding must declare it (<?xml version=\"1.0\" "
                             "encoding=\"ISO-8859-1\"?>)", problem.line)
    return problem


class LineReader(Protocol):
    """What scan() reads from: a binary file, or anything with its readline(limit)."""

    def readline(self, limit: int = -1, /) -> bytes: ...


def scan(handle: LineReader) -> Iterator[Record]:
    """Given a print file open for binary reading at its start, yield its records in order.

    A record whose XML is refused is yielded with its problem set; reading goes on
    with the next record, so every bad record can be named. A file without any
    header line is one record.
    """
    splitter = _Splitter()
    line = 1  # the file line the next piece belongs to
    piece = _line_start(handle, handle.readline(PIECE_BYTES)).removeprefix(BOM)
    at_line_start = True
    while piece:
        finished = splitter.take(piece, line, at_line_start)
        if finished is not None:
            yield finished
        at_line_start = piece.endswith(b"\n")
        line += at_line_start
        piece = handle.readline(PIECE_BYTES)
        if at_line_start:
            piece = _line_start(handle, piece)
    if splitter.current is not None:
        yield splitter.current.finish(last=True)


class _Splitter:
    """Cuts a file's pieces into records: a header line opens a record, unless it continues a header block."""

    def __init__(self) -> None:
        self.number = 0
        self.current: _Open | None = None
        self.in_header_line = False  # the rest of an over-long header line follows

    def take(self, piece: bytes, line: int, at_line_start: bool) -> Record | None:
        """Take the next piece (a line, or a part of a long one); return the record it finished, if any."""
        if self.in_header_line:
            self.in_header_line = not piece.endswith(b"\n")
            return None
        current = self.current
        if at_line_start and (piece.startswith(HEADER_MARK) or (line == 1 and piece.startswith(FIRST_LINE_MARK))):
            self.in_header_line = not piece.endswith(b"\n")
            if current is not None and current.parser is None and current.problem is None:
                return None  # another line of the same header block
            self.number += 1
            header = piece.decode("utf-8", "replace").strip()[:MAX_VALUE_CHARS]
            self.current = _Open(number=self.number, line=line, header=header)
            return current.finish(last=False) if current is not None else None
        if current is None:
            self.number += 1
            current = self.current = _Open(number=self.number, line=line, header=None)
        current.feed(piece, line)
        return None


def _line_start(handle: LineReader, piece: bytes) -> bytes:
    """The start of a line, long enough to tell a header (or a BOM) from XML: a reader may give less."""
    while len(piece) < len(BOM) + len(HEADER_MARK) and not piece.endswith(b"\n"):
        more = handle.readline(PIECE_BYTES)
        if not more:
            break
        piece += more
    return piece
