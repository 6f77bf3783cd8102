"""File names as bytes: the forms a name takes (ledger, terminal, archive, upload), over arbitrary bytes."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.archive.folders import Folder
from gateway.core.names import MAX_NAME_BYTES, from_bytes, loaded, printable, safe_name, stored, to_bytes, unprintable
from gateway.state.ledger import Ledger

# A name on a POSIX filesystem: any bytes but NUL and '/', 1 to 255 of them.
posix_names = st.binary(min_size=1, max_size=255).filter(lambda raw: b"\0" not in raw and b"/" not in raw)
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=300)  # lone surrogates too

HIDDEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def shows_nothing_raw(text: str) -> bool:
    """Nothing a terminal would act on, and writable as strict UTF-8."""
    text.encode("utf-8")
    return not any(unicodedata.category(char) in HIDDEN for char in text)


@given(posix_names)
def test_safe_name_is_printable_short_inside_its_folder_and_stable(raw):
    name = safe_name(from_bytes(raw))
    assert shows_nothing_raw(name)
    assert name and "/" not in name and "\\" not in name and name[0] not in ".-"
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert safe_name(name) == name  # an archive name chosen again stays the same


@given(any_text)
def test_safe_name_of_any_text_is_printable(text):
    name = safe_name(text)
    assert shows_nothing_raw(name) and len(name.encode("utf-8")) <= MAX_NAME_BYTES and "/" not in name


@given(posix_names)
def test_printable_shows_every_name_escaped_and_gives_it_back_exactly(raw):
    name = from_bytes(raw)
    shown = printable(name)
    assert shows_nothing_raw(shown)
    assert to_bytes(unprintable(shown)) == raw


@given(any_text)
def test_printable_round_trips_any_text(text):
    assert shows_nothing_raw(printable(text)) and unprintable(printable(text)) == text


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return Folder(tmp_path_factory.mktemp("archive"))


@settings(max_examples=150, deadline=None)
@given(posix_names)
def test_any_name_gets_a_place_in_a_real_folder_twice(archive, raw):
    day = dt.datetime(2026, 11, 28)
    first, second = archive.choose(from_bytes(raw), day), archive.choose(from_bytes(raw), day)
    assert first != second and first.parent == second.parent == archive.root / "2026" / "11" / "28"
    for path in (first, second):
        assert shows_nothing_raw(path.name)
        assert os.path.exists(str(path) + ".json")  # the sidecar that reserves the name was created


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    made = Ledger(tmp_path_factory.mktemp("ledger") / "gateway.db")
    yield made
    made.close()


@settings(max_examples=150, deadline=None)
@given(posix_names)
def test_the_ledger_keeps_any_name_and_origin_byte_for_byte(ledger, raw):
    name = from_bytes(raw)
    origin = "/srv/aleph/print/" + name
    row = ledger.files.get(ledger.files.begin_claim("print", name, origin, 1, 1.0))
    assert to_bytes(row.name) == raw and to_bytes(row.origin) == b"/srv/aleph/print/" + raw
    assert (origin, 1, 1.0) in ledger.files.held("print")
    assert to_bytes(loaded(stored(name))) == raw


def test_a_latin1_name_is_a_blob_of_its_bytes_and_a_utf8_name_stays_text(tmp_path):
    ledger = Ledger(tmp_path / "gateway.db")
    latin1 = ledger.files.begin_claim("print", from_bytes(b"caf\xe9.xml"), from_bytes(b"/in/caf\xe9.xml"), 1, 1.0)
    utf8 = ledger.files.begin_claim("print", "café.xml", "/in/café.xml", 1, 1.0)
    ledger.close()
    database = sqlite3.connect(tmp_path / "gateway.db")
    rows = dict(database.execute("SELECT id, name FROM files").fetchall())
    database.close()
    assert rows == {latin1: b"caf\xe9.xml", utf8: "café.xml"}


@pytest.mark.parametrize(
    "raw,shown,safe",
    [
        (b"caf\xe9.xml", "caf\\xe9.xml", "caf%E9.xml"),
        (b"esc\x1b[2J.xml", "esc\\x1b[2J.xml", "esc%1B[2J.xml"),
        (b"new\nline_barcode", "new\\nline_barcode", "new%0Aline_barcode"),
        (b"-rf_barcode", "-rf_barcode", "%2Drf_barcode"),
        (b"back\\slash", "back\\\\slash", "back%5Cslash"),
        ("rtl\u202egnp.exe".encode(), "rtl\\u202egnp.exe", "rtl%E2%80%AEgnp.exe"),
        ("\u00e9t\u00e9 \u00e0 Paris.xml".encode(), "\u00e9t\u00e9 \u00e0 Paris.xml", "\u00e9t\u00e9 \u00e0 Paris.xml"),
        ("c1\u009bcontrol".encode(), "c1\\u009bcontrol", "c1%C2%9Bcontrol"),
    ],
)
def test_the_documented_forms(raw, shown, safe):
    name = from_bytes(raw)
    assert printable(name) == shown and safe_name(name) == safe


def test_a_255_byte_name_keeps_its_start_and_extension_and_differs_from_its_neighbour():
    first, second = "a" * 251 + ".xml", "a" * 250 + "b.xml"
    assert len(first.encode()) == 255
    assert safe_name(first).startswith("aaaa") and safe_name(first).endswith(".xml")
    assert len(safe_name(first).encode()) <= MAX_NAME_BYTES
    assert safe_name(first) != safe_name(second)
