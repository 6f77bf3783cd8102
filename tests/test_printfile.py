"""ALEPH batch print files: many records in one file, each validated on its own; the file is sent unaltered."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from conftest import SAMPLES
from hypothesis import given, settings
from hypothesis import strategies as st
from printfiles import (
    NOT_XML_BODIES,
    SAID,
    barcode,
    element_list,
    first_line_of,
    nested_barcode,
    nested_batch,
    not_xml_record,
    print_file,
    record,
    slip,
)

from gateway.core import printfile
from gateway.core.errors import FileRefused
from gateway.intake import validation


def inspect(tmp_path, data: bytes, name: str = "usm50.hold_req"):
    """intake.inspect on a real file; return (inspection, records handed over); the file must stay unchanged."""
    path = tmp_path / name
    path.write_bytes(data)
    records: list[printfile.Record] = []
    try:
        return validation.inspect(path, name, 60_000_000, on_record=records.append), records
    finally:
        assert path.read_bytes() == data


def refusal(tmp_path, data: bytes) -> FileRefused:
    with pytest.raises(FileRefused) as caught:
        inspect(tmp_path, data)
    return caught.value


@pytest.mark.parametrize(
    "count,newline,bom", [(1, "\n", False), (3, "\r\n", True), (500, "\r\n", False), (500, "\n", True)]
)
def test_print_files_of_1_3_and_500_records_are_accepted_and_described(tmp_path, count, newline, bom):
    data = print_file(count, newline=newline, bom=bom)
    found, records = inspect(tmp_path, data)
    assert found.kind == "xml" and found.size == len(data)
    assert found.sha256 == hashlib.sha256(data).hexdigest()
    assert found.details["records"] == count == len(re.findall(rb"(?m)^(?:\xef\xbb\xbf)?## - XML_XSL", data))
    assert found.details["items"] == count
    assert found.details["form_names"] == {"hold-request-slip": count}
    assert found.details["routing_line"] == "## - XML_XSL"
    assert [r.number for r in records] == list(range(1, count + 1))
    assert all(r.problem is None for r in records)
    for r in records:
        assert r.barcodes == (barcode(r.number),)
        assert r.request_number == f"{r.number + 4000:09d}"
        assert r.request_id == f"{r.number:09d}0000100001"
        assert r.pickup_location == ("Law Library" if r.number % 2 else "Main Library Circulation Desk")
        assert r.header == "## - XML_XSL" and r.form_name == "hold-request-slip"
        assert r.line == first_line_of(data, r.number)


def test_the_samples_count_as_ALEPH_site_scripts_count_them(tmp_path):
    for name, expected in (("usm50.hold_req", 3), ("hold-request-slip-0001.xml", 1)):
        data = (SAMPLES / name).read_bytes()
        found, records = inspect(tmp_path, data, name)
        assert found.details["records"] == expected == data.count(b"\n## - XML_XSL") + data.startswith(b"## - XML")
    assert records[0].barcodes == ("31234001234567",)


def test_the_sample_of_sorted_slips_is_a_record_a_slip_and_the_plain_sample_is_refused(tmp_path):
    found, records = inspect(tmp_path, (SAMPLES / "usm50.hold_req_sorted").read_bytes(), "usm50.hold_req_sorted")
    assert found.details["records"] == 3 and found.details["items"] == 4
    assert [(r.barcodes, r.request_number, r.request_id, r.pickup_location) for r in records] == [
        (("31234005570001",), "000004701", "0003100010000100001", "Main Library Circulation Desk"),
        (("31234005570002", "31234005570003"), "000004702", "0003100020000200001", "Law Library"),
        (("31234005570004",), "000004703", "0003100030000100002", "Main Library Circulation Desk"),
    ]
    plain = refusal(tmp_path, (SAMPLES / "usm50.hold_req_plain").read_bytes())
    assert plain.reason == "a PLAIN printout, not XML: route only XML_XSL output for CaiaSoft to this folder"


def test_extra_header_lines_belong_to_the_record_they_open(tmp_path):
    data = print_file(14)  # records 7 and 14 have a second header line
    found, records = inspect(tmp_path, data)
    assert found.details["records"] == 14
    assert data.count(b"## - PRINTER=CAIASOFT") == 2
    assert records[6].header == "## - XML_XSL" and records[6].barcodes == (barcode(7),)


def test_a_single_document_without_any_header_is_one_record(tmp_path):
    found, records = inspect(tmp_path, b'<?xml version="1.0"?><printout><z30-barcode>X1</z30-barcode></printout>')
    assert found.details["records"] == 1 and records[0].header is None and records[0].barcodes == ("X1",)


HOSTILE = {
    # name: (record text, the line of the record (0 = its header line) the parser stops at, words in the reason)
    "doctype": (
        '## - XML_XSL\n<?xml version="1.0"?>\n<!DOCTYPE printout [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
        "<printout>&x;</printout>\n",
        2,
        "DOCTYPE",
    ),
    "entity bomb": (
        '## - XML_XSL\n<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>\n<printout>&lol2;</printout>\n',
        2,
        "DOCTYPE",
    ),
    "undefined entity": (
        '## - XML_XSL\n<?xml version="1.0"?>\n<printout>\n<z30-barcode>X</z30-barcode>\n'
        "<z13-title>&secret;</z13-title>\n</printout>\n",
        4,
        "undefined entity",
    ),
    "malformed": (
        '## - XML_XSL\n<?xml version="1.0"?>\n<printout>\n<section-01>\n</section-02>\n</printout>\n',
        4,
        "mismatched tag",
    ),
    "junk after the document": (
        "## - XML_XSL\n<printout><z30-barcode>X</z30-barcode></printout>\nstray text\n",
        2,
        "junk after document element",
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_hostile_content_in_one_record_refuses_the_file_naming_the_record(tmp_path, kind, position):
    text, offset, words = HOSTILE[kind]
    count = 9
    number = {"first": 1, "middle": 5, "last": count}[position]
    data = print_file(count, replace={number: text})
    start = first_line_of(data, number)
    refused = refusal(tmp_path, data)
    assert refused.reason.startswith(f'record {number} of {count} (line {start}, "## - XML_XSL"): ')
    assert words in refused.reason
    assert refused.reason.endswith(f" at line {start + offset} of the file")
    assert refused.at_end is False
    assert "more bad record" not in refused.reason


def test_every_bad_record_is_counted_and_the_first_ones_named(tmp_path):
    bad = HOSTILE["malformed"][0]
    data = print_file(20, replace={number: bad for number in (2, 4, 6, 8, 10, 12, 14, 16)})
    reason = refusal(tmp_path, data).reason
    assert reason.startswith("record 2 of 20 ")
    assert "; 7 more bad record(s): 4 (line " in reason and reason.endswith(" and 3 more")


def test_the_good_records_of_a_refused_file_are_still_handed_over(tmp_path):
    path = tmp_path / "batch.hold_req"
    path.write_bytes(print_file(3, replace={2: HOSTILE["malformed"][0]}))
    records: list[printfile.Record] = []
    with pytest.raises(FileRefused):
        validation.inspect(path, path.name, 1_000_000, on_record=records.append)
    assert [(r.number, r.barcodes, r.problem is None) for r in records] == [
        (1, (barcode(1),), True),
        (2, (), False),
        (3, (barcode(3),), True),
    ]
    assert records[1].problem.line == first_line_of(path.read_bytes(), 2) + 4


@pytest.mark.parametrize("cut", [10, 200, -12])
def test_a_last_record_cut_short_is_refused_as_ending_early(tmp_path, cut):
    whole = print_file(3)
    data = whole[:cut] if cut < 0 else whole + record(4)[:cut].encode()
    refused = refusal(tmp_path, data)
    assert refused.at_end is True, refused.reason
    assert f"record {3 if cut < 0 else 4} of " in refused.reason


def test_a_header_with_nothing_after_it_at_the_end_is_ending_early(tmp_path):
    refused = refusal(tmp_path, print_file(2) + b"## - XML_XSL\n")
    assert refused.at_end and "record 3 of 3" in refused.reason and "has its header but no XML" in refused.reason


@pytest.mark.parametrize(
    "data", [b"## - XML_XSL\n## - PRINTER=CAIASOFT\n", b"## - XML_XSL"], ids=["header-block", "header-without-newline"]
)
def test_a_file_of_headers_only_is_a_print_file_without_its_xml_not_a_list(tmp_path, data):
    refused = refusal(tmp_path, data)
    assert refused.reason.startswith('record 1 of 1 (line 1, "## - XML_XSL"): the record has its header but no XML')
    assert refused.at_end  # ALEPH may still be writing it: refused only after the grace


def test_text_where_a_records_xml_should_be_refuses_the_file(tmp_path):
    refused = refusal(tmp_path, b"## - XML_XSL\n31234001111111\n<printout/>\n")
    assert refused.reason.startswith('record 1 of 1 (line 1, "## - XML_XSL"): its XML is not well-formed')
    assert not refused.at_end


def test_a_record_in_latin1_without_a_declaration_is_refused_saying_it_is_not_utf8(tmp_path):
    body = "<z13-title>Caf\u00e9 cr\u00e8me</z13-title>".encode("latin-1")
    refused = refusal(tmp_path, print_file(2) + b"## - XML_XSL\n<printout>\n" + body + b"\n</printout>\n")
    assert refused.reason.startswith('record 3 of 3 (line 31, "## - XML_XSL"): its text is not UTF-8 (byte 0xE9): ')
    assert 'encoding="ISO-8859-1"' in refused.reason and refused.reason.endswith("at line 33 of the file")
    markup = refusal(tmp_path, b"## - XML_XSL\n<printout><a b></a></printout>\n")
    assert "its XML is not well-formed (" in markup.reason and "not well-formed (not well-formed" not in markup.reason


def test_a_record_cut_short_before_the_next_one_is_not_ending_early(tmp_path):
    data = print_file(3, replace={2: record(2)[:150] + "\n"})
    refused = refusal(tmp_path, data)
    assert refused.at_end is False and refused.reason.startswith("record 2 of 3 ")


def test_a_bad_record_at_the_end_that_is_not_cut_short_is_not_ending_early(tmp_path):
    refused = refusal(tmp_path, print_file(3, replace={3: HOSTILE["malformed"][0]}))
    assert refused.at_end is False


def test_a_long_line_inside_a_record_is_read_in_pieces(tmp_path):
    title = "A" * (3 * printfile.PIECE_BYTES)
    data = print_file(2, replace={1: record(1, body=f"<z13-title>{title}</z13-title>")})
    found, records = inspect(tmp_path, data)
    assert found.details["records"] == 2 and records[0].barcodes == (barcode(1),)


def test_field_values_kept_are_short_whatever_the_file_holds(tmp_path):
    data = print_file(1, replace={1: record(1, body=f"<z37-pickup-location>{'P' * 5000}</z37-pickup-location>")})
    _, records = inspect(tmp_path, data)
    assert records[0].pickup_location == "Law Library"  # the first value wins; a long one would be cut
    data = print_file(1, replace={1: record(1, body="").replace("Law Library", "L" * 5000)})
    _, records = inspect(tmp_path, data)
    assert records[0].pickup_location == "L" * printfile.MAX_VALUE_CHARS


def test_scan_reads_any_binary_stream(tmp_path):
    records = list(printfile.scan(io.BytesIO(print_file(4, newline="\r\n"))))
    assert [r.barcodes for r in records] == [(barcode(n),) for n in range(1, 5)]


# -- barcode lists ------------------------------------------------------------------


def test_a_barcode_list_hands_over_its_barcodes(tmp_path):
    data = (SAMPLES / "anx.cir.12.paging20261128_am_barcode").read_bytes()
    found, records = inspect(tmp_path, data, "anx.cir.12.paging20261128_am_barcode")
    assert found.kind == "text" and found.details["items"] == 4 and found.details["line_form"] == "<z30-barcode>"
    assert [r.barcodes[0] for r in records] == re.findall(r"<z30-barcode>(\w+)</z30-barcode>", data.decode())
    assert [r.line for r in records] == [1, 2, 3, 4]


def test_a_barcode_list_with_crlf_a_bom_and_a_title_line(tmp_path):
    data = b"\xef\xbb\xbfPaging list 28/11\r\n31234001111111\r\n\r\n 31234002222222 \r\n"
    found, records = inspect(tmp_path, data, "list_barcode")
    assert found.details == {"lines": 3, "items": 2, "encoding": "utf-8"}
    assert [(r.number, r.line, r.barcodes) for r in records] == [
        (1, 2, ("31234001111111",)),
        (2, 4, ("31234002222222",)),
    ]


def test_a_barcode_list_read_twice_for_its_fallback_encoding_hands_each_barcode_over_once(tmp_path):
    path = tmp_path / "list_barcode"
    path.write_bytes("Liste für Müller\n31234001111111\n".encode("latin-1"))
    records: list[printfile.Record] = []
    found = validation.inspect(path, path.name, 1000, "cp1252", on_record=records.append)
    assert found.details["encoding"] == "cp1252" and [r.barcodes for r in records] == [("31234001111111",)]


def test_a_record_in_its_declared_encoding_is_read_and_an_unknown_encoding_refused(tmp_path):
    latin1 = record(2).replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="ISO-8859-1"?>').replace("—", "-")
    data = print_file(2, replace={2: latin1}).replace(latin1.encode(), latin1.encode("latin-1"))
    found, records = inspect(tmp_path, data)
    assert found.details["records"] == 2 and records[1].barcodes == (barcode(2),)
    bogus = record(2).replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="no-such-codec"?>')
    refused = refusal(tmp_path, print_file(2, replace={2: bogus}))
    assert refused.reason.startswith("record 2 of 2 ") and "unknown encoding" in refused.reason


# -- any file built of records, read in pieces of any size ------------------------------


class _InPieces:
    """A binary stream that never gives more than `most` bytes at once (long lines come in pieces)."""

    def __init__(self, data: bytes, most: int):
        self.stream, self.most = io.BytesIO(data), most

    def readline(self, limit: int = -1, /) -> bytes:
        return self.stream.readline(min(limit, self.most) if limit > 0 else self.most)


_SHAPES = st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=12)


@settings(max_examples=80, deadline=None)
@given(
    shapes=_SHAPES,
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    most=st.integers(1, 80),
    bad=st.integers(0, 12),
)
def test_any_print_file_splits_into_its_records_and_names_the_bad_one(shapes, newline, bom, most, bad):
    texts = []
    for number, (extra_header, declaration, blank_line) in enumerate(shapes, 1):
        headers = ("## - XML_XSL", "## - PRINTER=CAIASOFT") if extra_header else ("## - XML_XSL",)
        text = record(number, headers=headers, declaration=declaration)
        if blank_line:  # a blank line between the header block and the XML
            text = text.replace(headers[-1] + "\n", headers[-1] + "\n\n", 1)
        if number == bad:
            text = text.replace("</section-01>", "</section-02>")
        texts.append(text)
    data = (b"\xef\xbb\xbf" if bom else b"") + "".join(texts).replace("\n", newline).encode()
    records = list(printfile.scan(_InPieces(data, most)))
    assert [r.number for r in records] == list(range(1, len(shapes) + 1))
    assert [r.barcodes for r in records] == [(barcode(n),) for n in range(1, len(shapes) + 1)]
    assert [r.line for r in records] == [first_line_of(data, n) for n in range(1, len(shapes) + 1)]
    for r in records:
        if r.number == bad:
            lines = data.split(b"\n")
            assert r.problem is not None and not r.problem.at_end
            assert lines[r.problem.line - 1].startswith(b"</section-02>")
        else:
            assert r.problem is None


def test_a_huge_barcode_list_is_counted_whole_and_listed_up_to_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "MAX_TEXT_ITEMS", 3)
    found, records = inspect(tmp_path, "".join(f"3123400000000{n}\n" for n in range(5)).encode(), "list_barcode")
    assert found.details["items"] == 5 and found.details["items_not_listed"] == 2
    assert [r.barcodes[0] for r in records] == ["31234000000000", "31234000000001", "31234000000002"]


# -- cir-12 paging lists of <z30-barcode> lines -------------------------------------------

ELEMENT_BARCODES = ["31234070000001", "31234070000002", "A0123-45", "31234070000004"]


@pytest.mark.parametrize(
    "newline,bom,indent,blank_lines",
    [("\n", False, "", False), ("\r\n", True, "  ", True), ("\r\n", False, "\t", False), ("\n", True, "", True)],
)
def test_a_cir12_list_of_z30_barcode_lines_is_a_barcode_list(tmp_path, newline, bom, indent, blank_lines):
    data = element_list(ELEMENT_BARCODES, newline=newline, bom=bom, indent=indent, blank_lines=blank_lines)
    found, records = inspect(tmp_path, data, "anx.cir.12.paging20261128_am_barcode")
    assert found.kind == "text" and found.sha256 == hashlib.sha256(data).hexdigest() and found.size == len(data)
    assert found.details == {"lines": 4, "items": 4, "encoding": "utf-8", "line_form": "<z30-barcode>"}
    assert [r.barcodes for r in records] == [(code,) for code in ELEMENT_BARCODES]
    step = 2 if blank_lines else 1
    assert [r.line for r in records] == [1 + step * index for index in range(4)]


def test_a_one_line_cir12_list_and_one_named_xml_are_lists_too(tmp_path):
    found, records = inspect(tmp_path, b"<z30-barcode> 31234070000009 </z30-barcode>", "paging.xml")
    assert found.kind == "text" and [r.barcodes for r in records] == [("31234070000009",)]


JUNK_LINES = {
    "a plain barcode": ("31234079999999", 'line 3 ("31234079999999") is not a <z30-barcode> line'),
    "stray text": ("Paging list 28/11", 'line 3 ("Paging list 28/11") is not a <z30-barcode> line'),
    "an XML element": ("<printout>", 'line 3 ("<printout>") is not a <z30-barcode> line'),
    "two elements on a line": (
        "<z30-barcode>12</z30-barcode><z30-barcode>56</z30-barcode>",
        'line 3 ("<z30-barcode>12</z30-barcode><z30-barcode>56</z30-barcode>") is not a <z30-barcode> line',
    ),
    "an empty element": (
        "<z30-barcode></z30-barcode>",
        'line 3 ("<z30-barcode></z30-barcode>") does not hold one barcode',
    ),
    "two words": (
        "<z30-barcode>3123 4070</z30-barcode>",
        'line 3 ("<z30-barcode>3123 4070</z30-barcode>") does not hold one barcode',
    ),
    "a control character": (
        "<z30-barcode>\x1b[2J</z30-barcode>",
        'line 3 ("<z30-barcode>\\x1b[2J</z30-barcode>") does not hold one barcode',
    ),
}


@pytest.mark.parametrize("kind", sorted(JUNK_LINES))
def test_a_cir12_list_with_a_line_that_is_not_one_element_is_refused_naming_the_line(tmp_path, kind):
    junk, named = JUNK_LINES[kind]
    lines = element_list(ELEMENT_BARCODES, newline="\r\n").split(b"\r\n")
    data = b"\r\n".join([*lines[:2], junk.encode(), *lines[2:]])
    path = tmp_path / "anx.cir.12.paging20261128_am_barcode"
    path.write_bytes(data)
    records: list[printfile.Record] = []
    with pytest.raises(FileRefused) as caught:
        validation.inspect(path, path.name, 1_000_000, on_record=records.append)
    assert caught.value.reason == (
        f"{named}, in a cir-12 barcode list of <z30-barcode> lines (the first at line 1): "
        "every line must be one <z30-barcode>BARCODE</z30-barcode> element; nothing of "
        "this file was sent"
    )
    assert not caught.value.at_end
    assert set(ELEMENT_BARCODES) <= {code for r in records for code in r.barcodes}  # still indexed for `find`


def test_elements_after_a_plain_line_are_a_mixed_list_refused_naming_the_first_plain_line(tmp_path):
    refused = refusal(tmp_path, b"Paging list 28/11\n" + element_list(ELEMENT_BARCODES))
    assert refused.reason.startswith(
        'line 1 ("Paging list 28/11") is not a <z30-barcode> line, in a cir-12 '
        "barcode list of <z30-barcode> lines (the first at line 2)"
    )


def test_a_long_junk_line_is_named_by_its_start_only(tmp_path):
    refused = refusal(tmp_path, element_list(ELEMENT_BARCODES) + b"x" * 5000 + b"\n")
    assert refused.reason.startswith(f'line 5 ("{"x" * 60}...") is not a <z30-barcode> line')
    assert len(refused.reason) < 300


# -- batches of slips gathered into one <printout> by a site's script ------------------------


def test_each_slip_of_a_nested_batch_is_a_record_with_its_own_request(tmp_path):
    data = nested_batch(range(1, 41), newline="\r\n", bom=True)
    found, records = inspect(tmp_path, data, "annex.sorted")
    assert found.kind == "xml"
    assert found.details["records"] == 40 and found.details["items"] == 40
    assert found.details["form_names"] == {"hold-request-slip": 40} and found.details["routing_line"] == "## - XML_XSL"
    lines = data.split(b"\r\n")
    slip_lines = [index for index, line in enumerate(lines, 1) if line == b"<printout>"][1:]
    assert [(r.number, r.line) for r in records] == list(zip(range(1, 41), slip_lines, strict=True))
    for r, number in zip(records, range(1, 41), strict=True):
        assert r.problem is None and r.header == "## - XML_XSL" and r.form_name == "hold-request-slip"
        assert r.barcodes == (nested_barcode(number),)
        assert r.request_number == f"{number + 7000:09d}"
        assert r.request_id == f"{number:09d}{number * 10:06d}{number % 10:04d}"
        assert r.pickup_location == "Annex Reading Room"


def test_a_slip_whose_item_section_repeats_keeps_each_barcode_once_in_order(tmp_path):
    data = nested_batch([1, 2, 3], replace={2: slip(2, items=3, repeat_item=True)})
    _, records = inspect(tmp_path, data)
    assert [r.barcodes for r in records] == [
        (nested_barcode(1),),
        tuple(nested_barcode(2, index) for index in range(3)),
        (nested_barcode(3),),
    ]
    assert records[1].request_number == f"{2 + 7000:09d}"


def test_records_and_nested_batches_in_one_file_are_numbered_in_order(tmp_path):
    data = print_file(2) + nested_batch([5, 6, 7]) + record(3).encode()
    found, records = inspect(tmp_path, data)
    assert found.details["records"] == 6
    assert [(r.number, r.barcodes) for r in records] == [
        (1, (barcode(1),)),
        (2, (barcode(2),)),
        (3, (nested_barcode(5),)),
        (4, (nested_barcode(6),)),
        (5, (nested_barcode(7),)),
        (6, (barcode(3),)),
    ]


def test_a_bad_slip_in_a_nested_batch_is_named_and_the_others_handed_over(tmp_path):
    data = nested_batch(range(1, 6), replace={3: slip(3).replace("</section-02>", "</section-2>")})
    path = tmp_path / "annex.sorted"
    path.write_bytes(data)
    records: list[printfile.Record] = []
    with pytest.raises(FileRefused) as caught:
        validation.inspect(path, path.name, 1_000_000, on_record=records.append)
    lines = data.split(b"\n")
    start = [index for index, line in enumerate(lines, 1) if line == b"<printout>"][3]
    wrong = lines.index(b"</section-2>") + 1
    assert caught.value.reason == (
        f'record 3 of 3 (line {start}, "## - XML_XSL"): its XML is not well-formed '
        f"(mismatched tag) at line {wrong} of the file"
    )
    assert not caught.value.at_end
    assert [(r.number, r.barcodes, r.problem is None) for r in records] == [
        (1, (nested_barcode(1),), True),
        (2, (nested_barcode(2),), True),
        (3, (nested_barcode(3),), False),
    ]


def test_a_nested_batch_cut_short_is_ending_early(tmp_path):
    whole = nested_batch(range(1, 6))
    refused = refusal(tmp_path, whole[: whole.index(b"<z37-sequence>0003")])
    assert refused.at_end is True and refused.reason.startswith("record 3 of 3 ")
    refused = refusal(tmp_path, whole.removesuffix(b"</printout>\n"))  # every slip closed, not the batch
    assert refused.at_end is True and refused.reason.startswith(
        'record 6 of 6 (line 1, "## - XML_XSL"): its XML ends before its document does'
    )


def test_junk_after_a_nested_batch_is_a_record_of_its_own_and_nothing_is_lost(tmp_path):
    refused = refusal(tmp_path, nested_batch([1, 2]) + b"stray\n")
    assert refused.reason.startswith(
        'record 3 of 3 (line 1, "## - XML_XSL"): its XML is not well-formed (junk after document element)'
    )
    outside = nested_batch([1, 2]).replace(b"<subject/>", b"<subject/><z30-barcode>31234079999999</z30-barcode>")
    _, records = inspect(tmp_path, outside)
    assert [r.barcodes for r in records] == [(nested_barcode(1),), (nested_barcode(2),), ("31234079999999",)]


def test_scan_hands_each_slip_over_as_it_closes(tmp_path):
    data = nested_batch(range(1, 201))
    stream = io.BytesIO(data)
    first = next(printfile.scan(stream))
    assert first.barcodes == (nested_barcode(1),)
    assert stream.tell() < len(data) // 50, "the first slip came before the file was read"


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 8), most=st.integers(1, 60), newline=st.sampled_from(["\n", "\r\n"]))
def test_a_nested_batch_read_in_pieces_of_any_size_gives_the_same_records(count, most, newline):
    data = nested_batch(range(1, count + 1), newline=newline)
    whole = list(printfile.scan(io.BytesIO(data)))
    assert list(printfile.scan(_InPieces(data, most))) == whole
    assert [r.barcodes for r in whole] == [(nested_barcode(n),) for n in range(1, count + 1)]


# -- printouts that are not XML ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(NOT_XML_BODIES))
def test_a_printout_that_is_not_xml_is_refused_naming_what_it_is(tmp_path, kind):
    data = not_xml_record(kind).encode()
    refused = refusal(tmp_path, data)
    assert refused.reason == f"{SAID[kind]} printout, not XML: route only XML_XSL output for CaiaSoft to this folder"
    assert not refused.at_end
    records = list(printfile.scan(io.BytesIO(data)))
    assert [(r.header, r.barcodes, r.problem.printout) for r in records] == [(f"## - {kind}", (), kind)]
    many = refusal(tmp_path, (not_xml_record(kind) * 3).encode())
    assert many.reason == (
        f"{SAID[kind]} printout (3 records), not XML: route only XML_XSL output for CaiaSoft to this folder"
    )


def test_printouts_of_several_kinds_that_are_not_xml_are_named_together(tmp_path):
    refused = refusal(tmp_path, (not_xml_record("PLAIN") + not_xml_record("HTML") + "## - PLAIN\n\n").encode())
    assert refused.reason == (
        "PLAIN and HTML printouts (3 records), not XML: route only XML_XSL output for CaiaSoft to this folder"
    )


def test_a_file_mixing_xml_and_other_printouts_is_refused_whole_naming_the_first_other(tmp_path):
    data = print_file(3, replace={2: not_xml_record("EXECUTE") + "## - PRINTER=CAIASOFT\n"})
    refused = refusal(tmp_path, data)
    line = data.split(b"\n").index(b"## - EXECUTE") + 1
    assert refused.reason == (
        f'record 2 of 3 (line {line}, "## - EXECUTE"): an EXECUTE printout, not XML: route only '
        "XML_XSL output for CaiaSoft to this folder"
    )


def test_the_first_kind_named_in_a_header_block_is_the_records_kind(tmp_path):
    xml_first = record(1, headers=("## - XML_XSL", "## - PLAIN"))
    found, records = inspect(tmp_path, xml_first.encode())
    assert found.details["records"] == 1 and records[0].barcodes == (barcode(1),)
    html_after_a_routing_line = "## - PRINTER=ANNEX\n" + not_xml_record("HTML")
    assert refusal(tmp_path, html_after_a_routing_line.encode()).reason.startswith("an HTML printout, not XML")


def test_every_records_kind_is_named_however_many_records_a_file_of_other_printouts_holds(tmp_path):
    data = (not_xml_record("PLAIN") * (validation.MAX_BAD_RECORDS_NAMED + 2) + not_xml_record("EXECUTE")).encode()
    count = validation.MAX_BAD_RECORDS_NAMED + 3
    assert refusal(tmp_path, data).reason == (
        f"PLAIN and EXECUTE printouts ({count} records), not XML: route only XML_XSL output for CaiaSoft to this folder"
    )
