"""Sources: the contract every source keeps, and the local folder's own behaviour."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from conftest import SAMPLES, source_settings, wait_for

from gateway.config.settings import LocalSourceSettings, SftpSourceSettings
from gateway.core.errors import SourceGone
from gateway.intake.readiness import ReadyCheck, Settler
from gateway.sources.base import Released, Taken
from gateway.sources.local import LocalSource, choose_mode, filesystem_type


def taken(entry, data: bytes) -> Taken:
    return Taken(origin=entry.origin, size=entry.size, mtime=entry.mtime, sha256=hashlib.sha256(data).hexdigest())


def local_settings(folder: Path, **overrides) -> LocalSourceSettings:
    settings = source_settings(
        name="print", path=folder, settle_seconds=0.2, rescan_seconds=1.0, poll_seconds=0.2, **overrides
    )
    assert isinstance(settings, LocalSourceSettings)
    return settings


class LocalFolder:
    """Puts files into a source folder, for the contract tests."""

    def __init__(self, folder: Path, watch: str, **overrides):
        self.folder = folder
        self.source = LocalSource(local_settings(folder, watch=watch, **overrides))

    def put(self, name: str, data: bytes) -> None:
        (self.folder / name).write_bytes(data)

    def remove(self, name: str) -> None:
        (self.folder / name).unlink()


class SftpFolder(LocalFolder):
    """The same, on the far side of a real sshd."""

    def __init__(self, folder: Path, sshd, **overrides):
        from gateway.sources.sftp import SftpSource

        self.folder = folder
        settings = source_settings(
            name="print",
            url=sshd.url(folder),
            known_hosts_file=sshd.known_hosts,
            private_key_file=sshd.client_key,
            settle_seconds=0.2,
            poll_seconds=0.2,
            timeout_seconds=5.0,
            **overrides,
        )
        assert isinstance(settings, SftpSourceSettings)
        self.source = SftpSource(settings)


def _folder(request, tmp_path, **overrides):
    folder = tmp_path / "in"
    folder.mkdir()
    if request.param == "sftp":
        sshd = request.getfixturevalue("sshd")
        if sshd.process.poll() is not None:
            sshd.start()
        return SftpFolder(folder, sshd, **overrides)
    return LocalFolder(folder, request.param, **overrides)


@pytest.fixture(params=["inotify", "polling", "sftp"])
def source_folder(request, tmp_path):
    made = _folder(request, tmp_path)
    yield made
    made.source.stop()


@pytest.fixture(params=["inotify", "sftp"])
def marked_folder(request, tmp_path):
    """A source in marker mode: ready_marker = "{name}.done"."""
    made = _folder(request, tmp_path, ready_marker="{name}.done")
    yield made
    made.source.stop()


class TestSourceContract:
    """What the collector relies on from any source (local here; SFTP runs the same)."""

    def test_scan_lists_wanted_files_with_size(self, source_folder):
        source_folder.put("slip.xml", b"<printout/>")
        source_folder.put(".hidden", b"x")
        source_folder.put("upload.part", b"x")
        [entry] = source_folder.source.scan()
        assert (entry.name, entry.size) == ("slip.xml", 11)

    def test_look_finds_only_existing_names(self, source_folder):
        source_folder.put("a", b"1")
        assert [e.name for e in source_folder.source.look({"a", "missing"})] == ["a"]

    def test_fetch_moves_the_exact_bytes(self, source_folder, tmp_path):
        source_folder.put("a", b"31234001234567\n")
        [entry] = source_folder.source.scan()
        destination = tmp_path / "work-a"
        kept = source_folder.source.fetch(entry, destination)
        assert destination.read_bytes() == b"31234001234567\n"
        assert kept == source_folder.source.keeps_originals  # the tests own their files: local ones move
        if kept:  # the original stays until the outcome is known
            assert [e.name for e in source_folder.source.scan()] == ["a"]
            assert source_folder.source.release(taken(entry, b"31234001234567\n")).changed_size is None
        assert source_folder.source.scan() == []

    def test_release_removes_only_originals_still_exactly_as_taken(self, source_folder):
        for name in ("same", "grown", "rewritten"):
            source_folder.put(name, b"31234001234567\n")
        entries = {entry.name: entry for entry in source_folder.source.scan()}
        with open(source_folder.folder / "grown", "ab") as writer:  # a writer that was only pausing
            writer.write(b"31234001234568\n")
        source = source_folder.source
        assert source.changed(taken(entries["grown"], b"31234001234567\n")) == 30
        assert source.changed(taken(entries["same"], b"31234001234567\n")) is None
        assert source.release(taken(entries["same"], b"31234001234567\n")) == Released(
            "deleted (it was copied when taken)" if not source.keeps_originals else "deleted"
        )
        grown = source.release(taken(entries["grown"], b"31234001234567\n"))
        assert grown.changed_size == 30 and "left in place" in grown.done
        rewritten = source.release(taken(entries["rewritten"], b"31234009999999\n"))  # same size and mtime
        assert rewritten.changed_size == 15, "the content is compared, not only size and mtime"
        assert sorted(p.name for p in source_folder.folder.iterdir()) == ["grown", "rewritten"]
        assert source.release(taken(entries["same"], b"31234001234567\n")) == Released("already gone")
        assert source.changed(taken(entries["same"], b"31234001234567\n")) is None

    def test_fetch_of_a_vanished_file_says_so(self, source_folder, tmp_path):
        source_folder.put("a", b"1")
        [entry] = source_folder.source.scan()
        source_folder.remove("a")
        with pytest.raises(SourceGone):
            source_folder.source.fetch(entry, tmp_path / "work-a")

    def test_fetch_many_takes_each_file_and_says_which_could_not_be_taken(self, source_folder, tmp_path):
        for name in ("a", "b", "c"):
            source_folder.put(name, name.encode() * 3)
        entries = sorted(source_folder.source.scan(), key=lambda entry: entry.name)
        source_folder.remove("b")
        work = tmp_path / "work"
        work.mkdir()
        results = source_folder.source.fetch_many([(entry, work / entry.name) for entry in entries])
        assert isinstance(results[1], SourceGone)
        assert results[0] == results[2] == source_folder.source.keeps_originals
        assert sorted(p.name for p in work.iterdir()) == ["a", "c"] and (work / "c").read_bytes() == b"ccc"

    def test_symlinks_and_folders_are_not_listed(self, source_folder, tmp_path):
        secret = tmp_path / "secret"
        secret.write_text("not for CaiaSoft")
        (source_folder.folder / "link.xml").symlink_to(secret)
        (source_folder.folder / "sub").mkdir()
        assert source_folder.source.scan() == []

    def test_peek_reads_the_end_of_the_file_without_taking_it(self, source_folder):
        source_folder.put("a", b"31234001234567\n3123400")
        [entry] = source_folder.source.scan()
        assert source_folder.source.peek(entry, 1000) == b"31234001234567\n3123400"
        assert source_folder.source.peek(entry, 4) == b"3400", "the file's end: what readiness judges"
        assert [e.name for e in source_folder.source.scan()] == ["a"]
        source_folder.remove("a")
        with pytest.raises(SourceGone):
            source_folder.source.peek(entry, 1000)

    def test_marker_files_are_found_never_listed_and_dropped(self, marked_folder):
        marked_folder.put("a_barcode", b"31234001234567\n")
        marked_folder.put("b_barcode", b"31234001234568\n")
        marked_folder.put("a_barcode.done", b"")
        entries = {e.name: e for e in marked_folder.source.scan()}
        assert sorted(entries) == ["a_barcode", "b_barcode"], "a marker is never a request file"
        assert marked_folder.source.has_marker(entries["a_barcode"])
        assert not marked_folder.source.has_marker(entries["b_barcode"])
        marked_folder.source.drop_marker(entries["a_barcode"])
        marked_folder.source.drop_marker(entries["b_barcode"])  # no marker: nothing to do, no error
        assert sorted(p.name for p in marked_folder.folder.iterdir()) == ["a_barcode", "b_barcode"]

    def test_open_writers_are_unknown_where_they_cannot_be_seen(self, source_folder):
        source_folder.put("a", b"1\n")
        [entry] = source_folder.source.scan()
        answer = source_folder.source.writers(entry)
        if source_folder.source.keeps_originals:
            assert answer.state == "unknown" and "SFTP" in answer.reason
        else:  # the tests own their files: the lease answers
            assert answer.state == "nobody"

    def test_start_and_stop_are_safe_to_repeat(self, source_folder):
        woken = threading.Event()
        source_folder.source.start(woken.set)
        assert source_folder.source.healthy()
        source_folder.source.stop()
        source_folder.source.stop()


def test_symlinks_and_folders_are_not_taken(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("not for CaiaSoft")
    (folder / "link.xml").symlink_to(secret)
    (folder / "sub").mkdir()
    source = LocalSource(local_settings(folder))
    assert source.scan() == [] and source.look({"link.xml", "sub"}) == []


def test_include_patterns_filter_names(tmp_path):
    (tmp_path / "a_barcode").write_text("1\n")
    (tmp_path / "notes.txt").write_text("1\n")
    source = LocalSource(local_settings(tmp_path, include=("*_barcode",)))
    assert [e.name for e in source.scan()] == ["a_barcode"]


def test_inotify_events_hint_new_names(tmp_path):
    source = LocalSource(local_settings(tmp_path, watch="inotify"))
    woken = threading.Event()
    source.start(woken.set)
    try:
        (tmp_path / "slip.xml").write_text("<printout/>")
        assert woken.wait(5)
        wait_for(lambda: "slip.xml" in source.hints() or None, message="an inotify hint for slip.xml")
    finally:
        source.stop()
    assert not source.healthy()


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:45 / /exlibris/aleph/u23_1 rw,relatime shared:20 - nfs4 filer:/aleph rw,vers=4.2
41 22 0:46 / /mnt/print\\040share rw,relatime shared:21 - cifs //srv/print rw
"""


def test_filesystem_type_from_mountinfo(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    assert filesystem_type(Path("/exlibris/aleph/u23_1/usm50/print"), mountinfo) == "nfs4"
    assert filesystem_type(Path("/mnt/print share/x"), mountinfo) == "cifs"
    assert filesystem_type(Path("/var/lib/caiasoft-gateway"), mountinfo) == "ext4"


def test_auto_watch_uses_inotify_on_this_local_disk_and_forced_modes_win(tmp_path):
    assert filesystem_type(tmp_path) not in (None, "nfs", "nfs4", "cifs")
    assert choose_mode(local_settings(tmp_path)) == "inotify"
    assert choose_mode(local_settings(tmp_path, watch="polling")) == "polling"


# -- the collector over a real folder, with the pipeline and the simulator --------------


class Threads:
    """The collector and uploader threads of a real service, without the process around them."""

    def __init__(self, site, with_uploader: bool = True):
        from gateway.intake.collector import Collector
        from gateway.runtime.pipeline import Pipeline
        from gateway.state.ledger import Ledger
        from gateway.upload.caiasoft import CaiaSoftClient
        from gateway.upload.sender import Uploader

        config = site.load()
        self.ledger = Ledger(config.paths.database)
        self.pipeline = Pipeline(config, self.ledger, CaiaSoftClient(config.caiasoft, config.api_key))
        self.uploader = (
            Uploader(self.pipeline.sender, self.pipeline.placing, self.pipeline.queued) if with_uploader else None
        )
        self.collector = Collector(
            LocalSource(config.sources[0]),
            config.sources[0].settle_seconds,
            self.pipeline.admission,
            self.pipeline.placing,
        )

    def start(self) -> Threads:
        for thread in (self.uploader, self.collector):
            if thread:
                thread.start()
        return self

    def stop(self) -> None:
        for thread in (self.collector, self.uploader):
            if thread:
                thread.stop()
                thread.join(10)
        self.ledger.close()


@pytest.fixture
def threads(site):
    made = []

    def start(**kwargs) -> Threads:
        made.append(Threads(site, **kwargs).start())
        return made[-1]

    yield start
    for each in made:
        each.stop()


def test_a_file_written_slowly_is_taken_once_whole(threads, site, simulator):
    waiting = threads().collector.ready_check.waiting
    path = site.source / "slip.xml"
    data = (SAMPLES / "hold-request-slip-0002.xml").read_bytes()
    with open(path, "wb") as handle:
        for index in range(0, len(data), len(data) // 3 + 1):
            handle.write(data[index : index + len(data) // 3 + 1])
            handle.flush()
            # A writer that pauses longer than settle_seconds with the file still open:
            # the gateway sees it settle, and only the open-for-writing check holds it.
            wait_for(
                lambda: waiting.get("slip.xml", {}).get("reason") == "open for writing",
                message="the settled file held as open for writing",
            )
            assert path.exists(), "taken while still open for writing"
    [received] = simulator.wait_for(1)
    assert received.data == data
    wait_for(lambda: site.archived(), message="slip.xml archived")
    assert site.archived()[0].read_bytes() == data
    assert len(simulator.received) == 1


def test_files_already_there_at_start_are_taken_in_order(threads, site):
    for number in range(3):
        path = site.source / f"list-{number}_barcode"
        path.write_text(f"3123400000000{number}\n")
        os.utime(path, (1_700_000_000 + number, 1_700_000_000 + number))
    running = threads(with_uploader=False)
    wait_for(lambda: running.ledger.files.counts().get("queued") == 3, message="three files queued")
    assert os.listdir(site.source) == []
    assert [row.name for row in running.ledger.files.in_state("queued")] == [f"list-{n}_barcode" for n in range(3)]


def test_a_vanished_folder_is_reported_and_recovers(threads, site):
    running = threads(with_uploader=False)
    wait_for(lambda: running.collector.heartbeat and running.collector.problem is None, message="first scan")
    away = site.source.with_name("unmounted")
    site.source.rename(away)
    problem = wait_for(lambda: running.collector.problem, message="the source problem")
    assert "cannot list" in problem and str(site.source) in problem
    away.rename(site.source)
    wait_for(lambda: running.collector.problem is None, message="the source to recover")


def test_a_file_gone_between_listing_and_reading_is_passed_over(tmp_path):
    """Not fatal, and not a reason to think open writers cannot be seen in the folder."""
    source = LocalSource(local_settings(tmp_path))
    (tmp_path / "a_barcode").write_bytes(b"31234001234567\n")
    [entry] = source.scan()
    (tmp_path / "a_barcode").unlink()
    check = ReadyCheck(source, Settler(0.0), grace_seconds=300.0, peek_limit=1000)
    assert check.hold(entry) == 0.0
    assert check.writers_unknown is None and check.waiting == {}


def slips_to_take(tmp_path: Path, count: int, folder: Path | None = None) -> tuple[LocalFolder, Path]:
    """A polled source folder (tmp_path/in unless told) holding count slips, and an empty work/ to take them to."""
    source = LocalFolder(folder or tmp_path / "in", "polling")
    source.folder.mkdir(exist_ok=True)
    for number in range(count):
        source.put(f"slip-{number}.xml", b"<printout/>")
    work = tmp_path / "work"
    work.mkdir()
    return source, work


def test_a_batch_of_moves_syncs_the_work_folder_once_before_any_original_is_removed(tmp_path, monkeypatch):
    from gateway.core import files
    from gateway.sources import taking

    folder, work = slips_to_take(tmp_path, 5)
    synced: list[list[str]] = []

    def fsync_dir(path):  # the real sync, noting what was still in the source at that moment
        synced.append(sorted(p.name for p in folder.folder.iterdir()))
        files.fsync_dir(path)

    monkeypatch.setattr(taking, "fsync_dir", fsync_dir)
    entries = folder.source.scan()
    assert folder.source.fetch_many([(entry, work / entry.name) for entry in entries]) == [False] * 5
    assert synced == [[f"slip-{number}.xml" for number in range(5)]], "one sync, with every original still there"
    assert list(folder.folder.iterdir()) == [] and len(list(work.iterdir())) == 5


def test_a_failed_sync_of_the_work_folder_leaves_every_file_in_its_source(tmp_path, monkeypatch):
    from gateway.sources import taking

    folder, work = slips_to_take(tmp_path, 3)

    def fsync_dir(path):
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(taking, "fsync_dir", fsync_dir)
    results = folder.source.fetch_many([(entry, work / entry.name) for entry in folder.source.scan()])
    assert all(isinstance(result, OSError) for result in results)
    assert len(list(folder.folder.iterdir())) == 3 and list(work.iterdir()) == []


def test_a_file_whose_original_cannot_be_removed_is_not_taken_and_leaves_no_copy_in_work(tmp_path, small_tmpfs):
    """A read-only source (an NFS export, a read-only mount): the take fails, naming the file; the original stays
    the only copy, so the retry a minute later cannot leave a second one in work/ to be adopted and sent."""
    import subprocess

    folder, work = slips_to_take(tmp_path, 2, folder=small_tmpfs(tmp_path / "in", "1m"))
    subprocess.run(["mount", "-o", "remount,ro", str(folder.folder)], check=True)
    results = folder.source.fetch_many([(entry, work / entry.name) for entry in folder.source.scan()])
    assert all(isinstance(result, OSError) and "slip-" in str(result) for result in results), results
    assert len(list(folder.folder.iterdir())) == 2 and list(work.iterdir()) == []
