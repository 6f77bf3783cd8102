"""An NCIP server renamed in the config keeps its journal: its new name would start a new checkpoint and send every
entry again. The gateway refuses that, naming the old checkpoint file and what to do; nothing is sent twice."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from conftest import KEY, wait_for
from test_connections_service import log_events
from test_ncip_servers import server_tables

from gateway.cli import demo
from gateway.simulators.ncip import NcipSimulator
from gateway.state.checkpointfile import CheckpointClaimed
from gateway.state.ledger import Ledger


@pytest.fixture
def servers():
    made = [NcipSimulator().start(), NcipSimulator().start()]
    yield made
    for server in made:
        server.stop()


def journal(config_file, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "gateway", "-c", str(config_file), "journal", *args], check=True, timeout=60)


def test_a_renamed_server_is_refused_at_reload_and_at_start_and_nothing_is_sent_twice(
    tmp_path, servers, simulator, daemon_factory
):
    main_ncip, law_ncip = servers
    config_file = demo.write_config(
        tmp_path, simulator.url, KEY, extra=server_tables(main_ncip.url, law_ncip.url, tmp_path)
    )
    daemon = daemon_factory(config_file)
    for number in range(3):
        journal(config_file, "--ncip", "law", "checkout", f"LAW-{number}")
    wait_for(lambda: len(law_ncip.received) == 3, timeout=60, message="law's entries relayed")

    config_file.write_text(config_file.read_text().replace("[ncip.law]", "[ncip.lib]"))
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: log_events(tmp_path, "config.reload_refused"), timeout=60, message="the reload refused")
    (refused,) = log_events(tmp_path, "config.reload_refused")
    problem = " ".join(refused["problems"])
    assert "ncip.lib" in problem and f"{tmp_path}/law.jsonl is the journal" in problem
    assert f"rename {tmp_path}/state/ncip-checkpoint-law to {tmp_path}/state/ncip-checkpoint-lib" in problem
    journal(config_file, "--ncip", "lib", "checkout", "LAW-3")  # the running config (law) still relays it
    wait_for(lambda: len(law_ncip.received) == 4, timeout=60, message="law going on under its old name")
    assert daemon.stop() == 0

    restarted = daemon_factory(config_file)  # the same config at start: exit 2, named, nothing sent
    assert restarted.process.wait(60) == 2
    assert "ncip-checkpoint-law" in restarted.output()
    (tmp_path / "state" / "ncip-checkpoint-law").rename(tmp_path / "state" / "ncip-checkpoint-lib")
    renamed = daemon_factory(config_file)  # the admin did as told: it carries on where it was
    journal(config_file, "--ncip", "lib", "checkout", "LAW-4")
    wait_for(lambda: len(law_ncip.received) == 5, timeout=60, message="lib carrying on")
    assert renamed.stop() == 0
    assert [m.item for m in law_ncip.received] == ["LAW-0", "LAW-1", "LAW-2", "LAW-3", "LAW-4"]


def test_a_new_server_on_a_journal_no_checkpoint_has_read_starts_at_its_beginning(tmp_path):
    ledger = Ledger(tmp_path / "gateway.db")
    journal_file = tmp_path / "law.jsonl"
    journal_file.write_text('{"action": "checkout", "item": "X"}\n')
    fresh = ledger.ncip.journal_checkpoint("law", journal_file)
    assert fresh.position() is None
    stat = journal_file.stat()
    fresh.save(
        {"device": stat.st_dev, "inode": stat.st_ino, "offset": 36, "fingerprint": "0" * 64, "fingerprint_length": 36}
    )
    with pytest.raises(CheckpointClaimed, match="ncip-checkpoint-law"):
        ledger.ncip.journal_checkpoint("lib", journal_file)
    other = tmp_path / "other.jsonl"
    other.write_text("")
    assert ledger.ncip.journal_checkpoint("music", other).position() is None
    ledger.close()


def test_a_removed_server_is_said_at_reload_with_where_its_journal_was_read_to(
    tmp_path, servers, simulator, daemon_factory
):
    main_ncip, law_ncip = servers
    config_file = demo.write_config(
        tmp_path, simulator.url, KEY, extra=server_tables(main_ncip.url, law_ncip.url, tmp_path)
    )
    both = config_file.read_text()
    daemon = daemon_factory(config_file)
    journal(config_file, "--ncip", "law", "checkout", "LAW-0")
    wait_for(lambda: law_ncip.received, timeout=60, message="law's entry relayed")
    config_file.write_text(both.split("\n[ncip.law]")[0] + "\n")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: log_events(tmp_path, "ncip.server_removed"), timeout=60, message="the warning")
    (removed,) = log_events(tmp_path, "ncip.server_removed")
    assert removed["connection"] == "law" and removed["read_up_to"] > 0
    assert removed["checkpoint"] == str(tmp_path / "state" / "ncip-checkpoint-law")
    assert daemon.stop() == 0
