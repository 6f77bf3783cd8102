"""The command line, run as a real process: check, status, send, retry, config errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from conftest import KEY, SAMPLES, ncip_table


def cli(site, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_config_errors_exit_2_and_list_every_problem(site):
    site.config_file.write_text(
        site.config_file.read_text().replace("timeout_seconds = 5\n", "timeout_seconds = -1\n") + "\n[bogus]\n"
    )
    result = cli(site, "run")
    assert result.returncode == 2
    assert f"{site.config_file}: caiasoft.timeout_seconds: must be at least 1" in result.stderr
    assert f"{site.config_file}: bogus: unknown section" in result.stderr
    assert "2 problem(s)" in result.stderr


def test_check_passes_and_reaches_caiasoft(site):
    result = cli(site, "check")
    assert result.returncode == 0, result.stdout
    assert "API key accepted, 2 active circulation stop(s)" in result.stdout
    assert "all checks passed" in result.stdout


def test_check_names_a_wrong_key_and_a_missing_folder(site, simulator):
    simulator.key = "another-key-entirely"
    site.source.rmdir()
    result = cli(site, "check")
    assert result.returncode == 1
    assert "FAIL  sources[0] print" in result.stdout and "folder does not exist" in result.stdout
    assert "CaiaSoft refused the API key (HTTP 401)" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_check_offline_does_not_contact_caiasoft(site, simulator):
    result = cli(site, "check", "--offline")
    assert result.returncode == 0 and simulator.received == []
    assert "not contacted" in result.stdout
    assert (
        "ok    sources[0] print: " in result.stdout
        and ": open writers\n        open writers are detected" in result.stdout
    )


def test_check_of_a_broken_config_exits_2(site):
    site.key_file.unlink()
    result = cli(site, "check")
    assert result.returncode == 2
    assert f"caiasoft.api_key_file: {site.key_file} does not exist" in result.stdout


def test_commands_that_use_no_secret_run_without_the_api_key(site, tmp_path):
    """A cron job that appends to the NCIP journal need not be able to read the API key; check still names it."""
    journal = tmp_path / "ncip.jsonl"
    site.config_file.write_text(site.config_file.read_text() + ncip_table("http://127.0.0.1:9/", journal))
    site.key_file.unlink()
    result = cli(site, "journal", "checkin", "31234001234567\r")  # `while read b` over a CRLF list
    assert result.returncode == 0, result.stderr
    assert json.loads(journal.read_text()) == {"action": "checkin", "item": "31234001234567"}
    status = cli(site, "status")
    assert status.returncode == 1 and "no ledger at" in status.stdout
    assert cli(site, "retry", "--all").stdout.startswith("nothing to retry")
    check = cli(site, "check", "--offline")
    assert check.returncode == 2
    assert f"caiasoft.api_key_file: {site.key_file} does not exist" in check.stdout


def test_journal_that_cannot_be_written_is_named_without_a_traceback(site, tmp_path):
    """A cron job whose journal cannot be appended to gets one line naming the file, not a Python traceback."""
    journal = tmp_path / "ncip.jsonl"
    journal.mkdir()  # not writable as a file, even for root
    site.config_file.write_text(site.config_file.read_text() + ncip_table("http://127.0.0.1:9/", journal))
    result = cli(site, "journal", "checkout", "31234001234567", "--stop", "MAIN")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"caiasoft-gateway journal: cannot append to {journal}: Is a directory")


def test_output_read_by_a_reader_that_stops_early_ends_without_a_traceback(site):
    """`caiasoft-gateway check | head -1`: the reader closes the pipe; the command ends quietly."""
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first line
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "-c", str(site.config_file), "check", "--offline"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(writer)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 1


def test_send_then_status(site, simulator, tmp_path):
    slip = tmp_path / "hold-request-slip-0001.xml"
    slip.write_bytes((SAMPLES / "hold-request-slip-0001.xml").read_bytes())
    letter = tmp_path / "letter.txt"
    letter.write_text("not a request file\n")
    result = cli(site, "send", str(slip), str(letter))
    assert result.returncode == 1  # one of the two was refused
    assert "hold-request-slip-0001.xml: accepted by CaiaSoft, archived as" in result.stdout
    assert "letter.txt: refused: CaiaSoft refused the file: File format not registered" in result.stdout
    assert slip.exists(), "send copies; the admin's file stays where it was"
    assert [r.name for r in simulator.received] == ["hold-request-slip-0001.xml", "letter.txt"]

    report = json.loads(cli(site, "status", "--json").stdout)
    assert report["counts"]["archived"] == 1 and report["counts"]["refused"] == 1
    assert report["pending"] == 0 and report["service"]["running"] is False
    assert report["recent_errors"][0]["file"] == "letter.txt"
    text = cli(site, "status").stdout
    assert "today:          1 archived, 1 refused" in text and "letter.txt" in text


def test_send_when_caiasoft_is_down_leaves_the_file_queued(site, simulator, tmp_path):
    simulator.queue_faults("503", "503")
    barcodes = tmp_path / "paging_barcode"
    barcodes.write_text("31234001234567\n")
    result = cli(site, "send", "--attempts", "2", str(barcodes))
    assert result.returncode == 1
    assert "stays queued" in result.stdout
    report = json.loads(cli(site, "status", "--json").stdout)
    assert report["counts"]["queued"] == 1
    assert "HTTP 503" in report["oldest_pending"]["last_problem"]


def test_status_before_the_first_run(site):
    result = cli(site, "status")
    assert result.returncode == 1 and "has not run" in result.stdout


def test_retry_puts_a_refused_file_back(site, simulator, tmp_path):
    # CaiaSoft refuses a file it cannot read; the admin corrects it and puts it back
    letter = tmp_path / "order_barcode"
    letter.write_text("please fetch the blue book\n")
    cli(site, "send", str(letter))
    [refused] = site.refused()
    refused.write_text("31234001234567\n")  # the admin corrects the file in place
    result = cli(site, "retry", "order_barcode")
    assert result.returncode == 0, result.stdout
    assert "back in the queue" in result.stdout
    assert site.refused() == [] and not refused.with_name(refused.name + ".json").exists()
    report = json.loads(cli(site, "status", "--json").stdout)
    assert report["counts"]["queued"] == 1


def test_retry_of_a_file_the_gateway_refuses_again_says_why(site, tmp_path):
    binary = tmp_path / "scan.bin"
    binary.write_bytes(b"\x00\x01\x02")
    cli(site, "send", str(binary))
    result = cli(site, "retry", "--all")
    assert "refused again: refused by the gateway: file is binary" in result.stdout
    assert len(site.refused()) == 1


def test_retry_of_an_unknown_name(site):
    result = cli(site, "retry", "nothing-like-this.xml")
    assert result.returncode == 1 and "not found" in result.stdout
    assert cli(site, "retry").returncode == 2


def test_demo_runs_and_explains_where_each_file_went(tmp_path):
    def demo(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "demo", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TMPDIR": str(tmp_path)},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    out = demo()
    assert "5 archived, 4 refused" in out
    assert "DENIED 31234009999990 (Invalid Stop Code)" in out
    assert "reason: CaiaSoft refused the file: File format not registered" in out
    assert "usm50.hold_req  [xml, 3 record(s), 3 item(s); DENIED 31234009999990" in out
    assert "usm50.hold_req_sorted  [xml, 3 record(s), 4 item(s)]" in out, "each nested slip is a record"
    assert "anx.cir.12.paging20261128_am_barcode  [text, 4 item(s); DENIED 31234009999990" in out
    assert (
        "usm50.hold_req_plain\n      reason: refused by the gateway: a PLAIN printout, not XML: route only XML_XSL "
        "output for CaiaSoft to this folder"
    ) in out
    assert (
        'reason: refused by the gateway: record 3 of 4 (line 53, "## - XML_XSL"): its XML is not well-formed '
        "(mismatched tag) at line 77 of the file"
    ) in out
    assert "31234009999990: in 2 request file(s), newest first" in out
    assert "usm50.hold_req  (record 3, form hold-request-slip, request 000004603" in out
    assert "Subject: [caiasoft-gateway] " in out and "1 item denied by CaiaSoft in " in out, "one alert shown"
    assert "31234009999990  Invalid Stop Code" in out
    assert re.search(r"metrics:\s+http://127\.0\.0\.1:\d+/metrics", out)
    assert 'caiasoft_gateway_files_total{outcome="archived",source="print"} 5.0' in out
    assert (
        "ALEPH's NCIP port (simulated) received 2 message(s):\n"
        '  checkout 31234001234567  (NCIP 1, "POST / HTTP/1.0" + headers), user CAIASOFT\n'
        '  checkin 31234001234567  (NCIP 1, "POST / HTTP/1.0" + headers)\n'
        "  31234001234567 ends checked in in ALEPH"
    ) in out, "retrieved and refiled: the feed, then tcp://"
    assert "retrieved 31234001234567 and refiled it today; its status now: 'Item In at Rest'" in out
    [port] = re.findall(r"staff page:\s+http://127\.0\.0\.1:(\d+)/ \(caiasoft-gateway web, read-only\)", out)
    assert (
        f"The staff page, http://127.0.0.1:{port}/ (asked while the gateway ran; it stops with the demo):\n"
        "  /  answered 200: 5 sent, 4 refused, 0 waiting, 2 denied today; nothing needs a person\n"
        "  /find?barcode=31234009999990  answered 200: 2 request file(s) carried it\n"
    ) in out, "the page, asked during the demo, shows what the service did"
    assert "is removed now" in out and list(tmp_path.iterdir()) == [], "demo cleans up after itself"

    out = demo("--keep")
    [kept] = tmp_path.iterdir()
    assert f"log (one JSON object a line): {kept / 'log' / 'gateway.log'}" in out
    assert f"the staff page again: caiasoft-gateway -c {kept / 'gateway.toml'} web, then http://127.0.0.1:" in out
    assert len(list((kept / "archive").rglob("*.json"))) == 5


def test_simulate_serves_the_api_on_loopback():
    import requests

    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate", "caiasoft", "--port", "0", "--key", "dry-run-key"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().split(" on ")[1].strip()
        answer = requests.get(url + "/api/circstoplist/v1/ACTIVE", headers={"X-API-Key": "dry-run-key"}, timeout=5)
        assert answer.status_code == 200 and answer.json()["success"] is True
        assert requests.get(url + "/api/circstoplist/v1/ACTIVE", timeout=5).status_code == 401
    finally:
        process.terminate()
        process.wait(10)
