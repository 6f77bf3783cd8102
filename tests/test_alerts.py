"""Alerts: mail to a real SMTP server (aiosmtpd) on loopback, a real webhook receiver, the real daemon."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest
from conftest import KEY, ncip_table, wait_for
from peers import MailBox, SilentServer, WebhookReceiver, alerts_table, body, free_port
from test_end_to_end import barcode_list
from tlscerts import make_authority

from gateway.archive import aftertake
from gateway.cli import main as cli
from gateway.config.loader import ConfigError, load
from gateway.core.backoff import Backoff
from gateway.monitor import alerttexts
from gateway.monitor.events import Conditions
from gateway.monitor.monitor import Monitor
from gateway.report import status
from gateway.state.ledger import Ledger

HOST = socket.gethostname()
DENIED = "31234009999990"  # the simulator fixture denies it: Invalid Stop Code


@pytest.fixture
def mailbox():
    box = MailBox().start()
    yield box
    box.stop()


@pytest.fixture
def monitors():
    """Monitors made by a test; their senders are stopped after it."""
    made: list[tuple[Monitor, Ledger]] = []
    yield made
    for monitor, ledger in made:
        if monitor.sender and monitor.sender.is_alive():
            monitor.sender.stop()
            monitor.sender.join(30)
        monitor.stop()
        ledger.close()


def start_monitor(site, monitors, clock=None) -> Monitor:
    """A monitor with its sender started; a clock given is both its wall clock and the one conditions last on."""
    ledger = Ledger(site.state / "gateway.db")
    monitor = Monitor(site.load(), ledger, **({"clock": clock, "steady": clock} if clock else {}))
    monitors.append((monitor, ledger))
    monitor.start()
    if monitor.sender:
        monitor.sender.start()
    return monitor


def test_a_paused_key_a_refused_file_and_denied_items_each_mail_the_team(site, simulator, mailbox, daemon_factory):
    site.write(simulator.url, extra=alerts_table(mailbox.port))
    simulator.key = "the-key-was-rotated"
    (site.source / "denied_barcode").write_bytes(barcode_list(7) + f"{DENIED}\n".encode())
    (site.source / "scan.pdf").write_bytes(b"%PDF-1.4\x00\x00binary")
    daemon = daemon_factory(site.config_file)

    refused = mailbox.find("request file refused: scan.pdf")
    text = body(refused)
    assert str(refused["Subject"]).startswith(f"[caiasoft-gateway] {HOST} ")
    assert refused["From"] == "caiasoft-gateway@aleph.example.edu"
    assert mailbox.envelopes[0][1] == ["ils-team@example.edu", "circ@example.edu"]
    assert "refused by the gateway" in text and "NOT reached CaiaSoft" in text
    assert str(site.error) in text and "caiasoft-gateway retry scan.pdf" in text

    paused = mailbox.find("uploads to CaiaSoft paused")
    assert "1 file(s) wait in the queue" in body(paused) and "systemctl reload" in body(paused)

    simulator.key = KEY  # the admin fixes the key
    resumed = mailbox.find("uploads resumed")
    assert "Nothing else needs to be done" in body(resumed)
    denied = mailbox.find("1 item denied by CaiaSoft in denied_barcode")
    assert f"{DENIED}  Invalid Stop Code" in body(denied)
    assert str(site.archive) in body(denied)
    assert daemon.stop() == 0
    for message in mailbox.messages:
        assert KEY not in message.as_string()
    assert len(mailbox.messages) == 4, mailbox.subjects()


def test_unreachable_then_reachable_again_for_caiasoft_and_ncip(site, simulator, mailbox, monitors):
    site.write(simulator.url, extra=alerts_table(mailbox.port, after=900) + ncip_table("http://127.0.0.1:1/ncip"))
    now = [1_000_000.0]
    monitor = start_monitor(site, monitors, clock=lambda: now[0])
    failing = Conditions(
        caiasoft_problem="cannot reach CaiaSoft: connection refused",
        ncip_problem="NCIP server unavailable: timed out",
        ncip_behind=3,
    )
    monitor.tick(failing)
    now[0] += 899
    monitor.tick(failing)
    assert monitor.ledger.alerts.alerts_waiting() == 0 and mailbox.messages == [], "not yet: 899 s < 900 s"

    now[0] += 2
    monitor.tick(failing)
    both = mailbox.find("2 alerts: CaiaSoft or NCIP unreachable")  # raised together: one mail
    assert "CaiaSoft unreachable for 15 minutes; ALEPH's NCIP server unreachable for 15 minutes" in both["Subject"]
    assert "connection refused" in body(both) and "0 request file(s) wait" in body(both)
    assert "3 journal entries wait" in body(both) and "http://127.0.0.1:1/ncip" in body(both)

    now[0] += 60
    monitor.tick(Conditions())
    mailbox.find("CaiaSoft reachable again; ALEPH's NCIP server reachable again")  # recoveries go at once
    wait_for(lambda: monitor.ledger.alerts.alerts_waiting() == 0, message="the recoveries sent")
    monitor.tick(Conditions())
    assert monitor.ledger.alerts.alerts_waiting() == 0, "nothing more is raised for a state that did not change"
    assert len(mailbox.messages) == 2, mailbox.subjects()


def test_a_source_problem_and_its_end_are_mailed(site, simulator, mailbox, monitors):
    site.write(simulator.url, extra=alerts_table(mailbox.port))
    now = [1_000_000.0]
    monitor = start_monitor(site, monitors, clock=lambda: now[0])
    where = {"print": "/exlibris/aleph/u23_1/usm50/print/caiasoft"}
    unreadable = Conditions(sources={"print": "cannot list the folder: No such file or directory"}, locations=where)
    monitor.tick(unreadable)
    monitor.tick(Conditions(sources={"print": None}, locations=where))  # a blip is not alerted
    monitor.tick(unreadable)
    now[0] += 59
    monitor.tick(unreadable)
    assert monitor.ledger.alerts.alerts_waiting() == 0 and mailbox.messages == []
    now[0] += 1
    monitor.tick(unreadable)
    problem = mailbox.find("source print cannot be read")
    assert "/exlibris/aleph/u23_1/usm50/print/caiasoft" in body(problem) and "NOT picked up" in body(problem)
    monitor.tick(Conditions(sources={"print": None}, locations=where))
    mailbox.find("source print readable again")


def test_a_burst_of_one_kind_is_one_mail_then_one_digest(site, simulator, mailbox, monitors):
    site.write(simulator.url, extra=alerts_table(mailbox.port, interval=3))
    monitor = start_monitor(site, monitors)
    first = alerttexts.refused("first.txt", "print", "refused by the gateway: empty", "/err/first.txt")
    monitor.raise_alert("refused", first)
    mailbox.find("request file refused: first.txt")
    started = time.monotonic()
    for number in range(5):
        monitor.raise_alert(
            "refused",
            alerttexts.refused(
                f"burst{number}.txt", "print", "refused by the gateway: empty", f"/err/burst{number}.txt"
            ),
        )
    monitor.raise_alert("paused", alerttexts.paused("HTTP 401", 3, 300))  # another kind goes at once
    mailbox.find("uploads to CaiaSoft paused")
    assert not any("5 alerts" in subject for subject in mailbox.subjects()), "the other kind did not wait"
    digest = mailbox.find("5 alerts: request files refused")
    assert time.monotonic() - started >= 2, "the digest waits for the end of the interval"
    assert all(f"burst{number}.txt" in body(digest) for number in range(5))
    assert len(mailbox.messages) == 3, mailbox.subjects()


def test_a_mail_server_that_hangs_delays_no_file(site, simulator, daemon_factory):
    silent = SilentServer()
    try:
        site.write(simulator.url, extra=alerts_table(silent.port))
        (site.source / "scan.pdf").write_bytes(b"%PDF-1.4\x00\x00binary")  # an alert at once: the sender hangs on it
        for number in range(3):
            (site.source / f"l{number}_barcode").write_bytes(barcode_list(number))
        daemon = daemon_factory(site.config_file)
        started = time.monotonic()
        wait_for(lambda: len(site.archived()) == 3, timeout=15, message="files archived while mail hangs")
        assert time.monotonic() - started < 15
        ledger = Ledger(site.state / "gateway.db")
        try:
            assert ledger.alerts.alerts_waiting() == 1, "the alert waits in the ledger"
        finally:
            ledger.close()
        stopping = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - stopping < 10, "stopping cuts the hanging mail conversation short"
    finally:
        silent.close()


def test_a_dead_mail_server_is_shown_in_status_and_retried_until_it_takes_the_alert(site, simulator, monitors, capsys):
    port = free_port()  # nothing listens there yet
    site.write(simulator.url, extra=alerts_table(port))
    monitor = start_monitor(site, monitors)
    assert monitor.sender is not None
    monitor.sender.backoff = Backoff(0.2, 0.5)
    monitor.raise_alert(
        "refused", alerttexts.refused("late.txt", "print", "refused by the gateway: empty", "/err/late.txt")
    )
    ledger = Ledger(site.state / "gateway.db")
    try:
        report = wait_for(
            lambda: (report := status.collect(ledger))["alerts"]["problem"] and report,
            message="the delivery problem in status",
        )
        assert f"mail to 127.0.0.1:{port} failed" in report["alerts"]["problem"]
        assert report["alerts"]["waiting"] == 1 and report["alerts"]["last_sent"] is None
        assert "DELIVERY PROBLEM" in status.render(report)
        wait_for(lambda: monitor.sender.failures.get("mail", 0) >= 3, message="three failed attempts")
        assert capsys.readouterr().out.count("alert.delivery_failed") == 1, "logged once, not at every retry"
        box = MailBox(port).start()  # the mail server is back
        try:
            box.find("request file refused: late.txt")
            report = wait_for(
                lambda: (report := status.collect(ledger))["alerts"]["last_sent"] and report,
                message="the last alert sent in status",
            )
            assert report["alerts"]["problem"] is None and report["alerts"]["waiting"] == 0
        finally:
            box.stop()
    finally:
        ledger.close()


def test_pending_alerts_survive_kill_9_and_go_out_once(site, simulator, daemon_factory):
    port = free_port()
    site.write(simulator.url, extra=alerts_table(port))
    (site.source / "scan.pdf").write_bytes(b"%PDF-1.4\x00\x00binary")
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: site.state.joinpath("gateway.db").exists(), message="the ledger")
    ledger = Ledger(site.state / "gateway.db")
    try:
        wait_for(lambda: ledger.alerts.alerts_waiting() == 1, message="the alert queued in the ledger")
        daemon.kill()
        box = MailBox(port).start()
        try:
            again = daemon_factory(site.config_file)
            box.find("request file refused: scan.pdf")
            wait_for(lambda: ledger.alerts.alerts_waiting() == 0, message="the alert marked sent")
            assert again.stop() == 0
            assert box.subjects() == [f"[caiasoft-gateway] {HOST} request file refused: scan.pdf"]
        finally:
            box.stop()
    finally:
        ledger.close()


def test_the_webhook_gets_the_same_alert_as_json(site, simulator, mailbox, monitors):
    receiver = WebhookReceiver()
    try:
        site.write(simulator.url, extra=alerts_table(mailbox.port, extra=f'webhook_url = "{receiver.url}"'))
        monitor = start_monitor(site, monitors)
        monitor.raise_alert(
            "denied",
            alerttexts.denied(
                "hold.xml", "print", [{"item": DENIED, "deny": "Y", "istatus": "Invalid Stop Code"}], "/arch/hold.xml"
            ),
        )
        mail = mailbox.find("1 item denied by CaiaSoft in hold.xml")
        wait_for(lambda: receiver.posts, message="the webhook post")
        post = receiver.posts[0]
        assert post["content_type"] == "application/json" and post["path"] == "/hooks/T0KEN"
        payload = post["json"]
        assert payload["kind"] == "denied" and payload["host"] == HOST and payload["recovery"] is False
        assert payload["subject"] == str(mail["Subject"])
        assert payload["alerts"][0]["items"] == [{"barcode": DENIED, "status": "Invalid Stop Code"}]
    finally:
        receiver.stop()


def test_a_webhook_that_cannot_be_reached_is_reported_without_the_token_in_its_path(site, simulator, mailbox, capsys):
    hook = f"http://127.0.0.1:{free_port()}/hooks/S3CRET-T0KEN?sig=ALSO-S3CRET"
    site.write(simulator.url, extra=alerts_table(mailbox.port, extra=f'webhook_url = "{hook}"'))
    assert cli.main(["-c", str(site.config_file), "check", "--offline", "--send-test-alert"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  test alert by webhook" in out and "127.0.0.1" in out
    assert "S3CRET" not in out


def test_check_sends_a_test_alert_and_says_when_it_cannot(site, simulator, mailbox, capsys):
    site.write(simulator.url, extra=alerts_table(mailbox.port))
    assert cli.main(["-c", str(site.config_file), "check", "--offline", "--send-test-alert"]) == 0
    assert "OK    test alert by mail (127.0.0.1:" in capsys.readouterr().out
    assert "test alert" in str(mailbox.find("test alert")["Subject"])

    site.write(simulator.url, extra=alerts_table(free_port()))
    assert cli.main(["-c", str(site.config_file), "check", "--offline", "--send-test-alert"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  test alert by mail" in out and "failed:" in out and KEY not in out


def test_alert_settings_are_checked(site, simulator):
    site.write(
        simulator.url,
        extra=alerts_table(25, extra='events = ["refused", "refussed"]\nusername = "gw"').replace(
            'to = ["ils-team@example.edu", "circ@example.edu"]', 'to = ["ils-team"]'
        )
        + '\n[metrics]\nlisten = "9464"\n',
    )
    with pytest.raises(ConfigError) as raised:
        load(site.config_file, environ={})
    problems = "\n".join(str(problem) for problem in raised.value.problems)
    assert "alerts.events: unknown event 'refussed'" in problems
    assert "alerts.to: must be a mail address" in problems
    assert "alerts.password_file: a username needs a password_file" in problems
    assert "metrics.listen: must be HOST:PORT" in problems


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_relay_login_uses_the_password_file_and_never_shows_the_password(site, simulator, tmp_path, capsys):
    password_file = tmp_path / "smtp-password"
    password_file.write_text("s3cret-relay-pass\n")
    password_file.chmod(0o600)
    box = MailBox(password="s3cret-relay-pass").start()
    try:
        login = f'username = "gateway"\npassword_file = "{password_file}"'
        site.write(simulator.url, extra=alerts_table(box.port, extra=login))
        assert cli.main(["-c", str(site.config_file), "check", "--offline", "--send-test-alert"]) == 0
        assert box.logins == ["gateway"] and "test alert" in str(box.find("test alert")["Subject"])
        password_file.write_text("a-wrong-password\n")
        assert cli.main(["-c", str(site.config_file), "check", "--offline", "--send-test-alert"]) == 1
    finally:
        box.stop()
    out = capsys.readouterr().out
    assert "FAIL  test alert by mail" in out and "535" in out, out
    assert "s3cret-relay-pass" not in out and "a-wrong-password" not in out
    assert all("s3cret-relay-pass" not in message.as_string() for message in box.messages)


def test_starttls_verifies_the_mail_servers_certificate(site, simulator, tmp_path, capsys, monkeypatch):
    authority = make_authority(tmp_path / "tls", "Campus Mail CA")
    box = MailBox(tls=authority.server_context()).start()
    try:
        site.write(
            simulator.url,
            extra=alerts_table(box.port, extra="starttls = true").replace(
                'smtp_host = "127.0.0.1"', 'smtp_host = "localhost"'
            ),
        )
        assert cli.main(["-c", str(site.config_file), "check", "--offline", "--send-test-alert"]) == 1
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().out, "a CA the host does not trust is refused"
        assert box.messages == []
        monkeypatch.setenv("SSL_CERT_FILE", str(authority.ca_file))  # the host trusts the campus CA
        assert cli.main(["-c", str(site.config_file), "check", "--offline", "--send-test-alert"]) == 0
        assert "test alert" in str(box.find("test alert")["Subject"])
    finally:
        box.stop()


def test_a_stuck_file_and_an_ncip_dead_letter_are_mailed(site, simulator, mailbox, monitors):
    site.write(simulator.url, extra=alerts_table(mailbox.port, after=900))
    now = [1_000_000.0]
    monitor = start_monitor(site, monitors, clock=lambda: now[0])
    writer = Ledger(site.state / "gateway.db", clock=lambda: now[0])
    try:
        row_id = writer.files.begin_claim("print", "slip-0042.xml", "/aleph/print/slip-0042.xml", 812, now[0])
        now[0] += 600
        monitor.tick(Conditions(caiasoft_problem=None))
        assert monitor.ledger.alerts.alerts_waiting() == 0, "not stuck yet"
        now[0] += 301
        monitor.tick(Conditions(paused="CaiaSoft refused the API key (HTTP 401)"))
        assert "stuck" not in " ".join(mailbox.subjects()), "a pause explains the wait: no stuck alert"
        monitor.tick(Conditions())
        stuck = mailbox.find("1 request file(s) waiting more than 15 minutes")
        assert "slip-0042.xml from print: claiming, 0 attempt(s)" in body(stuck)
        writer.files.forget(row_id)
        monitor.tick(Conditions())
        mailbox.find("no request file is waiting too long any more")
    finally:
        writer.close()

    monitor.ncip_entry(
        "dead_letter",
        {"action": "checkout", "item": "UNKNOWN-1"},
        "Unknown Item (UniqueItemId/ItemIdentifierValue UNKNOWN-1)",
        site.error / "ncip" / "x.jsonl",
    )
    letter = mailbox.find("NCIP checkout of item UNKNOWN-1 refused")
    assert "was NOT updated" in body(letter) and str(site.error / "ncip" / "x.jsonl") in body(letter)
    assert "by hand in ALEPH's circulation client" in body(letter)
    assert monitor.ledger.ncip.ncip_counts()["dead_letter"] == 1


def test_a_partial_copy_set_aside_because_its_file_changed_raises_no_refused_alert(site, simulator, mailbox, monitors):
    site.write(simulator.url, extra=alerts_table(mailbox.port))
    monitor = start_monitor(site, monitors)
    writer = Ledger(site.state / "gateway.db")
    try:
        row = writer.files.row(
            writer.files.begin_claim("print", "slip-0043.xml", "/aleph/print/slip-0043.xml", 15, 0.0)
        )
    finally:
        writer.close()
    partial = dataclasses.replace(row, state="refused", reason=aftertake.reason(row, 45))
    monitor.file_finished(partial, site.error / "slip-0043.xml")
    assert monitor.ledger.alerts.alerts_waiting() == 0 and mailbox.messages == [], "the whole file is taken again"
    monitor.file_finished(
        dataclasses.replace(row, state="refused", reason="not well-formed"), site.error / "slip-0043.1.xml"
    )
    mailbox.find("request file refused: slip-0043.xml")
