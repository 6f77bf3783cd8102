"""ALEPH batch print files for tests: many hold-request records in one file, as ALEPH's print daemon writes them."""

from __future__ import annotations


def barcode(number: int, prefix: str = "3123407") -> str:
    return f"{prefix}{number:07d}"


def record(number: int, *, headers: tuple[str, ...] = ("## - XML_XSL",), declaration: bool = True,
           body: str = "", prefix: str = "3123407") -> str:
    """One record: its header block, optionally the XML declaration, then a hold-request slip."""
    lines = [*headers, *(['<?xml version="1.0"?>'] if declaration else []),
             "<printout>", "<form-name>hold-request-slip</form-name>", "<form-language>ENG</form-language>",
             "<section-01>", f"<z30-barcode>{barcode(number, prefix)}</z30-barcode>",
             f"<z13-title>Title of item {number} — Ærø, Çà</z13-title>",
             f"<z37-doc-number>{number:09d}</z37-doc-number>", "<z37-item-sequence>000010</z37-item-sequence>",
             "<z37-sequence>0001</z37-sequence>", f"<z37-request-number>{number + 4000:09d}</z37-request-number>",
             f"<z37-pickup-location>{'Law Library' if number % 2 else 'Main Library Circulation Desk'}"
             "</z37-pickup-location>", body, "</section-01>", "</printout>"]
    return "\n".join(line for line in lines if line) + "\n"


def print_file(count: int, *, newline: str = "\n", bom: bool = False, prefix: str = "3123407",
               replace: dict[int, str] | None = None) -> bytes:
    """A print file of count records: every 7th has a second '## -' header line, every 5th no XML declaration.

    replace maps a record number (1-based) to the text to write instead of that record.
    """
    parts = []
    for number in range(1, count + 1):
        headers = ("## - XML_XSL", "## - PRINTER=CAIASOFT") if number % 7 == 0 else ("## - XML_XSL",)
        text = (replace or {}).get(number) or record(number, headers=headers, declaration=number % 5 != 0,
                                                      prefix=prefix)
        parts.append(text)
    data = "".join(parts).replace("\n", newline).encode("utf-8")
    return (b"\xef\xbb\xbf" if bom else b"") + data


def first_line_of(data: bytes, number: int) -> int:
    """The file line (1-based) of record number's first header line."""
    seen = 0
    for index, line in enumerate(data.split(b"\n"), 1):
        if line.lstrip(b"\xef\xbb\xbf").startswith(b"## - XML_XSL"):
            seen += 1
            if seen == number:
                return index
    raise ValueError(f"no record {number}")
