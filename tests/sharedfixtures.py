"""Fixtures and peers several test modules share (registered in conftest's pytest_plugins, so no test module
imports another's fixtures): the systemd notify socket, a small tmpfs (a disk that fills up), and the NCIP
simulator with a site whose [ncip] table points at it."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gateway.simulators.ncip import NcipSimulator


class NotifySocket:
    """What systemd would receive on $NOTIFY_SOCKET: a datagram socket the test listens on."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.extend((time.monotonic(), line) for line in data.decode().splitlines())

    def lines(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [line for _, line in self.messages if line.startswith(prefix)]

    def since(self, moment: float, prefix: str) -> list[str]:
        with self._lock:
            return [line for at, line in self.messages if at >= moment and line.startswith(prefix)]

    def close(self) -> None:
        self._running = False
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A small tmpfs (256 KiB unless told): a disk that fills up. Root in CI can mount; if mounting fails the
    test fails."""
    mounted: list[Path] = []

    def mount(where: Path, size: str = "256k") -> Path:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs for the disk-full test (run as root): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:  # the disk is full
        pass
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def ncip():
    sim = NcipSimulator(
        problems={"UNKNOWN-1": "Unknown Item", "IN-ALREADY": "Item Not Checked Out"}, validate=True
    ).start()  # every message the relay sends is checked against the XSD
    yield sim
    sim.stop()


@pytest.fixture
def relay_site(site, simulator, ncip):
    site.journal = site.root / "ncip.jsonl"

    def write(
        feed: str = "",
        version: str = "2",
        url: str | None = None,
        extra_ncip: str = "",
        backoff: tuple[float, float] = (0.05, 0.3),
    ) -> None:
        site.write(
            simulator.url,
            extra=f"""
[ncip]
url = "{url or ncip.url}"
version = "{version}"
from_agency = "CAIA"
to_agency = "ALEPH"
application_profile = "CAIAPROFILE"
user_id = "CAIASOFT"
journal = "{site.journal}"
timeout_seconds = 2
backoff_initial_seconds = {backoff[0]}
backoff_max_seconds = {backoff[1]}
{extra_ncip}

[ncip.stop_users]
LAW = "CAIA-LAW"
{feed}
""",
        )

    site.write_ncip = write
    write()
    return site
