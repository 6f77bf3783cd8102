"""ALEPH batch print files through the real daemon: sent whole and unaltered, a bad record named, `find`."""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import pytest

from conftest import wait_for
from printfiles import barcode, first_line_of, print_file, record

pytestmark = pytest.mark.e2e

DTD_RECORD = ('## - XML_XSL\n<?xml version="1.0"?>\n<!DOCTYPE printout [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
              "<printout><z30-barcode>31234139999999</z30-barcode>&x;</printout>\n")


def cli(site, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(site.config_file), *args],
                          capture_output=True, text=True, timeout=60)


def test_batch_print_files_are_sent_unaltered_a_bad_record_is_named_and_find_answers(site, simulator,
                                                                                     daemon_factory):
    three = print_file(3, newline="\r\n", bom=True, prefix="3123411", replace={
        2: record(2, headers=("## - XML_XSL", "## - PRINTER=CAIASOFT"), prefix="3123411"),
        3: record(3, declaration=False, prefix="3123411")})
    paging = b"31234140000001\r\n\r\n31234140000002\r\n"
    good = {"usm50.hold_req": print_file(1, prefix="3123410"), "usm50.hold_req_3": three,
            "weekend.hold_req": print_file(500, prefix="3123412"), "anx.cir.12.paging_barcode": paging}
    hostile = print_file(3, prefix="3123413", replace={2: DTD_RECORD})
    simulator.deny[barcode(250, "3123412")] = "Item Not Available"
    simulator.deny["31234140000002"] = "Invalid Stop Code"
    daemon = daemon_factory(site.config_file)
    for name, data in {**good, "hostile.hold_req": hostile}.items():
        (site.source / name).write_bytes(data)
    wait_for(lambda: len(site.archived()) == 4 and len(site.refused()) == 1, timeout=60,
             message="three batches and a barcode list archived, one batch refused")

    assert collections.Counter((r.name, r.data) for r in simulator.received) == collections.Counter(good.items())
    for path in site.archived():
        assert path.read_bytes() == good[path.name]
        info = site.sidecar(path)
        if info["kind"] == "text":
            assert info["barcode_count"] == 2 and info["barcodes"] == [
                {"barcode": "31234140000001", "line": 1, "caiasoft": {"deny": "N", "istatus": "Item Requested"}},
                {"barcode": "31234140000002", "line": 3, "caiasoft": {"deny": "Y", "istatus": "Invalid Stop Code"}}]
            continue
        count = {"usm50.hold_req": 1, "usm50.hold_req_3": 3, "weekend.hold_req": 500}[path.name]
        assert info["record_count"] == count == info["details"]["records"] == len(info["records"])
        assert info["caiasoft_answer"]["request_count"] == str(count)
    weekend = site.sidecar(next(path for path in site.archived() if path.name == "weekend.hold_req"))
    assert weekend["records"][249]["items"] == [{"barcode": barcode(250, "3123412"),
                                                 "caiasoft": {"deny": "Y", "istatus": "Item Not Available"}}]
    assert weekend["records"][249]["request_number"] == f"{250 + 4000:09d}"
    assert weekend["denied_items"] == [{"item": barcode(250, "3123412"), "deny": "Y", "istatus": "Item Not Available"}]

    [refused] = site.refused()
    assert refused.read_bytes() == hostile
    info = site.sidecar(refused)
    start = first_line_of(hostile, 2)
    assert info["reason"] == (f'refused by the gateway: record 2 of 3 (line {start}, "## - XML_XSL"): its XML has a '
                              f"DOCTYPE declaration; DTDs are refused for safety at line {start + 2} of the file")
    assert [r.get("problem") for r in info["records"]] == [
        None, f"its XML has a DOCTYPE declaration; DTDs are refused for safety at line {start + 2} of the file", None]

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
