"""An SFTP server is not trusted to end a file: downloads are capped by the listed size and max_file_bytes
and cut at a deadline; nothing fills state_dir, and a file not taken is shown by `status` with its reason.
Against a real OpenSSH sshd (tests/sshd.py), with the real daemon where the daemon is the point."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import source_settings, wait_for

from gateway.config.settings import SftpSourceSettings
from gateway.core.errors import SourceGone, SourceUnavailable
from gateway.sources.sftp import DOWNLOAD_BYTES_PER_SECOND, DownloadCut, SftpSource

pytestmark = pytest.mark.e2e

CAP = 1024 * 1024  # max_file_bytes in these tests
HUGE = 64 * 1024**3  # a sparse file: no space on the server's side, and far more than anyone may download


def barcodes(number: int) -> bytes:
    return "".join(f"3123400{number:04d}{line:03d}\n" for line in range(3)).encode()


def _on_disk(folder: Path) -> int:
    """Bytes of data the files under folder hold now (a partial download included)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.lstat().st_size if path.is_file() else 0
        except FileNotFoundError:  # renamed or removed while looked at
            continue
    return total


def _status(site) -> str:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def test_a_remote_file_above_max_file_bytes_is_not_downloaded_and_status_says_why(sftp_site, simulator, daemon_factory):
    sftp_site.write(
        simulator.url,
        local_source=False,
        extra=f"""
[intake]
max_file_bytes = {CAP}
[[sources]]
name = "remote"
url = "{sftp_site.sshd.url(sftp_site.remote)}"
known_hosts_file = "{sftp_site.sshd.known_hosts}"
private_key_file = "{sftp_site.sshd.client_key}"
settle_seconds = 0.3
poll_seconds = 0.2
timeout_seconds = 5
""",
    )
    with open(sftp_site.remote / "endless_barcode", "wb") as endless:  # what a never-ending file lists as
        endless.write(barcodes(1))
        endless.truncate(HUGE)
    (sftp_site.remote / "good_barcode").write_bytes(barcodes(2))
    daemon = daemon_factory(sftp_site.config_file)

    def refused_without_filling_state_dir() -> bool:
        held = _on_disk(sftp_site.state / "work")
        assert held <= CAP, f"{held} bytes downloaded into state_dir/work (max_file_bytes is {CAP})"
        return "above max_file_bytes" in daemon.output() and bool(sftp_site.archived())

    wait_for(refused_without_filling_state_dir, timeout=30, interval=0.01, message="the huge file refused")
    assert [path.name for path in sftp_site.archived()] == ["good_barcode"], "the rest flows on"
    assert [received.name for received in simulator.received] == ["good_barcode"]
    shown = wait_for(
        lambda: "endless_barcode" in (text := _status(sftp_site)) and text,
        timeout=20,
        interval=0.5,
        message="status to name the file",
    )
    assert f"above max_file_bytes ({CAP})" in shown and "not downloaded" in shown
    assert (sftp_site.remote / "endless_barcode").stat().st_size == HUGE, "left on the server"
    assert _on_disk(sftp_site.state / "work") <= CAP
    assert daemon.stop() == 0


@pytest.fixture
def remote_source(sshd, tmp_path):
    """An SftpSource on a folder of the real sshd, with max_file_bytes = CAP."""
    if sshd.process.poll() is not None:
        sshd.start()
    folder = tmp_path / "remote"
    folder.mkdir()
    settings = source_settings(
        name="remote",
        url=sshd.url(folder),
        known_hosts_file=sshd.known_hosts,
        private_key_file=sshd.client_key,
        timeout_seconds=2.0,
    )
    assert isinstance(settings, SftpSourceSettings)
    source = SftpSource(settings, max_file_bytes=CAP)
    yield folder, source
    source.stop()


def _fetch_in_thread(source: SftpSource, entry, destination: Path) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(source.fetch(entry, destination))
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("how", ["grows", "becomes /dev/zero"])
def test_a_file_that_goes_on_after_it_was_listed_is_read_no_further_than_listed(how, remote_source, tmp_path):
    folder, source = remote_source
    (folder / "a_barcode").write_bytes(barcodes(1))
    [entry] = source.scan()
    if how == "grows":
        os.truncate(folder / "a_barcode", HUGE)
    else:  # the name now leads to a file that never ends
        os.symlink("/dev/zero", folder / "link")
        os.replace(folder / "link", folder / "a_barcode")
    work = tmp_path / "work"
    work.mkdir()
    thread, outcome = _fetch_in_thread(source, entry, work / "1-a_barcode")

    def ended() -> bool:
        held = _on_disk(work)
        assert held <= entry.size + 1, f"{held} bytes downloaded of a file listed with {entry.size}"
        return not thread.is_alive()

    wait_for(ended, timeout=30, interval=0.01, message="the download to stop")
    [error] = outcome
    assert isinstance(error, SourceGone) and "changed while being downloaded" in str(error), error
    assert list(work.iterdir()) == [], "no partial download left"


def test_a_file_that_reads_on_past_the_size_the_server_still_lists_is_not_taken(sshd, tmp_path):
    """A server that never ends a file, for real: /proc/PID/status lists 0 bytes, and reads on."""
    if sshd.process.poll() is not None:
        sshd.start()
    folder = Path(f"/proc/{os.getpid()}")
    settings = source_settings(
        name="proc",
        url=sshd.url(folder),
        known_hosts_file=sshd.known_hosts,
        private_key_file=sshd.client_key,
        timeout_seconds=2.0,
        include=["status"],
    )
    assert isinstance(settings, SftpSourceSettings)
    source = SftpSource(settings, max_file_bytes=CAP)
    try:
        [entry] = source.scan()
        assert entry.size == 0 and (folder / "status").read_bytes(), "what the server lists is not what it sends"
        with pytest.raises(DownloadCut, match="more than the 0 bytes it lists for it") as cut:
            source.fetch(entry, tmp_path / "1-status")
        assert str(folder / "status") in str(cut.value)
        assert list(tmp_path.iterdir()) == [], "no partial download left"
    finally:
        source.stop()


def test_a_download_is_refused_before_it_starts_when_listed_above_max_file_bytes(remote_source, tmp_path):
    folder, source = remote_source
    (folder / "big_barcode").write_bytes(barcodes(1) + b"3" * CAP)
    [entry] = source.scan()
    with pytest.raises(DownloadCut, match=r"above max_file_bytes \(1048576\); not downloaded") as refused:
        source.fetch(entry, tmp_path / "1-big_barcode")
    assert "big_barcode" in str(refused.value)
    assert not list(tmp_path.glob("1-big_barcode*"))


def test_a_listing_longer_than_the_cap_is_a_source_problem_not_a_hang(sshd, tmp_path):
    if sshd.process.poll() is not None:
        sshd.start()
    folder = tmp_path / "remote"
    folder.mkdir()
    for number in range(5):
        (folder / f"f{number}_barcode").write_bytes(barcodes(number))
    settings = source_settings(
        name="remote",
        url=sshd.url(folder),
        known_hosts_file=sshd.known_hosts,
        private_key_file=sshd.client_key,
        timeout_seconds=2.0,
    )
    assert isinstance(settings, SftpSourceSettings)
    source = SftpSource(settings, max_listed=3)
    try:
        with pytest.raises(SourceUnavailable, match="lists more than 3 entries in it") as cut:
            source.scan()
        assert str(folder) in str(cut.value)
    finally:
        source.stop()
    whole = SftpSource(settings, max_listed=5)
    try:
        assert len(whole.scan()) == 5, "up to the cap, all is listed"
    finally:
        whole.stop()


class SlowLink:
    """A TCP relay on loopback between the gateway and the real sshd; once slow is set, the server's bytes
    reach the gateway at about 40 KiB/s: a trickle, yet each SSH packet (32 KiB at most) comes within the
    channel's 2 s timeout, so only a deadline on the whole download can end it."""

    CHUNK = 2048
    PAUSE = 0.05

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.slow = threading.Event()
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stopped.is_set():
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port))
                self.sockets += [client, server]
                threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
                threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(self.CHUNK if throttled else 65536):
                if throttled and self.slow.is_set() and self.stopped.wait(self.PAUSE):
                    return
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stopped.set()
        for each in self.sockets:
            with contextlib.suppress(OSError):
                each.close()


@pytest.fixture
def slow(sshd, tmp_path):
    """A source reaching the real sshd through a SlowLink, with one 900 KB file listed (22 s over the trickle):
    (source, its entry, the link: set link.slow to start trickling)."""
    if sshd.process.poll() is not None:
        sshd.start()
    folder = tmp_path / "remote"
    folder.mkdir()
    link = SlowLink(sshd.port)
    kind, key = sshd.host_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{link.port} {kind} {key}\n")
    settings = source_settings(
        name="slow",
        url=f"sftp://{sshd.user}@127.0.0.1:{link.port}{folder}",
        known_hosts_file=known_hosts,
        private_key_file=sshd.client_key,
        timeout_seconds=2.0,
    )
    assert isinstance(settings, SftpSourceSettings)
    source = SftpSource(settings, max_file_bytes=CAP)
    try:
        (folder / "big_barcode").write_bytes(b"".join(barcodes(n) for n in range(20000)))
        [entry] = source.scan()
        yield source, entry, link
    finally:
        source.stop()
        link.close()


def test_a_download_that_trickles_is_cut_at_its_deadline(slow, tmp_path):
    source, entry, link = slow
    deadline = source.settings.timeout_seconds + entry.size / DOWNLOAD_BYTES_PER_SECOND
    link.slow.set()
    work = tmp_path / "work"
    work.mkdir()
    thread, outcome = _fetch_in_thread(source, entry, work / "1-big_barcode")
    # the whole file would take 22 s over this link: the download must end well before, at its deadline
    wait_for(lambda: not thread.is_alive(), timeout=15, message="the download to end")
    [error] = outcome
    assert isinstance(error, DownloadCut) and error.errno == errno.ETIMEDOUT, error
    assert "ran past its deadline" in str(error) and "big_barcode" in str(error)
    assert list(work.iterdir()) == [], "no partial download left"
    assert deadline < 6, "the trickle would take 22 s: the cut came from the deadline"


def test_the_readiness_look_at_a_files_tail_is_cut_at_the_same_deadline(slow):
    source, entry, link = slow
    link.slow.set()
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(_peek(source, entry)), daemon=True)
    thread.start()
    # the tail (up to 1 MiB) would take 22 s over this link: the look must end at its deadline
    wait_for(lambda: not thread.is_alive(), timeout=15, message="the look at the tail to end")
    [error] = outcome
    assert isinstance(error, DownloadCut) and error.errno == errno.ETIMEDOUT, error


def _peek(source: SftpSource, entry) -> object:
    try:
        return source.peek(entry, 1024 * 1024)
    except OSError as error:
        return error
