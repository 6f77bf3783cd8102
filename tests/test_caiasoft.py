"""The CaiaSoft client: answers, backoff, and real HTTP against the simulator."""

from __future__ import annotations

import json

import pytest
from conftest import KEY, SAMPLES, Site

from gateway.config.loader import Secret
from gateway.core.backoff import Backoff
from gateway.runtime.pipeline import Pipeline
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient, classify, parse_retry_after

# -- answers -----------------------------------------------------------------


def test_success_is_accepted_and_denials_are_read():
    body = json.dumps(
        {
            "success": True,
            "error": "",
            "request_count": "2",
            "results": [
                {"item": "1", "deny": "N", "istatus": "Item Requested"},
                {"item": "2", "deny": "Y", "istatus": "Invalid Stop Code"},
            ],
        }
    )
    outcome = classify(200, {}, body)
    assert outcome.verdict == "accepted"
    assert outcome.denials == [{"item": "2", "deny": "Y", "istatus": "Invalid Stop Code"}]
    assert outcome.reason == "accepted, 1 item(s) denied"


@pytest.mark.parametrize(
    "body,words",
    [
        ('{"success": false, "error": "File format not registered"}', "File format not registered"),
        ('{"success": "false", "error": ""}', "success: false"),
        ('{"error": ""}', "no success: true"),
    ],
)
def test_success_false_or_an_error_is_refused_in_caiasofts_words(body, words):
    outcome = classify(200, {}, body)
    assert outcome.verdict == "refused"
    assert words in outcome.reason


def test_error_text_beside_success_true_is_a_remark_kept_in_the_reason_not_a_refusal():
    # CaiaSoft's guide: some endpoints fill error on a successful call; success is read first
    outcome = classify(200, {}, '{"success": true, "error": "Invalid Stop Code"}')
    assert outcome.verdict == "accepted"
    assert outcome.reason == "accepted; CaiaSoft also said: Invalid Stop Code"


def test_other_4xx_is_refused():
    outcome = classify(400, {}, '{"success": false, "error": "No file"}')
    assert (outcome.verdict, outcome.http_status) == ("refused", 400)
    assert "No file" in outcome.reason


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_overload_and_server_errors_are_transient(status):
    assert classify(status, {}, "").verdict == "transient"


def test_a_success_status_that_is_not_json_is_unreadable_with_an_excerpt():
    outcome = classify(200, {"Content-Type": "text/html"}, "<html>Down for maintenance</html>")
    assert outcome.verdict == "unreadable"
    assert "text/html" in outcome.reason and "Down for maintenance" in outcome.reason
    assert outcome.answer == {"unparsed": "<html>Down for maintenance</html>"}


def test_a_cut_answer_is_never_parsed_and_says_where_it_was_cut():
    outcome = classify(200, {}, '{"success": true, "error": "', truncated_at=1024)
    assert outcome.verdict == "unreadable"
    assert "max_answer_bytes = 1024" in outcome.reason
    assert outcome.answer["truncated_at_bytes"] == 1024


@pytest.mark.parametrize("status", [401, 403])
def test_wrong_key_pauses(status):
    outcome = classify(status, {}, '{"success": false, "error": "Invalid API key"}')
    assert outcome.verdict == "paused"
    assert "API key" in outcome.reason


def test_redirect_pauses_and_names_base_url():
    outcome = classify(301, {"Location": "https://elsewhere/"}, "")
    assert outcome.verdict == "paused" and "base_url" in outcome.reason


def test_retry_after_seconds_and_http_date_and_cap():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412500.0) == pytest.approx(10.0)
    assert parse_retry_after("999999") == 3600.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    low = Backoff(1.0, 30.0, random=lambda: 0.0)
    high = Backoff(1.0, 30.0, random=lambda: 1.0)
    assert [low.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [high.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert high.delay(20) == 30.0
    assert low.delay(1, retry_after=12.0) == 12.0


# -- real HTTP against the simulator ---------------------------------------------


@pytest.fixture
def client(site):
    client = CaiaSoftClient(site.load().caiasoft, Secret(KEY))
    yield client
    client.close()


def sample(tmp_path, name="hold-request-slip-0001.xml"):
    path = tmp_path / name
    path.write_bytes((SAMPLES / name).read_bytes())
    return path


def test_upload_is_multipart_with_the_original_name_and_the_exact_bytes(client, simulator, tmp_path):
    path = sample(tmp_path)
    outcome = client.upload(path, "hold-request-slip-0001.xml", "xml")
    assert outcome.verdict == "accepted", outcome.reason
    assert outcome.answer["request_count"] == "1"
    received = simulator.received[0]
    assert (received.name, received.field) == ("hold-request-slip-0001.xml", "file")
    assert received.data == path.read_bytes()


def test_extra_fields_are_sent(site, simulator, tmp_path):
    site.write(simulator.url, extra_caiasoft='extra_fields = { format = "ALEPH-SLIP" }')
    client = CaiaSoftClient(site.load().caiasoft, Secret(KEY))
    assert client.upload(sample(tmp_path), "a.xml", "xml").verdict == "accepted"
    assert simulator.received[0].form == {"format": "ALEPH-SLIP"}


def test_unregistered_format_is_refused(client, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("This is a letter, not a request file.\n")
    outcome = client.upload(path, "notes.txt", "text")
    assert outcome.verdict == "refused"
    assert "File format not registered" in outcome.reason


def test_server_error_then_ok(client, simulator, tmp_path):
    simulator.queue_faults("503")
    path = sample(tmp_path)
    assert client.upload(path, "a.xml", "xml").verdict == "transient"
    assert client.upload(path, "a.xml", "xml").verdict == "accepted"


def test_429_carries_retry_after(client, simulator, tmp_path):
    simulator.queue_faults("429:4")
    outcome = client.upload(sample(tmp_path), "a.xml", "xml")
    assert (outcome.verdict, outcome.http_status, outcome.retry_after) == ("transient", 429, 4.0)


def test_connection_dropped_after_the_body_is_transient(client, simulator, tmp_path):
    simulator.queue_faults("drop")
    outcome = client.upload(sample(tmp_path), "a.xml", "xml")
    assert outcome.verdict == "transient"
    assert "connection" in outcome.reason.lower()
    assert len(simulator.received) == 1  # CaiaSoft may have the file: a retry sends it again


def test_wrong_key_is_401_and_pauses(site, simulator, tmp_path):
    client = CaiaSoftClient(site.load().caiasoft, Secret("wrong-key-1234"))
    outcome = client.upload(sample(tmp_path), "a.xml", "xml")
    assert (outcome.verdict, outcome.http_status) == ("paused", 401)
    assert "wrong-key-1234" not in outcome.reason


def test_nobody_listening_is_transient(site, tmp_path):
    site.write("http://127.0.0.1:9")  # discard port: nothing listens
    client = CaiaSoftClient(site.load().caiasoft, Secret(KEY))
    outcome = client.upload(sample(tmp_path), "a.xml", "xml")
    assert outcome.verdict == "transient" and "connection failed" in outcome.reason


def test_check_reads_the_stop_list(client):
    outcome = client.check()
    assert outcome.verdict == "accepted" and outcome.answer["count"] == "2"


# -- through the pipeline: where each outcome leaves the file ----------------------


class FixedClock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def pipeline_for(site: Site, clock=None) -> Pipeline:
    """A pipeline whose recorded times and retry instants are both on clock (a FixedClock by default)."""
    config = site.load()
    clock = clock or FixedClock()
    return Pipeline(
        config,
        Ledger(config.paths.database, schedule=clock),
        CaiaSoftClient(config.caiasoft, config.api_key),
        clock=clock,
    )


def test_retry_after_sets_when_the_file_is_due_again(site, simulator, tmp_path):
    pipeline = pipeline_for(site, FixedClock())
    row_id = pipeline.admission.adopt_copy(sample(tmp_path))
    simulator.queue_faults("429:60")
    outcome = pipeline.upload(pipeline.ledger.files.assign(row_id))
    row = pipeline.ledger.files.get(row_id)
    assert outcome.verdict == "transient"
    assert row.state == "queued" and row.http_status == 429
    assert row.next_attempt_at >= pipeline.clock() + 60


def test_paused_upload_leaves_the_file_queued_and_the_attempt_uncounted(site, simulator, tmp_path):
    simulator.key = "rotated-key-9999"
    pipeline = pipeline_for(site)
    row_id = pipeline.admission.adopt_copy(sample(tmp_path))
    assert pipeline.upload(pipeline.ledger.files.assign(row_id)).verdict == "paused"
    row = pipeline.ledger.files.get(row_id)
    assert (row.state, row.attempts) == ("queued", 0)
    assert site.refused() == [] and site.archived() == []


def test_refusal_goes_to_error_with_caiasofts_words(site, tmp_path):
    pipeline = pipeline_for(site)
    notes = tmp_path / "notes.txt"
    notes.write_text("Dear CaiaSoft, please fetch the blue book.\n")
    row_id = pipeline.admission.adopt_copy(notes)
    pipeline.upload(pipeline.ledger.files.assign(row_id))
    [refused] = site.refused()
    assert refused.read_bytes() == notes.read_bytes()
    info = site.sidecar(refused)
    assert info["outcome"] == "refused" and info["http_status"] == 200
    assert "File format not registered" in info["reason"]
    assert info["caiasoft_answer"]["success"] is False


# -- the gate the upload workers share ------------------------------------------------


def test_the_gate_backs_off_once_per_outage_and_reopens_on_success(site):
    from gateway.core.backoff import Gate

    clock = FixedClock(100.0)
    gate = Gate(site.load().caiasoft, clock=clock)
    gate.backoff.random = lambda: 1.0  # no jitter: delays are 0.05, 0.1, 0.2 ... (capped at 0.5)
    assert gate.wait_seconds() == 0
    for _ in range(4):  # four workers fail at the same moment: one failure of the endpoint
        gate.failed(None)
    assert gate.failures == 1 and gate.wait_seconds() == pytest.approx(0.05)
    clock.now += 0.05
    gate.failed(None)  # the next attempt after the wait fails too
    assert gate.failures == 2 and gate.wait_seconds() == pytest.approx(0.1)
    gate.failed(30.0)  # Retry-After wins over the backoff
    assert gate.wait_seconds() == pytest.approx(30.0)
    clock.now += 30.0
    gate.succeeded()
    assert gate.failures == 0 and gate.wait_seconds() == 0


def test_the_gate_pauses_everyone_on_a_refused_key(site):
    from gateway.core.backoff import Gate

    clock = FixedClock(100.0)
    gate = Gate(site.load().caiasoft, clock=clock)
    gate.pause("CaiaSoft refused the API key (HTTP 401)")
    assert gate.paused_reason and gate.wait_seconds() == pytest.approx(0.5)  # auth_pause_seconds
    clock.now += 0.5
    gate.succeeded()
    assert gate.paused_reason is None
