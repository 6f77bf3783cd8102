"""Shared fixtures: the CaiaSoft simulator on loopback, config files on temp folders, the real daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from gateway.cli import demo
from gateway.config import loader as config_module
from gateway.config.schema import REQUIRED, SCHEMA
from gateway.config.settings import SourceSettings
from gateway.simulators.caiasoft import CaiaSoftSimulator

pytest_plugins = ["unprivileged", "sharedfixtures"]  # the unprivileged user; fixtures several modules use

# Property tests draw the same examples at every run (derandomize), so `make test` gives the same answer twice;
# HYPOTHESIS_PROFILE=explore draws new ones each run, to look for counterexamples on purpose.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

KEY = "test-key-5d1c0e9a7b"
LAW_KEY = "law-key-8c2f61d4e0"  # the second CaiaSoft connection's, [caiasoft.law], in the several-connection tests
REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


def wait_for(
    predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.02, message: str = "condition"
) -> object:
    """Poll predicate until it returns something truthy; return that. Fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def schema_defaults(table: str) -> dict[str, object]:
    """The defaults gateway.config.schema declares for a table's keys (required keys have none)."""
    return {key.name: key.default for key in SCHEMA[table] if key.default is not REQUIRED}


def source_settings(**values: object) -> SourceSettings:
    """Settings of one [[sources]] entry: the schema's defaults, overridden by values."""
    return config_module.source_settings({**schema_defaults("sources"), **values})


def ncip_settings(**values: object) -> config_module.Ncip:
    """[ncip] settings: the schema's defaults, overridden by values."""
    return config_module.ncip_settings({**schema_defaults("ncip"), "feed": None, **values})


def ncip_table(url: str, journal: Path | str | None = None, **more: object) -> str:
    """An [ncip] table for a site's config: the test agencies and user, url, journal, then more keys."""
    lines = ["[ncip]", f'url = "{url}"', 'from_agency = "CAIA"', 'to_agency = "ALEPH"', 'user_id = "CAIASOFT"']
    if journal is not None:
        lines.append(f'journal = "{journal}"')
    lines += [f"{key} = {json.dumps(value)}" for key, value in more.items()]  # a JSON scalar is a TOML one
    return "\n" + "\n".join(lines) + "\n"


@pytest.fixture
def simulator():
    sim = CaiaSoftSimulator(key=KEY, deny={"31234009999990": "Invalid Stop Code"}).start()
    yield sim
    sim.stop()


@pytest.fixture
def law_simulator():
    """The CaiaSoft of the second connection, [caiasoft.law]: it takes LAW_KEY only."""
    sim = CaiaSoftSimulator(key=LAW_KEY).start()
    yield sim
    sim.stop()


class Site:
    """A gateway installation on temp folders: config file, key file, source folder (demo.write_config's)."""

    def __init__(self, root: Path, base_url: str, **options):
        self.root = root
        self.source = root / "aleph" / "print"
        self.key_file = root / "api-key"
        self.state = root / "state"
        self.archive = root / "archive"
        self.error = root / "error"
        self.log_dir = root / "log"
        self.config_file = root / "gateway.toml"
        self.write(base_url, **options)

    def write(
        self,
        base_url: str,
        settle_seconds: float = 0.3,
        timeout_seconds: float = 5,
        extra_caiasoft: str = "",
        extra_source: str = "",
        extra: str = "",
        local_source: bool = True,
    ) -> None:
        demo.write_config(
            self.root,
            base_url,
            KEY,
            settle_seconds,
            self.source,
            extra,
            local_source=local_source,
            caiasoft_extra=f"timeout_seconds = {timeout_seconds}\nbackoff_initial_seconds = 0.05\n"
            f"backoff_max_seconds = 0.5\nauth_pause_seconds = 0.5\n{extra_caiasoft}",
            source_extra=f"rescan_seconds = 1\npoll_seconds = 0.2\n{extra_source}",
        )

    def load(self) -> config_module.Config:
        return config_module.load(self.config_file, environ={})

    def archived(self) -> list[Path]:
        return _files(self.archive)

    def refused(self) -> list[Path]:
        return _files(self.error)

    def sidecar(self, path: Path) -> dict:
        return json.loads(path.with_name(path.name + ".json").read_text())

    def written_files(self) -> list[Path]:
        """Every file the gateway wrote (archive, error, logs, state)."""
        return [
            p
            for folder in (self.archive, self.error, self.log_dir, self.state)
            if folder.exists()
            for p in folder.rglob("*")
            if p.is_file()
        ]


def _files(folder: Path) -> list[Path]:
    return (
        sorted(
            p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".json") and not p.name.startswith(".")
        )
        if folder.exists()
        else []
    )


@pytest.fixture
def site(tmp_path, simulator) -> Site:
    return Site(tmp_path, simulator.url)


class Daemon:
    """The real `caiasoft-gateway run` as a child process."""

    def __init__(
        self,
        config_file: Path,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        clean_env: bool = False,
    ):
        self.config_file = config_file
        self.env = {**({} if clean_env else os.environ), **(env or {})}
        self.command = command or [sys.executable, "-m", "gateway"]  # or an unprivileged user's (unprivileged.py)
        self.process: subprocess.Popen | None = None
        self.console = config_file.with_name(f"console-{time.monotonic_ns()}.txt")

    def start(self) -> Daemon:
        with open(self.console, "wb") as console:
            self.process = subprocess.Popen(
                [*self.command, "-c", str(self.config_file), "run"],
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        return self

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def output(self) -> str:
        """What the daemon printed on its console (stderr and stdout)."""
        return self.console.read_text(errors="replace")


@pytest.fixture
def daemon_factory():
    started: list[Daemon] = []

    def factory(config_file: Path, **kwargs) -> Daemon:
        daemon = Daemon(config_file, **kwargs).start()
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.kill()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on loopback (started once; tests that stop it start it again)."""
    from sshd import Sshd

    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def sftp_site(tmp_path, simulator, sshd):
    """A site whose only source is an SFTP folder served by the real sshd."""
    if sshd.process.poll() is not None:
        sshd.start()
    remote = tmp_path / "remote" / "print"
    remote.mkdir(parents=True)
    made = Site(tmp_path, simulator.url)
    made.remote = remote
    made.sshd = sshd
    made.write_sftp = lambda **options: made.write(
        simulator.url, local_source=False, extra=_sftp_source(sshd, remote, **options)
    )
    made.write_sftp()
    return made


def _sftp_source(
    sshd,
    remote: Path,
    remote_after: str = "delete",
    known_hosts: Path | None = None,
    settle_seconds: float = 0.3,
    keep_original_seconds: float = 0,
    poll_seconds: float = 0.2,
) -> str:
    return f"""
[[sources]]
name = "remote"
url = "{sshd.url(remote)}"
known_hosts_file = "{known_hosts or sshd.known_hosts}"
private_key_file = "{sshd.client_key}"
remote_after = "{remote_after}"
settle_seconds = {settle_seconds}
keep_original_seconds = {keep_original_seconds}
poll_seconds = {poll_seconds}
timeout_seconds = 5
"""
