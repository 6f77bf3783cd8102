"""gateway.core.http against hostile peers on loopback: total deadline, size cap, TLS from the caller only."""

from __future__ import annotations

import resource
import socket
import time
import zlib

import hostile
import pytest
import requests
from conftest import wait_for
from tlscerts import make_authority

from gateway.core import http


def test_an_ordinary_answer_is_read_whole():
    with hostile.HostilePeer(hostile.fixed(201, b'{"ok": true}')) as peer:
        answer = http.send(http.new_session(), "POST", peer.url + "/x", deadline=5, data=b"hello")
    assert (answer.status, answer.body, answer.truncated) == (201, b'{"ok": true}', False)
    assert answer.headers["content-type"] == "application/json"
    assert answer.text == '{"ok": true}' and 0 < answer.elapsed < 5
    assert peer.requests[0].endswith(b"hello")


def test_a_body_dribbled_a_byte_at_a_time_is_cut_at_the_total_deadline():
    with hostile.HostilePeer(hostile.dribble(interval=0.02)) as peer:
        started = time.monotonic()
        with pytest.raises(http.DeadlineExceeded, match="1 s"):
            http.send(http.new_session(), "GET", peer.url, deadline=1.0, step_timeout=0.5)
        took = time.monotonic() - started
    assert 0.9 < took < 3.0
    assert 10 < peer.sent_bytes < 1000  # bytes kept coming, so no per-read timeout could fire


def test_a_status_line_dribbled_a_byte_at_a_time_is_cut_at_the_total_deadline():
    with hostile.HostilePeer(hostile.dribble(interval=0.02, headers_too=True)) as peer:
        started = time.monotonic()
        with pytest.raises(http.DeadlineExceeded):
            http.send(http.new_session(), "GET", peer.url, deadline=1.0, step_timeout=0.5)
        assert time.monotonic() - started < 3.0


def test_a_server_that_never_answers_is_cut_at_the_deadline_even_with_a_long_step_timeout():
    with hostile.HostilePeer(hostile.never_answers()) as peer:
        started = time.monotonic()
        with pytest.raises(http.DeadlineExceeded):
            http.send(http.new_session(), "POST", peer.url, deadline=1.0, step_timeout=60, data=b"x")
        assert time.monotonic() - started < 3.0


def test_a_server_that_never_reads_the_request_is_cut_at_the_deadline():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) and never reads
    listener.listen(1)
    try:
        started = time.monotonic()
        with pytest.raises(http.DeadlineExceeded):
            http.send(
                http.new_session(),
                "POST",
                f"http://127.0.0.1:{listener.getsockname()[1]}/",
                deadline=1.0,
                step_timeout=60,
                data=b"x" * (64 * 1024 * 1024),
            )
        assert time.monotonic() - started < 3.0
    finally:
        listener.close()


def test_a_100_mb_body_is_cut_at_max_bytes_and_the_rest_is_never_read():
    with hostile.HostilePeer(hostile.huge()) as peer:
        answer = http.send(http.new_session(), "GET", peer.url, deadline=30, max_bytes=1024 * 1024)
    assert answer.truncated is True
    assert len(answer.body) == 1024 * 1024
    assert answer.body.startswith(b'{"success": true')
    assert peer.sent_bytes < 20 * 1024 * 1024  # socket buffers at most, not the 100 MB


def test_a_compressed_bomb_is_cut_at_max_bytes_of_decoded_body():
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    block = b"\0" * (1024 * 1024)
    bomb = b"".join([packer.compress(block) for _ in range(500)] + [packer.flush()])  # 500 MB in ~0.5 MB

    def act(peer, connection, request):
        peer.send(connection, hostile.head(200, len(bomb), extra="Content-Encoding: gzip\r\n") + bomb)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with hostile.HostilePeer(act) as peer:
        answer = http.send(http.new_session(), "GET", peer.url, deadline=30, max_bytes=1024 * 1024)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert (len(answer.body), answer.truncated) == (1024 * 1024, True)
    assert grown_mb < 100


def test_a_body_of_exactly_max_bytes_is_not_truncated():
    with hostile.HostilePeer(hostile.fixed(200, b"y" * 1000)) as peer:
        answer = http.send(http.new_session(), "GET", peer.url, deadline=5, max_bytes=1000)
    assert (len(answer.body), answer.truncated) == (1000, False)


def test_a_refused_connection_is_a_request_exception_not_a_deadline():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(requests.ConnectionError) as caught:
        http.send(http.new_session(), "GET", f"http://127.0.0.1:{port}/", deadline=5)
    assert not isinstance(caught.value, http.DeadlineExceeded)


def test_a_session_not_made_by_new_session_is_refused():
    with pytest.raises(TypeError, match="new_session"):
        http.send(requests.Session(), "GET", "http://127.0.0.1:9/", deadline=1)


def test_a_finished_calls_deadline_never_cuts_a_later_call_on_the_same_connection():
    with hostile.HostilePeer(hostile.fixed(200, b"{}")) as peer:
        session = http.new_session()
        first_due = time.monotonic() + 0.3
        assert http.send(session, "GET", peer.url, deadline=0.3).status == 200
        # the first call's deadline passes (and is handled) while its connection idles in the pool
        wait_for(
            lambda: time.monotonic() > first_due and all(entry[0] > first_due for entry in http._REAPER._heap),
            timeout=5,
            message="the first call's deadline to pass",
        )
        assert http.send(session, "GET", peer.url, deadline=5).status == 200
        assert len(peer.requests) == 2


# -- TLS: the caller's verify wins over the environment ------------------------------


@pytest.fixture(scope="module")
def authorities(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    return make_authority(root / "right", "Right CA"), make_authority(root / "other", "Other CA")


def test_requests_ca_bundle_in_the_environment_does_not_override_the_callers_ca(authorities, monkeypatch):
    right, other = authorities
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca_file))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(other.ca_file))
    with hostile.HostilePeer(hostile.fixed(200, b"{}"), tls_context=right.server_context()) as peer:
        answer = http.send(http.new_session(), "GET", peer.url, deadline=5, verify=str(right.ca_file))
    assert answer.status == 200


def test_requests_ca_bundle_in_the_environment_cannot_make_an_unknown_ca_pass(authorities, monkeypatch):
    right, _ = authorities
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(right.ca_file))
    with (
        hostile.HostilePeer(hostile.fixed(200, b"{}"), tls_context=right.server_context()) as peer,
        pytest.raises(requests.exceptions.SSLError),
    ):
        http.send(http.new_session(), "GET", peer.url, deadline=5, verify=True)


def test_proxies_still_come_from_the_environment(monkeypatch):
    with hostile.HostilePeer(hostile.fixed(200, b"{}")) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        answer = http.send(http.new_session(), "GET", "http://caiasoft.invalid/api/x", deadline=5)
    assert answer.status == 200
    assert proxy.requests[0].startswith(b"GET http://caiasoft.invalid/api/x HTTP/1.1")
