"""`find BARCODE`: the item index in the ledger, and the sidecars of files archived before it existed."""

from __future__ import annotations

import json
import sqlite3

from printfiles import barcode, print_file, record

from gateway.core.printfile import Record
from gateway.core.states import Verdict
from gateway.report import find
from gateway.sources.base import Entry
from gateway.state import ledger as ledger_module
from gateway.state import schema
from gateway.state.itemindex import ITEMS_FOR_BARCODE
from gateway.state.ledger import Ledger

TARGET = "31234000000042"


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _file(ledger: Ledger, clock: Clock, name: str, records: list[Record], outcome: str, folder, answer=None) -> int:
    """One file through its life in the ledger: taken, its records stored, queued, then (maybe) finished."""
    row_id = ledger.files.begin_claim("print", name, f"/aleph/print/{name}", 100, clock.now)
    ledger.files.claimed(row_id)
    ledger.items.store_records([row_id], [(row_id, r) for r in records])
    ledger.files.queued(row_id, "xml", "0" * 64, 100, {"records": len(records)})
    if outcome != "queued":
        clock.now += 1
        ledger.files.assign(row_id)
        target = folder / "2026" / "11" / "28" / name
        ledger.files.answered(
            row_id,
            Verdict.ACCEPTED if outcome == "accepted" else Verdict.REFUSED,
            "accepted" if outcome == "accepted" else "CaiaSoft refused the file: no",
            answer=answer,
            uploaded=True,
        )
        ledger.files.placing(row_id, target)
        ledger.files.finished(row_id, target)
    clock.now += 60
    return row_id


def test_find_answers_from_a_ledger_of_many_files_newest_first(tmp_path):
    clock = Clock(1_795_000_000.0)
    ledger = Ledger(tmp_path / "gateway.db", clock=clock)
    many = 20_000
    ids = ledger.files.begin_claims(
        "print", [Entry(f"run{n}.hold_req", f"/p/run{n}.hold_req", 100, 1.0) for n in range(many)]
    )
    ledger.items.store_records(
        ids,
        [
            (file_id, Record(number=k, line=1 + 27 * (k - 1), barcodes=(barcode(3 * index + k, "3123408"),)))
            for index, file_id in enumerate(ids)
            for k in (1, 2, 3)
        ],
    )
    clock.now += 3600
    wanted = Record(
        number=2,
        line=28,
        header="## - XML_XSL",
        form_name="hold-request-slip",
        barcodes=(TARGET,),
        request_number="000004602",
        request_id="0002100020000100001",
        pickup_location="Law Library",
    )
    other = Record(number=1, line=1, barcodes=(barcode(1),))
    answer = {
        "success": True,
        "error": "",
        "results": [
            {"item": barcode(1), "deny": "N", "istatus": "Item Requested"},
            {"item": TARGET, "deny": "Y", "istatus": "Invalid Stop Code"},
        ],
    }
    accepted = _file(ledger, clock, "usm50.hold_req", [other, wanted], "accepted", tmp_path / "archive", answer)
    refused = _file(ledger, clock, "usm50.hold_req.1", [wanted], "refused", tmp_path / "error")
    queued = _file(
        ledger,
        clock,
        "anx.cir.12.paging_barcode",
        [Record(number=1, line=3, barcodes=(TARGET,))],
        "queued",
        tmp_path / "archive",
    )

    found = find.find(ledger, TARGET, [tmp_path / "archive", tmp_path / "error"])
    assert [entry["ledger_id"] for entry in found] == [queued, refused, accepted]
    newest, middle, oldest = found
    assert newest["outcome"] == "queued" and newest["path"] is None and newest["sent"] is None
    assert middle["outcome"] == "refused" and middle["reason"] == "CaiaSoft refused the file: no"
    assert middle["path"] == str(tmp_path / "error" / "2026" / "11" / "28" / "usm50.hold_req.1")
    assert oldest == {
        **oldest,
        "outcome": "accepted",
        "file": "usm50.hold_req",
        "source": "print",
        "caiasoft": {"deny": "Y", "istatus": "Invalid Stop Code"},
        "record": 2,
        "line": 28,
        "request_number": "000004602",
        "pickup_location": "Law Library",
        "reason": None,
        "path": str(tmp_path / "archive" / "2026" / "11" / "28" / "usm50.hold_req"),
    }
    assert oldest["taken"] < oldest["sent"] < middle["taken"]
    text = find.render(TARGET, found)
    assert text.startswith(f"{TARGET}: in 3 request file(s), newest first")
    assert "CaiaSoft  Invalid Stop Code (DENIED)" in text
    assert "usm50.hold_req  (record 2, form hold-request-slip, request 000004602, pickup Law Library)" in text
    assert find.find(ledger, barcode(3 * 777 + 2, "3123408"), [])[0]["record"] == 2
    assert find.find(ledger, "no-such-item", []) == []
    assert [entry["path_exists"] for entry in found] == [False, False, False]  # this ledger's files are not on disk
    assert "(no longer there: removed by retention_days, or moved)" in text
    plan = " ".join(
        row[3] for row in ledger.db.connection.execute("EXPLAIN QUERY PLAN " + ITEMS_FOR_BARCODE, (TARGET,))
    )
    assert "USING PRIMARY KEY (barcode=?)" in plan, plan  # one index lookup, whatever the number of files
    ledger.close()


def test_a_barcode_typed_in_the_other_case_is_found_and_leading_zeros_count(tmp_path):
    """At the desk a barcode with letters is typed in lower case; ALEPH wrote it in upper case."""
    clock = Clock(1_795_000_000.0)
    ledger = Ledger(tmp_path / "gateway.db", clock=clock)
    answer = {"success": True, "error": "", "results": [{"item": "B0001234X", "deny": "N", "istatus": "In"}]}
    row = _file(
        ledger,
        clock,
        "usm50.hold_req",
        [Record(number=1, line=1, barcodes=("B0001234X",)), Record(number=2, line=9, barcodes=("0000567",))],
        "accepted",
        tmp_path / "archive",
        answer,
    )
    for typed in ("B0001234X", "b0001234x"):
        found = find.find(ledger, typed, [])
        assert [(entry["ledger_id"], entry["barcode"]) for entry in found] == [(row, "B0001234X")], typed
        assert found[0]["caiasoft"] == {"deny": "N", "istatus": "In"}
    assert len(find.find(ledger, "0000567", [])) == 1
    assert find.find(ledger, "567", []) == [] and find.find(ledger, "00000567", []) == []
    ledger.close()


def test_a_file_validated_again_keeps_only_its_new_records(tmp_path):
    ledger = Ledger(tmp_path / "gateway.db")
    row_id = ledger.files.begin_claim("print", "a.hold_req", "/p/a.hold_req", 1, 1.0)
    ledger.items.store_records(
        [row_id], [(row_id, Record(number=n, line=n, barcodes=(barcode(n),))) for n in (1, 2, 3)]
    )
    ledger.items.store_records([row_id], [(row_id, Record(number=1, line=1, barcodes=(barcode(9),)))])
    assert [r.barcodes for r in ledger.items.records_of(row_id)] == [(barcode(9),)]
    assert ledger.items.items_for(barcode(2)) == [] and len(ledger.items.items_for(barcode(9))) == 1
    ledger.close()


def _v1_ledger(path) -> None:
    """A ledger as schema version 1 left it (before records and items existed), with one archived file."""
    db = sqlite3.connect(path)
    db.executescript(schema.FILES_SCHEMA)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO files (source, name, origin, state, seen_at) VALUES ('print', 'x', '/p/x', 'archived', 1)")
    db.commit()
    db.close()


def _old_sidecar(folder, day: str, name: str, data: bytes | None, **content) -> None:
    """A file and the sidecar an older gateway wrote beside it (no records, no barcodes of its own)."""
    path = folder / day / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is not None:
        path.write_bytes(data)
    sidecar = {
        "file": name,
        "original_name": name,
        "source": "print",
        "original_path": f"/aleph/print/{name}",
        "kind": "xml",
        "details": {"root": "printout", "form_name": "hold-request-slip", "items": 1},
        "times": {
            "seen": f"{day.replace('/', '-')}T09:00:00+00:00",
            "claimed": f"{day.replace('/', '-')}T09:00:01+00:00",
            "uploaded": f"{day.replace('/', '-')}T09:00:02+00:00",
        },
        "ledger_id": 1,
        **content,
    }
    path.with_name(name + ".json").write_text(json.dumps(sidecar))


def test_find_reads_the_sidecars_written_before_the_index_once(tmp_path):
    archive, error = tmp_path / "archive", tmp_path / "error"
    answer = {
        "success": True,
        "error": "",
        "request_count": "1",
        "results": [{"item": TARGET, "deny": "N", "istatus": "Item Requested"}],
    }
    _old_sidecar(
        archive,
        "2026/10/01",
        "hold-request-slip-0001.xml",
        b"<printout/>",
        outcome="accepted",
        caiasoft_answer=answer,
        reason=None,
    )
    broken = print_file(3, replace={2: "## - XML_XSL\n<printout><z30-barcode>Q</z30-barcode></section>\n"})
    _old_sidecar(
        error,
        "2026/10/02",
        "usm50.hold_req",
        broken,
        outcome="refused",
        caiasoft_answer=None,
        reason="refused by the gateway: XML is not well-formed (junk after document element): line 27",
    )
    _v1_ledger(tmp_path / "gateway.db")

    ledger = Ledger(tmp_path / "gateway.db")
    assert (
        ledger.db.get_meta("schema_version") == str(ledger_module.SCHEMA_VERSION)
        and ledger.files.get(1).state == "archived"
    )
    assert ledger.items.backfill_due() is not None
    found = find.find(ledger, TARGET, [archive, error])
    assert ledger.items.backfill_due() is None
    assert found == [
        {
            "barcode": TARGET,
            "file": "hold-request-slip-0001.xml",
            "original_name": "hold-request-slip-0001.xml",
            "source": "print",
            "taken": "2026-10-01T09:00:01+00:00",
            "sent": "2026-10-01T09:00:02+00:00",
            "outcome": "accepted",
            "state": "archived",
            "reason": None,
            "caiasoft": {"deny": "N", "istatus": "Item Requested"},
            "path": str(archive / "2026/10/01/hold-request-slip-0001.xml"),
            "kind": "xml",
            "record": None,
            "line": None,
            "request_number": None,
            "request_id": None,
            "pickup_location": None,
            "form_name": None,
            "ledger_id": None,
            "path_exists": True,
            "pruned_at": None,
            "sidecar": str(archive / "2026/10/01/hold-request-slip-0001.xml.json"),
        }
    ]
    # the refused file's sidecar names no barcode: the file beside it is read, the bad record too
    [refused] = find.find(ledger, barcode(3), [archive, error])
    assert refused["outcome"] == "refused" and refused["record"] == 3 and "not well-formed" in refused["reason"]
    assert refused["path"] == str(error / "2026/10/02/usm50.hold_req")

    _old_sidecar(
        archive,
        "2026/10/03",
        "late.xml",
        None,
        outcome="accepted",
        reason=None,
        caiasoft_answer={**answer, "results": [{"item": "LATE-1", "deny": "N"}]},
    )
    assert find.find(ledger, "LATE-1", [archive, error]) == []  # read once: not again on every find
    ledger.close()
    reopened = Ledger(tmp_path / "gateway.db")
    assert reopened.items.backfill_due() is None and reopened.db.get_meta("schema_version") == str(
        ledger_module.SCHEMA_VERSION
    )
    reopened.close()


def test_the_backfill_skips_sidecars_of_files_the_index_already_holds(tmp_path):
    archive = tmp_path / "archive"
    clock = Clock(1_795_000_000.0)
    ledger = Ledger(tmp_path / "gateway.db", clock=clock)
    row_id = _file(ledger, clock, "usm50.hold_req", [Record(number=1, line=1, barcodes=(TARGET,))], "accepted", archive)
    _old_sidecar(
        archive,
        "2026/11/28",
        "usm50.hold_req",
        record(1).encode(),
        outcome="accepted",
        reason=None,
        ledger_id=row_id,
        records=[{"record": 1, "items": [{"barcode": TARGET}]}],
    )
    ledger.db.connection.execute("UPDATE meta SET value = 'pending since 1900000000' WHERE key = 'items_backfill'")
    assert [entry["ledger_id"] for entry in find.find(ledger, TARGET, [archive])] == [row_id]
    ledger.close()


def test_a_new_ledger_beside_an_old_archive_reads_its_sidecars(tmp_path):
    archive = tmp_path / "archive"
    _old_sidecar(
        archive,
        "2026/10/01",
        "list_barcode",
        b"31234000000042\n",
        outcome="accepted",
        reason=None,
        kind="text",
        barcodes=[{"barcode": TARGET, "line": 1}],
        caiasoft_answer=None,
    )
    ledger = Ledger(tmp_path / "gateway.db")
    [entry] = find.find(ledger, TARGET, [archive])
    assert entry["kind"] == "text" and entry["line"] == 1 and entry["record"] == 1
    assert "list_barcode  (line 1)" in find.render(TARGET, [entry])
    ledger.close()


def test_a_hostile_file_name_is_shown_escaped(tmp_path):
    clock = Clock(1_795_000_000.0)
    ledger = Ledger(tmp_path / "gateway.db", clock=clock)
    name = "slip\x1b]0;owned\x07\udce9.hold_req"  # a terminal escape and a byte that is not UTF-8
    _file(ledger, clock, name, [Record(number=1, line=1, barcodes=(TARGET,))], "queued", tmp_path)
    [entry] = find.find(ledger, TARGET, [])
    assert entry["file"] == "slip\\x1b]0;owned\\x07\\xe9.hold_req"
    json.dumps(entry).encode("utf-8")  # no lone surrogate left
    assert "\x1b" not in find.render(TARGET, [entry])
    ledger.close()


def test_the_backfill_indexes_what_a_hand_edited_sidecar_holds_and_skips_what_it_cannot(tmp_path):
    archive = tmp_path / "archive"
    _old_sidecar(
        archive,
        "2026/10/01",
        "edited.hold_req",
        None,
        outcome="accepted",
        reason=None,
        records=[
            {"record": "two", "items": [{"barcode": TARGET}, {"barcode": "bad\udce9"}, {"barcode": 7}]},
            "not a record",
        ],
    )
    (archive / "2026/10/01/garbage.json").write_text("{not json")
    ledger = Ledger(tmp_path / "gateway.db")
    [entry] = find.find(ledger, TARGET, [archive])
    assert entry["file"] == "edited.hold_req" and entry["record"] is None
    assert ledger.items.backfill_due() is None
    ledger.close()
