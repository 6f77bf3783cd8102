"""ALEPH batch print files through the real daemon: sent whole and unaltered, a bad record named, `find`."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import pytest
from conftest import wait_for
from printfiles import (
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

pytestmark = pytest.mark.e2e

DTD_RECORD = (
    '## - XML_XSL\n<?xml version="1.0"?>\n<!DOCTYPE printout [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
    "<printout><z30-barcode>31234139999999</z30-barcode>&x;</printout>\n"
)


def cli(site, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_batch_print_files_are_sent_unaltered_a_bad_record_is_named_and_find_answers(site, simulator, daemon_factory):
    three = print_file(
        3,
        newline="\r\n",
        bom=True,
        prefix="3123411",
        replace={
            2: record(2, headers=("## - XML_XSL", "## - PRINTER=CAIASOFT"), prefix="3123411"),
            3: record(3, declaration=False, prefix="3123411"),
        },
    )
    paging = b"31234140000001\r\n\r\n31234140000002\r\n"
    good = {
        "usm50.hold_req": print_file(1, prefix="3123410"),
        "usm50.hold_req_3": three,
        "weekend.hold_req": print_file(500, prefix="3123412"),
        "anx.cir.12.paging_barcode": paging,
    }
    hostile = print_file(3, prefix="3123413", replace={2: DTD_RECORD})
    simulator.deny[barcode(250, "3123412")] = "Item Not Available"
    simulator.deny["31234140000002"] = "Invalid Stop Code"
    daemon = daemon_factory(site.config_file)
    for name, data in {**good, "hostile.hold_req": hostile}.items():
        (site.source / name).write_bytes(data)
    wait_for(
        lambda: len(site.archived()) == 4 and len(site.refused()) == 1,
        timeout=60,
        message="three batches and a barcode list archived, one batch refused",
    )

    assert collections.Counter((r.name, r.data) for r in simulator.received) == collections.Counter(good.items())
    for path in site.archived():
        assert path.read_bytes() == good[path.name]
        info = site.sidecar(path)
        if info["kind"] == "text":
            assert info["barcode_count"] == 2 and info["barcodes"] == [
                {"barcode": "31234140000001", "line": 1, "caiasoft": {"deny": "N", "istatus": "Item Requested"}},
                {"barcode": "31234140000002", "line": 3, "caiasoft": {"deny": "Y", "istatus": "Invalid Stop Code"}},
            ]
            continue
        count = {"usm50.hold_req": 1, "usm50.hold_req_3": 3, "weekend.hold_req": 500}[path.name]
        assert info["record_count"] == count == info["details"]["records"] == len(info["records"])
        assert info["caiasoft_answer"]["request_count"] == str(count)
    weekend = site.sidecar(next(path for path in site.archived() if path.name == "weekend.hold_req"))
    assert weekend["records"][249]["items"] == [
        {"barcode": barcode(250, "3123412"), "caiasoft": {"deny": "Y", "istatus": "Item Not Available"}}
    ]
    assert weekend["records"][249]["request_number"] == f"{250 + 4000:09d}"
    assert weekend["denied_items"] == [{"item": barcode(250, "3123412"), "deny": "Y", "istatus": "Item Not Available"}]

    [refused] = site.refused()
    assert refused.read_bytes() == hostile
    info = site.sidecar(refused)
    start = first_line_of(hostile, 2)
    assert info["reason"] == (
        f'refused by the gateway: record 2 of 3 (line {start}, "## - XML_XSL"): its XML has a '
        f"DOCTYPE declaration; DTDs are refused for safety at line {start + 2} of the file"
    )
    assert [r.get("problem") for r in info["records"]] == [
        None,
        f"its XML has a DOCTYPE declaration; DTDs are refused for safety at line {start + 2} of the file",
        None,
    ]

    found = cli(site, "find", barcode(250, "3123412"), "--json")
    assert found.returncode == 0, found.stderr
    [entry] = json.loads(found.stdout)
    assert entry["file"] == "weekend.hold_req" and entry["outcome"] == "accepted" and entry["record"] == 250
    assert entry["path_exists"] is True
    assert entry["caiasoft"] == {"deny": "Y", "istatus": "Item Not Available"}
    assert entry["path"] == str(next(path for path in site.archived() if path.name == "weekend.hold_req"))
    in_refused = cli(site, "find", barcode(3, "3123413"))
    assert in_refused.returncode == 0
    assert "outcome   refused: refused by the gateway: record 2 of 3" in in_refused.stdout
    assert cli(site, "find", "31234999999999").returncode == 1

    # The admin's way out: fix the record in the error folder, then retry. The file goes whole, once.
    fixed = hostile.replace(DTD_RECORD.encode(), record(2, prefix="3123413").encode())
    refused.write_bytes(fixed)
    assert "back in the queue" in cli(site, "retry", refused.name).stdout
    wait_for(lambda: len(site.archived()) == 5, timeout=30, message="the fixed batch archived")
    sent = [r.data for r in simulator.received if r.name == "hostile.hold_req"]
    assert sent == [fixed]
    [entry] = json.loads(cli(site, "find", barcode(2, "3123413"), "--json").stdout)
    assert entry["outcome"] == "accepted" and entry["record"] == 2
    assert daemon.stop() == 0


def test_cir12_element_lists_nested_slips_and_other_printouts_go_where_they_belong(site, simulator, daemon_factory):
    paging = element_list(
        ["31234160000001", "31234160000002", "31234160000003"], newline="\r\n", bom=True, blank_lines=True
    )
    sorted_slips = nested_batch(
        range(1, 6), prefix="3123417", replace={3: slip(3, prefix="3123417", items=2, repeat_item=True)}
    )
    good = {"anx.cir.12.paging20261203_am_barcode": paging, "annex.sorted_hold_req": sorted_slips}
    bad = {
        "slip.plain_req": not_xml_record("PLAIN").encode(),
        "slip.html_req": not_xml_record("HTML").encode(),
        "slip.execute_req": not_xml_record("EXECUTE").encode(),
        "mixed.hold_req": print_file(2, prefix="3123418") + not_xml_record("PLAIN").encode(),
        "anx.cir.12.paging20261204_am_barcode": element_list(["31234190000001"]) + b"Total: 1 item\n",
    }
    simulator.deny["31234160000002"] = "Item Cannot be Retrieved - Item is Currently Out of the Facility"
    simulator.deny[nested_barcode(4, prefix="3123417")] = "Invalid Stop Code"
    daemon = daemon_factory(site.config_file)
    for name, data in {**good, **bad}.items():
        (site.source / name).write_bytes(data)
    wait_for(
        lambda: len(site.archived()) == 2 and len(site.refused()) == 5,
        timeout=60,
        message="the cir-12 list and the batch of slips archived, the other five refused",
    )

    assert collections.Counter((r.name, r.data) for r in simulator.received) == collections.Counter(good.items())
    archived = {path.name: path for path in site.archived()}
    assert {name: path.read_bytes() for name, path in archived.items()} == good

    listed = site.sidecar(archived["anx.cir.12.paging20261203_am_barcode"])
    assert listed["kind"] == "text" and listed["details"]["line_form"] == "<z30-barcode>"
    assert listed["barcode_count"] == 3 and listed["barcodes"] == [
        {"barcode": "31234160000001", "line": 1, "caiasoft": {"deny": "N", "istatus": "Item Requested"}},
        {
            "barcode": "31234160000002",
            "line": 3,
            "caiasoft": {"deny": "Y", "istatus": "Item Cannot be Retrieved - Item is Currently Out of the Facility"},
        },
        {"barcode": "31234160000003", "line": 5, "caiasoft": {"deny": "N", "istatus": "Item Requested"}},
    ]

    batch = site.sidecar(archived["annex.sorted_hold_req"])
    assert batch["kind"] == "xml" and batch["record_count"] == 5 == batch["details"]["records"]
    assert {item["item"] for item in batch["caiasoft_answer"]["results"]} == {
        nested_barcode(number, index, "3123417") for number in range(1, 6) for index in range(2 if number == 3 else 1)
    }
    assert [
        (r["record"], [item["barcode"] for item in r["items"]], r["request_number"], r["request_id"])
        for r in batch["records"]
    ] == [
        (
            number,
            [nested_barcode(number, index, "3123417") for index in range(2 if number == 3 else 1)],
            f"{number + 7000:09d}",
            f"{number:09d}{number * 10:06d}{number % 10:04d}",
        )
        for number in range(1, 6)
    ]
    assert batch["records"][3]["items"][0]["caiasoft"] == {"deny": "Y", "istatus": "Invalid Stop Code"}

    for number, index in ((1, 0), (3, 1), (4, 0), (5, 0)):  # each barcode finds its own slip's request
        found = cli(site, "find", nested_barcode(number, index, "3123417"), "--json")
        assert found.returncode == 0, found.stderr
        [entry] = json.loads(found.stdout)
        assert (entry["file"], entry["outcome"], entry["record"], entry["request_number"], entry["request_id"]) == (
            "annex.sorted_hold_req",
            "accepted",
            number,
            f"{number + 7000:09d}",
            f"{number:09d}{number * 10:06d}{number % 10:04d}",
        )
    [entry] = json.loads(cli(site, "find", "31234160000002", "--json").stdout)
    assert entry["file"] == "anx.cir.12.paging20261203_am_barcode" and entry["kind"] == "text"
    assert entry["line"] == 3 and entry["caiasoft"]["deny"] == "Y"

    refused = {path.name: path for path in site.refused()}
    for name, kind in (("slip.plain_req", "PLAIN"), ("slip.html_req", "HTML"), ("slip.execute_req", "EXECUTE")):
        assert refused[name].read_bytes() == bad[name]
        info = site.sidecar(refused[name])
        words = f"{SAID[kind]} printout, not XML: route only XML_XSL output for CaiaSoft to this folder"
        assert info["reason"] == f"refused by the gateway: {words}"
        assert info["records"] == [{"record": 1, "line": 1, "header": f"## - {kind}", "items": [], "problem": words}]
    mixed = site.sidecar(refused["mixed.hold_req"])
    line = bad["mixed.hold_req"].split(b"\n").index(b"## - PLAIN") + 1
    assert mixed["reason"] == (
        f'refused by the gateway: record 3 of 3 (line {line}, "## - PLAIN"): a PLAIN printout, '
        "not XML: route only XML_XSL output for CaiaSoft to this folder"
    )
    spoiled = site.sidecar(refused["anx.cir.12.paging20261204_am_barcode"])
    assert spoiled["reason"].startswith(
        'refused by the gateway: line 2 ("Total: 1 item") is not a <z30-barcode> '
        "line, in a cir-12 barcode list of <z30-barcode> lines"
    )
    in_refused = cli(site, "find", "31234190000001")
    assert (
        in_refused.returncode == 0 and 'outcome   refused: refused by the gateway: line 2 ("Total' in in_refused.stdout
    )
    assert daemon.stop() == 0
