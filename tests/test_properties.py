"""Property test over what the outside world sends: any file name (bytes), any content, any answer.

The real service parts (collector, upload workers, placer) run in-process over a real
folder, against a hostile HTTP peer on loopback that answers every upload with the
drawn status and body. Invariants, for every example:
  * every file ends in exactly one place: archive, error, or pending with a reason
    (queued after a transient answer or a pause, waiting to be placed, or not taken,
    each with its reason), and nothing the gateway placed differs from what was dropped;
  * no worker dies (and none ends on a damaged ledger);
  * the API key appears in no file the gateway wrote (archive, error, log, state,
    the ledger included) and not in `status` (text or JSON).
The number of examples is modest (FAULTS_PROFILE: 8, or PROPERTY_EXAMPLES).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import hostile
import pytest
from conftest import KEY, SAMPLES, Site
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core import logs
from gateway.core.states import FileState
from gateway.report import status
from gateway.runtime.parts import Parts
from gateway.runtime.service import JOIN_SECONDS
from gateway.sources import base
from gateway.state.ledger import Ledger

# Modest by default so the suite stays fast; PROPERTY_EXAMPLES=200 for a longer hunt. Applied to this test
# only (loading a profile would change the other modules' property tests too).
FAULTS_PROFILE = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "8")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

MAX_FILE_BYTES = 4096
SLIP = (SAMPLES / "hold-request-slip-0001.xml").read_bytes()

names = st.binary(min_size=1, max_size=40).filter(
    lambda name: (
        b"/" not in name and b"\0" not in name and name not in (b".", b"..") and base.wanted(os.fsdecode(name), ("*",))
    )
)

contents = st.one_of(
    st.lists(st.from_regex(r"\A3123400[0-9]{7}\Z"), min_size=1, max_size=3).map(
        lambda lines: ("\n".join(lines) + "\n").encode()
    ),  # a barcode list
    st.just(SLIP),  # an ALEPH slip
    st.integers(min_value=10, max_value=len(SLIP) - 1).map(lambda cut: SLIP[:cut]),  # truncated XML
    st.binary(min_size=1, max_size=300),  # binary
    st.text(min_size=1, max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.just(b"31234000000001\n" * (MAX_FILE_BYTES // 15 + 2)),  # huge: above max_file_bytes
)

ok_answer = b'{"success": true, "error": "", "request_count": "1", "results": []}'
answers = st.one_of(
    st.tuples(st.just(200), st.just(ok_answer)),
    st.tuples(st.just(200), st.just(b'{"success": false, "error": "File format not registered"}')),
    st.tuples(st.just(200), st.just(b"<html>maintenance</html>")),
    st.tuples(st.just(200), st.just(('{"success": false, "error": "bad key ' + KEY + '"}').encode())),
    st.tuples(st.sampled_from([400, 401, 403, 404, 500, 503]), st.binary(max_size=200)),
    st.tuples(st.just(200), st.binary(max_size=300)),
    st.tuples(st.just(200), st.just(b'{"success": true, "error": "", "pad": "' + b"x" * 3000 + b'"}')),
)


class Answering:
    """What the peer answers now (changed per example)."""

    status, body = 200, ok_answer

    def act(self, peer, connection, request) -> None:
        peer.send(connection, hostile.head(self.status, len(self.body)) + self.body)


@pytest.fixture(scope="module")
def peer():
    answering = Answering()
    with hostile.HostilePeer(lambda peer, connection, request: answering.act(peer, connection, request)) as server:
        server.answering = answering
        yield server


def _where(root: Path, name: bytes, parts: Parts, ledger: Ledger) -> list[str]:
    """Every place a dropped file is now: 'archive', 'error', 'pending: REASON', 'source'."""
    text = os.fsdecode(name)
    found = []
    rows = [row for row in ledger.files.in_state(*FileState) if row.name == text]
    for row in rows:
        if row.state in (FileState.ARCHIVED, FileState.REFUSED):
            found.append("archive" if row.state == FileState.ARCHIVED else "error")
        elif row.problem or row.reason:
            found.append(f"pending: {row.problem or row.reason}")
        else:
            found.append(f"in flight ({row.state})")
    collector = parts.collectors[0]
    if (root / "aleph" / "print" / os.fsdecode(name)).exists() and not rows:
        why = collector.claim_failures.get(text) or (collector.ready_check.waiting.get(text) or {}).get("reason")
        found.append(f"pending: {why}" if why else "source")
    return found


def _settled(places: list[list[str]]) -> bool:
    return all(len(place) == 1 and not place[0].startswith(("in flight", "source")) for place in places)


@FAULTS_PROFILE
@given(files=st.dictionaries(names, contents, min_size=1, max_size=3), answer=answers)
def test_every_file_ends_in_one_place_no_worker_dies_and_the_key_stays_secret(peer, files, answer):
    peer.answering.status, peer.answering.body = answer
    logs.add_secret(KEY)
    root = Path(tempfile.mkdtemp(prefix="gateway-property-"))
    try:
        site = Site(root, peer.url)
        site.write(
            peer.url,
            settle_seconds=0.05,
            timeout_seconds=2,
            extra_caiasoft="deadline_seconds = 5\nunreadable_answer_retries = 1\nmax_answer_bytes = 2048",
            extra_source="incomplete_grace_seconds = 0.2",
            extra=f"\n[intake]\nmax_file_bytes = {MAX_FILE_BYTES}\n",
        )
        config = site.load()
        logs.setup(config.paths.log_dir, console=False)  # the log is one of the files the key must stay out of
        ledger = Ledger(config.paths.database)
        parts = Parts(config, ledger)
        for name, data in files.items():
            with open(os.path.join(os.fsencode(site.source), name), "wb") as handle:
                handle.write(data)
        parts.pipeline.recover()
        parts.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                places = [_where(root, name, parts, ledger) for name in files]
                if _settled(places) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert _settled(places), f"not every file settled in one place: {dict(zip(files, places, strict=True))}"
            for worker in parts.workers():
                assert worker.is_alive() and worker.fatal is None, f"{worker.name} died"
            for row in ledger.files.in_state(FileState.ARCHIVED, FileState.REFUSED):
                placed = Path(row.final_path)
                assert placed.read_bytes() == files[os.fsencode(row.name)], "a placed file differs from the original"
            report = status.collect(ledger)
            shown = status.render(report) + json.dumps(report)
        finally:
            parts.stop(time.monotonic() + JOIN_SECONDS)
            parts.close()
            ledger.close()
        assert KEY not in shown, "the key in status"
        assert (site.log_dir / "gateway.log").stat().st_size > 0
        for path in root.rglob("*"):
            if path.is_file() and path != site.key_file:
                assert KEY.encode() not in path.read_bytes(), f"the key in {path}"
    finally:
        logs.setup(None, console=False)
        shutil.rmtree(root, ignore_errors=True)
