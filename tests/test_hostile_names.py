"""Names that are not UTF-8 or hold control characters, through the real daemon, sshd and simulator."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import unicodedata

import paramiko
import pytest
from conftest import wait_for

from gateway.core.names import from_bytes, safe_name, to_bytes, unprintable
from gateway.sources.base import Taken
from gateway.sources.sftp import SftpSource
from gateway.state.ledger import Ledger

HIDDEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}

# Each as the bytes a directory listing gives. The first two clash once made safe.
LOCAL_NAMES = [
    b"caf\xe9_barcode",  # Latin-1, from an ALEPH host without UTF-8
    b"caf%E9_barcode",  # the same, once made safe
    b"esc\x1b]0;owned\x07\x1b[2J_barcode",  # sets the terminal title, clears the screen
    b"new\nline_barcode",
    b"-rf_barcode",  # an option to whatever reads the archive
    b"\xe9" * 247 + b"_barcode",  # 255 bytes, none of them UTF-8
    b"plain_barcode",
]
REFUSED_NAME = b"\x1b[31mletter\xe9.xml"  # refused (not XML): shown in status' recent errors


def barcodes(number: int) -> bytes:
    return "".join(f"3123400{number:04d}{line:03d}\n" for line in range(3)).encode()


def shows_nothing_raw(text: str) -> bool:
    text.encode("utf-8")  # strict: no lone surrogates
    return not any(unicodedata.category(char) in HIDDEN for char in text)


def gateway(site, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), *arguments], capture_output=True, timeout=60
    )


@pytest.mark.e2e
def test_any_local_name_is_taken_archived_safely_uploaded_safely_and_shown_escaped(site, simulator, daemon_factory):
    originals = {raw: barcodes(number) for number, raw in enumerate(LOCAL_NAMES)}
    for raw, data in originals.items():
        (site.source / from_bytes(raw)).write_bytes(data)
    (site.source / from_bytes(REFUSED_NAME)).write_bytes(b"Dear reader,\n")
    daemon = daemon_factory(site.config_file)

    wait_for(
        lambda: len(site.archived()) == len(originals) and len(site.refused()) == 1,
        timeout=30,
        message="every file archived or refused",
    )
    assert daemon.process.poll() is None, daemon.output()
    assert os.listdir(bytes(site.source)) == []

    # archived under printable names that stay in their folder; the sidecar gives back the exact bytes
    by_original = {}
    for path in site.archived() + site.refused():
        assert shows_nothing_raw(path.name) and path.name[0] not in ".-" and len(path.name.encode()) <= 200
        info = site.sidecar(path)
        raw = to_bytes(unprintable(info["original_name"]))
        assert to_bytes(unprintable(info["original_path"])) == bytes(site.source) + b"/" + raw
        by_original[raw] = path
    assert set(by_original) == set(originals) | {REFUSED_NAME}
    for raw, data in originals.items():
        assert by_original[raw].read_bytes() == data
    assert by_original[b"caf\xe9_barcode"] != by_original[b"caf%E9_barcode"]  # the clash got a number

    # CaiaSoft got each file once, under its safe name
    received = {(r.name, r.data) for r in simulator.received}
    assert received == {(safe_name(from_bytes(raw)), data) for raw, data in originals.items()}
    assert len(simulator.received) == len(originals)

    # the ledger keeps the names byte for byte (a row is closed just after its file is in place)
    def closed_names() -> set[bytes]:
        ledger = Ledger(site.state / "gateway.db")
        try:
            return {to_bytes(row.name) for row in ledger.files.in_state("archived", "refused")}
        finally:
            ledger.close()

    wait_for(lambda: closed_names() == set(originals) | {REFUSED_NAME}, message="every ledger row closed")
    assert daemon.stop() == 0

    # the log and the console: strict UTF-8, one JSON object a line, nothing raw for a terminal
    log = (site.log_dir / "gateway.log").read_bytes()
    assert b"\x1b" not in log and b"\x07" not in log
    events = [json.loads(line) for line in log.decode("utf-8").splitlines()]
    claimed = [event["file"] for event in events if event["event"] == "file.claimed"]
    assert sorted(to_bytes(unprintable(name)) for name in claimed) == sorted([*originals, REFUSED_NAME])
    assert b"\x1b" not in daemon.console.read_bytes()

    # status, as text and as JSON
    text = gateway(site, "status")
    assert text.returncode == 0 and b"\x1b" not in text.stdout
    assert "\\x1b[31mletter\\xe9.xml: refused by the gateway" in text.stdout.decode("utf-8")
    report = json.loads(gateway(site, "status", "--json").stdout.decode("utf-8"))
    assert report["recent_errors"][0]["file"] == "\\x1b[31mletter\\xe9.xml"


@pytest.mark.e2e
def test_send_and_retry_take_a_hostile_name_and_print_it_escaped(site, simulator, tmp_path):
    letter = tmp_path / from_bytes(b"letter\x1b[2J\xe9.txt")
    letter.write_bytes(b"not a request file\n")
    sent = gateway(site, "send", str(letter))
    assert sent.returncode == 1 and b"\x1b" not in sent.stdout
    assert b"letter\\x1b[2J\\xe9.txt: refused: CaiaSoft refused the file" in sent.stdout
    assert [r.name for r in simulator.received] == ["letter%1B[2J%E9.txt"]
    # retry finds it by the name it had (raw bytes on the command line), though error_dir holds its safe name
    retried = gateway(site, "retry", from_bytes(b"letter\x1b[2J\xe9.txt"))
    assert retried.returncode == 0 and b"\x1b" not in retried.stdout
    assert retried.stdout.startswith(b"letter%1B[2J%E9.txt: ")
    assert len(simulator.received) == 1  # only the queue: the service is not running


@pytest.mark.e2e
def test_sftp_lists_fetches_and_moves_names_that_are_not_utf8(sftp_site, simulator, daemon_factory, tmp_path):
    done = tmp_path / "remote" / "done"
    done.mkdir()
    sftp_site.write_sftp(remote_after=f"move:{done}")
    names = [b"caf\xe9_barcode", b"\xff\xfe_barcode", b"esc\x1b[2J_barcode", b"plain_barcode"]
    originals = {raw: barcodes(number) for number, raw in enumerate(names)}
    for raw, data in originals.items():
        (sftp_site.remote / from_bytes(raw)).write_bytes(data)

    checked = gateway(sftp_site, "check", "--offline")  # lists the folder too
    assert checked.returncode == 0, checked.stdout
    assert b"4 entries" in checked.stdout

    daemon = daemon_factory(sftp_site.config_file)
    wait_for(
        lambda: sorted(os.listdir(bytes(done))) == sorted(names),
        timeout=30,
        message="every original moved under its own bytes",
    )
    assert os.listdir(bytes(sftp_site.remote)) == []
    assert {r.data for r in simulator.received} == set(originals.values()) and len(simulator.received) == 4
    assert {r.name for r in simulator.received} == {safe_name(from_bytes(raw)) for raw in names}
    for path in sftp_site.archived():
        assert shows_nothing_raw(path.name)
        raw = to_bytes(unprintable(sftp_site.sidecar(path)["original_name"]))
        assert path.read_bytes() == originals[raw]
    assert "sftp.connect_failed" not in daemon.output() and "source.problem" not in daemon.output()
    assert daemon.stop() == 0


class _ServerThatLosesItsFiles:
    """An SFTP session (the calls SftpSource.release makes) whose remove says "no such file" while stat finds it."""

    def remove(self, path: bytes) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file")

    def stat(self, path: bytes) -> paramiko.SFTPAttributes:
        return paramiko.SFTPAttributes()

    def open(self, path: bytes, mode: str) -> _EmptyRemoteFile:
        return _EmptyRemoteFile()


class _EmptyRemoteFile(io.BytesIO):
    """What the session's open() gives: an empty file (the one release compares with what was taken)."""

    def prefetch(self, size: int | None = None) -> None:
        pass


class _Source(SftpSource):
    def _connection(self):
        return _ServerThatLosesItsFiles()


def test_release_in_delete_mode_reports_a_failed_remove_instead_of_crashing(sftp_site):
    settings = sftp_site.load().sources[0]
    assert settings.remote_after == "delete"
    with pytest.raises(FileNotFoundError):  # an OSError the collector reports and retries, not a NameError
        _Source(settings).release(
            Taken(
                origin=from_bytes(b"/print/caf\xe9_barcode"), size=0, mtime=0.0, sha256=hashlib.sha256(b"").hexdigest()
            )
        )
