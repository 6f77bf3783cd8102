"""The NCIP relay in the real daemon, against the NCIP simulator (and the CaiaSoft one for the feed)."""

from __future__ import annotations

import collections
import datetime as dt
import json
import socket
import subprocess
import sys

import pytest
from conftest import wait_for
from peers import MailBox, alerts_table
from test_feed import IN_THE_FACILITY, OUT_OF_IT

from gateway.ncip import journal
from gateway.ncip.journal import JournalEntry
from gateway.simulators.ncip import NcipSimulator

pytestmark = pytest.mark.e2e


def add(site, action: str, item: str, **fields) -> None:
    journal.append(site.journal, JournalEntry(action, item, **fields))


def dead_letters(site) -> list[dict]:
    folder = site.error / "ncip"
    return (
        [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]
        if folder.exists()
        else []
    )


def test_entries_are_relayed_in_order_with_users_profiles_and_refusals(relay_site, ncip, daemon_factory):
    add(relay_site, "checkout", "A-1", stop="LAW", request_id="000004521")
    add(relay_site, "checkout", "A-2", stop="MAIN")
    add(relay_site, "checkout", "UNKNOWN-1")
    add(relay_site, "checkin", "IN-ALREADY")
    with open(relay_site.journal, "ab") as handle:
        handle.write(b"this is not an entry\n")
    add(relay_site, "checkin", "A-1")
    daemon = daemon_factory(relay_site.config_file)
    received = ncip.wait_for(5, timeout=30)
    assert [(r.action, r.item) for r in received] == [
        ("checkout", "A-1"),
        ("checkout", "A-2"),
        ("checkout", "UNKNOWN-1"),
        ("checkin", "IN-ALREADY"),
        ("checkin", "A-1"),
    ]
    assert all(r.valid for r in received), [r.errors for r in received]
    assert [r.user for r in received] == ["CAIA-LAW", "CAIASOFT", "CAIASOFT", None, None]
    assert [r.profile for r in received] == [None, None, None, "CAIAPROFILE", "CAIAPROFILE"]
    assert received[0].request_id == "000004521"
    letters = wait_for(
        lambda: len(dead_letters(relay_site)) == 2 and dead_letters(relay_site), message="two dead letters"
    )
    assert letters[0]["entry"]["item"] == "UNKNOWN-1" and letters[0]["problems"][0]["type"] == "Unknown Item"
    assert letters[1]["line"] == "this is not an entry" and "not JSON" in letters[1]["reason"]
    log = (relay_site.log_dir / "gateway.log").read_text()
    assert '"event": "ncip.already_done"' in log and "IN-ALREADY" in log
    assert daemon.stop() == 0


def test_temporary_failures_and_a_server_that_is_down_then_up_keep_the_order(relay_site, ncip, daemon_factory):
    ncip.queue_faults("503", "temporary", "garbage", "drop")
    for number in range(4):
        add(relay_site, "checkin", f"T-{number}")
    daemon = daemon_factory(relay_site.config_file)
    wait_for(lambda: [r.item for r in ncip.received if r.item == "T-3"], timeout=30, message="the last entry")
    accepted = [r.item for r in ncip.received]
    assert sorted(set(accepted)) == ["T-0", "T-1", "T-2", "T-3"]
    assert [item for index, item in enumerate(accepted) if index == 0 or accepted[index - 1] != item] == [
        "T-0",
        "T-1",
        "T-2",
        "T-3",
    ], "retries repeat the same entry; order is kept"
    assert dead_letters(relay_site) == []
    assert daemon.stop() == 0


def test_nothing_listening_then_the_server_appears(relay_site, daemon_factory):
    add(relay_site, "checkin", "LATE-1")
    later = NcipSimulator()
    relay_site.write_ncip(url=later.url)  # the port is reserved but not served yet
    daemon = daemon_factory(relay_site.config_file)
    wait_for(lambda: "ncip.retry" in daemon.output(), message="retries while the server is away")
    later.start()
    try:
        assert [r.item for r in later.wait_for(1, timeout=30)] == ["LATE-1"]
    finally:
        later.stop()
    assert daemon.stop() == 0


def test_kill_9_mid_journal_resends_at_most_the_entry_in_flight(relay_site, ncip, daemon_factory):
    items = [f"K-{number:03d}" for number in range(60)]
    for item in items:
        add(relay_site, "checkin", item)
    ncip.delay = 0.02  # answers take a moment, so the kill lands mid-journal
    first = daemon_factory(relay_site.config_file)
    ncip.wait_for(20, timeout=30)
    first.kill()
    assert len(ncip.received) < len(items), "killed in the middle of the journal"
    ncip.delay = 0.0
    daemon_factory(relay_site.config_file)
    wait_for(lambda: any(r.item == "K-059" for r in ncip.received), timeout=60, message="the last entry")
    sent = [r.item for r in ncip.received]
    counts = collections.Counter(sent)
    assert set(counts) == set(items), "nothing skipped"
    assert sum(count - 1 for count in counts.values()) <= 1, f"at most one entry sent twice: {counts}"
    assert sorted(sent) == sorted(items + [item for item, count in counts.items() if count > 1])


def test_version_1_server(relay_site, ncip, daemon_factory):
    relay_site.write_ncip(version="1")
    add(relay_site, "checkout", "V1-ITEM", stop="LAW")
    daemon = daemon_factory(relay_site.config_file)
    [received] = ncip.wait_for(1, timeout=30)
    assert (received.version, received.item, received.user) == ("1", "V1-ITEM", "CAIA-LAW")
    assert daemon.stop() == 0


def test_journal_command_status_and_check(relay_site, ncip, daemon_factory):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "gateway", "-c", str(relay_site.config_file), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = cli("journal", "checkout", "31234001234567", "--stop", "LAW", "--request-id", "R-1")
    assert result.returncode == 0, result.stderr
    assert json.loads(relay_site.journal.read_text()) == {
        "action": "checkout",
        "item": "31234001234567",
        "stop": "LAW",
        "request_id": "R-1",
    }
    check = cli("check")
    assert check.returncode == 0, check.stdout
    assert "NCIP server" in check.stdout and "accepts connections" in check.stdout
    daemon = daemon_factory(relay_site.config_file)
    ncip.wait_for(1, timeout=30)
    report = wait_for(
        lambda: (r := json.loads(cli("status", "--json").stdout))["ncip"] and r["ncip"]["last_success"] and r,
        interval=0.5,
        message="status with the relay",
    )
    assert report["ncip"]["lag_entries"] == 0 and report["ncip"]["dead_letters"] == 0
    assert "NCIP relay:     0 entries (0 bytes) behind" in cli("status").stdout
    assert daemon.stop() == 0


def test_the_status_feed_journals_retrieved_and_refiled_items_once(relay_site, simulator, ncip, daemon_factory):
    today = dt.date.today().strftime("%Y%m%d")
    simulator.status_lists[("retrieved", today, "ANNEX")] = ["F-1", "F-2"]
    simulator.status_lists[("refiled", today, "ANNEX")] = ["F-0"]
    simulator.status_lists[("retrieved", today, "OTHER")] = ["NOT-OURS"]
    simulator.retrievals[(today, "ANNEX")] = [{"barcode": "F-2", "request_id": "R-7"}]
    relay_site.write_ncip(feed='[ncip.feed]\ncollection = "ANNEX"\ninterval_seconds = 10\nlookback_days = 0\n')
    daemon = daemon_factory(relay_site.config_file)
    received = ncip.wait_for(3, timeout=30)
    assert sorted((r.action, r.item, r.user) for r in received) == [
        ("checkin", "F-0", None),
        ("checkout", "F-1", "CAIASOFT"),
        ("checkout", "F-2", "CAIASOFT"),
    ], "CaiaSoft's feed gives no stop: every feed checkout goes to ncip.user_id"
    assert [r.request_id for r in received if r.item == "F-2"] == ["R-7"]
    assert daemon.stop() == 0
    simulator.status_lists[("retrieved", today, "ANNEX")].append("F-3")
    daemon = daemon_factory(relay_site.config_file)  # a restart reads the lists again: only F-3 is new
    wait_for(lambda: any(r.item == "F-3" for r in ncip.received), timeout=30, message="F-3 after the restart")
    assert daemon.stop() == 0
    entries = [json.loads(line) for line in relay_site.journal.read_text().splitlines()]
    assert sorted(e["item"] for e in entries) == ["F-0", "F-1", "F-2", "F-3"], "each journaled once"
    assert all(e["id"].startswith("feed-") for e in entries)


def test_items_retrieved_and_refiled_the_same_day_end_in_alephs_as_caiasoft_has_them(
    relay_site, simulator, ncip, daemon_factory
):
    """Every status phrase of CaiaSoft's guide, through feed, journal, relay and NCIP; an unknown one is alerted."""
    today = dt.date.today()
    said = today.strftime("%m-%d-%Y")
    statuses = {f"IN-{n}": phrase for n, phrase in enumerate(IN_THE_FACILITY)}
    statuses |= {f"OUT-{n}": f"{phrase} on {said}" for n, phrase in enumerate(OUT_OF_IT)}
    statuses |= {"ODD-1": "Item has been Deaccessioned"}
    day = today.strftime("%Y%m%d")
    simulator.retrievals[(day, "ANNEX")] = [{"barcode": barcode} for barcode in statuses]
    simulator.status_lists[("refiled", day, "ANNEX")] = list(statuses)
    simulator.item_statuses.update(statuses)
    box = MailBox().start()
    try:
        relay_site.write_ncip(
            feed='[ncip.feed]\ncollection = "ANNEX"\ninterval_seconds = 10\nlookback_days = 0\n'
            + alerts_table(box.port, interval=0)
        )
        daemon = daemon_factory(relay_site.config_file)
        expected = 2 * (len(statuses) - 1)
        received = ncip.wait_for(expected, timeout=60)
        last = {r.item: r.action for r in received}
        assert {item: action for item, action in last.items() if item.startswith("IN-")} == {
            item: "checkin" for item in statuses if item.startswith("IN-")
        }, "in the facility: ends checked in"
        assert {item: action for item, action in last.items() if item.startswith("OUT-")} == {
            item: "checkout" for item in statuses if item.startswith("OUT-")
        }, "out of it: ends checked out"
        assert "ODD-1" not in last, "an unknown status journals neither entry"
        alert = box.find("CaiaSoft status not known: 'Item has been Deaccessioned' (item ODD-1)", timeout=30)
        assert "in_statuses" in str(alert.get_payload())

        def feed_problem() -> str | None:
            report = json.loads(
                subprocess.run(
                    [sys.executable, "-m", "gateway", "-c", str(relay_site.config_file), "status", "--json"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout
            )
            return report["ncip"] and report["ncip"]["feed_problem"]

        problem = wait_for(feed_problem, timeout=30, interval=0.5, message="the unknown status in status")
        assert "ODD-1 (" in problem and "'Item has been Deaccessioned' not known" in problem
        assert "in_statuses or out_statuses" in problem
        assert '"event": "feed.unknown_status"' in (relay_site.log_dir / "gateway.log").read_text()
        assert daemon.stop() == 0
        assert len(ncip.received) == expected, "nothing more was sent for ODD-1"
    finally:
        box.stop()


def test_check_says_that_feed_checkouts_go_to_user_id(relay_site):
    relay_site.write_ncip(feed='[ncip.feed]\ncollection = "ANNEX"\n')
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(relay_site.config_file), "check", "--offline"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = " ".join(check.stdout[check.stdout.index("WARN  status feed (collection ANNEX)") :].split())
    assert said.startswith(
        "WARN status feed (collection ANNEX) CaiaSoft's retrieval lists give no circulation stop: "
        "every feed check-out goes to ncip.user_id (CAIASOFT); [ncip.stop_users] applies only to "
        "journal entries that carry a stop"
    ), said


def test_a_feed_call_that_fails_is_an_error_in_the_log_and_in_status(relay_site, simulator, daemon_factory):
    simulator.collections = {"ANNEX"}  # the site wrote another code: CaiaSoft answers 200 with success false
    relay_site.write_ncip(feed='[ncip.feed]\ncollection = "ANEX"\ninterval_seconds = 10\nlookback_days = 0\n')
    daemon = daemon_factory(relay_site.config_file)

    def status():
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "-c", str(relay_site.config_file), "status", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        report = json.loads(result.stdout)
        return report.get("ncip") and report["ncip"]["feed_problem"] and report

    report = wait_for(status, timeout=30, interval=0.5, message="the feed problem in status")
    assert "Invalid collection code: ANEX" in report["ncip"]["feed_problem"]
    assert '"event": "feed.failed"' in (relay_site.log_dir / "gateway.log").read_text()
    assert daemon.stop() == 0
    assert not relay_site.journal.exists()


TRANSPORTS = [  # (simulator options, send_as)
    (dict(transport="http"), "body"),
    (dict(transport="http"), "query"),
    (dict(transport="http"), "form"),
    (dict(transport="tcp", socket_mode="close"), "body"),
    (dict(transport="tcp", socket_mode="open", preamble=True), "body"),
    (dict(transport="tcp", socket_mode="dribble"), "body"),
]


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize(
    "options,send_as",
    TRANSPORTS,
    ids=["http-body", "http-query", "http-form", "tcp-close", "tcp-open-httpish", "tcp-dribble"],
)
def test_the_daemon_relays_over_each_transport_in_both_versions(relay_site, daemon_factory, options, send_as, version):
    server = NcipSimulator(problems={"GONE": "Unknown Item"}, track_loans=True, **options).start()
    try:
        relay_site.write_ncip(url=server.url, version=version, extra_ncip=f'send_as = "{send_as}"')
        add(relay_site, "checkout", "T-1", stop="LAW", request_id="R-1")
        add(relay_site, "checkout", "T-1", stop="LAW")  # ALEPH: "Loan cannot be renewed (no change in due date)"
        add(relay_site, "checkin", "T-1")
        add(relay_site, "checkin", "T-1")  # ALEPH: "Item Not Checked Out", "Item not on loan."
        add(relay_site, "checkout", "GONE")
        daemon = daemon_factory(relay_site.config_file)
        received = server.wait_for(5, timeout=30)
        letters = wait_for(lambda: dead_letters(relay_site), message="the dead letter for GONE")
        assert daemon.stop() == 0
    finally:
        server.stop()
    assert [(r.action, r.item, r.version, r.valid) for r in received] == [("checkout", "T-1", version, True)] * 2 + [
        ("checkin", "T-1", version, True)
    ] * 2 + [("checkout", "GONE", version, True)]
    assert received[0].user == "CAIA-LAW" and received[0].request_id == "R-1"
    assert [letter["entry"]["item"] for letter in letters] == ["GONE"]
    assert letters[0]["problems"][0]["type"] == "Unknown Item"
    log = (relay_site.log_dir / "gateway.log").read_text()
    assert log.count('"event": "ncip.already_done"') == 2
    assert "ncip.version_mismatch" not in log


def test_a_version_mismatch_is_logged(relay_site, ncip, daemon_factory):
    relay_site.write_ncip(version="1")
    server = NcipSimulator().start()
    try:
        relay_site.write_ncip(url=server.url, version="1")
        add(relay_site, "checkin", "M-1")
        daemon = daemon_factory(relay_site.config_file)
        server.wait_for(1, timeout=30)
        assert daemon.stop() == 0
    finally:
        server.stop()
    assert "ncip.version_mismatch" not in (relay_site.log_dir / "gateway.log").read_text(), (
        "the simulator answers in the version asked"
    )


def test_unreadable_answers_are_retried_then_dead_lettered_with_an_excerpt(relay_site, ncip, daemon_factory):
    relay_site.write_ncip(extra_ncip="unreadable_attempts = 3")
    ncip.queue_faults("garbage", "garbage", "garbage")
    add(relay_site, "checkin", "U-1")
    add(relay_site, "checkin", "U-2")
    daemon = daemon_factory(relay_site.config_file)
    wait_for(lambda: any(r.item == "U-2" for r in ncip.received), timeout=30, message="the next entry")
    letters = wait_for(lambda: dead_letters(relay_site), message="the dead letter")
    assert daemon.stop() == 0
    assert [r.item for r in ncip.received] == ["U-2"], "garbage answers are not recorded; U-1 not sent again"
    assert letters[0]["entry"]["item"] == "U-1" and letters[0]["answer_excerpt"] == "<html>not NCIP</html>"
    assert "3 attempts" in letters[0]["reason"]


def rewrite(site, how: str, items: list[str]) -> None:
    """Truncate the journal and refill it in one go (same file), or replace it by a renamed new file."""
    content = b"".join(b'{"action": "checkin", "item": "%s"}\n' % item.encode() for item in items)
    if how == "truncate":
        site.journal.write_bytes(content)
    else:
        fresh = site.journal.with_name("ncip.jsonl.new")
        fresh.write_bytes(content)
        fresh.replace(site.journal)


@pytest.mark.parametrize("while_down,while_up", [("truncate", "replace"), ("replace", "truncate")])
def test_journal_truncated_or_replaced_while_ncip_is_down_and_up_skips_nothing(
    relay_site, ncip, daemon_factory, while_down, while_up
):
    """The reported loss: 3 relayed, NCIP answering 503, the journal truncated and 12 appended: none skipped."""
    log = relay_site.log_dir / "gateway.log"
    for number in range(3):
        add(relay_site, "checkin", f"OLD-{number}")
    daemon = daemon_factory(relay_site.config_file)
    ncip.wait_for(3, timeout=30)
    ncip.queue_faults(*["503"] * 10_000)  # down
    first = [f"DOWN-{number:02d}" for number in range(12)]
    rewrite(relay_site, while_down, first)
    wait_for(lambda: "ncip.retry" in log.read_text(), timeout=30, message="retries while NCIP is down")
    ncip.clear_faults()  # up
    wait_for(lambda: len(ncip.received) >= 15, timeout=30, message="the 12 entries written while down")
    second = [f"UP-{number}" for number in range(4)]
    rewrite(relay_site, while_up, second)
    wait_for(lambda: len(ncip.received) >= 19, timeout=30, message="the entries written while up")
    assert daemon.stop() == 0
    sent = [r.item for r in ncip.received]
    assert sent == [f"OLD-{number}" for number in range(3)] + first + second, "none skipped, none sent twice"
    text = log.read_text()
    assert '"event": "journal.truncated"' in text and '"event": "journal.replaced"' in text
    assert dead_letters(relay_site) == []


def check(site, *args):
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "version,options", [("1", dict(transport="tcp")), ("2", dict(transport="http"))], ids=["v1-tcp", "v2-http"]
)
def test_check_ncip_item_asks_aleph_about_one_item_and_says_what_it_proved(relay_site, version, options):
    server = NcipSimulator(problems={"NOT-HERE": "Unknown Item"}, **options).start()
    try:
        relay_site.write_ncip(url=server.url, version=version)
        known = check(relay_site, "--ncip-item", "31234001234567")
        unknown = check(relay_site, "--ncip-item", "NOT-HERE")
        plain = check(relay_site)
    finally:
        server.stop()
    assert known.returncode == 0, known.stdout
    assert f"the server answered in version {version}, as configured" in known.stdout
    assert "title 'Simulated title of 31234001234567', circulation status 'Available On Shelf'" in known.stdout
    assert unknown.returncode == 1
    assert "ALEPH answered with a Problem: Unknown Item" in unknown.stdout
    assert "not in the ADM library" in unknown.stdout
    assert [(r.action, r.item, r.version, r.valid) for r in server.received] == [
        ("lookup", "31234001234567", version, True),
        ("lookup", "NOT-HERE", version, True),
    ], "plain check sends none"
    assert plain.returncode == 0 and "check --ncip-item BARCODE" in plain.stdout


def test_check_ncip_item_warns_when_the_server_speaks_the_other_version(relay_site):
    server = NcipSimulator(answer_version="1").start()
    try:
        relay_site.write_ncip(url=server.url, version="2")
        result = check(relay_site, "--ncip-item", "31234001234567")
    finally:
        server.stop()
    assert 'WARN  NCIP version\n        the server answered in version 1, but ncip.version = "2"' in result.stdout


def test_check_ncip_item_with_nothing_listening_or_answering_fails_with_the_reason(relay_site):
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    relay_site.write_ncip(url=f"tcp://127.0.0.1:{port}", version="1")
    result = check(relay_site, "--ncip-item", "1")
    assert result.returncode == 1 and f"cannot connect to 127.0.0.1:{port}" in result.stdout
    with socket.create_server(("127.0.0.1", 0)) as mute:  # listening, never answering
        relay_site.write_ncip(url=f"tcp://127.0.0.1:{mute.getsockname()[1]}", version="1")
        result = check(relay_site, "--ncip-item", "1")
    assert result.returncode == 1 and "no whole answer from" in result.stdout
