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

Two more shapes are read as they come:

- A batch of slips gathered by a site's sorting script: one header block and one XML
  document whose outer <printout> (form-name, form-language, form-format, subject)
  holds one inner <printout> per slip. Each inner slip is a record of its own, with its
  own barcodes, request number and id; it is handed over as soon as it closes.
- A printout that is not XML (its header names PLAIN, HTML or EXECUTE output): a record
  that is refused for what it is, its content not parsed.

A cir-12 paging list of <z30-barcode> lines is not a print file (no header, no root
element): barcode_element() reads its lines, and intake treats it as a barcode list.
"""

from __future__ import annotations

import itertools
import pyexpat
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser, ParseError

BOM = b"\xef\xbb\xbf"
HEADER_MARK = b"## -"  # opens a record; `grep -c '^## - XML_XSL'` counts records the same way
XML_PRINTOUT = "XML_XSL"  # the printout kind whose records are XML
NOT_XML_PRINTOUTS = ("PLAIN", "HTML", "EXECUTE")  # printout kinds ALEPH writes that are not XML
FIRST_LINE_MARK = b"##"  # the file's first line may be any routing line
PIECE_BYTES = 64 * 1024  # longest piece of a line read at once
MAX_VALUE_CHARS = 200  # longest field value kept from a record
MAX_BARCODES_PER_RECORD = 100
WANTED_FIELDS = frozenset(
    {
        "form-name",
        "z30-barcode",
        "z37-request-number",
        "z37-pickup-location",
        "z37-doc-number",
        "z37-item-sequence",
        "z37-sequence",
    }
)
_ENCODING_DECLARATION = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_PRINTOUT_KIND = re.compile(rb"^## - (XML_XSL|PLAIN|HTML|EXECUTE)(?![A-Za-z0-9_])")
_BARCODE_ELEMENT = re.compile(r"^<z30-barcode>([^<]*)</z30-barcode>$")
# What the parser raises for a record it refuses: defusedxml's refusals are ValueErrors (as are
# UnicodeErrors of a declared encoding); an encoding Python does not know is a LookupError.
_REFUSALS = (ParseError, ValueError, LookupError)
_INVALID_TOKEN = pyexpat.errors.codes[pyexpat.errors.XML_ERROR_INVALID_TOKEN]
# Errors expat reports when the data ends inside a document, rather than on bad content.
_ENDED_EARLY = {
    pyexpat.errors.codes[message]
    for message in (
        pyexpat.errors.XML_ERROR_NO_ELEMENTS,
        pyexpat.errors.XML_ERROR_UNCLOSED_TOKEN,
        pyexpat.errors.XML_ERROR_PARTIAL_CHAR,
        pyexpat.errors.XML_ERROR_UNCLOSED_CDATA_SECTION,
    )
}


def article(kind: str) -> str:
    """'an' before a printout kind that is said with a vowel first (an EXECUTE, an HTML printout), else 'a'."""
    return "an" if kind[:1].upper() in "AEIOU" or kind.upper().startswith(("HTML", "XML")) else "a"


def not_xml_reason(kinds: list[str], count: int = 1) -> str:
    """'a PLAIN printout, not XML: route only XML_XSL output for CaiaSoft to this folder', for a record or for a
    file of count such records of these kinds."""
    what = f"{article(kinds[0])} {kinds[0]} printout" if len(kinds) == 1 else " and ".join(kinds) + " printouts"
    records = f" ({count} records)" if count > 1 else ""
    return f"{what}{records}, not XML: route only {XML_PRINTOUT} output for CaiaSoft to this folder"


@dataclass(frozen=True)
class RecordProblem:
    """Why a record's XML is refused, and where: line is counted in the whole file.

    at_end is True when the data simply stopped inside the record (its document was
    never closed), as happens when a file is cut short or still being written.
    printout names the kind of a record refused as a whole for not being XML ("PLAIN"):
    its problem is the record itself, not a place in it.
    """

    message: str
    line: int
    at_end: bool = False
    printout: str | None = None


@dataclass(frozen=True)
class Record:
    """One record of a print file (or one barcode of a barcode list), as far as the gateway reads it."""

    number: int  # 1, 2, ... in the order of the file
    line: int  # the file line it starts on (its first header line, if any)
    header: str | None = None  # its first header line, e.g. "## - XML_XSL"
    root: str | None = None  # its XML's root element, e.g. "printout"
    form_name: str | None = None  # e.g. "hold-request-slip"
    barcodes: tuple[str, ...] = ()  # z30-barcode values (an item list: the line's barcode)
    request_number: str | None = None  # z37-request-number
    request_id: str | None = None  # z37-doc-number + z37-item-sequence + z37-sequence
    pickup_location: str | None = None  # z37-pickup-location
    problem: RecordProblem | None = None


def looks_like_print_file(head: bytes) -> bool:
    """Given the first bytes of a file, return True if it holds XML (with or without ALEPH headers).

    A file that opens with an ALEPH header line ("## -") is a print file whatever follows: a file of
    headers only, or with text where the XML should be, is refused by its records, not sent as a list.
    A file whose first line is a <z30-barcode> element is a cir-12 barcode list, not XML."""
    text = head[len(BOM) :] if head.startswith(BOM) else head
    if text.startswith(HEADER_MARK):
        return True
    if starts_as_barcode_elements(text):
        return False
    while text.startswith(FIRST_LINE_MARK):
        newline = text.find(b"\n")
        if newline < 0:
            return False
        text = text[newline + 1 :]
    return text.lstrip(b" \t\r\n").startswith(b"<")


def barcode_element(line: str) -> str | None:
    """Given a line stripped of surrounding blanks, return what its <z30-barcode> element holds (stripped), or
    None if the line is not one such element: a cir-12 paging list writes one a line, without a root element."""
    match = _BARCODE_ELEMENT.match(line)
    return match.group(1).strip() if match else None


def starts_as_barcode_elements(head: bytes) -> bool:
    """True if the first line with anything on it (after a BOM) is one whole <z30-barcode> element."""
    text = head[len(BOM) :] if head.startswith(BOM) else head
    for line in text.splitlines():
        if line.strip():
            return barcode_element(line.strip().decode("utf-8", "replace")) is not None
    return False


def declared_encoding(head: bytes) -> str | None:
    """The encoding named in the first record's XML declaration, if it names one."""
    text = head[len(BOM) :] if head.startswith(BOM) else head
    while text.startswith(FIRST_LINE_MARK):
        text = text[text.find(b"\n") + 1 :] if b"\n" in text else b""
    match = _ENCODING_DECLARATION.match(text.lstrip(b" \t\r\n"))
    return match.group(1).decode("ascii") if match else None


@dataclass
class _Slip:
    """The fields kept of one printout (a whole record, or one inner slip of a batch) while it is read."""

    line: int
    values: dict[str, str] = field(default_factory=dict)
    barcodes: dict[str, None] = field(default_factory=dict)  # in order, each once (section-02 may repeat)

    def keep(self, tag: str, value: str) -> None:
        if tag != "z30-barcode":
            self.values.setdefault(tag, value)
        elif len(self.barcodes) < MAX_BARCODES_PER_RECORD:
            self.barcodes.setdefault(value)


class _Fields:
    """An ElementTree parser target that keeps only the few fields the gateway reports.

    An inner <printout> directly under the root <printout> is a slip of a batch: its
    fields are kept apart and it goes to .finished when it closes. where() is the file
    line the parser is at.
    """

    def __init__(self, where: Callable[[], int]) -> None:
        self.where = where
        self.outer = _Slip(line=0)
        self.slip: _Slip | None = None  # the inner slip being read
        self.finished: list[_Slip] = []  # inner slips closed, not yet handed over
        self.nested = False  # an inner slip was seen: the document is a batch of slips
        self.root: str | None = None
        self._depth = 0
        self._current: str | None = None
        self._text: list[str] = []
        self._length = 0

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        self._depth += 1
        if self.root is None:
            self.root = tag
        elif self._depth == 2 and tag == "printout" == self.root:
            self.slip, self.nested = _Slip(line=self.where()), True
        if tag in WANTED_FIELDS:
            self._current, self._text, self._length = tag, [], 0

    def data(self, text: str) -> None:
        if self._current is not None and self._length < MAX_VALUE_CHARS:
            self._text.append(text)
            self._length += len(text)

    def end(self, tag: str) -> None:
        self._depth -= 1
        if tag == self._current:
            value = "".join(self._text).strip()[:MAX_VALUE_CHARS]
            self._current = None
            if value:
                (self.slip or self.outer).keep(tag, value)
        elif self._depth == 1 and tag == "printout" and self.slip is not None:
            self.finished.append(self.slip)
            self.slip = None

    def close(self) -> None:
        return None


@dataclass
class _Open:
    """The record being read: its header, where it starts, and its parser once XML began.

    printout is the kind its header names (None: no kind named, read as XML). A batch
    of slips yields one record per slip, numbered from numbers as each one closes.
    """

    numbers: Iterator[int]
    line: int
    header: str | None
    printout: str | None = None
    content: bool = False  # anything but blank space followed the header block
    xml_line: int = 0
    parser: DefusedXMLParser | None = None
    fields: _Fields = field(init=False)
    problem: RecordProblem | None = None

    def __post_init__(self) -> None:
        self.fields = _Fields(self._where)

    def header_line(self, piece: bytes) -> None:
        """Another line of the header block: the first one naming a printout kind sets the record's kind."""
        kind = _PRINTOUT_KIND.match(piece)
        if self.printout is None and kind is not None:
            self.printout = kind.group(1).decode("ascii")
            if self.printout in NOT_XML_PRINTOUTS:
                self.problem = RecordProblem(not_xml_reason([self.printout]), self.line, printout=self.printout)

    def feed(self, piece: bytes, line: int) -> list[Record]:
        """Feed the next piece of the record; return the slips of a batch that closed in it."""
        if self.parser is None:
            piece = piece.lstrip(b" \t\r\n")
            if piece.startswith(BOM):
                piece = piece[len(BOM) :].lstrip(b" \t\r\n")
            if not piece:
                return []
        self.content = True
        if self.problem is not None:
            return []
        if self.parser is None:
            self.xml_line = line
            self.parser = DefusedXMLParser(
                target=self.fields, forbid_dtd=True, forbid_entities=True, forbid_external=True
            )
        try:
            self.parser.feed(piece)
        except _REFUSALS as error:  # every parser refusal becomes the record's problem
            self.problem = self._problem(error, closing=False)
            if isinstance(error, ParseError) and error.code == _INVALID_TOKEN:
                self.problem = _not_utf8(piece, self.problem)
        return self._closed_slips()

    def finish(self, last: bool) -> list[Record]:
        """The record's last records: the record itself, or the rest of a batch of slips (one carries a problem)."""
        if self.problem is None:
            if self.parser is None:
                self.problem = RecordProblem("the record has its header but no XML", self.line, at_end=last)
            else:
                try:
                    self.parser.close()
                except _REFUSALS as error:
                    self.problem = self._problem(error, closing=True, last=last)
        records = self._closed_slips()
        fields = self.fields
        if not fields.nested:
            return [*records, self._record(fields.outer, self.line, self.problem)]
        # a batch: the problem belongs to the slip it stopped in; fields or a problem outside any slip
        # make one more record, so that nothing read is dropped and nothing wrong goes unnamed
        open_slip, problem = fields.slip, self.problem
        if fields.outer.barcodes or (problem is not None and open_slip is None):
            records.append(self._record(fields.outer, self.line, None if open_slip else problem))
        if open_slip is not None:
            records.append(self._record(open_slip, open_slip.line, problem))
        return records

    def _closed_slips(self) -> list[Record]:
        finished, self.fields.finished = self.fields.finished, []
        return [self._record(slip, slip.line, None) for slip in finished]

    def _record(self, slip: _Slip, line: int, problem: RecordProblem | None) -> Record:
        values, outer = slip.values, self.fields.outer.values
        document, item, sequence = (
            values.get(name) for name in ("z37-doc-number", "z37-item-sequence", "z37-sequence")
        )
        return Record(
            number=next(self.numbers),
            line=line,
            header=self.header,
            root=self.fields.root,
            form_name=values.get("form-name") or outer.get("form-name"),
            barcodes=tuple(slip.barcodes),
            request_number=values.get("z37-request-number"),
            request_id=f"{document}{item}{sequence}" if document and item and sequence else None,
            pickup_location=values.get("z37-pickup-location"),
            problem=problem,
        )

    def _where(self) -> int:
        expat = self.parser.parser if self.parser is not None else None
        return self.xml_line + (expat.CurrentLineNumber - 1 if expat is not None else 0)

    def _problem(self, error: Exception, closing: bool, last: bool = False) -> RecordProblem:
        here = self._where()
        if isinstance(error, DTDForbidden):
            return RecordProblem("its XML has a DOCTYPE declaration; DTDs are refused for safety", here)
        if isinstance(error, EntitiesForbidden):
            return RecordProblem("its XML declares entities; entities are refused for safety", here)
        if isinstance(error, ExternalReferenceForbidden):
            return RecordProblem("its XML refers to an external resource; refused for safety", here)
        if isinstance(error, ParseError):  # expat's own: code and position (line, column) in what was fed
            line = self.xml_line + error.position[0] - 1
            if closing and error.code in _ENDED_EARLY:
                return RecordProblem(
                    f"its XML ends before its document does ({pyexpat.ErrorString(error.code)})", line, at_end=last
                )
            words = pyexpat.ErrorString(error.code).removeprefix("not well-formed (").removesuffix(")")
            return RecordProblem(f"its XML is not well-formed ({words})", line)
        return RecordProblem(f"its XML cannot be read ({error})", here)


def _not_utf8(piece: bytes, problem: RecordProblem) -> RecordProblem:
    """An invalid token on a line that is not UTF-8 is its encoding, not its markup: say so."""
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = piece[error.start]
        return RecordProblem(
            f"its text is not UTF-8 (byte 0x{byte:02X}): ALEPH writes UTF-8; "
            'a record in another encoding must declare it (<?xml version="1.0" '
            'encoding="ISO-8859-1"?>)',
            problem.line,
        )
    return problem


class LineReader(Protocol):
    """What scan() reads from: a binary file, or anything with its readline(limit)."""

    def readline(self, limit: int = -1, /) -> bytes: ...


def scan(handle: LineReader) -> Iterator[Record]:
    """Given a print file open for binary reading at its start, yield its records in order.

    A record whose XML is refused is yielded with its problem set; reading goes on
    with the next record, so every bad record can be named. A file without any
    header line is one record (or, if it is a batch of slips, one record a slip).
    """
    splitter = _Splitter()
    line = 1  # the file line the next piece belongs to
    piece = _line_start(handle, handle.readline(PIECE_BYTES)).removeprefix(BOM)
    at_line_start = True
    while piece:
        yield from splitter.take(piece, line, at_line_start)
        at_line_start = piece.endswith(b"\n")
        line += at_line_start
        piece = handle.readline(PIECE_BYTES)
        if at_line_start:
            piece = _line_start(handle, piece)
    if splitter.current is not None:
        yield from splitter.current.finish(last=True)


class _Splitter:
    """Cuts a file's pieces into records: a header line opens a record, unless it continues a header block."""

    def __init__(self) -> None:
        self.numbers = itertools.count(1)
        self.current: _Open | None = None
        self.in_header_line = False  # the rest of an over-long header line follows

    def take(self, piece: bytes, line: int, at_line_start: bool) -> list[Record]:
        """Take the next piece (a line, or a part of a long one); return the records it finished, if any."""
        if self.in_header_line:
            self.in_header_line = not piece.endswith(b"\n")
            return []
        current = self.current
        if at_line_start and (piece.startswith(HEADER_MARK) or (line == 1 and piece.startswith(FIRST_LINE_MARK))):
            self.in_header_line = not piece.endswith(b"\n")
            if current is not None and not current.content:
                current.header_line(piece)  # another line of the same header block
                return []
            finished = current.finish(last=False) if current is not None else []
            header = piece.decode("utf-8", "replace").strip()[:MAX_VALUE_CHARS]
            self.current = _Open(numbers=self.numbers, line=line, header=header)
            self.current.header_line(piece)
            return finished
        if current is None:
            current = self.current = _Open(numbers=self.numbers, line=line, header=None)
        return current.feed(piece, line)


def _line_start(handle: LineReader, piece: bytes) -> bytes:
    """The start of a line, long enough to tell a header (or a BOM) from XML and to read a header line (its
    printout kind, up to MAX_VALUE_CHARS): a reader may give less."""
    while len(piece) < len(BOM) + MAX_VALUE_CHARS and not piece.endswith(b"\n"):
        more = handle.readline(PIECE_BYTES)
        if not more:
            break
        piece += more
    return piece
