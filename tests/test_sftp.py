"""SFTP sources against a real OpenSSH sshd, with the real daemon."""

from __future__ import annotations

import collections
import subprocess
import sys
import time

import pytest
from conftest import wait_for

from gateway.core.names import from_bytes, safe_name

pytestmark = pytest.mark.e2e


def barcodes(number: int) -> bytes:
    return "".join(f"3123400{number:04d}{line:03d}\n" for line in range(3)).encode()


def test_files_are_uploaded_once_then_deleted_remotely(sftp_site, simulator, daemon_factory):
    files = {f"paging{n}_barcode": barcodes(n) for n in range(3)}
    for name, data in files.items():
        (sftp_site.remote / name).write_bytes(data)
    daemon = daemon_factory(sftp_site.config_file)
    wait_for(lambda: len(sftp_site.archived()) == 3, timeout=30, message="three files archived")
    wait_for(lambda: list(sftp_site.remote.iterdir()) == [], message="the remote copies to be deleted")
    assert collections.Counter(r.data for r in simulator.received) == collections.Counter(files.values())
    archived = sftp_site.archived()
    assert {p.name: p.read_bytes() for p in archived} == files
    info = sftp_site.sidecar(archived[0])
    assert info["source"] == "remote" and info["original_path"].startswith(str(sftp_site.remote))
    assert "remote.cleaned_up" in (sftp_site.log_dir / "gateway.log").read_text()
    (sftp_site.remote / "later_barcode").write_bytes(barcodes(9))  # taken only after several more polls
    wait_for(lambda: len(sftp_site.archived()) == 4, timeout=30, message="the later file")
    assert [r.name for r in simulator.received][3:] == ["later_barcode"], "nothing was taken again meanwhile"
    assert daemon.stop() == 0


def test_remote_after_move_moves_the_original(sftp_site, simulator, daemon_factory, tmp_path):
    done = tmp_path / "remote" / "done"
    done.mkdir()
    sftp_site.write_sftp(remote_after=f"move:{done}")
    (sftp_site.remote / "a_barcode").write_bytes(barcodes(1))
    (sftp_site.remote / "letter.txt").write_text("not a request\n")  # refused files are moved too
    daemon = daemon_factory(sftp_site.config_file)
    wait_for(
        lambda: sorted(p.name for p in done.iterdir()) == ["a_barcode", "letter.txt"],
        timeout=30,
        message="both originals moved",
    )
    assert list(sftp_site.remote.iterdir()) == []
    assert [p.name for p in sftp_site.refused()] == ["letter.txt"]
    assert daemon.stop() == 0


def test_a_failing_remote_cleanup_is_reported_retried_and_never_uploads_twice(
    sftp_site, simulator, daemon_factory, tmp_path
):
    done = tmp_path / "remote" / "not-there-yet"
    sftp_site.write_sftp(remote_after=f"move:{done}")
    (sftp_site.remote / "a_barcode").write_bytes(barcodes(1))
    daemon = daemon_factory(sftp_site.config_file)
    wait_for(lambda: "remote.cleanup_failed" in daemon.output(), timeout=30, message="the cleanup failure")
    assert len(simulator.received) == 1 and len(sftp_site.archived()) == 1
    done.mkdir()
    wait_for(lambda: (done / "a_barcode").exists(), message="the retried cleanup")
    assert len(simulator.received) == 1, "uploaded once, although it was listed again and again"
    assert daemon.stop() == 0


def test_a_file_still_being_written_remotely_is_not_taken_early(sftp_site, simulator, daemon_factory):
    sftp_site.write_sftp(settle_seconds=1.0)
    daemon = daemon_factory(sftp_site.config_file)
    wait_for(lambda: "sftp.connected" in daemon.output(), message="the first connection")
    data = b"".join(barcodes(n) for n in range(6))
    path = sftp_site.remote / "slow_barcode"
    for start in range(0, len(data), 40):
        with open(path, "ab") as handle:
            handle.write(data[start : start + 40])
        time.sleep(0.3)  # the remote writer's pace: several polls, but less than settle_seconds
    [received] = simulator.wait_for(1, timeout=20)
    assert received.data == data
    assert daemon.stop() == 0


@pytest.mark.parametrize("case", ["changed", "unknown"])
def test_a_wrong_or_unknown_host_key_is_refused_and_nothing_is_fetched(
    case, sftp_site, simulator, daemon_factory, tmp_path
):
    known_hosts = tmp_path / "known_hosts"
    if case == "changed":
        other = tmp_path / "other_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        known_hosts.write_text(sftp_site.sshd.known_hosts_line(other.with_suffix(".pub")))
    else:
        known_hosts.write_text("")
    sftp_site.write_sftp(known_hosts=known_hosts)
    (sftp_site.remote / "a_barcode").write_bytes(barcodes(1))
    daemon = daemon_factory(sftp_site.config_file)
    expected = "does not match" if case == "changed" else "is not in"
    wait_for(lambda: expected in daemon.output(), message="the host key refusal")
    assert (sftp_site.remote / "a_barcode").exists() and simulator.received == []
    assert list((sftp_site.state / "work").iterdir()) == []
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(sftp_site.config_file), "check", "--offline"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and expected in result.stdout
    assert daemon.stop() == 0


def test_the_server_goes_away_and_comes_back_and_the_source_recovers_alone(sftp_site, simulator, daemon_factory):
    sftp_site.write_sftp(poll_seconds=2)  # the default: between listings the collector looks again each second
    (sftp_site.remote / "first_barcode").write_bytes(barcodes(1))
    daemon = daemon_factory(sftp_site.config_file)
    wait_for(lambda: len(sftp_site.archived()) == 1, timeout=30, message="the first file")
    sftp_site.sshd.stop()
    (sftp_site.remote / "second_barcode").write_bytes(barcodes(2))
    wait_for(lambda: "sftp.connect_failed" in daemon.output(), timeout=30, message="the lost server noticed")
    wait_for(
        lambda: (
            "source remote: sftp, cannot list"
            in subprocess.run(
                [sys.executable, "-m", "gateway", "-c", str(sftp_site.config_file), "status"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        ),
        interval=0.5,
        message="status to show the problem",
    )
    wait_for(lambda: daemon.output().count("sftp.connect_failed") >= 2, timeout=30, message="a second try")
    # One backoff for one failure: the source's reconnect backoff, not the collector paused on top of it
    assert "worker.paused" not in daemon.output()
    sftp_site.sshd.start()
    wait_for(lambda: len(sftp_site.archived()) == 2, timeout=60, message="the second file after reconnecting")
    assert "sftp.reconnected" in daemon.output()
    assert daemon.stop() == 0


def test_hostile_remote_names_stay_inside_the_spool_and_the_archive(sftp_site, simulator, daemon_factory):
    hostile = [
        "tab\there_barcode",
        "esc\x1b[31mred_barcode",
        "new\nline_barcode",
        "x" * 240 + "_barcode",
        from_bytes(b"caf\xe9_barcode"),
    ]
    for number, name in enumerate(hostile):
        (sftp_site.remote / name).write_bytes(barcodes(number))
    daemon = daemon_factory(sftp_site.config_file)
    wait_for(lambda: len(sftp_site.archived()) == len(hostile), timeout=30, message="all hostile names archived")
    for path in sftp_site.archived():
        assert path.parent.parent.parent.parent == sftp_site.archive
        assert all(ord(ch) >= 32 for ch in path.name) and len(path.name.encode()) <= 200
    # CaiaSoft gets each file under its safe name: no control characters in the multipart header
    assert sorted(r.name for r in simulator.received) == sorted(safe_name(n) for n in hostile)
    wait_for(lambda: list(sftp_site.remote.iterdir()) == [], message="the remote copies to be deleted")
    assert daemon.stop() == 0


def test_check_connects_verifies_and_lists(sftp_site):
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(sftp_site.config_file), "check", "--offline"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    assert "host key verified, logged in as" in result.stdout
    assert str(sftp_site.remote) in result.stdout
    # open writers cannot be seen over SFTP: said, with what to do, as a warning (not a failure)
    assert ": open writers\n        cannot be detected: SFTP: a writer on the server cannot be seen" in result.stdout
    assert "settle_seconds (now 0.3" in result.stdout and "ready_marker" in result.stdout


def test_an_original_kept_after_the_take_is_shown_in_status_and_never_taken_twice(sftp_site, simulator, daemon_factory):
    sftp_site.write_sftp(keep_original_seconds=3600)
    (sftp_site.remote / "a_barcode").write_bytes(barcodes(1))
    daemon = daemon_factory(sftp_site.config_file)
    wait_for(lambda: sftp_site.archived(), message="a_barcode archived")
    shown = wait_for(lambda: "originals kept: 1" in _status(sftp_site), timeout=20, message="status to count it")
    assert shown and (sftp_site.remote / "a_barcode").exists()
    assert len(simulator.received) == 1
    assert daemon.stop() == 0


def _status(site) -> str:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
