"""Writers that pause mid-file for longer than settle_seconds, with the real daemon.

Whatever the gateway took too early, every complete version must reach CaiaSoft
intact, no original may be deleted before its final content was handled, and no
partial version may sit in the archive as if it were complete.
"""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from conftest import SAMPLES, wait_for
from writers import DeletionWatch, barcode_list, check_outcome, write_with_a_pause

pytestmark = pytest.mark.e2e

SETTLE = 0.2
PAUSES = (2, 5, 20)  # times settle_seconds
KEEP = 30 * SETTLE  # keep_original_seconds: above the longest pause
SLIP = (SAMPLES / "hold-request-slip-0001.xml").read_bytes()


def test_sftp_writers_pausing_longer_than_settle_lose_nothing(sftp_site, simulator, daemon_factory):
    sftp_site.write_sftp(settle_seconds=SETTLE, keep_original_seconds=KEEP)
    daemon = daemon_factory(sftp_site.config_file)
    wait_for(
        lambda: "sftp.connected" in daemon.output() or "sftp.connected" in _log(sftp_site),
        message="the first connection",
    )
    patterns = {f"paused{factor}x_barcode": (barcode_list(factor), factor, {}) for factor in PAUSES}
    patterns.update(
        {  # name: (data, pause in settle_seconds, how it pauses)
            "midline_barcode": (barcode_list(30), 5, {"cut": 40}),  # mid-line: waits (no newline)
            "slip.xml": (SLIP, 5, {"cut": SLIP.index(b"</section-01>")}),  # mid-document: waits
            "reopened_barcode": (barcode_list(40), 5, {"reopen": True}),  # closed, then appended to
        }
    )
    complete = {name: data for name, (data, _, _) in patterns.items()}
    watch = DeletionWatch(sftp_site.remote, complete, simulator)
    watch.start()
    writers = [
        threading.Thread(target=write_with_a_pause, args=(sftp_site.remote / name, data, factor * SETTLE), kwargs=how)
        for name, (data, factor, how) in patterns.items()
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    check_outcome(sftp_site, complete, simulator, watch)
    for name in ("midline_barcode", "slip.xml"):  # an unfinished end is waited for: only the whole is sent
        assert [upload.data for upload in simulator.received if upload.name == name] == [complete[name]]
    assert daemon.stop() == 0


def _events(site) -> list[dict]:
    return [json.loads(line) for line in _log(site).splitlines() if line.startswith("{")]


def _log(site) -> str:
    log = site.log_dir / "gateway.log"
    return log.read_text() if log.exists() else ""


def test_an_sftp_original_that_changes_before_the_upload_is_not_sent_and_is_taken_again(
    sftp_site, simulator, daemon_factory
):
    sftp_site.write_sftp(settle_seconds=SETTLE, keep_original_seconds=KEEP)
    simulator.queue_faults("429:1")  # the first upload waits a second: the writer goes on meanwhile
    complete = barcode_list(7)
    half = complete[: complete.index(b"\n", len(complete) // 2) + 1]
    path = sftp_site.remote / "late_barcode"
    path.write_bytes(half)
    daemon = daemon_factory(sftp_site.config_file)
    wait_for(lambda: "upload.retry" in _log(sftp_site), message="the first attempt answered 429")
    with open(path, "ab") as writer:
        writer.write(complete[len(half) :])
    wait_for(lambda: not path.exists(), timeout=30, message="the complete version handled and removed")
    [sent] = [upload for upload in simulator.received if upload.answered == 200]
    assert sent.data == complete
    [archived] = sftp_site.archived()
    assert archived.read_bytes() == complete
    [partial] = sftp_site.refused()
    assert partial.read_bytes() == half
    info = sftp_site.sidecar(partial)
    assert "changed after it was taken; taken again whole" in info["reason"] and "not sent" in info["reason"]
    assert info["size"] == len(half) and info["sha256"] == hashlib.sha256(half).hexdigest()
    [changed] = [line for line in _events(sftp_site) if line["event"] == "file.changed_after_take"]
    assert (changed["taken_size"], changed["size_now"], changed["step"]) == (len(half), len(complete), "before upload")
    assert daemon.stop() == 0
