"""Is a file acceptable? Validation of what ALEPH wrote: print files record by record, barcode lists.

Validation reads the file and describes it; it never changes a byte. The file
is uploaded exactly as ALEPH wrote it.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gateway.core import printfile
from gateway.core.errors import FileRefused
from gateway.core.files import HASH_CHUNK
from gateway.core.names import printable

HEAD_BYTES = 64 * 1024  # read first, to tell a print file (XML) from a text file
MAX_FORM_NAMES = 20  # distinct form names counted in a file's details
MAX_BAD_RECORDS_NAMED = 5  # bad records named in a refusal (all are counted)
MAX_TEXT_ITEMS = 100_000  # barcodes of one text file listed and indexed (all are counted)
_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f]")
_BARCODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")  # a line of a barcode list that is one barcode


@dataclass(frozen=True)
class Inspection:
    """What a valid file is: its kind (xml or text), digest, size and a few details for the sidecar.

    details stays small whatever the file holds (counts, the first header line, the
    form names); the records themselves go to inspect()'s on_record.
    """

    kind: str
    sha256: str
    size: int
    details: dict[str, Any]


class _Reader:
    """Reads a file a line (or a piece of a long line) at a time, hashing and checking what it reads."""

    def __init__(self, handle: BinaryIO, max_bytes: int):
        self.handle = handle
        self.max_bytes = max_bytes
        self.digest = hashlib.sha256()
        self.size = 0
        self.blank = True

    def readline(self, limit: int = printfile.PIECE_BYTES, /) -> bytes:
        piece = self.handle.readline(limit)
        self.digest.update(piece)
        self.size += len(piece)
        if self.size > self.max_bytes:
            raise FileRefused(f"file grew above max_file_bytes ({self.max_bytes}) while being read")
        if b"\x00" in piece:
            raise FileRefused("file is binary (it contains NUL bytes), not an ALEPH request file")
        if self.blank and piece.strip():
            self.blank = False
        return piece

    def finish(self) -> None:
        """Read whatever is left (so the digest covers the whole file) and refuse a blank file."""
        while self.readline(HASH_CHUNK):
            pass
        if self.blank:
            raise FileRefused("file is empty" if not self.size else "file holds only blank space")


def inspect(
    path: Path,
    name: str,
    max_bytes: int,
    fallback_encoding: str = "",
    on_record: Callable[[printfile.Record], None] | None = None,
) -> Inspection:
    """Given a claimed file, return its Inspection. Raise FileRefused saying why it cannot be sent.

    The file is read once, in pieces (memory stays bounded whatever its size). Each
    record of an ALEPH print file, and each barcode of a barcode list, is handed to
    on_record as it is read, also when the file is refused in the end (a bad record
    is handed over with its problem).
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise FileRefused(f"file is {size} bytes, above max_file_bytes ({max_bytes})")
        head = handle.read(HEAD_BYTES)
        handle.seek(0)
        wide = _wide_encoding(head)
        if wide:
            raise FileRefused(
                f"text is {wide}; ALEPH writes UTF-8 and the file is sent byte for byte, so UTF-16 "
                "and UTF-32 are not supported: save it as UTF-8 (iconv -f UTF-16 -t UTF-8) and retry it"
            )
        reader = _Reader(handle, max_bytes)
        if printfile.looks_like_print_file(head):
            details = _check_print_file(reader, on_record or _ignore)
            details["encoding"] = printfile.declared_encoding(head) or "utf-8"
            kind = "xml"
        else:
            if name.lower().endswith(".xml") and head.strip() and not printfile.starts_as_barcode_elements(head):
                raise FileRefused("file is named .xml but its content is not XML")
            held, elements = _Held(), _ElementLines()
            try:
                details = _check_text(reader, "utf-8", held, elements)
            except _Undecodable as error:
                if not fallback_encoding:
                    raise FileRefused(error.reason("UTF-8")) from None
                handle.seek(0)
                reader, held, elements = _Reader(handle, max_bytes), _Held(), _ElementLines()
                try:
                    details = _check_text(reader, fallback_encoding, held, elements)
                except _Undecodable as again:
                    raise FileRefused(again.reason(f"UTF-8 or {fallback_encoding}")) from None
            if held.dropped:
                details["items_not_listed"] = held.dropped
            for record in held.records():
                (on_record or _ignore)(record)
            elements.check()  # a cir-12 list with a wrong line: refused, its barcodes handed over all the same
            kind = "text"
        reader.finish()
    return Inspection(kind=kind, sha256=reader.digest.hexdigest(), size=reader.size, details=details)


_WIDE_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian, with a byte order mark)"),
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian, with a byte order mark)"),
    (b"\xfe\xff", "UTF-16 (big-endian, with a byte order mark)"),
    (b"\xff\xfe", "UTF-16 (little-endian, with a byte order mark)"),
)


def _wide_encoding(head: bytes) -> str | None:
    """Name the encoding if the text is UTF-16 or UTF-32 (by its byte order mark, or ASCII with NUL halves)."""
    for bom, encoding in _WIDE_BOMS:
        if head.startswith(bom):
            return encoding
    sample = head[:4096]
    if len(sample) >= 4 and len(sample) % 2 == 0:
        for half, other, endian in (
            (sample[0::2], sample[1::2], "big-endian"),
            (sample[1::2], sample[0::2], "little-endian"),
        ):
            if half.count(0) == len(half) and 0 not in other:
                return f"UTF-16 ({endian}, without a byte order mark)"
    return None


def _ignore(record: printfile.Record) -> None:
    return None


class _Held:
    """The barcodes of a text file, kept until the whole file has decoded (up to MAX_TEXT_ITEMS).

    A text file may be read twice (UTF-8, then the fallback encoding); its barcodes are
    handed on once, after the read that succeeded.
    """

    def __init__(self) -> None:
        self.barcodes: list[tuple[int, str]] = []  # (line, barcode): small, whatever the list's length
        self.dropped = 0

    def __call__(self, line: int, barcode: str) -> None:
        if len(self.barcodes) < MAX_TEXT_ITEMS:
            self.barcodes.append((line, barcode))
        else:
            self.dropped += 1

    def records(self) -> Iterator[printfile.Record]:
        for number, (line, barcode) in enumerate(self.barcodes, 1):
            yield printfile.Record(number=number, line=line, barcodes=(barcode,))


def _check_print_file(reader: _Reader, on_record: Callable[[printfile.Record], None]) -> dict[str, Any]:
    """Validate every record of an ALEPH print file; return the file's details or raise FileRefused."""
    count = items = bad_count = 0
    first: printfile.Record | None = None
    bad: list[printfile.Record] = []
    forms: dict[str, int] = {}
    not_xml: dict[str, int] = {}  # records of each printout kind that is not XML, in the order first seen
    for record in printfile.scan(reader):
        count += 1
        items += len(record.barcodes)
        first = first or record
        if record.form_name and (record.form_name in forms or len(forms) < MAX_FORM_NAMES):
            forms[record.form_name] = forms.get(record.form_name, 0) + 1
        if record.problem is not None:
            bad_count += 1
            if len(bad) < MAX_BAD_RECORDS_NAMED:
                bad.append(record)
            if record.problem.printout:
                not_xml[record.problem.printout] = not_xml.get(record.problem.printout, 0) + 1
        on_record(record)
    if bad:
        last = bad[-1]
        at_end = bad_count == 1 and last.number == count and last.problem is not None and last.problem.at_end
        if sum(not_xml.values()) == count:
            raise FileRefused(printfile.not_xml_reason(list(not_xml), count))
        raise FileRefused(_bad_records_reason(bad, bad_count, count), at_end=at_end)
    return {
        "records": count,
        "items": items,
        "root": first.root if first else None,
        "form_name": first.form_name if first else None,
        "form_names": forms,
        "routing_line": first.header if first else None,
    }


def _bad_records_reason(bad: list[printfile.Record], bad_count: int, count: int) -> str:
    """'record 2 of 3 (line 28, "## - XML_XSL"): its XML is not well-formed (mismatched tag) at line 53 of the file'"""
    first = bad[0]
    assert first.problem is not None
    where = f'line {first.line}, "{first.header}"' if first.header else f"line {first.line}, no header line"
    reason = f"record {first.number} of {count} ({where}): {first.problem.message}"
    if first.problem.printout is None:  # a non-XML printout is wrong as a whole, not at a line of it
        reason += f" at line {first.problem.line} of the file"
    if bad_count > 1:
        others = ", ".join(f"{record.number} (line {record.line})" for record in bad[1:])
        more = bad_count - len(bad)
        reason += f"; {bad_count - 1} more bad record(s): {others}" + (f" and {more} more" if more else "")
    return reason


class _ElementLines:
    """Tells a cir-12 list of <z30-barcode> lines from a plain list, and finds the line that spoils either.

    A list is of <z30-barcode> lines if any of its lines is one; then every line that is not
    such an element, or whose element does not hold one barcode, is wrong (the first is named).
    """

    def __init__(self) -> None:
        self.count = 0
        self.first: int = 0  # the first <z30-barcode> line
        self.wrong: tuple[int, str] | None = None  # (line, what is wrong) of the first line that is not one
        self.wrong_element: tuple[int, str] | None = None  # the first element that holds no barcode

    def read(self, line: int, value: str) -> str | None:
        """Given a non-blank line (stripped), return the barcode it holds, if it holds one."""
        inner = printfile.barcode_element(value)
        if inner is None:
            if self.wrong is None:
                self.wrong = (line, f'line {line} ("{_excerpt(value)}") is not a <z30-barcode> line')
            return value if _BARCODE.match(value) else None
        self.count += 1
        self.first = self.first or line
        if _BARCODE.match(inner):
            return inner
        if self.wrong_element is None:
            self.wrong_element = (line, f'line {line} ("{_excerpt(value)}") does not hold one barcode')
        return None

    def check(self) -> None:
        """Raise FileRefused if the list has <z30-barcode> lines and a line that is wrong beside them."""
        if not self.count:
            return
        wrongs = [found for found in (self.wrong, self.wrong_element) if found is not None]
        if wrongs:
            line, what = min(wrongs)
            raise FileRefused(
                f"{what}, in a cir-12 barcode list of <z30-barcode> lines (the first at line "
                f"{self.first}): every line must be one <z30-barcode>BARCODE</z30-barcode> element; "
                "nothing of this file was sent"
            )


def _excerpt(value: str) -> str:
    """The start of a line, fit to quote in a reason: printable (names.printable), cut at 60 characters."""
    return printable(value[:60]) + ("..." if len(value) > 60 else "")


def _check_text(
    reader: _Reader, encoding: str, on_barcode: Callable[[int, str], None], elements: _ElementLines
) -> dict[str, Any]:
    """Decode a text file piece by piece; hand each barcode line to on_barcode(line, barcode); return its details.

    A line is a barcode, or a <z30-barcode> element holding one (a cir-12 paging list):
    elements reads them; its check() says afterwards whether a list of elements holds
    anything else. Raise _Undecodable (with the offset in the whole file) if it is not
    in encoding.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    characters = controls = lines = barcodes = 0
    offset = 0
    line_number = 1
    at_line_start = True
    piece = reader.readline()
    if piece.startswith(printfile.BOM) and encoding == "utf-8":
        offset = len(printfile.BOM)
        piece = piece[offset:]
    while piece:
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(piece, final=False)
        except UnicodeDecodeError as error:
            raise _Undecodable(error.object[error.start], offset - pending + error.start) from None
        offset += len(piece)
        characters += len(text)
        controls += len(_CONTROLS.findall(text))
        complete = piece.endswith(b"\n")
        for part in text.splitlines() if at_line_start else ():
            value = part.strip()
            if value:
                lines += 1
                barcode = elements.read(line_number, value)
                if barcode is not None:
                    barcodes += 1
                    on_barcode(line_number, barcode)
        at_line_start = complete
        line_number += complete
        piece = reader.readline()
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        raise _Undecodable(error.object[error.start], offset - len(error.object) + error.start) from None
    if controls > max(2, characters // 100):
        raise FileRefused(f"file looks binary ({controls} control characters), not an ALEPH request file")
    details: dict[str, Any] = {"lines": lines, "items": barcodes, "encoding": encoding}
    if elements.count:
        details["line_form"] = "<z30-barcode>"
    return details


class _Undecodable(Exception):
    def __init__(self, byte: int, offset: int):
        super().__init__(byte, offset)
        self.byte, self.offset = byte, offset

    def reason(self, tried: str) -> str:
        return f"text is not {tried}: byte 0x{self.byte:02x} at offset {self.offset} cannot be decoded"
