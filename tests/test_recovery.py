"""Crash recovery: every interrupted step is finished or undone from what the ledger recorded."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys

import pytest
from conftest import SAMPLES, wait_for

from gateway.archive import aftertake
from gateway.core.errors import AlreadyRunning
from gateway.core.states import Verdict
from gateway.runtime.pipeline import Pipeline
from gateway.runtime.service import StateLock
from gateway.sources.local import LocalSource
from gateway.state.ledger import Ledger, work_name
from gateway.upload.caiasoft import CaiaSoftClient


@pytest.fixture
def pipeline(site):
    config = site.load()
    ledger = Ledger(config.paths.database)
    pipe = Pipeline(config, ledger, CaiaSoftClient(config.caiasoft, config.api_key))
    yield pipe
    ledger.close()


def slip(site, name="slip.xml"):
    path = site.source / name
    path.write_bytes((SAMPLES / "hold-request-slip-0001.xml").read_bytes())
    return path


def begin(pipeline, path):
    info = path.stat()
    return pipeline.ledger.files.begin_claim("print", path.name, str(path), info.st_size, info.st_mtime)


def test_crash_after_the_rename_but_before_claimed_is_recorded(pipeline, site):
    path = slip(site)
    row_id = begin(pipeline, path)
    os.rename(path, pipeline.work_dir / work_name(row_id, path.name))
    assert pipeline.recover()["claims_completed"] == 1
    assert pipeline.ledger.files.get(row_id).state == "queued"


def test_a_take_cut_short_between_the_link_and_removing_the_original_is_completed_at_start(pipeline, site):
    path = slip(site)
    row_id = begin(pipeline, path)
    os.link(path, pipeline.work_dir / work_name(row_id, path.name))  # a batch's originals go after one sync
    pipeline.sources.update({"print": LocalSource(site.load().sources[0])})
    assert pipeline.recover()["claims_completed"] == 1
    assert not path.exists(), "the original of a move is removed at start, not left until the file is sent"
    assert pipeline.ledger.files.get(row_id).state == "queued" and pipeline.ledger.files.held("print") == set()


def test_a_writer_that_opens_the_original_as_a_cut_short_take_is_completed_keeps_its_file(pipeline, site, monkeypatch):
    """The writer arrives between the check for writers and the removal: the original is put back, kept."""
    from gateway.sources import writers

    path = slip(site)
    row_id = begin(pipeline, path)
    os.link(path, pipeline.work_dir / work_name(row_id, path.name))
    pipeline.sources.update({"print": LocalSource(site.load().sources[0])})
    real_check, writer = writers.open_writers, []

    answers = []

    def a_writer_arrives_after_the_first_check(checked):
        answer = real_check(checked)
        answers.append(answer.state)
        if not writer:
            writer.append(open(path, "ab"))  # noqa: SIM115 (held open until the end of the test)
        return answer

    monkeypatch.setattr(writers, "open_writers", a_writer_arrives_after_the_first_check)
    try:
        assert pipeline.recover()["claims_completed"] == 1
        assert answers == [writers.NOBODY, writers.WRITING], "the real check saw nobody, then the writer"
        assert path.exists(), "the original the writer holds is put back"
        assert pipeline.ledger.files.get(row_id).state == "queued"
        info = path.stat()
        assert (str(path), info.st_size, info.st_mtime) in pipeline.ledger.files.held("print"), (
            "kept, like any original"
        )
    finally:
        for handle in writer:
            handle.close()


def test_crash_before_the_rename_forgets_the_row_and_leaves_the_file(pipeline, site):
    path = slip(site)
    row_id = begin(pipeline, path)
    assert pipeline.recover()["claims_dropped"] == 1
    assert pipeline.ledger.files.get(row_id) is None
    assert path.exists()


def test_crash_in_a_copy_claim_before_the_original_was_removed(pipeline, site):
    path = slip(site)
    row_id = begin(pipeline, path)
    (pipeline.work_dir / work_name(row_id, path.name)).write_bytes(path.read_bytes())
    pipeline.recover()
    assert pipeline.ledger.files.get(row_id).state == "queued"
    info = path.stat()  # a copy-claim keeps its original until the file is sent: held, never taken twice
    assert (str(path), info.st_size, info.st_mtime) in pipeline.ledger.files.held("print")
    pipeline.upload(pipeline.ledger.files.assign(row_id))
    row = pipeline.ledger.files.get(row_id)
    assert row.state == "archived"
    assert (
        LocalSource(site.load().sources[0]).release(aftertake.taken(row)).done == "deleted (it was copied when taken)"
    )
    assert not path.exists()


def test_crash_during_upload_puts_the_file_back_in_the_queue(pipeline, site, simulator):
    row_id = pipeline.admission.adopt_copy(slip(site))
    assert pipeline.ledger.files.assign(row_id).state == "uploading"
    assert pipeline.recover()["requeued"] == 1
    row = pipeline.ledger.files.get(row_id)
    assert row.state == "queued"
    pipeline.upload(pipeline.ledger.files.assign(row_id))
    assert pipeline.ledger.files.get(row_id).state == "archived"


def test_crash_while_archiving_finishes_at_the_recorded_place(pipeline, site):
    row_id = pipeline.admission.adopt_copy(slip(site))
    pipeline.ledger.files.assign(row_id)
    pipeline.ledger.files.answered(
        row_id, Verdict.ACCEPTED, "accepted", http_status=200, answer={"success": True, "error": ""}, uploaded=True
    )
    target = pipeline.placing.archive.choose("slip.xml", dt.datetime(2026, 11, 28))
    pipeline.ledger.files.placing(row_id, target)
    assert pipeline.recover()["finished"] == 1
    row = pipeline.ledger.files.get(row_id)
    assert row.state == "archived" and row.final_path == str(target)
    assert target.read_bytes() == (SAMPLES / "hold-request-slip-0001.xml").read_bytes()
    assert site.sidecar(target)["outcome"] == "accepted"


def test_crash_after_the_archive_move_but_before_the_sidecar(pipeline, site):
    row_id = pipeline.admission.adopt_copy(slip(site))
    row = pipeline.ledger.files.assign(row_id)
    pipeline.ledger.files.answered(row_id, Verdict.ACCEPTED, "accepted", http_status=200, uploaded=True)
    target = pipeline.placing.archive.choose("slip.xml", dt.datetime(2026, 11, 28))
    pipeline.ledger.files.placing(row_id, target)
    os.rename(pipeline.placing.work_path(row), target)
    pipeline.recover()
    assert pipeline.ledger.files.get(row_id).state == "archived"
    assert site.sidecar(target)["sha256"] == row.sha256


@pytest.mark.e2e
def test_the_partial_copies_a_crash_left_in_the_archive_are_removed_at_start(pipeline, site, simulator, daemon_factory):
    row_id = pipeline.admission.adopt_copy(slip(site))
    pipeline.ledger.files.assign(row_id)
    pipeline.ledger.files.answered(row_id, Verdict.ACCEPTED, "accepted", http_status=200, uploaded=True)
    target = pipeline.placing.archive.choose("slip.xml", dt.datetime.now())
    pipeline.ledger.files.placing(row_id, target)
    pipeline.ledger.close()
    # a process killed in the middle of a copy into the archive (another filesystem) and of the sidecar
    dead = a_dead_pid()
    left = [target.with_name(f".slip.xml.partial-{dead}"), target.with_name(f".slip.xml.json.partial-{dead}")]
    others = [
        target.with_name(f".slip.xml.partial-{os.getpid()}"),  # its writer still runs
        target.with_name(".slip.xml.partial-x"),
        target.with_name(".other.xml.partial-1"),
    ]  # not ours
    for path in (*left, *others):
        path.write_bytes(b"<?xml")
    daemon = daemon_factory(site.config_file)
    wait_for(lambda: "recovery.done" in daemon.output(), message="recovery at start")
    assert daemon.stop() == 0
    assert target.read_bytes() == (SAMPLES / "hold-request-slip-0001.xml").read_bytes()
    assert site.sidecar(target)["outcome"] == "accepted"
    assert [path.exists() for path in left] == [False, False]
    assert [path.exists() for path in others] == [True, True, True]


def a_dead_pid() -> str:
    """The pid of a process that has ended."""
    return subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_file_in_work_without_a_row_is_adopted(pipeline, site):
    (pipeline.work_dir / "00000042.slip.xml").write_bytes((SAMPLES / "hold-request-slip-0001.xml").read_bytes())
    # what a crash in the middle of a copy-claim (or an SFTP download) leaves behind:
    (pipeline.work_dir / f".00000043.other_barcode.partial-{a_dead_pid()}").write_bytes(b"3123400")
    assert pipeline.recover()["adopted"] == 1
    [row] = pipeline.ledger.files.in_state("queued")
    assert (row.name, row.source) == ("slip.xml", "recovered")
    assert sorted(p.name for p in pipeline.work_dir.iterdir()) == [row.work_name]


def test_a_partial_copy_in_work_whose_writer_still_runs_is_left_to_it(pipeline, site):
    """`send` copies into work/ without the service's lock: a restart meanwhile must not delete its copy."""
    live = pipeline.work_dir / f".00000044.slip.xml.partial-{os.getpid()}"
    live.write_bytes(b"<half")
    pipeline.recover()
    assert live.exists()


def test_a_claimed_file_not_yet_validated_is_validated(pipeline, site):
    path = slip(site)
    row_id = begin(pipeline, path)
    os.rename(path, pipeline.work_dir / work_name(row_id, path.name))
    pipeline.ledger.files.claimed(row_id)
    pipeline.recover()
    assert pipeline.ledger.files.get(row_id).kind == "xml"


def test_two_gateways_cannot_share_a_state_dir(tmp_path):
    first = StateLock(tmp_path / "gateway.lock").acquire()
    with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
        StateLock(tmp_path / "gateway.lock").acquire()
    first.release()
    StateLock(tmp_path / "gateway.lock").acquire().release()


def test_a_name_reserved_before_a_crash_recorded_the_place_is_free_again_at_start(pipeline, site):
    first = pipeline.admission.adopt_copy(slip(site, "first.xml"))
    pipeline.ledger.files.assign(first)
    pipeline.ledger.files.answered(
        first, Verdict.ACCEPTED, "accepted", http_status=200, answer={"success": True, "error": ""}, uploaded=True
    )
    now = dt.datetime.fromtimestamp(pipeline.clock())
    reserved = pipeline.placing.archive.choose("first.xml", now)  # the crash: before the ledger recorded it
    # another file whose place (the next free name) was recorded and not yet filled keeps its reservation
    second = pipeline.admission.adopt_copy(slip(site, "second.xml"))
    pipeline.ledger.files.assign(second)
    pipeline.ledger.files.answered(
        second, Verdict.ACCEPTED, "accepted", http_status=200, answer={"success": True, "error": ""}, uploaded=True
    )
    kept = pipeline.placing.archive.choose("first.xml", now)
    pipeline.ledger.files.placing(second, kept)
    assert kept.name == "first.1.xml"
    (kept.parent / "third.xml.json").write_text("{}")  # a sidecar with content is never touched
    assert pipeline.recover()["finished"] == 2
    assert pipeline.ledger.files.get(first).final_path == str(reserved), "its own name, not first.1.xml"
    assert sorted(path.name for path in reserved.parent.iterdir()) == [
        "first.1.xml",
        "first.1.xml.json",
        "first.xml",
        "first.xml.json",
        "third.xml.json",
    ]
    assert site.sidecar(reserved)["outcome"] == "accepted"


def answered_slip(pipeline, site, name):
    """A slip sent and answered (accepted), its answer durable and its place not yet reserved."""
    row_id = pipeline.admission.adopt_copy(slip(site, name))
    pipeline.ledger.files.assign(row_id)
    return pipeline.ledger.files.answered(
        row_id, Verdict.ACCEPTED, "accepted", http_status=200, answer={"success": True, "error": ""}, uploaded=True
    )


def test_a_name_reserved_before_midnight_by_a_crashed_run_is_released_at_the_next_start(site):
    now = [dt.datetime.combine(dt.date.today() - dt.timedelta(days=1), dt.time(23, 59, 59)).timestamp()]
    config = site.load()
    ledger = Ledger(config.paths.database, clock=lambda: now[0])
    pipeline = Pipeline(config, ledger, CaiaSoftClient(config.caiasoft, config.api_key), clock=lambda: now[0])
    try:
        row = answered_slip(pipeline, site, "first.xml")
        reserved = pipeline.placing.archive.choose("first.xml", dt.datetime.fromtimestamp(now[0]))
        assert reserved.with_name("first.xml.json").exists()  # then the crash, before the name was recorded
        now[0] += 2.0  # the next start, after midnight
        pipeline.recover()
        assert pipeline.ledger.files.get(row.id).state == "archived"
        assert sorted(path.name for path in reserved.parent.iterdir()) == [], "no empty NAME.json left"
    finally:
        pipeline.sender.client.close()
        ledger.close()


class Crash(BaseException):
    """The process dying at this point (not an error any boundary catches)."""


def test_a_crash_after_the_name_was_taken_and_the_file_linked_under_the_next_one_places_it_once(
    pipeline, site, monkeypatch
):
    from gateway.archive import placing

    row = answered_slip(pipeline, site, "first.xml")
    target = pipeline.placing.archive.choose("first.xml", dt.datetime.fromtimestamp(pipeline.clock()))
    row = pipeline.ledger.files.placing(row.id, target)
    target.write_bytes(b"someone else's file")  # the reserved name taken meanwhile, by another writer

    def crash(folder):
        raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(placing, "fsync_dir", crash)  # linked at first.1.xml, then the crash before the sync
        with pytest.raises(Crash):
            pipeline.placing.place(row)
    assert (target.parent / "first.1.xml").exists() and pipeline.ledger.files.get(row.id).state == "archiving"
    pipeline.recover()
    names = sorted(path.name for path in target.parent.iterdir())
    assert names == ["first.1.xml", "first.1.xml.json", "first.xml"], "placed once, beside the other file"
    assert pipeline.ledger.files.get(row.id).final_path == str(target.parent / "first.1.xml")


def test_a_ledger_fault_while_recording_reserved_names_gives_the_names_back(pipeline, site, monkeypatch):
    row = answered_slip(pipeline, site, "first.xml")

    def locked(targets):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(pipeline.ledger.files, "placing_many", locked)
    with pytest.raises(sqlite3.OperationalError):
        pipeline.placing.place(row)
    day = dt.datetime.fromtimestamp(pipeline.clock())
    folder = pipeline.placing.archive.root / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
    assert list(folder.iterdir()) == [], "the reservation is given back: the next try gets the file's own name"
