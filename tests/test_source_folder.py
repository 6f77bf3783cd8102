"""A local source folder held open by a directory fd, and what a take puts in work/ (in-process)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from conftest import wait_for
from test_sources import local_settings

from gateway.core.errors import SourceGone
from gateway.core.files import CopyCut
from gateway.intake.collector import Collector
from gateway.runtime.pipeline import Pipeline
from gateway.sources.folder import FolderReplaced
from gateway.sources.local import LocalSource
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient

OTHER_UID = 1  # a user that is not the gateway's (daemon): its files are never linked into work/


def test_a_folder_replaced_by_another_pauses_the_source_until_the_one_opened_is_back(tmp_path):
    folder = tmp_path / "print"
    folder.mkdir()
    (folder / "a_barcode").write_text("31234000000001\n")
    source = LocalSource(local_settings(folder, watch="polling"))
    assert [entry.name for entry in source.scan()] == ["a_barcode"]
    folder.rename(tmp_path / "print.old")
    folder.mkdir()
    (folder / "b_barcode").write_text("31234000000002\n")
    for look in (source.scan, lambda: source.look({"b_barcode"})):
        with pytest.raises(FolderReplaced, match="replaced by another folder; paused"):
            look()
    folder.rename(tmp_path / "print.new")
    folder.symlink_to(tmp_path / "print.old")
    with pytest.raises(FolderReplaced, match="replaced by a symlink"):
        source.scan()
    folder.unlink()
    (tmp_path / "print.old").rename(folder)
    assert [entry.name for entry in source.scan()] == ["a_barcode"], "back: read again, and only it"
    source.stop()


def test_a_file_with_a_second_link_is_taken_as_a_copy_of_the_gateways_own(tmp_path):
    folder, work = tmp_path / "print", tmp_path / "work"
    folder.mkdir()
    work.mkdir()
    data = b"31234000000001\n"
    (folder / "a_barcode").write_bytes(data)
    os.chmod(folder / "a_barcode", 0o666)
    os.link(folder / "a_barcode", tmp_path / "second-name")
    source = LocalSource(local_settings(folder, watch="polling"))
    [entry] = source.scan()
    assert source.fetch(entry, work / "1.a_barcode") is False, "nobody writes it: the original is removed"
    taken = os.stat(work / "1.a_barcode")
    assert taken.st_ino != os.stat(tmp_path / "second-name").st_ino and taken.st_nlink == 1
    assert taken.st_uid == os.geteuid() and not taken.st_mode & 0o022
    assert not (folder / "a_barcode").exists()
    (tmp_path / "second-name").write_bytes(b"rewritten through the other name\n")
    assert (work / "1.a_barcode").read_bytes() == data


def test_a_file_of_another_user_above_max_file_bytes_is_not_copied_and_stays(tmp_path):
    folder, work = tmp_path / "print", tmp_path / "work"
    folder.mkdir()
    work.mkdir()
    (folder / "big_barcode").write_bytes(b"31234000000001\n" * 10)
    os.chown(folder / "big_barcode", OTHER_UID, OTHER_UID)
    source = LocalSource(local_settings(folder, watch="polling"), max_file_bytes=100)
    [entry] = source.scan()
    with pytest.raises(CopyCut) as cut:
        source.fetch(entry, work / "1.big_barcode")
    assert cut.value.errno == errno.EFBIG and "above max_file_bytes (100)" in str(cut.value)
    assert cut.value.filename == str(folder / "big_barcode")
    assert os.listdir(work) == [] and (folder / "big_barcode").exists()


def test_a_file_of_another_user_is_copied_into_work_as_the_gateways_own(tmp_path):
    folder, work = tmp_path / "print", tmp_path / "work"
    folder.mkdir()
    work.mkdir()
    (folder / "slip_barcode").write_bytes(b"31234000000001\n")
    os.chown(folder / "slip_barcode", OTHER_UID, OTHER_UID)
    os.chmod(folder / "slip_barcode", 0o664)
    source = LocalSource(local_settings(folder, watch="polling"), max_file_bytes=1000)
    [entry] = source.scan()
    source.fetch(entry, work / "1.slip_barcode")
    taken = os.stat(work / "1.slip_barcode")
    assert taken.st_uid == os.geteuid() and taken.st_nlink == 1 and not taken.st_mode & 0o022
    assert taken.st_mtime == entry.mtime


def test_a_fifo_in_place_of_a_listed_file_is_never_opened_for_reading(tmp_path):
    folder, work = tmp_path / "print", tmp_path / "work"
    folder.mkdir()
    work.mkdir()
    (folder / "a_barcode").write_text("31234000000001\n")
    source = LocalSource(local_settings(folder, watch="polling"))
    [entry] = source.scan()
    (folder / "a_barcode").unlink()
    os.mkfifo(folder / "a_barcode")
    with pytest.raises(SourceGone, match="no longer a regular file"):
        source.peek(entry, 100)
    with pytest.raises(SourceGone):
        source.fetch(entry, work / "1.a_barcode")
    assert os.listdir(work) == []


class Blocking(LocalSource):
    """A local source whose listing does not return until released (a hung mount)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def scan(self):
        self.release.wait(30)
        return super().scan()


def test_a_collector_blocked_in_its_source_is_shown_stuck_not_ok(site):
    config = site.load()
    ledger = Ledger(config.paths.database)
    pipeline = Pipeline(config, ledger, CaiaSoftClient(config.caiasoft, config.api_key))
    source = Blocking(local_settings(Path(site.source), watch="polling"))
    collector = Collector(source, 0.1, pipeline.admission, pipeline.placing, stall_seconds=0.5)
    collector.start()
    try:
        problem = wait_for(collector.current_problem, timeout=10, message="the stuck collector shown")
        assert str(problem).startswith("stuck: no progress for") and str(site.source) in str(problem)
        source.release.set()
        wait_for(lambda: collector.current_problem() is None, timeout=10, message="ok once it goes on")
    finally:
        source.release.set()
        collector.stop()
        collector.join(10)
        pipeline.sender.client.close()
        ledger.close()
