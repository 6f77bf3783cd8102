"""The NCIP relay's checkpoint file (state_dir/ncip-checkpoint): read back, a write cut short, both records
damaged (exit 2 naming the file), and moving an older ledger's checkpoint and counts into it."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys

import pytest
from conftest import ncip_settings, ncip_table, wait_for
from sharedfixtures import fill
from test_relay import add

from gateway.core.backoff import Backoff
from gateway.ncip import journal
from gateway.ncip.journal import JournalEntry, Tailer
from gateway.ncip.relay import Relay
from gateway.state.checkpointfile import (
    FILE_NAME,
    SLOT_BYTES,
    CheckpointDamaged,
    CheckpointFile,
    CheckpointMissing,
    CheckpointUnavailable,
    read,
)
from gateway.state.ledger import Ledger


def position(offset: int) -> dict:
    return {
        "device": 2049,
        "inode": 131074 + offset,
        "offset": offset,
        "fingerprint": f"{offset:064x}",
        "fingerprint_length": min(offset, 128),
    }


def test_each_save_is_read_back_and_the_newest_record_wins(tmp_path):
    path = tmp_path / FILE_NAME
    checkpoint = CheckpointFile.create(path, None, {"done": 7})
    assert read(path).position is None and read(path).counts == {"done": 7, "already": 0, "dead_letter": 0}
    for offset in (64, 128, 192, 256, 320):
        checkpoint.count("done" if offset != 192 else "dead_letter")
        checkpoint.save(position(offset))
        assert read(path).position == position(offset)
    checkpoint.close()
    assert read(path).counts == {"done": 11, "already": 0, "dead_letter": 1}
    assert path.stat().st_size == 2 * SLOT_BYTES, "overwritten in place: the file never grows"
    again = CheckpointFile.open(path)
    assert again.position() == position(320) and again.counts()["done"] == 11
    again.close()


@pytest.mark.parametrize("cut", [0, 9, 40, 100, -1])  # bytes of the new record that reached the disk (-1: all but one)
def test_a_save_cut_short_leaves_the_record_before_it(tmp_path, cut):
    path = tmp_path / FILE_NAME
    checkpoint = CheckpointFile.create(path, position(64), {})
    checkpoint.save(position(128))
    before = path.read_bytes()
    checkpoint.count("done")
    checkpoint.save(position(192))
    after = path.read_bytes()
    checkpoint.close()
    changed = next(index for index in range(len(after)) if after[index] != before[index])
    slot = changed - changed % SLOT_BYTES
    written = max(index for index in range(len(after)) if after[index] != before[index]) + 1 - slot
    cut = written - 1 if cut < 0 else cut
    # the crash hit while the newest record was being written: only its first cut bytes reached the disk
    path.write_bytes(before[:slot] + after[slot : slot + cut] + before[slot + cut :])
    saved = read(path)
    assert saved.position == position(128), "the entry in flight is sent again; nothing is skipped"
    assert saved.counts["done"] == 0, "its count went with it"
    reopened = CheckpointFile.open(path)
    reopened.count("done")
    reopened.save(position(192))  # the next save overwrites the damaged slot, never the good one
    reopened.close()
    assert read(path).position == position(192) and read(path).counts["done"] == 1


@pytest.mark.parametrize(
    "content", [b"GWNCIP01", os.urandom(2 * SLOT_BYTES), bytes(2 * SLOT_BYTES)], ids=["cut", "garbage", "zeros"]
)
def test_no_whole_record_is_damage_naming_the_file(tmp_path, content):
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    with pytest.raises(CheckpointDamaged, match=str(path)):
        read(path)


def test_both_records_damaged_stop_the_service_with_exit_2_naming_the_file(relay_site):
    relay_site.state.mkdir(parents=True, exist_ok=True)
    path = relay_site.state / FILE_NAME
    path.write_bytes(os.urandom(2 * SLOT_BYTES))
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(relay_site.config_file), "run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert str(path) in run.stderr and "move it aside" in run.stderr and "Traceback" not in run.stderr


def test_a_checkpoint_file_gone_after_it_was_made_stops_the_relay_instead_of_resending_the_journal(tmp_path):
    database = tmp_path / "gateway.db"
    ledger = Ledger(database)
    try:
        checkpoint = ledger.ncip.journal_checkpoint()
        checkpoint.count("done")
        checkpoint.save(position(640))
    finally:
        ledger.close()
    (tmp_path / FILE_NAME).unlink()  # a clean-up by hand, a partial restore of state_dir
    again = Ledger(database)
    try:
        with pytest.raises(CheckpointMissing, match=str(tmp_path / FILE_NAME)) as raised:
            again.ncip.journal_checkpoint()
        assert "missing" in str(raised.value) and "touch" in str(raised.value)
        assert not (tmp_path / FILE_NAME).exists(), "nothing made in its place"
    finally:
        again.close()


def test_an_empty_checkpoint_file_is_an_admins_request_to_read_the_journal_from_its_start(tmp_path):
    database = tmp_path / "gateway.db"
    ledger = Ledger(database)
    try:
        ledger.ncip.journal_checkpoint().save(position(640))
    finally:
        ledger.close()
    (tmp_path / FILE_NAME).write_bytes(b"")  # touch, as the message says
    again = Ledger(database)
    try:
        checkpoint = again.ncip.journal_checkpoint()
        assert checkpoint.position() is None and checkpoint.started_over()
        assert not checkpoint.started_over(), "said once"
    finally:
        again.close()
    assert read(tmp_path / FILE_NAME).position is None and (tmp_path / FILE_NAME).stat().st_size == 2 * SLOT_BYTES


def test_the_first_file_of_a_new_ledger_is_made_without_complaint(tmp_path):
    ledger = Ledger(tmp_path / "gateway.db")
    try:
        checkpoint = ledger.ncip.journal_checkpoint()
        assert checkpoint.position() is None and not checkpoint.started_over()
    finally:
        ledger.close()


def older_ledger(database, checkpoint: dict | None, counts: dict[str, int]) -> None:
    """A ledger as the release before the checkpoint file left it: the place and the counts in its tables."""
    Ledger(database).close()
    with sqlite3.connect(database) as db:
        if checkpoint:
            db.execute(
                "INSERT INTO checkpoints VALUES ('ncip-journal', ?, ?, ?, ?, ?, 0)",
                (
                    checkpoint["device"],
                    checkpoint["inode"],
                    checkpoint["fingerprint"],
                    checkpoint["fingerprint_length"],
                    checkpoint["offset"],
                ),
            )
        db.executemany(
            "INSERT INTO counters VALUES (?, ?)",
            [(f"ncip_entries_total:{outcome}", count) for outcome, count in counts.items()],
        )
    db.close()


def test_the_first_open_moves_an_older_ledgers_checkpoint_and_counts_into_the_file(tmp_path):
    database = tmp_path / "gateway.db"
    older_ledger(database, position(448), {"done": 5, "dead_letter": 2})
    ledger = Ledger(database)
    try:
        assert ledger.ncip.ncip_counts()["done"] == 5, "before the move too"
        checkpoint = ledger.ncip.journal_checkpoint()
        assert checkpoint.position() == position(448)
        assert checkpoint.counts() == {"done": 5, "already": 0, "dead_letter": 2}
    finally:
        ledger.close()
    assert read(tmp_path / FILE_NAME).position == position(448), "durable in the file"
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0, "the file is the only copy"
        assert db.execute("SELECT COUNT(*) FROM counters").fetchone()[0] == 0
    db.close()
    again = Ledger(database)
    try:
        assert again.ncip.ncip_counts()["dead_letter"] == 2
        assert again.ncip.journal_checkpoint().position() == position(448)
    finally:
        again.close()


def test_the_relay_goes_on_from_an_older_ledgers_checkpoint(relay_site, ncip, daemon_factory):
    items = [f"M-{number}" for number in range(6)]
    for item in items:
        add(relay_site, "checkin", item)
    tailer = Tailer(relay_site.journal, None, 4096)  # where the older release stopped: after 4 entries
    for _ in range(4):
        mark = tailer.commit(tailer.next())
    tailer.close()
    older_ledger(relay_site.state / "gateway.db", mark, {"done": 4})
    daemon = daemon_factory(relay_site.config_file)
    wait_for(lambda: len(ncip.received) == 2, timeout=30, message="the two entries after the checkpoint")
    add(relay_site, "checkout", "M-6")
    wait_for(lambda: len(ncip.received) == 3, timeout=30, message="the entry appended later")
    assert daemon.stop() == 0
    assert [received.item for received in ncip.received] == ["M-4", "M-5", "M-6"], "none again, none skipped"
    saved = read(relay_site.state / FILE_NAME)
    assert saved.position["offset"] == relay_site.journal.stat().st_size
    assert saved.counts["done"] == 7


def test_each_outcome_is_counted_in_the_file_with_the_place(relay_site, ncip, daemon_factory):
    for action, item in (("checkout", "A-1"), ("checkout", "UNKNOWN-1"), ("checkin", "IN-ALREADY")):
        add(relay_site, action, item)
    daemon = daemon_factory(relay_site.config_file)
    path, size = relay_site.state / FILE_NAME, relay_site.journal.stat().st_size

    def relayed():
        saved = read(path)
        return saved if saved is not None and saved.position and saved.position["offset"] == size else None

    saved = wait_for(relayed, timeout=30, message="the journal relayed")
    assert saved.counts == {"done": 1, "already": 1, "dead_letter": 1}
    assert daemon.stop() == 0


class FailingSaves(CheckpointFile):
    """The real checkpoint file, whose next `failures` saves fail as a disk fault does (EIO)."""

    failures = 0

    def save(self, position):
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EIO, "Input/output error")
        super().save(position)


def test_no_entry_is_sent_while_the_checkpoint_of_the_one_before_is_not_durable(tmp_path, ncip):
    journal_path = tmp_path / "ncip.jsonl"
    for item in ("E-1", "E-2", "E-3"):
        journal.append(journal_path, JournalEntry("checkin", item))
    settings = ncip_settings(
        url=ncip.url,
        journal=str(journal_path),
        from_agency="CAIA",
        to_agency="ALEPH",
        user_id="CAIASOFT",
        application_profile="CAIAPROFILE",
    )
    ledger = Ledger(tmp_path / "gateway.db")
    relay = Relay(settings, ledger, tmp_path / "error")
    relay.fault_backoff = Backoff(0.01, 0.05)
    path = tmp_path / FILE_NAME
    relay.checkpoint.close()
    relay.checkpoint = FailingSaves(path, read(path))
    relay.checkpoint.failures = 3  # the disk fails the next three writes, then recovers
    relay.start()
    try:
        size = journal_path.stat().st_size
        wait_for(
            lambda: (read(path).position or {}).get("offset") == size,
            timeout=10,
            message="the whole journal checkpointed once the disk recovered",
        )
    finally:
        relay.stop()
        relay.join(10)
        ledger.close()
    # each entry sent while the one before was not durable would be sent again after kill -9
    assert [received.item for received in ncip.received] == ["E-1", "E-2", "E-3"]


@pytest.mark.parametrize("mode", [0o644, 0o000])
def test_a_checkpoint_file_the_service_user_cannot_open_is_named_not_called_damaged(
    unprivileged_site, gateway_install, simulator, ncip, mode
):
    site, runner = unprivileged_site, gateway_install
    journal_path = site.root / "ncip.jsonl"
    journal.append(journal_path, JournalEntry("checkin", "P-1"))
    runner.give(journal_path)
    site.write(simulator.url, extra=ncip_table(ncip.url, journal_path))
    ledger = Ledger(site.state / "gateway.db")
    ledger.ncip.journal_checkpoint().save(position(640))
    ledger.close()
    runner.give(site.state)
    path = site.state / FILE_NAME
    os.chown(path, 0, 0)  # restored from a backup as root, say: the service (nobody) reads it at most
    path.chmod(mode)
    run = runner.run("-c", str(site.config_file), "run", timeout=60)
    assert run.returncode == 1, "a restart goes on once the file is given back; exit 2 waits for an admin"
    assert f"cannot open the NCIP checkpoint {path}: Permission denied" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and "touch" not in run.stderr, "emptying it would resend the journal"
    assert ncip.received == [] and read(path).position == position(640)


def test_a_checkpoint_file_that_cannot_be_made_on_a_full_state_dir_says_so(tmp_path, small_tmpfs):
    state = small_tmpfs(tmp_path / "state", "1m")
    ledger = Ledger(state / "gateway.db")  # an older ledger, upgraded on a day its disk is full
    try:
        filler = fill(state)
        with pytest.raises(CheckpointUnavailable, match="No space left on device") as raised:
            ledger.ncip.journal_checkpoint()
        assert str(state / FILE_NAME) in str(raised.value) and "touch" not in str(raised.value)
        filler.unlink()
        assert ledger.ncip.journal_checkpoint().position() is None, "made once there is room"
    finally:
        ledger.close()
