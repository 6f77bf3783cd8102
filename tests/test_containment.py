"""Containment in-process: the ledger's answered/placing steps, faults while placing, the worker loop."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import SAMPLES, wait_for

from gateway.core.errors import LedgerDamaged, describe
from gateway.core.states import FileState, Verdict
from gateway.core.worker import Worker
from gateway.runtime.pipeline import Pipeline
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient


@pytest.fixture
def pipeline(site):
    config = site.load()
    ledger = Ledger(config.paths.database)
    pipe = Pipeline(config, ledger, CaiaSoftClient(config.caiasoft, config.api_key))
    pipe.placing.backoff.random = lambda: 0.0
    yield pipe
    pipe.sender.client.close()
    ledger.close()


def queued_slip(pipeline, site, name="slip.xml") -> int:
    path = site.source / name
    path.write_bytes((SAMPLES / "hold-request-slip-0001.xml").read_bytes())
    return pipeline.admission.adopt_copy(path)


def test_the_answer_is_recorded_before_any_name_is_reserved(pipeline, site, simulator):
    """A crash right after CaiaSoft answered (no name reserved yet) places the file; it is not sent again."""
    row_id = queued_slip(pipeline, site)
    row = pipeline.ledger.files.assign(row_id)
    outcome = pipeline.sender.send(row)
    answered = pipeline.sender.save(row, outcome)
    assert answered.state == FileState.ANSWERED and answered.verdict == Verdict.ACCEPTED
    assert answered.final_path is None and not site.archive.exists(), "nothing reserved before the answer is durable"
    assert pipeline.recover()["finished"] == 1  # what a restart does with it
    assert pipeline.ledger.files.get(row_id).state == FileState.ARCHIVED
    assert len(site.archived()) == 1 and len(simulator.received) == 1


def test_a_folder_that_cannot_be_written_leaves_the_file_waiting_then_it_is_placed(pipeline, site, simulator):
    site.archive.write_text("a file where the archive folder should be")
    row_id = queued_slip(pipeline, site)
    pipeline.upload(pipeline.ledger.files.assign(row_id))
    row = pipeline.ledger.files.get(row_id)
    assert row.state == FileState.ANSWERED and row.verdict == Verdict.ACCEPTED
    assert str(site.archive) in row.problem and row.place_failures == 1
    assert [problem.id for problem in pipeline.ledger.files.problems()] == [row_id]
    assert pipeline.ledger.files.assign_due(pipeline.clock(), 1, 4) == [], "an answered file never goes back to upload"
    wait_for(pipeline.placing.place_due, timeout=5, message="due again after its backoff")
    assert pipeline.ledger.files.get(row_id).place_failures == 2
    site.archive.unlink()
    wait_for(pipeline.placing.place_due, timeout=5, message="placed once the folder can be made")
    row = pipeline.ledger.files.get(row_id)
    assert row.state == FileState.ARCHIVED and row.problem is None
    assert len(simulator.received) == 1 and pipeline.ledger.files.problems() == []


def test_a_failure_after_the_name_was_reserved_finishes_at_the_same_place(pipeline, site, monkeypatch):
    row_id = queued_slip(pipeline, site)
    calls = []

    def full(*args, **kwargs):
        calls.append(args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline.placing.archive, "write_sidecar", full)
    pipeline.upload(pipeline.ledger.files.assign(row_id))
    row = pipeline.ledger.files.get(row_id)
    assert row.state == FileState.ARCHIVING and "No space left" in row.problem
    monkeypatch.undo()
    wait_for(pipeline.placing.place_due, timeout=5, message="placed once there is space")
    done = pipeline.ledger.files.get(row_id)
    assert done.state == FileState.ARCHIVED and done.final_path == row.final_path


def test_a_file_that_cannot_be_placed_for_its_own_reason_is_stuck_and_shown(pipeline, site, monkeypatch):
    row_id = queued_slip(pipeline, site)
    monkeypatch.setattr("gateway.archive.placing.sidecar", lambda *args: (_ for _ in ()).throw(ValueError("bad name")))
    pipeline.upload(pipeline.ledger.files.assign(row_id))
    row = pipeline.ledger.files.get(row_id)
    assert row.state == FileState.STUCK and "bad name" in row.problem
    assert (pipeline.work_dir / row.work_name).exists(), "a stuck file stays in work/"
    assert [problem.id for problem in pipeline.ledger.files.problems()] == [row_id]
    monkeypatch.undo()
    pipeline.recover()  # the next start tries it once more
    assert pipeline.ledger.files.get(row_id).state == FileState.ARCHIVED


def test_a_work_file_that_cannot_be_opened_is_refused_as_not_sent(pipeline, site, simulator):
    row = pipeline.ledger.files.assign(queued_slip(pipeline, site))
    work = pipeline.placing.work_path(row)
    work.unlink()
    work.mkdir()  # open() fails on it, even for root: IsADirectoryError naming the path
    outcome = pipeline.sender.send(row)
    assert outcome.verdict == Verdict.REFUSED and str(work) in outcome.reason
    assert "was not sent" in outcome.reason and "may have reached CaiaSoft" not in outcome.reason
    assert simulator.received == [], "nothing reached CaiaSoft"


def test_what_is_not_a_regular_file_in_work_is_left_alone_and_recovery_goes_on(pipeline, site):
    folder = pipeline.work_dir / "00000077.folder"
    folder.mkdir()
    (folder / "x").write_text("a folder is not a file")
    (pipeline.work_dir / "00000078.good_barcode").write_text("31234000000001\n")
    broken = pipeline.work_dir / "00000079.broken"
    broken.symlink_to(broken)  # a loop: cannot be opened
    done = pipeline.recover()
    assert done["adopted"] == 1 and done["postponed"] == 0, "neither was tried: nothing to put off"
    assert [row.name for row in pipeline.ledger.files.in_state(FileState.QUEUED)] == ["good_barcode"]
    assert folder.is_dir() and broken.is_symlink(), "left where they are, under their names"


def test_the_transaction_does_not_keep_its_lock_when_begin_fails(site):
    config = site.load()
    ledger = Ledger(config.paths.database)
    other = sqlite3.connect(config.paths.database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    ledger.db.connection.execute("PRAGMA busy_timeout=50")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        ledger.db.set_meta("x", "1")
    other.execute("ROLLBACK")
    other.close()
    taken = []

    def try_the_lock() -> None:
        taken.append(ledger.db.lock.acquire(timeout=2))
        if taken[-1]:
            ledger.db.lock.release()

    worker = threading.Thread(target=try_the_lock)
    worker.start()
    worker.join()
    assert taken == [True], "the ledger's lock leaked: every other thread would hang"
    ledger.close()


def test_a_damaged_ledger_is_named_with_how_to_recover(tmp_path):
    database = tmp_path / "gateway.db"
    Ledger(database).close()
    with open(database, "r+b") as handle:
        handle.seek(0)
        handle.write(os.urandom(4096))
    with pytest.raises(LedgerDamaged) as raised:
        Ledger(database)
    assert str(database) in str(raised.value) and "move" in str(raised.value)


def test_an_exception_without_text_renders_as_its_type():
    assert describe(EOFError()) == "EOFError"
    assert describe(PermissionError(13, "Permission denied", "/x")) == "Permission denied: /x"


class Flaky(Worker):
    def __init__(self, errors):
        super().__init__("flaky")
        self.errors = list(errors)
        self.steps = 0
        self.fault_backoff.initial = self.fault_backoff.maximum = 0.01

    def step(self):
        self.steps += 1
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        self.rest(0.01)


def test_a_worker_contains_faults_and_goes_on_and_says_when_it_ends():
    ended = threading.Event()
    worker = Flaky(
        [
            KeyError("bug"),
            OSError(28, "No space left on device"),
            EOFError(),
            sqlite3.OperationalError("database is locked"),
        ]
    )
    worker.start(on_exit=lambda _worker: ended.set())
    wait_for(lambda: worker.steps > 5 and worker.fault is None, message="the worker going on after its faults")
    assert worker.is_alive() and worker.fatal is None
    worker.stop()
    assert ended.wait(5)


def test_a_fault_that_lets_every_other_step_through_is_still_backed_off_more_and_more():
    full = OSError(28, "No space left on device")
    worker = Flaky([full, None, full, None, full])
    backed_off = []
    worker.fault_backoff.delay = lambda failures, retry_after=None: backed_off.append(failures) or 0.01
    worker.start()
    wait_for(lambda: worker.steps > 6 and worker.fault is None, message="the worker past its faults")
    worker.stop()
    assert backed_off == [1, 2, 3]


def test_a_worker_ends_on_a_damaged_ledger_with_fatal_set():
    worker = Flaky([sqlite3.DatabaseError("database disk image is malformed")])
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and isinstance(worker.fatal, sqlite3.DatabaseError)


def test_a_worker_has_ended_when_it_wakes_whoever_waits_for_its_end():
    """on_exit runs in the worker's own thread, still alive: what it wakes must already see the end."""
    seen = []
    worker = Flaky([sqlite3.DatabaseError("database disk image is malformed")])
    worker.start(on_exit=lambda ending: seen.append((ending.ended, ending.health_problem(within=60))))
    worker.join(5)
    assert seen == [(True, "flaky has stopped")]


def test_joining_a_worker_never_started_is_not_an_error():
    Flaky([]).join(1)


def test_a_worker_takes_its_share_of_a_backlog_in_one_commit_and_gives_back_what_it_did_not_send(pipeline, site):
    ids = [queued_slip(pipeline, site, f"slip{number}.xml") for number in range(10)]
    ledger = pipeline.ledger
    first = ledger.files.assign_due(pipeline.clock(), share=4, most=4)
    assert [row.id for row in first] == ids[:2], "10 due among 4 workers: two each, oldest first"
    assert all(row.state == FileState.UPLOADING and row.attempts == 1 for row in first)
    assert [row.id for row in ledger.files.assign_due(pipeline.clock(), share=1, most=4)] == ids[2:6]
    ledger.files.unassign(*ids[2:6])
    back = ledger.files.rows(ids[2:6])
    assert all(row.state == FileState.QUEUED and row.attempts == 0 for row in back), "not sent: no attempt counted"
    assert [row.id for row in ledger.files.assign_due(pipeline.clock(), share=4, most=4)] == ids[2:4]  # 8 due: two


def test_an_upload_worker_gives_back_the_files_it_took_when_it_stops(pipeline, site):
    from gateway.upload.sender import Uploader

    ids = [queued_slip(pipeline, site, f"slip{number}.xml") for number in range(3)]
    worker = Uploader(pipeline.sender, pipeline.placing, workers=1)
    worker._assigned.extend(pipeline.ledger.files.assign_due(pipeline.clock(), 1, 4))
    worker.stop()
    worker.start()
    worker.join(10)
    assert all(row.state == FileState.QUEUED for row in pipeline.ledger.files.rows(ids))


def test_an_upload_worker_takes_the_next_files_of_a_backlog_while_it_sends_the_last_one_in_hand(pipeline, site):
    from gateway.upload.sender import Uploader

    ids = [queued_slip(pipeline, site, f"slip{number}.xml") for number in range(10)]
    ledger = pipeline.ledger
    worker = Uploader(pipeline.sender, pipeline.placing, workers=2)
    for _ in range(3):
        worker.step()  # takes ids[0:4] (10 due, two workers: four), sends three of them
    assert worker._next is None, "more than one in hand: nothing taken ahead"
    worker.step()  # the last in hand goes out; meanwhile its share of the 6 due is taken
    assert [row.id for row in worker._next[1]] == ids[4:7]
    worker.step()  # sends ids[4], once that take is durable
    database = sqlite3.connect(pipeline.config.paths.database)
    try:
        states = dict(database.execute(f"SELECT id, state FROM files WHERE id IN ({', '.join(map(str, ids))})"))
    finally:
        database.close()
    assert [states[row_id] for row_id in ids[5:7]] == ["uploading", "uploading"], "the take is durable"
    assert states[ids[4]] in ("archiving", "archived"), "answered and placed (archived joins a later commit)"
    worker.step()  # ids[5]; two left in hand
    worker.step()  # ids[6], the last in hand: 3 due, more than the workers: one taken ahead
    assert [row.id for row in worker._next[1]] == ids[7:8]
    worker.step()  # ids[7]: 2 due, not more than the workers: left to an idle one
    assert worker._next is None and not worker._assigned
    assert [row.state for row in ledger.files.rows(ids[8:])] == [FileState.QUEUED] * 2
    for _ in range(3):
        worker.step()  # ids[8], ids[9] taken (one at a time, as for an idle worker), then nothing due: a rest
    assert all(row.state == FileState.ARCHIVED for row in ledger.files.rows(ids))
    assert all(row.attempts == 1 for row in ledger.files.rows(ids))


def test_an_upload_worker_gives_back_the_files_it_took_ahead_when_it_stops(pipeline, site):
    from gateway.upload.sender import Uploader

    ids = [queued_slip(pipeline, site, f"slip{number}.xml") for number in range(12)]
    worker = Uploader(pipeline.sender, pipeline.placing, workers=2)
    for _ in range(4):
        worker.step()
    assert [row.id for row in worker._next[1]] == ids[4:8]
    worker.end()
    rows = pipeline.ledger.files.rows(ids[4:])
    assert all(row.state == FileState.QUEUED and row.attempts == 0 for row in rows), "not sent: no attempt counted"


def test_a_full_state_dir_is_not_reported_as_a_permissions_problem():
    import errno

    from gateway.archive.placing import folder_hint
    from gateway.intake.collector import claim_hint

    full = OSError(errno.ENOSPC, "No space left on device")
    assert "full" in claim_hint(full) and "permission" not in claim_hint(full)
    assert "full" in folder_hint(full) and "owner" not in folder_hint(full)
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert "permission" in claim_hint(denied) and "owner" in folder_hint(denied)
    assert "folder should be" in folder_hint(NotADirectoryError(errno.ENOTDIR, "Not a directory"))


def test_a_claim_that_fails_in_state_dir_is_not_blamed_on_the_source_folder(tmp_path):
    import errno

    from gateway.intake.collector import claim_hint

    state = tmp_path / "state"
    read_only = OSError(errno.EROFS, "Read-only file system", str(state / "work" / ".00000001.slip.partial-1"))
    assert claim_hint(read_only, state).startswith("state_dir is on a read-only filesystem")
    assert "ReadWritePaths=" in claim_hint(read_only, state)  # the sandbox's doing, more often than a remount
    denied_here = PermissionError(errno.EACCES, "Permission denied", str(state / "work" / "00000001.slip"))
    assert "cannot write state_dir/work/" in claim_hint(denied_here, state)
    unreadable = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "print" / "slip"))
    assert "read permission on the file" in claim_hint(unreadable, state)


def test_the_finisher_places_what_it_was_handed_before_it_ends_then_refuses(pipeline, site, simulator):
    """Upload workers hand answered files to the finisher; none is left answered when it stops."""
    from gateway.archive.workers import Finisher

    answered = []
    for number in range(3):
        row = pipeline.ledger.files.assign(queued_slip(pipeline, site, f"slip{number}.xml"))
        answered.append(pipeline.sender.save(row, pipeline.sender.send(row)))
    finisher = Finisher(pipeline.placing)
    assert all(finisher.offer(row) for row in answered[:2])
    finisher.stop()  # stopped before it ever ran a step: end() still places what it holds
    finisher.start()
    finisher.join(10)
    assert [row.state for row in pipeline.ledger.files.rows([row.id for row in answered[:2]])] == [
        FileState.ARCHIVED
    ] * 2
    assert finisher.offer(answered[2]) is False, "once ended, the upload worker places the file itself"
    assert pipeline.ledger.files.row(answered[2].id).state == FileState.ANSWERED


def test_a_full_finisher_says_so_and_has_room_again_once_it_has_placed(pipeline, site, simulator):
    """An upload worker rests on finisher.room (checking in) while the queue is full, then hands its file."""
    from gateway.archive.workers import Finisher

    answered = []
    for number in range(2):
        row = pipeline.ledger.files.assign(queued_slip(pipeline, site, f"full{number}.xml"))
        answered.append(pipeline.sender.save(row, pipeline.sender.send(row)))
    finisher = Finisher(pipeline.placing, most=1)
    assert finisher.room.is_set() and finisher.offer(answered[0]) is True
    assert finisher.offer(answered[1]) is None, "full: not queued"
    assert not finisher.room.is_set(), "an upload worker resting on room waits"
    finisher.step()
    assert finisher.room.is_set(), "placed: room again"
    assert pipeline.ledger.files.row(answered[0].id).state in (FileState.ARCHIVING, FileState.ARCHIVED)
    assert finisher.offer(answered[1]) is True


def test_placing_several_files_at_once_records_their_paths_together_and_skips_one_placed_already(
    pipeline, site, simulator
):
    """The finisher's batches: every file placed with its sidecar; a row placed meanwhile leaves nothing behind."""
    answered = []
    for number in range(3):
        row = pipeline.ledger.files.assign(queued_slip(pipeline, site, f"slip{number}.xml"))
        answered.append(pipeline.sender.save(row, pipeline.sender.send(row)))
    pipeline.placing.place(answered[1])  # placed by someone else meanwhile (a lease that ran out)
    pipeline.placing.place_many(answered)
    rows = pipeline.ledger.files.rows([row.id for row in answered])
    assert [row.state for row in rows] == [FileState.ARCHIVED] * 3
    assert sorted(path.name for path in site.archived()) == ["slip0.xml", "slip1.xml", "slip2.xml"]
    assert all(site.sidecar(Path(row.final_path))["ledger_id"] == row.id for row in rows)
    day = Path(rows[0].final_path).parent
    assert sorted(path.name for path in day.iterdir() if path.name.endswith(".json")) == [
        "slip0.xml.json",
        "slip1.xml.json",
        "slip2.xml.json",
    ], "no second reservation for the file placed twice"


def test_a_batch_of_placed_files_syncs_its_day_folder_once_before_any_work_name_is_removed(
    pipeline, site, simulator, monkeypatch
):
    """The finisher's batch: every sidecar and file in the day folder, then one folder sync, then work/ emptied."""
    from gateway.archive import placing
    from gateway.core import files

    answered = []
    for number in range(3):
        row = pipeline.ledger.files.assign(queued_slip(pipeline, site, f"batch{number}.xml"))
        answered.append(pipeline.sender.save(row, pipeline.sender.send(row)))
    work = [pipeline.placing.work_path(row) for row in answered]
    synced = []

    def fsync_dir(folder):  # the real sync, noting what was in place at that moment
        synced.append((folder, sorted(path.name for path in folder.iterdir()), [path.exists() for path in work]))
        files.fsync_dir(folder)

    monkeypatch.setattr(placing, "fsync_dir", fsync_dir)
    pipeline.placing.place_many(answered)
    assert len(synced) == 1, "one folder sync for the batch"
    folder, names, work_there = synced[0]
    assert names == ["batch0.xml", "batch0.xml.json", "batch1.xml", "batch1.xml.json", "batch2.xml", "batch2.xml.json"]
    assert work_there == [True] * 3, "no work name removed before the folder sync"
    assert not any(path.exists() for path in work)
    assert [row.state for row in pipeline.ledger.files.rows([row.id for row in answered])] == [FileState.ARCHIVED] * 3
