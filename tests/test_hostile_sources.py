"""ALEPH's user owns the source folder and its parent: what it does there cannot make the gateway send what it
must not, or stop taking files.

The real daemon runs as an unprivileged service user in ALEPH's group (nobody here, with and without
CAP_LEASE); ALEPH's user (daemon here) owns the print folder and its parent and acts with its own rights only:
  * the folder swapped for a symlink (to the gateway's config folder, or to today's archive folder) pauses
    the source with the reason in `status`, STATUS= and the log; nothing of the target is read;
  * a second hard link to a file, rewritten after the take, changes nothing that is sent or archived: the
    bytes sent are the bytes validated, and the archived file is the gateway's own;
  * a FIFO swapped in for a ready file, again and again, never blocks the collector.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pwd
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import KEY, wait_for
from sharedfixtures import NotifySocket
from unprivileged import SETPRIV
from writers import barcode_list

pytestmark = pytest.mark.e2e

ALEPH_USER = "daemon"  # stands in for ALEPH's OS user: not the service user, not root
CAP_LEASE = ["--inh-caps=+lease", "--ambient-caps=+lease"]


class Aleph:
    """ALEPH's user: owns the print folder and its parent; acts through setpriv with its own rights only."""

    def __init__(self, site):
        entry = pwd.getpwnam(ALEPH_USER)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        for folder in (site.source.parent, site.source):
            os.chown(folder, self.uid, self.gid)
            os.chmod(folder, 0o2775)  # the service user writes there through ALEPH's group, as on ALEPH hosts

    def run(self, *argv: str) -> None:
        subprocess.run(
            [
                str(SETPRIV),
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--",
                *argv,
            ],
            check=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin"},
        )

    def write(self, path: Path, data: bytes) -> None:
        """A file as ALEPH's job leaves it: ALEPH's, group-writable."""
        path.write_bytes(data)
        os.chown(path, self.uid, self.gid)
        os.chmod(path, 0o664)


@pytest.fixture
def aleph_site(unprivileged_site):
    unprivileged_site.aleph = Aleph(unprivileged_site)
    return unprivileged_site


def start(site, gateway_install, daemon_factory, cap_lease: bool, env: dict[str, str] | None = None):
    """The daemon as the service user, in ALEPH's group; with CAP_LEASE as the shipped unit grants it."""
    prefix = [part if part != "--clear-groups" else f"--groups={site.aleph.gid}" for part in gateway_install.prefix()]
    if cap_lease:
        prefix = [part for part in prefix if part != "--inh-caps=-all"]
        prefix[-1:-1] = CAP_LEASE
    daemon = daemon_factory(
        site.config_file,
        command=[*prefix, str(gateway_install.executable)],
        env={**gateway_install.environment(), **(env or {})},
        clean_env=True,
    )
    wait_for(
        lambda: any(e["event"] == "service.started" for e in events(site)),
        timeout=30,
        message="the unprivileged daemon to start",
    )
    return daemon


def events(site) -> list[dict]:
    log = site.log_dir / "gateway.log"
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")] if log.exists() else []


def source_state(site, gateway_install) -> dict:
    """`status --json`'s view of the source, as the service user runs it."""
    result = gateway_install.run("-c", str(site.config_file), "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["service"]["sources"]["print"]


def sent_was_validated(site, simulator) -> None:
    """Every upload CaiaSoft received is a file the gateway validated: its archived or refused copy holds those
    bytes, its sidecar their size and sha256; and each placed file is the gateway's own."""
    placed = {hashlib.sha256(path.read_bytes()).hexdigest(): path for path in site.archived() + site.refused()}
    for upload in simulator.received:
        digest = hashlib.sha256(upload.data).hexdigest()
        assert digest in placed, f"{upload.name}: {len(upload.data)} bytes sent that no placed file holds"
        info = site.sidecar(placed[digest])
        assert (info["size"], info["sha256"]) == (len(upload.data), digest), "the sidecar describes other bytes"
    for path in placed.values():
        info = path.stat()
        assert info.st_uid == pwd.getpwnam("nobody").pw_uid, f"{path}: not the gateway's own file"
        assert not info.st_mode & 0o022, f"{path}: another user can change it"
        wait_for(
            lambda path=path: path.stat().st_nlink == 1,  # its name in state_dir/work/ goes once it is placed
            message=f"{path} the only name of its file",
        )


# -- case 1: the folder swapped for a symlink ---------------------------------------------------------


@pytest.mark.parametrize("target", ["config-folder", "archive-day-folder"])
def test_a_folder_swapped_for_a_symlink_pauses_the_source_and_nothing_of_the_target_is_read(
    target, aleph_site, gateway_install, simulator, daemon_factory, world_readable_tmp
):
    site = aleph_site
    site.key_file.chmod(0o640)  # as the README allows
    notify = NotifySocket(world_readable_tmp / "notify.sock")
    os.chmod(notify.path, 0o777)
    try:
        daemon = start(
            site,
            gateway_install,
            daemon_factory,
            cap_lease=False,
            env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"},
        )
        site.aleph.write(site.source / "first_barcode", barcode_list(1))
        wait_for(lambda: len(site.archived()) == 1, timeout=30, message="the first file archived")
        aimed = site.root if target == "config-folder" else site.archived()[0].parent
        real = site.source.with_name("print.real")
        site.aleph.run("mv", str(site.source), str(real))
        site.aleph.run("ln", "-s", str(aimed), str(site.source))
        state = wait_for(
            lambda: "replaced by a symlink" in ((s := source_state(site, gateway_install))["problem"] or "") and s,
            timeout=20,
            message="the source paused in status",
        )  # (between mv and ln: "is gone")
        assert "paused" in state["problem"] and str(aimed) in state["problem"]
        logged = [e for e in events(site) if e["event"] == "source.problem"]
        assert logged and logged[-1]["problem"] == state["problem"]
        wait_for(
            lambda: any("source problem: print" in line for line in notify.lines("STATUS=")),
            message="STATUS= naming the paused source",
        )
        paused_at = time.monotonic()
        wait_for(
            lambda: len(notify.since(paused_at, "WATCHDOG=1")) >= 4,
            timeout=20,
            message="a few more seconds of looks at the swapped folder",
        )  # rescan_seconds = 1, a ping a second
        assert [upload.name for upload in simulator.received] == ["first_barcode"], "only ALEPH's file was sent"
        assert not any(KEY.encode() in upload.data for upload in simulator.received)
        assert len(site.archived()) == 1 and site.refused() == []
        assert site.key_file.exists() and site.config_file.exists(), "nothing of the target was taken"
        site.aleph.run("rm", str(site.source))
        site.aleph.run("mv", str(real), str(site.source))
        site.aleph.write(site.source / "second_barcode", barcode_list(2))
        wait_for(lambda: len(site.archived()) == 2, timeout=30, message="the source resumed by itself")
        wait_for(lambda: source_state(site, gateway_install)["problem"] is None, message="status: ok again")
        assert any(e["event"] == "source.recovered" for e in events(site))
        assert daemon.stop() == 0
    finally:
        notify.close()


# -- case 2: a second hard link rewritten after the take --------------------------------------------------


@pytest.mark.parametrize("cap_lease", [True, False], ids=["with-CAP_LEASE", "without-CAP_LEASE"])
def test_a_second_link_rewritten_after_the_take_changes_nothing_sent_or_archived(
    cap_lease, aleph_site, gateway_install, simulator, daemon_factory
):
    site = aleph_site
    site.write(simulator.url, extra_source="keep_original_seconds = 0\n")
    original = barcode_list(3, lines=2)
    name = site.source / "linked_barcode"
    other_name = site.source.parent / "kept-by-aleph"
    site.aleph.write(name, original)
    os.link(name, other_name)  # ALEPH's user keeps a second name for the same file
    simulator.queue_faults("503", "503")
    daemon = start(site, gateway_install, daemon_factory, cap_lease)
    wait_for(
        lambda: any(e["event"] == "upload.retry" for e in events(site)),
        timeout=30,
        message="the first upload answered 503",
    )
    rewritten = b"\x00\xff" * 575 + b"\n"  # 1,151 bytes that were never validated (and would not pass)
    with open(other_name, "r+b") as handle:
        handle.write(rewritten)
    if cap_lease:  # nobody was writing it when taken: its original was removed, what was taken is sent
        wait_for(lambda: site.archived(), timeout=30, message="the file archived after the 503s")
        [archived] = site.archived()
        assert archived.read_bytes() == original and site.refused() == []
        assert [upload.data for upload in simulator.received if upload.answered == 200] == [original]
        assert os.stat(archived).st_ino != os.stat(other_name).st_ino, "the archive is ALEPH's inode"
    else:  # the original stayed (a writer could not be seen): its change is caught, the new bytes validated
        wait_for(lambda: len(site.refused()) == 2, timeout=30, message="both versions refused")
        reasons = sorted(site.sidecar(path)["reason"] for path in site.refused())
        assert "changed after it was taken" in reasons[0] and "not sent" in reasons[0]
        assert "binary" in reasons[1]
        assert site.archived() == []
    assert not any(upload.data == rewritten for upload in simulator.received), "unvalidated bytes sent"
    sent_was_validated(site, simulator)
    placed = {path: path.read_bytes() for path in site.archived() + site.refused()}
    with open(other_name, "r+b") as handle:  # later changes by ALEPH's user reach nothing the gateway placed
        handle.write(b"changed later\n")
    assert {path: path.read_bytes() for path in placed} == placed
    assert daemon.stop() == 0


# -- case 3: a FIFO exchanged for a ready file ---------------------------------------------------------------

RENAME_EXCHANGE = 2
SWAPPING_SECONDS = 5.0
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): each is always there, as one file or the other."""
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), str(a))


def test_a_fifo_exchanged_for_a_ready_file_never_blocks_the_collector(
    aleph_site, gateway_install, simulator, daemon_factory
):
    site = aleph_site
    site.write(simulator.url, extra_source="incomplete_grace_seconds = 0\nkeep_original_seconds = 0\n")
    daemon = start(site, gateway_install, daemon_factory, cap_lease=False)
    ready = site.source / "ready_barcode"
    fifo = site.source / ".swap"  # a hidden name: never taken itself
    site.aleph.write(ready, barcode_list(4))
    os.utime(ready, (1_000_000_000, 1_000_000_000))  # settled long ago: ready at first sight
    os.mkfifo(fifo)
    os.chown(fifo, site.aleph.uid, site.aleph.gid)
    swaps = [0]

    def swap() -> None:  # what ALEPH's user does, as fast as it can, for a while
        until = time.monotonic() + SWAPPING_SECONDS
        while time.monotonic() < until:
            try:
                exchange(ready, fifo)
                exchange(ready, fifo)
            except FileNotFoundError:  # taken, sent and its original removed: nothing left to swap
                return
            swaps[0] += 1

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    swapper.join(SWAPPING_SECONDS + 10)
    assert swaps[0] > 1000, "the FIFO was swapped in again and again"
    site.aleph.write(site.source / "after_barcode", barcode_list(5))
    expected = {"ready_barcode": barcode_list(4), "after_barcode": barcode_list(5)}
    wait_for(
        lambda: {site.sidecar(path)["original_name"] for path in site.archived()} == set(expected),
        timeout=30,
        message="both files archived: the collector never blocked",
    )
    for path in site.archived():
        assert path.read_bytes() == expected[site.sidecar(path)["original_name"]]
    sent_was_validated(site, simulator)
    wait_for(lambda: source_state(site, gateway_install)["problem"] is None, message="status: ok")
    assert daemon.stop() == 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
