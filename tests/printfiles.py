"""ALEPH batch print files for tests: many hold-request records in one file, as ALEPH's print daemon writes them."""

from __future__ import annotations


def barcode(number: int, prefix: str = "3123407") -> str:
    return f"{prefix}{number:07d}"


def record(
    number: int,
    *,
    headers: tuple[str, ...] = ("## - XML_XSL",),
    declaration: bool = True,
    body: str = "",
    prefix: str = "3123407",
) -> str:
    """One record: its header block, optionally the XML declaration, then a hold-request slip."""
    lines = [
        *headers,
        *(['<?xml version="1.0"?>'] if declaration else []),
        "<printout>",
        "<form-name>hold-request-slip</form-name>",
        "<form-language>ENG</form-language>",
        "<section-01>",
        f"<z30-barcode>{barcode(number, prefix)}</z30-barcode>",
        f"<z13-title>Title of item {number} — Ærø, Çà</z13-title>",
        f"<z37-doc-number>{number:09d}</z37-doc-number>",
        "<z37-item-sequence>000010</z37-item-sequence>",
        "<z37-sequence>0001</z37-sequence>",
        f"<z37-request-number>{number + 4000:09d}</z37-request-number>",
        f"<z37-pickup-location>{'Law Library' if number % 2 else 'Main Library Circulation Desk'}"
        "</z37-pickup-location>",
        body,
        "</section-01>",
        "</printout>",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def print_file(
    count: int,
    *,
    newline: str = "\n",
    bom: bool = False,
    prefix: str = "3123407",
    replace: dict[int, str] | None = None,
) -> bytes:
    """A print file of count records: every 7th has a second '## -' header line, every 5th no XML declaration.

    replace maps a record number (1-based) to the text to write instead of that record.
    """
    parts = []
    for number in range(1, count + 1):
        headers = ("## - XML_XSL", "## - PRINTER=CAIASOFT") if number % 7 == 0 else ("## - XML_XSL",)
        text = (replace or {}).get(number) or record(
            number, headers=headers, declaration=number % 5 != 0, prefix=prefix
        )
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


# -- shapes sites' own scripts and ALEPH's other services write ------------------------


def slip(number: int, *, prefix: str = "3123407", items: int = 1, repeat_item: bool = False) -> str:
    """One ue_06 slip as a sorting script nests it: its own <printout>, without the '##' lines, declaration and
    form-* lines; its request in section-01, its item in section-02 (which repeats: items of the request, or the
    same item twice with repeat_item)."""
    sections = [
        f"<section-02>\n<z30-barcode>{barcode(number * 10 + index, prefix)}</z30-barcode>\n"
        f"<z30-call-no>QA76.{number}.{index}</z30-call-no>\n</section-02>"
        for index in range(items)
    ]
    if repeat_item:
        sections.append(sections[0])
    return (
        "\n".join(
            [
                "<printout>",
                "<section-01>",
                f"<z302-name>Reader {number}, Åsa</z302-name>",
                f"<z37-doc-number>{number:09d}</z37-doc-number>",
                f"<z37-item-sequence>{number * 10:06d}</z37-item-sequence>",
                f"<z37-sequence>{number % 10:04d}</z37-sequence>",
                f"<z37-request-number>{number + 7000:09d}</z37-request-number>",
                "<z37-pickup-location>Annex Reading Room</z37-pickup-location>",
                "<z37-end-hold-date>12/12/2026</z37-end-hold-date>",
                "</section-01>",
                *sections,
                "</printout>",
            ]
        )
        + "\n"
    )


def nested_batch(
    numbers: range | list[int],
    *,
    prefix: str = "3123407",
    newline: str = "\n",
    bom: bool = False,
    replace: dict[int, str] | None = None,
) -> bytes:
    """Many slips gathered into one record, as site sorting scripts do: one header and declaration, an outer
    <printout> with the form-* lines and an empty <subject/>, then each slip's own <printout>."""
    text = (
        "\n".join(
            [
                "## - XML_XSL",
                '<?xml version="1.0"?>',
                "<printout>",
                "<form-name>hold-request-slip</form-name>",
                "<form-language>ENG</form-language>",
                "<form-format>00</form-format>",
                "<subject/>",
            ]
        )
        + "\n"
    )
    text += "".join((replace or {}).get(number) or slip(number, prefix=prefix) for number in numbers) + "</printout>\n"
    return (b"\xef\xbb\xbf" if bom else b"") + text.replace("\n", newline).encode("utf-8")


def nested_barcode(number: int, index: int = 0, prefix: str = "3123407") -> str:
    """The barcode of item index of slip number in nested_batch()."""
    return barcode(number * 10 + index, prefix)


def element_list(
    barcodes: list[str], *, newline: str = "\n", bom: bool = False, indent: str = "", blank_lines: bool = False
) -> bytes:
    """A cir-12 paging list as sites' code reads it: one <z30-barcode>NNN</z30-barcode> a line, no header, no root."""
    lines = [f"{indent}<z30-barcode>{code}</z30-barcode>{indent}" for code in barcodes]
    if blank_lines:
        lines = [part for line in lines for part in (line, "")]
    return (b"\xef\xbb\xbf" if bom else b"") + (newline.join(lines) + newline).encode("utf-8")


SAID = {"PLAIN": "a PLAIN", "HTML": "an HTML", "EXECUTE": "an EXECUTE"}  # how a refusal names each kind

NOT_XML_BODIES = {
    "PLAIN": "HOLD REQUEST SLIP\n  Item:    31234070000001\n  Pickup:  Annex Reading Room\n",
    "HTML": "<html><body><h1>Hold request slip</h1><p>31234070000001</p></body></html>\n",
    "EXECUTE": "lpr -P annex /exlibris/aleph/u23_1/usm50/print/slip.1\n",
}


def not_xml_record(kind: str) -> str:
    """A printout ALEPH writes that is not XML: its header names the kind, the rest is its text."""
    return f"## - {kind}\n{NOT_XML_BODIES[kind]}"
