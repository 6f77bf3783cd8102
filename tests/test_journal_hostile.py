"""The journal as hostile input, in the real daemon: whoever may write it (or its folder) cannot stop the relay,
make it read another file, or have it send what no XML can carry; a server that keeps refusing one entry with a
client error does not hold up the rest; every state in which the relay waits is named in `status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import KEY, ncip_table, wait_for
from test_relay import add, dead_letters

from gateway.ncip import journal

pytestmark = pytest.mark.e2e

# Lines a hostile or careless writer leaves in the journal: values as JSON escapes (what json.dumps writes),
# and one with a raw control byte inside a JSON string. None of them can go into an NCIP message as written.
UNCARRIED = {
    "A\\u0001B": "U+0001",  # a C0 control
    "N\\u0000UL": "U+0000",  # NUL
    "V\\u000bT": "U+000B",  # vertical tab
    "\\ud800LONE": "U+D800",  # a lone surrogate (raised in the v1 builder)
    "NON\\ufffe": "U+FFFE",  # a non-character
}


def cli(site, *args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        **options,
    )


def ncip_status(site) -> dict:
    report = json.loads(cli(site, "status", "--json").stdout)
    return report.get("ncip") or {}  # no ledger yet: {"error": ...}


@pytest.mark.parametrize("version", ["1", "2"])
def test_values_no_xml_can_carry_are_dead_letters_and_the_tail_goes_on(relay_site, ncip, daemon_factory, version):
    relay_site.write_ncip(version=version)
    add(relay_site, "checkin", "BEFORE-1")
    with open(relay_site.journal, "ab") as handle:
        for item in UNCARRIED:
            handle.write(b'{"action": "checkin", "item": "%s"}\n' % item.encode())
        handle.write(b'{"action": "checkout", "item": "OK-ITEM", "user": "CAIA\\u0007"}\n')  # the user, not the item
        handle.write(b'{"action": "checkin", "item": "RAW\x01BYTE"}\n')  # not even JSON
    add(relay_site, "checkin", "AFTER-1")
    daemon = daemon_factory(relay_site.config_file)
    wait_for(lambda: any(r.item == "AFTER-1" for r in ncip.received), timeout=30, message="the entry after them")
    letters = wait_for(
        lambda: len(dead_letters(relay_site)) == len(UNCARRIED) + 2 and dead_letters(relay_site),
        message="a dead letter for each",
    )
    assert daemon.stop() == 0
    assert [(r.item, r.valid) for r in ncip.received] == [("BEFORE-1", True), ("AFTER-1", True)], (
        "nothing that cannot be carried was sent"
    )
    reasons = [letter["reason"] for letter in letters]
    for (item, character), reason in zip(UNCARRIED.items(), reasons, strict=False):
        assert f"item {json.loads(chr(34) + item + chr(34))!r} holds {character}" in reason, reason
        assert "an NCIP message cannot carry it" in reason
    assert reasons[len(UNCARRIED)].startswith("user 'CAIA\\x07' holds U+0007, a control character")
    assert "not JSON" in reasons[-1]
    log = (relay_site.log_dir / "gateway.log").read_text()
    assert '"event": "worker.fault"' not in log and '"event": "ncip.retry"' not in log


def test_an_entry_the_server_keeps_refusing_with_a_client_error_is_a_dead_letter_and_the_rest_go_on(
    relay_site, ncip, daemon_factory
):
    relay_site.write_ncip(extra_ncip="client_error_tries = 3")
    ncip.queue_faults("400", "400", "400", "429", "429", "429", "429", "408", "408", "408", "408")
    add(relay_site, "checkin", "REFUSED-1")  # answered 400 three times: a dead letter
    add(relay_site, "checkin", "BUSY-1")  # 429 and 408 are retried as long as it takes: sent
    add(relay_site, "checkin", "AFTER-1")
    daemon = daemon_factory(relay_site.config_file)
    wait_for(lambda: any(r.item == "AFTER-1" for r in ncip.received), timeout=30, message="the last entry")
    [letter] = wait_for(lambda: dead_letters(relay_site), message="the dead letter")
    assert daemon.stop() == 0
    assert [r.item for r in ncip.received] == ["BUSY-1", "AFTER-1"], "in order, each once"
    assert letter["entry"]["item"] == "REFUSED-1" and letter["http_status"] == 400
    assert letter["reason"] == "NCIP server answered HTTP 400 (3 attempts)"
    log = [json.loads(line) for line in (relay_site.log_dir / "gateway.log").read_text().splitlines()]
    assert [e["attempts"] for e in log if e["event"] == "ncip.client_error"] == [3]


@pytest.mark.parametrize(
    "argument,named",
    [
        (b"A\x01B", "'A\\x01B' holds U+0001"),
        (b"31234\xff", "'31234\\udcff' holds U+DCFF"),
        (b"TAB\tINSIDE", "'TAB\\tINSIDE' holds U+0009"),
        (b"A\x1c", "'A\\x1c' holds U+001C"),  # str.strip() would drop it
        (b"B\t", "'B\\t' holds U+0009"),
    ],
)
def test_the_journal_command_refuses_what_no_ncip_message_can_carry(relay_site, argument, named):
    result = subprocess.run(
        [
            sys.executable.encode(),
            b"-m",
            b"gateway",
            b"-c",
            bytes(relay_site.config_file),
            b"journal",
            b"checkin",
            argument,
        ],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    stderr = result.stderr.decode()
    assert stderr.startswith(f"caiasoft-gateway journal: item {named}"), stderr
    assert "Traceback" not in stderr
    assert not relay_site.journal.exists(), "nothing appended"


def test_the_journal_command_does_not_follow_a_link_or_open_a_fifo(relay_site, tmp_path):
    target = tmp_path / "gateway.toml.copy"
    target.write_text("kept = true\n")
    relay_site.journal.symlink_to(target)
    result = cli(relay_site, "journal", "checkin", "L-1")
    assert result.returncode == 1 and "it is a symbolic link" in result.stderr, result.stderr
    assert target.read_text() == "kept = true\n", "nothing appended where the link points"
    relay_site.journal.unlink()
    os.mkfifo(relay_site.journal)
    result = cli(relay_site, "journal", "checkin", "F-1")  # timeout=60: a blocking open would hang here
    assert result.returncode == 1 and "it is a FIFO (named pipe), not a regular file" in result.stderr, result.stderr


def _wait_for_problem(site, words: str) -> dict:
    return wait_for(
        lambda: (state := ncip_status(site)).get("journal_problem") and words in state["journal_problem"] and state,
        timeout=30,
        interval=0.3,
        message=f"status naming the journal problem ({words})",
    )


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_journal_replaced_by_a_directory_or_a_fifo_is_named_in_status_and_the_relay_resumes(
    relay_site, ncip, daemon_factory, notify_socket, kind
):
    add(relay_site, "checkin", "OLD-1")
    daemon = daemon_factory(relay_site.config_file, env={"NOTIFY_SOCKET": notify_socket.path})
    ncip.wait_for(1, timeout=30)
    kept = relay_site.journal.with_name("kept.jsonl")
    relay_site.journal.rename(kept)
    if kind == "directory":
        relay_site.journal.mkdir()
    else:
        os.mkfifo(relay_site.journal)
    words = "is a directory" if kind == "directory" else "is a FIFO (named pipe)"
    state = _wait_for_problem(relay_site, words)
    assert str(relay_site.journal) in state["journal_problem"]
    text = cli(relay_site, "status").stdout
    assert f"NCIP JOURNAL NOT READ: the journal {relay_site.journal} {words}" in text, text
    wait_for(
        lambda: any(
            f"; NCIP JOURNAL NOT READ: the journal {relay_site.journal} {words}" in line
            for line in notify_socket.lines("STATUS=")
        ),
        message="the problem in STATUS=",
    )
    if kind == "directory":
        relay_site.journal.rmdir()
    else:
        relay_site.journal.unlink()
    kept.rename(relay_site.journal)  # the file is back
    add(relay_site, "checkin", "NEW-1")
    wait_for(lambda: any(r.item == "NEW-1" for r in ncip.received), timeout=15, message="NEW-1, soon after")
    wait_for(
        lambda: not ncip_status(relay_site).get("journal_problem"),
        timeout=30,
        interval=0.3,
        message="the problem gone from status",
    )
    assert daemon.stop() == 0
    assert [r.item for r in ncip.received] == ["OLD-1", "NEW-1"], "nothing sent twice, nothing skipped"
    assert dead_letters(relay_site) == []
    log = (relay_site.log_dir / "gateway.log").read_text()
    assert '"event": "journal.refused"' in log and '"event": "journal.readable"' in log
    assert '"event": "worker.paused"' not in log and '"event": "worker.fault"' not in log


def test_a_journal_swapped_for_a_link_to_the_gateways_key_file_is_not_read(
    unprivileged_site, gateway_install, simulator, ncip, daemon_factory
):
    """The gateway runs as its own user; ALEPH's user, who may write the journal's folder, puts a link to the
    API key file (readable by the gateway only) in the journal's place. Nothing of it is sent or dead-lettered."""
    site, runner = unprivileged_site, gateway_install
    folder = site.root / "aleph-journal"
    folder.mkdir()
    folder.chmod(0o777)  # ALEPH's user (root here) and the gateway both write there
    journal_path = folder / "ncip.jsonl"
    site.write(
        simulator.url, extra=ncip_table(ncip.url, journal_path, backoff_initial_seconds=0.05, backoff_max_seconds=0.3)
    )
    site.journal = journal_path
    add(site, "checkin", "OLD-1")
    journal_path.chmod(0o644)  # written by ALEPH's user, read by the gateway's
    daemon = daemon_factory(
        site.config_file, command=[*runner.prefix(), str(runner.executable)], env=runner.environment(), clean_env=True
    )
    ncip.wait_for(1, timeout=60)
    kept = folder / "kept.jsonl"
    journal_path.rename(kept)
    secret = site.root / "entries-only-the-gateway-reads"
    secret.write_bytes(b'{"action": "checkin", "item": "SECRET-1"}\n')
    runner.give(secret)
    secret.chmod(0o600)
    for number, target in enumerate((site.key_file, secret), start=1):
        journal_path.symlink_to(target)
        wait_for(lambda n=number: events(site, "journal.refused") == n, timeout=30, message=f"{target} refused")
        state = wait_for(
            lambda: (
                (s := json.loads(runner.run("-c", str(site.config_file), "status", "--json").stdout)["ncip"])
                and s["journal_problem"]
                and s
            ),
            timeout=30,
            interval=0.3,
            message="status naming the link",
        )
        assert state["journal_problem"].startswith(f"the journal {journal_path} is a symbolic link: not read")
        journal_path.unlink()
        wait_for(lambda n=number: events(site, "journal.readable") == n, timeout=30, message="the link gone")
    kept.rename(journal_path)
    add(site, "checkin", "NEW-1")
    wait_for(lambda: any(r.item == "NEW-1" for r in ncip.received), timeout=30, message="NEW-1 once it is back")
    assert daemon.stop() == 0
    assert [r.item for r in ncip.received] == ["OLD-1", "NEW-1"]
    assert dead_letters(site) == []
    for path in site.written_files():
        assert KEY.encode() not in path.read_bytes(), f"the API key is in {path}"


def events(site, name: str) -> int:
    """How many times the daemon logged this event."""
    log = site.log_dir / "gateway.log"
    return log.read_text().count(f'"event": "{name}"') if log.exists() else 0


def test_config_values_that_go_into_every_message_must_be_carriable(relay_site):
    """A control character in user_id would spoil every check-out: the config is refused at load, naming the key."""
    relay_site.write_ncip(extra_ncip='agency_scheme = "scheme\\u0000"')
    text = relay_site.config_file.read_text().replace('user_id = "CAIASOFT"', 'user_id = "CAIA\\u0007SOFT"')
    relay_site.config_file.write_text(text.replace('LAW = "CAIA-LAW"', 'LAW = "CAIA-\\uFFFF"'))
    result = cli(relay_site, "check", "--offline")
    assert result.returncode == 2, result
    said = result.stdout.splitlines()
    for key, character in (
        ("ncip.user_id", "U+0007"),
        ("ncip.agency_scheme", "U+0000"),
        ("ncip.stop_users.LAW", "U+FFFF"),
    ):
        assert any(f"{key}: the value " in line and f"holds {character}" in line for line in said), (key, said)


def test_a_journal_not_read_for_a_minute_is_alerted_and_its_end_too(site, simulator):
    """The relay's journal_problem reaches the monitor like a source's problem: a blip is not mailed, a minute is."""
    from peers import MailBox, alerts_table, body

    from gateway.monitor.events import Conditions
    from gateway.monitor.monitor import Monitor
    from gateway.state.ledger import Ledger

    box = MailBox().start()
    journal_path = site.root / "ncip.jsonl"
    site.write(
        simulator.url, extra=ncip_table("http://127.0.0.1:9/", journal_path) + alerts_table(box.port, interval=0)
    )
    now = [1_000_000.0]
    ledger = Ledger(site.state / "gateway.db")
    monitor = Monitor(site.load(), ledger, clock=lambda: now[0], steady=lambda: now[0])
    monitor.start()
    assert monitor.sender is not None
    monitor.sender.start()
    try:
        refused = Conditions(ncip_journal_problem=f"the journal {journal_path} is a directory: not read")
        monitor.tick(refused)
        now[0] += 59
        monitor.tick(refused)
        assert ledger.alerts.alerts_waiting() == 0 and box.messages == []
        now[0] += 1
        monitor.tick(refused)
        mail = box.find("the NCIP journal cannot be read")
        assert f"{journal_path} is a directory" in body(mail) and "nothing is lost" in body(mail)
        monitor.tick(Conditions())
        box.find("the NCIP journal is read again")
    finally:
        monitor.sender.stop()
        monitor.sender.join(30)
        monitor.stop()
        ledger.close()
        box.stop()


def test_check_names_a_journal_that_the_relay_would_not_read(relay_site, tmp_path):
    journal_path = relay_site.journal
    assert cli(relay_site, "check", "--offline").returncode == 0, "no journal yet is fine"
    real = tmp_path / "real.jsonl"
    real.write_text("")
    journal_path.symlink_to(real)
    result = cli(relay_site, "check", "--offline")
    assert result.returncode == 1, result.stdout
    assert f"FAIL  ncip.journal\n        the journal {journal_path} is a symbolic link: not read" in result.stdout
    journal_path.unlink()
    os.mkfifo(journal_path)
    result = cli(relay_site, "check", "--offline")  # never blocks on the FIFO
    assert result.returncode == 1 and "is a FIFO (named pipe): not read" in result.stdout, result.stdout


def test_a_barcode_from_the_status_feed_that_no_message_can_carry_is_logged_and_the_rest_go_on(
    relay_site, simulator, ncip, daemon_factory
):
    import datetime as dt

    today = dt.date.today().strftime("%Y%m%d")
    simulator.status_lists[("retrieved", today, "ANNEX")] = ["BAD\x01ITEM", "F-1"]
    simulator.status_lists[("refiled", today, "ANNEX")] = ["F-0"]
    relay_site.write_ncip(feed='[ncip.feed]\ncollection = "ANNEX"\ninterval_seconds = 10\nlookback_days = 0\n')
    daemon = daemon_factory(relay_site.config_file)
    received = ncip.wait_for(2, timeout=30)
    log = relay_site.log_dir / "gateway.log"
    refused = wait_for(
        lambda: [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "feed.entry_refused"],
        message="the refusal in the log",
    )
    problem = wait_for(
        lambda: (
            (ncip_status(relay_site).get("feed_problem") or "").count("no NCIP message can carry")
            and ncip_status(relay_site)["feed_problem"]
        ),
        timeout=30,
        interval=0.3,
        message="the barcode named in status",
    )
    assert "1 barcode(s) CaiaSoft listed" in problem and "holds U+0001" in problem
    assert daemon.stop() == 0
    assert sorted((r.action, r.item) for r in received) == [("checkin", "F-0"), ("checkout", "F-1")]
    assert [e["item"] for e in refused] == ["BAD\\x01ITEM"] and "holds U+0001" in refused[0]["reason"]
    assert "BAD" not in relay_site.journal.read_text()


def test_check_ncip_item_sends_nothing_for_a_barcode_no_message_can_carry(relay_site, ncip):
    result = cli(relay_site, "check", "--ncip-item", "3123\x0b4")
    assert result.returncode == 1, result.stdout
    assert "holds U+000B, a control character" in result.stdout and "nothing sent" in result.stdout
    assert ncip.received == []


def test_only_spaces_and_a_carriage_return_are_dropped_around_a_journal_value():
    assert journal.parse_entry(b'{"action": "checkin", "item": "  CRLF-1\\r"}').item == "CRLF-1"
    nbsp = journal.parse_entry(b'{"action": "checkin", "item": "\\u00a0NBSP-1\\u2003"}')
    assert nbsp.item == "NBSP-1", "a space of any kind, as the NCIP server would read the element"
    with pytest.raises(ValueError, match="item must be a non-empty string"):
        journal.parse_entry(b'{"action": "checkin", "item": "\\u00a0"}')
    for value in ("GOOD4\\u001c", "GOOD5\\u0085", "GOOD6\\t", "\\u001fGOOD7"):
        with pytest.raises(ValueError, match="holds U\\+00"):
            journal.parse_entry(f'{{"action": "checkin", "item": "{value}"}}'.encode())


@pytest.mark.parametrize("fault", ["404", "400"])
def test_a_server_refusing_every_message_holds_the_relay_and_makes_no_dead_letter_of_every_entry(
    relay_site, ncip, daemon_factory, fault
):
    """A wrong path (404 to everything) dead-letters nothing; a 400 to one entry after another dead-letters only the
    first: the relay waits with the reason in status, and goes on once the server takes messages again."""
    relay_site.write_ncip(extra_ncip="client_error_tries = 2")
    ncip.queue_faults(*[fault] * 100_000)  # until cleared below
    for number in range(4):
        add(relay_site, "checkin", f"ENTRY-{number}")
    daemon = daemon_factory(relay_site.config_file)
    state = wait_for(
        lambda: (
            (state := ncip_status(relay_site)).get("last_problem")
            and "the NCIP server refuses messages, not this entry" in state["last_problem"]
            and state
        ),
        timeout=30,
        interval=0.3,
        message="the relay waiting with the reason",
    )
    assert f"HTTP {fault}" in state["last_problem"]
    ncip.clear_faults()  # the admin fixed the URL: the server takes messages again
    wait_for(lambda: len(ncip.received) == 4 - (fault == "400"), timeout=60, message="the entries once it takes them")
    assert daemon.stop() == 0
    letters = dead_letters(relay_site)
    assert [letter["entry"]["item"] for letter in letters] == ([] if fault == "404" else ["ENTRY-0"])
    assert [r.item for r in ncip.received] == [f"ENTRY-{n}" for n in range(1 if fault == "400" else 0, 4)]
