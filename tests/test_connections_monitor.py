"""Alerts, metrics, the Grafana dashboard and the Prometheus rules with several connections: each names the
CaiaSoft connection or NCIP server it is about, and a pause or an outage of one is a condition of its own.

A config with one [caiasoft] and one [ncip] reads exactly as before: tests/test_metrics.py and tests/test_alerts.py
prove it, unchanged."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import KEY, LAW_KEY, REPO, ncip_table, wait_for
from peers import MailBox, alerts_table, body, free_port
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_connections import write_two
from test_end_to_end import barcode_list

from gateway.config import loader as config_module
from gateway.config.settings import Metrics as MetricsSettings
from gateway.monitor.events import Conditions
from gateway.monitor.metrics import Layout, Metrics
from gateway.monitor.monitor import Monitor
from gateway.state.ledger import Ledger

LAW_NCIP = "http://127.0.0.1:1/law-ncip"
MAIN_NCIP = "http://127.0.0.1:1/main-ncip"
REFUSED = "CaiaSoft refused the API key (HTTP 401)"
# the series that carry a connection label with several connections (histogram parts included)
CONNECTION_SERIES = {
    "caiasoft_gateway_files_total",
    "caiasoft_gateway_denied_items_total",
    "caiasoft_gateway_pending_files",
    "caiasoft_gateway_oldest_pending_seconds",
    "caiasoft_gateway_uploads_paused",
    "caiasoft_gateway_upload_seconds_bucket",
    "caiasoft_gateway_upload_seconds_count",
    "caiasoft_gateway_upload_seconds_sum",
    "caiasoft_gateway_ncip_entries_total",
    "caiasoft_gateway_ncip_behind_entries",
    "caiasoft_gateway_unreachable",
    "caiasoft_gateway_source_up",
}


def two_ncip_servers(root: Path) -> str:
    """[ncip] and [ncip.law], neither reachable (the tests tell the monitor their state)."""
    return (
        ncip_table(MAIN_NCIP, root / "ncip.jsonl")
        + f"""
[ncip.law]
url = "{LAW_NCIP}"
from_agency = "CAIA"
to_agency = "LAW"
user_id = "CAIASOFT"
journal = "{root / "ncip-law.jsonl"}"
"""
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, read with prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def scrape(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return samples(answer.read().decode())
    except OSError:
        return None


def unlabelled(found: dict) -> list[tuple]:
    """The CaiaSoft and NCIP samples without a connection label."""
    return [key for key in found if key[0] in CONNECTION_SERIES and "connection" not in dict(key[1])]


@pytest.fixture
def mailbox():
    box = MailBox().start()
    yield box
    box.stop()


@pytest.fixture
def monitors():
    """Monitors made by a test; their senders and metrics are stopped after it."""
    made: list[tuple[Monitor, Ledger]] = []
    yield made
    for monitor, ledger in made:
        if monitor.sender and monitor.sender.is_alive():
            monitor.sender.stop()
            monitor.sender.join(30)
        monitor.stop()
        ledger.close()


def start_monitor(config_file: Path, monitors: list, clock=None, live=None) -> Monitor:
    """A monitor on the config's ledger, its sender and metrics started; a clock given is both its wall clock and
    the one conditions last on."""
    config = config_module.load(config_file, environ={})
    ledger = Ledger(config.paths.state_dir / "gateway.db")
    timing = {"clock": clock, "steady": clock} if clock else {}
    monitor = Monitor(config, ledger, live=live, **timing)
    monitors.append((monitor, ledger))
    monitor.start()
    if monitor.sender:
        monitor.sender.start()
    return monitor


def test_the_daemon_labels_each_connection_and_a_key_refused_on_law_pauses_law_alone(
    tmp_path, simulator, law_simulator, mailbox, daemon_factory
):
    """The real daemon, two simulators: law's key is refused, so law pauses (its metric 1, the default's 0, one
    mail naming law and its key file, never the other connection); once the key works, law's file is archived,
    and a restart starts each connection's counters from the ledger."""
    port = free_port()
    config_file = write_two(
        tmp_path,
        simulator.url,
        law_simulator.url,
        extra=alerts_table(mailbox.port, interval=1) + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    law_simulator.key = "the-law-key-was-rotated"
    (tmp_path / "aleph" / "print" / "print_barcode").write_bytes(barcode_list(1))
    (tmp_path / "aleph" / "law" / "law_barcode").write_bytes(barcode_list(2))
    daemon = daemon_factory(config_file)

    paused = mailbox.find("uploads to CaiaSoft paused on connection law")
    text = body(paused)
    assert "connection law" in text and "lawprint" in text and str(tmp_path / "api-key-law") in text
    assert "1 file(s) of connection law" in text
    assert "default" not in str(paused["Subject"]) + text, "the other connection is not paused"

    def law_paused() -> dict | None:
        found = scrape(port)
        if found is None or value(found, "caiasoft_gateway_uploads_paused", connection="law") != 1:
            return None
        archived = value(
            found, "caiasoft_gateway_files_total", source="print", outcome="archived", connection="default"
        )
        return found if archived == 1 else None

    found = wait_for(law_paused, timeout=30, interval=0.2, message="law paused and print's file archived")
    assert value(found, "caiasoft_gateway_uploads_paused", connection="default") == 0
    assert value(found, "caiasoft_gateway_pending_files", connection="law") == 1
    assert value(found, "caiasoft_gateway_pending_files", connection="default") == 0
    assert value(found, "caiasoft_gateway_files_total", source="lawprint", outcome="archived", connection="law") == 0
    assert value(found, "caiasoft_gateway_upload_seconds_count", connection="default") == 1
    assert value(found, "caiasoft_gateway_upload_seconds_count", connection="law") >= 1, "a refused call is timed"
    assert value(found, "caiasoft_gateway_source_up", source="lawprint", connection="law") == 1
    assert unlabelled(found) == [], "with several connections every CaiaSoft series names its connection"

    law_simulator.key = LAW_KEY  # the admin fixes law's key
    resumed = mailbox.find("uploads resumed on connection law")
    assert "default" not in body(resumed)

    def law_archived() -> dict | None:
        found = scrape(port)
        archived = found and value(
            found, "caiasoft_gateway_files_total", source="lawprint", outcome="archived", connection="law"
        )
        return found if archived == 1 else None

    found = wait_for(law_archived, timeout=30, interval=0.2, message="law's file archived")
    assert value(found, "caiasoft_gateway_uploads_paused", connection="law") == 0
    assert daemon.stop() == 0
    assert not any("paused on connection default" in subject for subject in mailbox.subjects())
    for message in mailbox.messages:
        assert KEY not in message.as_string() and LAW_KEY not in message.as_string()

    again = daemon_factory(config_file)  # each connection's counters start from the ledger
    found = wait_for(lambda: scrape(port), timeout=20, message="/metrics after the restart")
    assert value(found, "caiasoft_gateway_files_total", source="print", outcome="archived", connection="default") == 1
    assert value(found, "caiasoft_gateway_files_total", source="lawprint", outcome="archived", connection="law") == 1
    assert not [
        key for key in found if dict(key[1]).get("source") == "lawprint" and dict(key[1])["connection"] != "law"
    ]
    assert again.stop() == 0


def test_a_pause_on_law_and_one_on_the_other_connection_start_and_end_apart(tmp_path, simulator, mailbox, monitors):
    config_file = write_two(tmp_path, simulator.url, "http://127.0.0.1:1", extra=alerts_table(mailbox.port, interval=1))
    now = [1_000_000.0]
    monitor = start_monitor(config_file, monitors, clock=lambda: now[0])
    writer = Ledger(tmp_path / "state" / "gateway.db", clock=lambda: now[0])
    try:
        writer.files.begin_claim("lawprint", "law-1.xml", "/aleph/law/law-1.xml", 10, now[0], connection="law")
        writer.files.begin_claim("lawprint", "law-2.xml", "/aleph/law/law-2.xml", 10, now[0], connection="law")
    finally:
        writer.close()
    calm = (None, None)

    monitor.tick(Conditions(connections={"default": calm, "law": (REFUSED, None)}))
    law = mailbox.find("paused on connection law")
    text = str(law["Subject"]) + body(law)
    assert "uploads to CaiaSoft paused on connection law: the API key was refused" in str(law["Subject"])
    assert "2 file(s) of connection law (from source lawprint) wait" in text
    assert f"its key file {tmp_path / 'api-key-law'} (caiasoft.law.api_key_file)" in text
    assert "default" not in text and "print," not in text

    monitor.tick(Conditions(connections={"default": (REFUSED, None), "law": (REFUSED, None)}))
    other = mailbox.find("paused on connection default")  # a condition of its own: raised though law's lasts
    assert "0 file(s) of connection default (from source print) wait" in body(other)
    assert f"its key file {tmp_path / 'api-key'} (caiasoft.api_key_file)" in body(other)

    monitor.tick(Conditions(connections={"default": (REFUSED, None), "law": calm}))
    mailbox.find("uploads resumed on connection law")
    wait_for(lambda: monitor.ledger.alerts.alerts_waiting() == 0, message="law's recovery sent")
    assert not any("resumed on connection default" in subject for subject in mailbox.subjects())

    monitor.tick(Conditions(connections={"default": calm, "law": calm}))
    mailbox.find("uploads resumed on connection default")
    monitor.tick(Conditions(connections={"default": calm, "law": calm}))
    wait_for(lambda: monitor.ledger.alerts.alerts_waiting() == 0, message="every alert sent")
    assert len(mailbox.messages) == 4, mailbox.subjects()


def test_outages_dead_letters_and_refused_files_name_their_connection(tmp_path, simulator, mailbox, monitors):
    config_file = write_two(
        tmp_path,
        simulator.url,
        "https://law.caiasoft.example",
        extra=two_ncip_servers(tmp_path) + alerts_table(mailbox.port, interval=3600, after=900),
    )
    now = [1_000_000.0]
    monitor = start_monitor(config_file, monitors, clock=lambda: now[0])
    failing = Conditions(
        connections={"default": (None, None), "law": (None, "cannot reach CaiaSoft: connection refused")},
        ncip_servers={"default": (None, 0, None), "law": ("NCIP server unavailable: timed out", 3, None)},
    )
    monitor.tick(failing)
    now[0] += 901
    monitor.tick(failing)
    both = mailbox.find("2 alerts: CaiaSoft or NCIP unreachable")
    subject, text = str(both["Subject"]), body(both)
    assert "CaiaSoft connection law unreachable for 15 minutes" in subject
    assert "ALEPH's NCIP server law unreachable for 15 minutes" in subject
    assert "https://law.caiasoft.example" in text and LAW_NCIP in text
    assert "3 journal entries of server law wait" in text and "0 request file(s) of connection law wait" in text
    assert simulator.url not in text and MAIN_NCIP not in text and "default" not in subject

    now[0] += 60
    monitor.tick(Conditions())
    back = mailbox.find("CaiaSoft connection law reachable again; ALEPH's NCIP server law reachable again")
    assert "default" not in str(back["Subject"])

    monitor.ncip_entry(
        "dead_letter",
        {"action": "checkout", "item": "LAW-404"},
        "Unknown Item",
        tmp_path / "error" / "ncip" / "law.jsonl",
        connection="law",
    )
    letter = mailbox.find("NCIP checkout of item LAW-404 refused (NCIP server law)")
    assert f"ALEPH's NCIP server law ({LAW_NCIP}) refused the check-out" in body(letter)
    assert "caiasoft-gateway journal --ncip law checkout LAW-404" in body(letter)

    writer = Ledger(tmp_path / "state" / "gateway.db")
    try:
        row = writer.files.row(
            writer.files.begin_claim("lawprint", "slip-law.xml", "/aleph/law/slip-law.xml", 15, 0.0, connection="law")
        )
    finally:
        writer.close()
    monitor.file_finished(
        dataclasses.replace(row, state="refused", reason="not well-formed"), tmp_path / "error" / "slip-law.xml"
    )
    refused = mailbox.find("request file refused: slip-law.xml (connection law)")
    assert "from source lawprint (CaiaSoft connection law) was refused" in body(refused)


def test_stuck_files_are_told_per_connection_while_their_connection_answers(tmp_path, simulator, mailbox, monitors):
    config_file = write_two(tmp_path, simulator.url, "http://127.0.0.1:1", extra=alerts_table(mailbox.port, after=900))
    now = [1_000_000.0]
    monitor = start_monitor(config_file, monitors, clock=lambda: now[0])
    writer = Ledger(tmp_path / "state" / "gateway.db", clock=lambda: now[0])
    try:
        writer.files.begin_claim("print", "slip-main.xml", "/aleph/print/slip-main.xml", 10, now[0])
        writer.files.begin_claim("lawprint", "slip-law.xml", "/aleph/law/slip-law.xml", 10, now[0], connection="law")
    finally:
        writer.close()
    now[0] += 901
    law_paused = Conditions(connections={"default": (None, None), "law": (REFUSED, None)})
    monitor.tick(law_paused)
    stuck = mailbox.find("1 request file(s) of connection default waiting more than 15 minutes")
    assert "slip-main.xml from print" in body(stuck) and "slip-law.xml" not in body(stuck)
    mailbox.find("paused on connection law")
    monitor.tick(law_paused)
    wait_for(lambda: monitor.ledger.alerts.alerts_waiting() == 0, message="the alerts sent")
    assert not any("of connection law waiting" in subject for subject in mailbox.subjects()), "a pause explains it"


def test_metrics_name_each_connection_and_server_and_start_from_each_servers_counts(tmp_path, simulator, monitors):
    port = free_port()
    config_file = write_two(
        tmp_path,
        simulator.url,
        "http://127.0.0.1:1",
        extra=two_ncip_servers(tmp_path) + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
    )
    state = Conditions(
        connections={"default": (None, None), "law": (REFUSED, "HTTP 401")},
        ncip_servers={"default": (None, 0, None), "law": ("timed out", 7, None)},
        sources={"print": None, "lawprint": "cannot list the folder"},
    )
    monitor = start_monitor(config_file, monitors, live=lambda: state)
    monitor.upload_timed(0.3, connection="law")
    for _ in range(2):
        monitor.ncip_entry("done", {"action": "checkin", "item": "L-1"}, connection="law")
    monitor.ncip_entry("already", {"action": "checkin", "item": "M-1"})

    found = wait_for(lambda: scrape(port), message="/metrics")
    assert value(found, "caiasoft_gateway_uploads_paused", connection="law") == 1
    assert value(found, "caiasoft_gateway_uploads_paused", connection="default") == 0
    assert value(found, "caiasoft_gateway_unreachable", system="caiasoft", connection="law") == 1
    assert value(found, "caiasoft_gateway_unreachable", system="caiasoft", connection="default") == 0
    assert value(found, "caiasoft_gateway_unreachable", system="ncip", connection="law") == 1
    assert value(found, "caiasoft_gateway_unreachable", system="ncip", connection="default") == 0
    assert value(found, "caiasoft_gateway_ncip_behind_entries", connection="law") == 7
    assert value(found, "caiasoft_gateway_ncip_entries_total", outcome="done", connection="law") == 2
    assert value(found, "caiasoft_gateway_ncip_entries_total", outcome="done", connection="default") == 0
    assert value(found, "caiasoft_gateway_ncip_entries_total", outcome="already", connection="default") == 1
    assert value(found, "caiasoft_gateway_upload_seconds_count", connection="law") == 1
    assert value(found, "caiasoft_gateway_upload_seconds_count", connection="default") == 0
    assert value(found, "caiasoft_gateway_source_up", source="lawprint", connection="law") == 0
    assert value(found, "caiasoft_gateway_files_total", source="print", outcome="refused", connection="default") == 0
    assert unlabelled(found) == []

    config = config_module.load(config_file, environ={})  # a reload's metrics start from each server's counts
    again = Metrics(config.metrics, monitor.ledger, ["print", "lawprint"], layout=Layout.of(config))
    seeded = samples(generate_latest(again.registry).decode())
    assert value(seeded, "caiasoft_gateway_ncip_entries_total", outcome="done", connection="law") == 2
    assert value(seeded, "caiasoft_gateway_ncip_entries_total", outcome="already", connection="law") == 0
    assert value(seeded, "caiasoft_gateway_ncip_entries_total", outcome="already", connection="default") == 1


def test_one_connection_has_no_connection_label(tmp_path, site, simulator):
    """[caiasoft] and [ncip] alone: the layout the monitor passes adds nothing to any series."""
    site.write(simulator.url, extra=ncip_table(MAIN_NCIP, tmp_path / "ncip.jsonl"))
    config = site.load()
    assert not config.several
    ledger = Ledger(tmp_path / "gateway.db")
    try:
        metrics = Metrics(MetricsSettings(listen="", textfile=None), ledger, ["print"], layout=Layout.of(config))
        metrics.upload_timed(0.2, connection="default")
        found = samples(generate_latest(metrics.registry).decode())
    finally:
        ledger.close()
    assert not any("connection" in dict(labels) for _name, labels in found)
    assert value(found, "caiasoft_gateway_upload_seconds_count") == 1


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((REPO / "conf" / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_has_a_connection_variable_every_caiasoft_and_ncip_query_uses(tmp_path):
    dashboard = json.loads((REPO / "conf" / "grafana-dashboard.json").read_text())
    variable = next(item for item in dashboard["templating"]["list"] if item["name"] == "connection")
    assert variable["type"] == "query" and variable["includeAll"] and variable["allValue"] == ".*"
    series = re.fullmatch(r"label_values\((caiasoft_gateway_[a-z_]+), connection\)", variable["query"]["query"])
    assert series, variable["query"]
    assert series.group(1) in CONNECTION_SERIES, "the variable reads a series that has the label"

    expressions = dashboard_expressions()
    assert len(expressions) >= 9
    for expression in expressions:
        used = re.findall(r"\b(caiasoft_gateway_[a-z_]+)(\{[^}]*\})?", expression)
        assert used, expression
        for name, selector in used:
            assert name in CONNECTION_SERIES, (expression, name)
            assert 'connection=~"$connection"' in selector, (expression, name)

    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: tools/install-test-deps installs it (prometheus)"
    rules = {  # each query as a recording rule, with All's value, for Prometheus' own parser
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{number}", "expr": expression.replace("$connection", ".*")}
                    for number, expression in enumerate(expressions)
                ],
            }
        ]
    }
    checked = tmp_path / "dashboard-rules.yml"
    checked.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(checked)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_shipped_rules_name_the_connection_and_read_as_before_without_it(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: tools/install-test-deps installs it (prometheus)"
    rules = REPO / "conf" / "prometheus-rules.yml"
    shipped = yaml.safe_load(rules.read_text())
    paused = next(rule for group in shipped["groups"] for rule in group["rules"] if rule["alert"].endswith("Paused"))
    assert "$labels.connection" in paused["annotations"]["summary"]

    def alert(instance: str, connection: str | None, summary: str, description: str) -> dict:
        labels = {"severity": "critical", "instance": instance, **({"connection": connection} if connection else {})}
        return {"exp_labels": labels, "exp_annotations": {"summary": summary, "description": description}}

    fix = "then `systemctl reload caiasoft-gateway`."
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'caiasoft_gateway_uploads_paused{instance="consortium",connection="law"}',
                        "values": "1x10",
                    },
                    {
                        "series": 'caiasoft_gateway_uploads_paused{instance="consortium",connection="default"}',
                        "values": "0x10",
                    },
                    {"series": 'caiasoft_gateway_uploads_paused{instance="single"}', "values": "1x10"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "6m",
                        "alertname": "CaiaSoftGatewayUploadsPaused",
                        "exp_alerts": [
                            alert(
                                "consortium",
                                "law",
                                "Uploads to CaiaSoft are paused on consortium for connection law: "
                                "the API key was refused",
                                "Request files of connection law wait in the queue (none is lost). Fix the key in "
                                f"api_key_file of [caiasoft.law], {fix}",
                            ),
                            alert(
                                "single",
                                None,
                                "Uploads to CaiaSoft are paused on single: the API key was refused",
                                f"Request files wait in the queue (none is lost). Fix the key in api_key_file, {fix}",
                            ),
                        ],
                    }
                ],
            }
        ],
    }
    unit = tmp_path / "rules-test.yml"
    unit.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
