"""The CaiaSoft client and the pipeline against hostile peers: real loopback servers that answer
slowly, hugely, with HTML, with the key in their words, or never; TLS settings against the environment."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import hostile
import pytest
from conftest import KEY, SAMPLES, Site, wait_for
from tlscerts import make_authority

from gateway.config.loader import Secret
from gateway.runtime.pipeline import Pipeline
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient

ECHO = json.dumps({"success": False, "error": f"API key {KEY} is not valid for format ALEPH"}).encode()


class FixedClock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def peer_site(tmp_path):
    """A Site whose base_url is set per test to a hostile peer."""
    return Site(tmp_path, "http://127.0.0.1:9")


def configure(site: Site, peer: hostile.HostilePeer, timeout_seconds: float = 5, **caiasoft) -> None:
    extra = "\n".join(f"{key} = {json.dumps(value)}" for key, value in caiasoft.items())
    site.write(peer.url, timeout_seconds=timeout_seconds, extra_caiasoft=extra)


def sample(tmp_path):
    path = tmp_path / "slip.xml"
    path.write_bytes((SAMPLES / "hold-request-slip-0001.xml").read_bytes())
    return path


def upload_within(client: CaiaSoftClient, path, seconds: float):
    """client.upload in a thread; the Outcome, or None if it did not end within seconds."""
    result = []
    worker = threading.Thread(target=lambda: result.append(client.upload(path, path.name, "xml")), daemon=True)
    worker.start()
    worker.join(seconds)
    return result[0] if result else None


def pipeline_for(site: Site) -> Pipeline:
    config = site.load()
    return Pipeline(
        config, Ledger(config.paths.database), CaiaSoftClient(config.caiasoft, config.api_key), clock=FixedClock()
    )


def test_an_answer_dribbled_a_byte_at_a_time_is_cut_at_deadline_seconds(peer_site, tmp_path):
    with hostile.HostilePeer(hostile.dribble(interval=0.05)) as peer:
        configure(peer_site, peer, timeout_seconds=5, deadline_seconds=1)
        client = CaiaSoftClient(peer_site.load().caiasoft, Secret(KEY))
        started = time.monotonic()
        outcome = upload_within(client, sample(tmp_path), 10)
        took = time.monotonic() - started
        client.close()
    assert outcome is not None, "the upload was still reading the dribble after 10 s"
    assert outcome.verdict == "transient"
    assert "deadline_seconds" in outcome.reason and "may have reached CaiaSoft" in outcome.reason
    assert took < 4


def test_a_server_that_accepts_and_never_answers_is_cut_at_deadline_seconds(peer_site, tmp_path):
    with hostile.HostilePeer(hostile.never_answers()) as peer:
        configure(peer_site, peer, timeout_seconds=30, deadline_seconds=1)
        client = CaiaSoftClient(peer_site.load().caiasoft, Secret(KEY))
        outcome = upload_within(client, sample(tmp_path), 10)
        client.close()
    assert outcome is not None, "the upload still waited after 10 s"
    assert outcome.verdict == "transient" and "deadline_seconds" in outcome.reason
    assert len(peer.requests) == 1


def test_a_100_mb_answer_is_cut_at_max_answer_bytes_and_kept_out_of_ledger_and_sidecar(peer_site, tmp_path):
    with hostile.HostilePeer(hostile.huge()) as peer:
        configure(peer_site, peer, max_answer_bytes=65536, unreadable_answer_retries=0)
        pipeline = pipeline_for(peer_site)
        row_id = pipeline.admission.adopt_copy(sample(tmp_path))
        outcome = pipeline.upload(pipeline.ledger.files.assign(row_id))
    assert peer.sent_bytes < 20 * 1024 * 1024  # what socket buffers hold, not the 100 MB
    assert outcome.verdict == "refused"
    assert "max_answer_bytes = 65536" in outcome.reason
    row = pipeline.ledger.files.get(row_id)
    assert row.state == "refused" and len(row.answer) < 4096
    [refused] = peer_site.refused()
    sidecar_text = refused.with_name(refused.name + ".json").read_text()
    assert len(sidecar_text) < 8192
    assert json.loads(sidecar_text)["caiasoft_answer"]["truncated_at_bytes"] == 65536


def test_a_maintenance_page_with_200_is_sent_a_bounded_number_of_times_then_refused(peer_site, tmp_path):
    page = b"<html><body><h1>Down for maintenance</h1></body></html>"
    with hostile.HostilePeer(hostile.fixed(200, page, content_type="text/html")) as peer:
        configure(peer_site, peer, unreadable_answer_retries=2)
        pipeline = pipeline_for(peer_site)
        row_id = pipeline.admission.adopt_copy(sample(tmp_path))
        verdicts = []
        for _ in range(10):
            row = pipeline.ledger.files.assign(row_id)
            if row is None:
                break
            verdicts.append(pipeline.upload(row).verdict)
    assert verdicts == ["transient", "transient", "refused"]
    assert len(peer.requests) == 3
    row = pipeline.ledger.files.get(row_id)
    assert row.state == "refused"
    assert "Down for maintenance" in row.reason and "text/html" in row.reason
    [refused] = peer_site.refused()
    assert peer_site.sidecar(refused)["caiasoft_answer"]["unparsed"] == page.decode()


def test_the_count_of_unreadable_answers_survives_a_restart(peer_site, tmp_path):
    page = b"<html>maintenance</html>"
    with hostile.HostilePeer(hostile.fixed(200, page, content_type="text/html")) as peer:
        configure(peer_site, peer, unreadable_answer_retries=1)
        first = pipeline_for(peer_site)
        row_id = first.admission.adopt_copy(sample(tmp_path))
        assert first.upload(first.ledger.files.assign(row_id)).verdict == "transient"
        first.ledger.close()
        second = pipeline_for(peer_site)  # a new process: the count is in the ledger, not in memory
        assert second.upload(second.ledger.files.assign(row_id)).verdict == "refused"
    assert len(peer.requests) == 2


@pytest.mark.parametrize("status", [400, 503, 200])
def test_an_answer_quoting_the_key_is_never_stored_or_shown_raw(peer_site, tmp_path, status):
    body = (
        ECHO
        if status != 200
        else json.dumps(
            {"success": True, "error": "", "results": [{"item": "1", "deny": "Y", "istatus": f"bad key {KEY}"}]}
        ).encode()
    )
    with hostile.HostilePeer(hostile.fixed(status, body)) as peer:
        configure(peer_site, peer)
        pipeline = pipeline_for(peer_site)
        row_id = pipeline.admission.adopt_copy(sample(tmp_path))
        outcome = pipeline.upload(pipeline.ledger.files.assign(row_id))
        pipeline.ledger.close()
    assert hostile.header_value(peer.requests[0], "X-API-Key") == KEY  # it was sent, as it must be
    assert KEY not in outcome.reason and KEY not in json.dumps(outcome.answer)
    assert "[redacted]" in outcome.reason + json.dumps(outcome.answer)
    database = sqlite3.connect(peer_site.load().paths.database)
    stored = json.dumps(database.execute("SELECT reason, answer FROM files").fetchall())
    database.close()
    assert KEY not in stored and "[redacted]" in stored
    for written in peer_site.written_files():
        assert KEY.encode() not in written.read_bytes(), written


def test_a_connection_error_text_is_scrubbed_of_the_key(peer_site, tmp_path):
    # nothing listens on the discard port; the key is in the path, as a copy-paste slip might put it
    peer_site.write("http://127.0.0.1:9", extra_caiasoft=f'requestfile_path = "/api/{KEY}/requestfile"')
    client = CaiaSoftClient(peer_site.load().caiasoft, Secret(KEY))
    outcome = upload_within(client, sample(tmp_path), 30)
    client.close()
    assert outcome is not None and outcome.verdict == "transient"
    assert "connection failed" in outcome.reason and "[redacted]" in outcome.reason
    assert KEY not in outcome.reason


def test_each_thread_gets_its_own_session(peer_site):
    client = CaiaSoftClient(peer_site.load().caiasoft, Secret(KEY))
    sessions = []
    workers = [threading.Thread(target=lambda: sessions.append(client.session)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(5)
    assert len({id(session) for session in sessions}) == 3
    assert client.session is client.session  # and keeps it
    client.close()


# -- TLS: ca_file and verify_tls win over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE -----------


@pytest.fixture(scope="module")
def authorities(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    return make_authority(root / "right", "Right CA"), make_authority(root / "other", "Other CA")


def test_ca_file_wins_over_requests_ca_bundle(peer_site, authorities, monkeypatch):
    right, other = authorities
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca_file))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(other.ca_file))
    body = json.dumps({"success": True, "count": "0", "stops": []}).encode()
    with hostile.HostilePeer(hostile.fixed(200, body), tls_context=right.server_context()) as peer:
        configure(peer_site, peer, ca_file=str(right.ca_file))
        client = CaiaSoftClient(peer_site.load().caiasoft, Secret(KEY))
        outcome = client.check()
        client.close()
    assert outcome.verdict == "accepted", outcome.reason


def test_requests_ca_bundle_cannot_make_an_unknown_ca_pass(peer_site, authorities, monkeypatch):
    right, _ = authorities
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(right.ca_file))
    body = json.dumps({"success": True, "count": "0", "stops": []}).encode()
    with hostile.HostilePeer(hostile.fixed(200, body), tls_context=right.server_context()) as peer:
        configure(peer_site, peer, verify_tls=True)
        client = CaiaSoftClient(peer_site.load().caiasoft, Secret(KEY))
        outcome = client.check()
        client.close()
    assert outcome.verdict == "transient"
    assert "TLS certificate could not be verified" in outcome.reason
    assert peer.requests == []


# -- end to end: the real daemon, a CaiaSoft that quotes the key, `status` ----------------


def test_status_never_shows_the_key_when_caiasoft_echoes_it(peer_site, daemon_factory):
    def act(peer, connection, request):  # refuse slip-a (400), keep slip-b waiting (503); both quote the key
        status = 400 if b"slip-a" in request else 503
        peer.send(connection, hostile.head(status, len(ECHO)) + ECHO)

    with hostile.HostilePeer(act) as peer:
        configure(peer_site, peer)
        for name in ("slip-a.xml", "slip-b.xml"):
            (peer_site.source / name).write_bytes((SAMPLES / "hold-request-slip-0001.xml").read_bytes())
        daemon = daemon_factory(peer_site.config_file)

        def status(*flags: str) -> str:
            return subprocess.run(
                [sys.executable, "-m", "gateway", "-c", str(peer_site.config_file), "status", *flags],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout

        def settled():
            report = json.loads(status("--json") or "{}")
            oldest = report.get("oldest_pending") or {}
            return report if report.get("counts", {}).get("refused") == 1 and oldest.get("last_problem") else None

        report = wait_for(settled, timeout=30, message="one refused and one waiting file")
        text = status()
        assert daemon.stop() == 0
    shown = json.dumps(report) + text
    assert "[redacted]" in report["recent_errors"][0]["reason"]
    assert "[redacted]" in report["oldest_pending"]["last_problem"]
    assert KEY not in shown
    for written in peer_site.written_files():
        assert KEY.encode() not in written.read_bytes(), written


def test_check_never_prints_the_key_when_caiasoft_echoes_it(peer_site):
    echo = json.dumps({"success": False, "error": f"key {KEY} unknown"}).encode()
    with hostile.HostilePeer(hostile.fixed(401, echo)) as peer:
        configure(peer_site, peer)
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "-c", str(peer_site.config_file), "check"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "CaiaSoft refused the API key (HTTP 401)" in result.stdout and "[redacted]" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_status_redacts_a_key_that_an_older_version_stored_raw(peer_site, tmp_path):
    pipeline = pipeline_for(peer_site)
    row_id = pipeline.admission.adopt_copy(sample(tmp_path))
    pipeline.ledger.close()
    database = sqlite3.connect(peer_site.load().paths.database)
    with database:
        database.execute("UPDATE files SET reason = ? WHERE id = ?", (f"HTTP 503: bad key {KEY}", row_id))
    database.close()
    for flags in ([], ["--json"]):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "-c", str(peer_site.config_file), "status", *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "bad key [redacted]" in result.stdout
        assert KEY not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("body", "state"),
    [
        (b'{"success": false, "error": "bad \\ud800 format \\u001b[2J"}', "refused"),
        (
            b'{"success": true, "error": "", "results": [{"item": "\\udcff1", "deny": "Y", "istatus": "x\\ud800"}]}',
            "archived",
        ),
    ],
    ids=["refused", "accepted"],
)
def test_an_answer_with_a_lone_surrogate_escape_is_recorded_and_placed_once(peer_site, tmp_path, body, state):
    """JSON may escape half a UTF-16 pair (\\ud800); Python keeps it as a lone surrogate, which SQLite cannot take."""
    with hostile.HostilePeer(hostile.fixed(200, body)) as peer:
        configure(peer_site, peer)
        pipeline = pipeline_for(peer_site)
        row_id = pipeline.admission.adopt_copy(sample(tmp_path))
        pipeline.upload(pipeline.ledger.files.assign(row_id))
        row = pipeline.ledger.files.row(row_id)
        pipeline.ledger.close()
    assert len(peer.requests) == 1
    assert row.state == state and row.final_path
    assert "\\ud800" in row.reason + (row.answer or "")
    assert peer_site.sidecar(Path(row.final_path))["file"] == "slip.xml"
