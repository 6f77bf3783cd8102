"""Intake: readiness, names, and validation (which never changes the file)."""

from __future__ import annotations

import hashlib

import pytest
from conftest import SAMPLES

from gateway.core.errors import FileRefused
from gateway.intake import readiness, validation
from gateway.sources import base


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- readiness ---------------------------------------------------------------


def test_file_is_ready_only_after_size_and_mtime_hold_for_settle_seconds():
    clock = Clock()
    settler = readiness.Settler(2.0, trust_mtime=False, clock=clock)
    assert not settler.observe("a", 10, 5.0)
    clock.now += 1.5
    assert not settler.observe("a", 10, 5.0)
    assert settler.wait_hint("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert settler.observe("a", 10, 5.0)


def test_a_growing_file_restarts_the_settle_time():
    clock = Clock()
    settler = readiness.Settler(2.0, trust_mtime=False, clock=clock)
    settler.observe("a", 10, 5.0)
    clock.now += 1.9
    assert not settler.observe("a", 20, 6.0)  # it grew: start again
    clock.now += 1.9
    assert not settler.observe("a", 20, 6.0)
    clock.now += 0.1
    assert settler.observe("a", 20, 6.0)


def test_an_old_mtime_on_a_local_disk_is_ready_at_once_but_not_on_a_network_mount():
    clock, wall = Clock(), Clock(10_000.0)
    local = readiness.Settler(2.0, trust_mtime=True, clock=clock, wall_clock=wall)
    network = readiness.Settler(2.0, trust_mtime=False, clock=clock, wall_clock=wall)
    assert local.observe("a", 10, 9_000.0)
    assert not network.observe("a", 10, 9_000.0)
    assert not local.observe("b", 10, 9_999.5)  # written half a second ago


def test_settler_forgets_files_that_left():
    settler = readiness.Settler(1.0, clock=Clock())
    settler.observe("a", 1, 1.0)
    settler.observe("b", 1, 1.0)
    settler.keep_only({"b"})
    assert settler.pending() == ["b"]


@pytest.mark.parametrize(
    "name,taken",
    [
        ("slip.xml", True),
        ("anx.cir.12.paging20261128_am_barcode", True),
        (".hidden", False),
        ("slip.xml.tmp", False),
        ("upload.part", False),
        ("slip.xml~", False),
    ],
)
def test_hidden_and_temporary_names_are_not_taken(name, taken):
    assert base.wanted(name, ("*",)) is taken


def test_include_patterns():
    assert base.wanted("a_barcode", ("*_barcode", "*.xml"))
    assert not base.wanted("notes.txt", ("*_barcode", "*.xml"))


# -- validation ---------------------------------------------------------------


def check(tmp_path, data: bytes, name: str = "file", **options) -> validation.Inspection:
    path = tmp_path / name
    path.write_bytes(data)
    found = validation.inspect(path, name, options.pop("max_bytes", 1_000_000), **options)
    assert path.read_bytes() == data  # validation never rewrites
    return found


def refused(tmp_path, data: bytes, name: str = "file", **options) -> str:
    with pytest.raises(FileRefused) as caught:
        check(tmp_path, data, name, **options)
    return caught.value.reason


def test_aleph_slip_with_routing_line_is_xml(tmp_path):
    data = (SAMPLES / "hold-request-slip-0001.xml").read_bytes()
    found = check(tmp_path, data, "hold-request-slip-0001.xml")
    assert found.kind == "xml"
    assert found.sha256 == hashlib.sha256(data).hexdigest()
    assert found.details["root"] == "printout"
    assert found.details["form_name"] == "hold-request-slip"
    assert found.details["items"] == 1
    assert found.details["routing_line"] == "## - XML_XSL"


def test_xml_is_detected_by_content_not_name(tmp_path):
    assert check(tmp_path, b'<?xml version="1.0"?><printout/>', "slip_20261128").kind == "xml"


def test_barcode_list_is_text(tmp_path):
    found = check(tmp_path, (SAMPLES / "anx.cir.12.paging20261128_am_barcode").read_bytes())
    assert found.kind == "text"
    assert found.details["lines"] == 4


def test_external_entity_is_refused(tmp_path):
    xxe = b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]><printout>&x;</printout>'
    assert "DOCTYPE" in refused(tmp_path, xxe)


def test_entity_bomb_is_refused(tmp_path):
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><printout>&lol2;</printout>'
    )
    assert "DOCTYPE" in refused(tmp_path, bomb)


def test_broken_xml_is_refused_with_the_parser_position(tmp_path):
    assert "not well-formed" in refused(tmp_path, b"## - XML_XSL\n<printout><section-01></printout>")


def test_binary_is_refused(tmp_path):
    assert "binary" in refused(tmp_path, b"%PDF-1.4\x00\x01\x02binary")
    assert "binary" in refused(tmp_path, bytes(range(1, 32)) * 10)


@pytest.mark.parametrize(
    "encoding,named",
    [
        ("utf-16", "UTF-16 (little-endian, with a byte order mark)"),
        ("utf-16-be", "UTF-16 (big-endian, without a byte order mark)"),
        ("utf-16-le", "UTF-16 (little-endian, without a byte order mark)"),
        ("utf-32", "UTF-32 (little-endian, with a byte order mark)"),
    ],
)
def test_utf16_and_utf32_text_is_refused_by_its_encoding_not_as_binary(tmp_path, encoding, named):
    data = "31234001234567\n31234007654321\n".encode(encoding)
    if encoding == "utf-16-be":
        data = "\ufeff".encode(encoding)[2:] + data  # no BOM at all
    reason = refused(tmp_path, data)
    assert reason.startswith(f"text is {named}") and "save it as UTF-8" in reason and "binary" not in reason


def test_bad_utf8_is_refused_unless_a_fallback_is_configured(tmp_path):
    latin1 = "31234001234567 Müller\n".encode("latin-1")
    assert "not UTF-8: byte 0xfc at offset 16" in refused(tmp_path, latin1)
    assert check(tmp_path, latin1, fallback_encoding="cp1252").details["encoding"] == "cp1252"


def test_empty_and_oversized_files_are_refused(tmp_path):
    assert refused(tmp_path, b"") == "file is empty"
    assert refused(tmp_path, b" \n\n") == "file holds only blank space"
    assert "above max_file_bytes (10)" in refused(tmp_path, b"31234001234567\n", max_bytes=10)


def test_a_file_named_xml_that_is_not_xml_is_refused(tmp_path):
    assert "named .xml" in refused(tmp_path, b"31234001234567\n", "slip.xml")


def test_utf8_bom_is_accepted(tmp_path):
    assert check(tmp_path, b"\xef\xbb\xbf<printout/>").kind == "xml"
