"""Metrics: /metrics scraped from the real daemon and parsed with prometheus_client's parser; the textfile;
the shipped Prometheus rules and Grafana dashboard name only metrics that exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request

import pytest
import yaml
from conftest import REPO, ncip_table, wait_for
from peers import free_port
from prometheus_client.parser import text_string_to_metric_families
from test_end_to_end import barcode_list

from gateway.config.settings import Metrics as MetricsSettings
from gateway.monitor.metrics import Metrics
from gateway.ncip import journal
from gateway.ncip.journal import JournalEntry
from gateway.simulators.ncip import NcipSimulator
from gateway.state.ledger import Ledger

DENIED = "31234009999990"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, read with prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return samples(answer.read().decode())


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def ncip():
    sim = NcipSimulator(problems={"UNKNOWN-1": "Unknown Item", "IN-ALREADY": "Item Not Checked Out"}).start()
    yield sim
    sim.stop()


def test_scraped_figures_match_the_ledger_and_survive_a_restart(site, simulator, ncip, daemon_factory):
    port = free_port()
    textfile = site.root / "textfile" / "caiasoft_gateway.prom"
    textfile.parent.mkdir()
    site.journal = site.root / "ncip.jsonl"
    site.write(
        simulator.url,
        extra=ncip_table(
            ncip.url, site.journal, timeout_seconds=2, backoff_initial_seconds=0.05, backoff_max_seconds=0.3
        )
        + f"""
[metrics]
listen = "127.0.0.1:{port}"
textfile = "{textfile}"
""",
    )
    (site.source / "good_barcode").write_bytes(barcode_list(1))
    (site.source / "denied_barcode").write_bytes(barcode_list(2) + f"{DENIED}\n".encode())
    (site.source / "scan.pdf").write_bytes(b"%PDF-1.4\x00\x00binary")
    for action, item in (("checkout", "A-1"), ("checkout", "UNKNOWN-1"), ("checkin", "IN-ALREADY")):
        journal.append(site.journal, JournalEntry(action, item))
    daemon = daemon_factory(site.config_file)
    wait_for(
        lambda: len(site.archived()) == 2 and len([p for p in site.refused() if p.parent.name != "ncip"]) == 1,
        timeout=30,
        message="files finished",
    )

    def settled() -> dict | None:
        try:
            found = scrape(port)
        except OSError:
            return None
        ncip_done = sum(
            value(found, "caiasoft_gateway_ncip_entries_total", outcome=o) for o in ("done", "already", "dead_letter")
        )
        return found if ncip_done == 3 and value(found, "caiasoft_gateway_pending_files") == 0 else None

    found = wait_for(settled, timeout=30, interval=0.2, message="all figures in /metrics")

    def committed() -> tuple | None:  # archived is a lazy step: another process sees it once it is committed
        ledger = Ledger(site.state / "gateway.db")
        try:
            figures = (
                ledger.alerts.finished_by_source(),
                ledger.alerts.denied_items_by_source(),
                ledger.ncip.ncip_counts(),
            )
        finally:
            ledger.close()
        return figures if figures[0] == {("print", "archived"): 2, ("print", "refused"): 1} else None

    by_source, denied, ncip_counts = wait_for(committed, timeout=10, message="the finished files in the ledger")
    assert denied == {"print": 1}
    assert value(found, "caiasoft_gateway_files_total", source="print", outcome="archived") == 2
    assert value(found, "caiasoft_gateway_files_total", source="print", outcome="refused") == 1
    assert value(found, "caiasoft_gateway_denied_items_total", source="print") == 1
    for outcome in ("done", "already", "dead_letter"):
        assert value(found, "caiasoft_gateway_ncip_entries_total", outcome=outcome) == 1
        assert ncip_counts[outcome] == 1
    assert value(found, "caiasoft_gateway_upload_seconds_count") == 2, "two calls reached CaiaSoft"
    assert value(found, "caiasoft_gateway_oldest_pending_seconds") == 0
    assert value(found, "caiasoft_gateway_uploads_paused") == 0
    wait_for(
        lambda: value(scrape(port), "caiasoft_gateway_source_up", source="print") == 1,
        timeout=10,
        message="the source up once the service ticked",
    )
    assert value(scrape(port), "caiasoft_gateway_ncip_behind_entries") == 0
    assert value(found, "caiasoft_gateway_unreachable", system="caiasoft") == 0

    wait_for(textfile.exists, timeout=20, message="the textfile")
    before = textfile.stat().st_ino
    assert daemon.stop() == 0  # the last figures are written as the service stops
    assert textfile.stat().st_ino != before, "replaced by a rename, never rewritten in place"
    assert [path.name for path in textfile.parent.iterdir()] == [textfile.name], "no temporary file left"
    written = samples(textfile.read_text())
    assert value(written, "caiasoft_gateway_files_total", source="print", outcome="archived") == 2
    assert value(written, "caiasoft_gateway_ncip_entries_total", outcome="dead_letter") == 1

    again = daemon_factory(site.config_file)  # counters start from the ledger: a restart resets no rate
    found = wait_for(lambda: _try_scrape(port), timeout=20, message="/metrics after the restart")
    assert value(found, "caiasoft_gateway_files_total", source="print", outcome="refused") == 1
    assert value(found, "caiasoft_gateway_denied_items_total", source="print") == 1
    assert value(found, "caiasoft_gateway_ncip_entries_total", outcome="already") == 1
    again.process.send_signal(signal.SIGHUP)  # a reload serves /metrics again on the same port
    wait_for(lambda: "config.reloaded" in (site.log_dir / "gateway.log").read_text(), message="the reload")
    found = wait_for(lambda: _try_scrape(port), timeout=20, message="/metrics after the reload")
    assert value(found, "caiasoft_gateway_files_total", source="print", outcome="archived") == 2
    assert "metrics.not_served" not in (site.log_dir / "gateway.log").read_text()
    assert again.stop() == 0


def _try_scrape(port: int) -> dict | None:
    try:
        return scrape(port)
    except OSError:
        return None


def known_metric_names(tmp_path) -> set[str]:
    """Every series name the gateway exposes (histogram parts included)."""
    ledger = Ledger(tmp_path / "gateway.db")
    try:
        metrics = Metrics(MetricsSettings(listen="", textfile=None), ledger, ["print"])
        from prometheus_client import generate_latest

        return {name for name, _labels in samples(generate_latest(metrics.registry).decode())}
    finally:
        ledger.close()


def test_the_shipped_alert_rules_name_only_metrics_that_exist(tmp_path):
    names = known_metric_names(tmp_path)
    rules = yaml.safe_load((REPO / "conf" / "prometheus-rules.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {
        "CaiaSoftGatewayUploadsPaused",
        "CaiaSoftGatewayUnreachable",
        "CaiaSoftGatewayOldestPendingTooOld",
        "CaiaSoftGatewaySourceDown",
    } <= {rule["alert"] for rule in alerts}
    for rule in alerts:
        used = set(re.findall(r"\bcaiasoft_gateway_[a-z_]+", rule["expr"]))
        assert used and used <= names, (rule["alert"], used - names)
        assert rule["annotations"]["summary"] and rule["labels"]["severity"]
    promtool = shutil.which("promtool")
    # tools/install-test-deps installs it as root (as CI runs); elsewhere the YAML checks above stand alone
    assert promtool or os.geteuid() != 0, "promtool is missing: tools/install-test-deps installs it (prometheus)"
    if promtool:  # Prometheus' own checker too
        result = subprocess.run(
            [promtool, "check", "rules", str(REPO / "conf" / "prometheus-rules.yml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_grafana_dashboard_names_only_metrics_that_exist(tmp_path):
    names = known_metric_names(tmp_path)
    dashboard = json.loads((REPO / "conf" / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(expressions) >= 5
    for expression in expressions:
        used = set(re.findall(r"\bcaiasoft_gateway_[a-z_]+", expression))
        assert used and used <= names, (expression, used - names)


def test_the_textfile_is_never_written_through_a_link_planted_in_its_folder(tmp_path, monkeypatch):
    """node_exporter's folder may be writable by others: a link planted at the temporary name, or at the
    textfile's own name, never makes the gateway write into the file it points to."""
    ledger = Ledger(tmp_path / "gateway.db")
    folder = tmp_path / "textfile"
    folder.mkdir()
    textfile = folder / "caiasoft_gateway.prom"
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"the ledger, say\n")
    try:
        metrics = Metrics(MetricsSettings(listen="", textfile=textfile), ledger, ["print"])
        monkeypatch.setattr("gateway.monitor.metrics.secrets.token_hex", lambda _bytes: "guessed")
        (folder / ".caiasoft_gateway.prom.guessed").symlink_to(decoy)  # the name the next write will use
        metrics.write_textfile()
        assert decoy.read_bytes() == b"the ledger, say\n" and not textfile.exists(), "refused, not followed"
        (folder / ".caiasoft_gateway.prom.guessed").unlink()
        textfile.symlink_to(decoy)
        metrics.write_textfile()
        assert decoy.read_bytes() == b"the ledger, say\n", "the link at the textfile's name is replaced"
        assert not textfile.is_symlink() and "caiasoft_gateway_files_total" in textfile.read_text()
        assert sorted(path.name for path in folder.iterdir()) == [textfile.name], "no temporary file left"
    finally:
        ledger.close()
