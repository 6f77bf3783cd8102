"""Run the real gateway as an unprivileged user, from a root test run (as CI runs).

Faults that hang on permissions (a file the service cannot read, a folder it
cannot write) only show when the service is not root: root reads and writes
everything. This module gives tests:

  * `gateway_install` (session fixture): a virtualenv built with Debian's
    /usr/bin/python3 (world-readable; a pyenv Python under /root is not) in a
    world-readable folder, with this project installed into it non-editable
    (from a copy of the source, so the work tree gets no build files). The
    dependencies are cached per pyproject.toml in /var/tmp; the project itself is
    reinstalled every session.
  * `unprivileged_site` (fixture): a Site (see conftest) in a world-readable temp
    folder whose folders belong to the unprivileged user (nobody).
  * `Unprivileged.command(...)`: argv that runs caiasoft-gateway as that user
    (setpriv), for Daemon(command=...) or subprocess.run.

It fails loudly, never skips, when it cannot do its job (not root, no setpriv,
no venv module): CI runs as root on Debian, and these tests must run there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")
SETPRIV = Path("/usr/bin/setpriv")
CACHE_ROOT = Path("/var/tmp")
USER = "nobody"
INSTALL_HINT = "tools/install-test-deps installs what is missing (python3-venv, util-linux)"


class Unprivileged:
    """An installed gateway and the user to run it as."""

    def __init__(self, venv: Path, user: str = USER):
        entry = pwd.getpwnam(user)
        self.user, self.uid, self.gid = user, entry.pw_uid, entry.pw_gid
        self.venv = venv
        self.executable = venv / "bin" / "caiasoft-gateway"

    def prefix(self) -> list[str]:
        """argv prefix that drops to the user (no supplementary groups, no capabilities)."""
        return [str(SETPRIV), f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--inh-caps=-all", "--"]

    def command(self, *args: str) -> list[str]:
        return [*self.prefix(), str(self.executable), *args]

    def environment(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/"}

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
        )

    def give(self, *paths: Path) -> None:
        """Make these paths (recursively) the user's."""
        for path in paths:
            for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
                os.lchown(item, self.uid, self.gid)


def _require_root_tools() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("these tests run the gateway as an unprivileged user and must start as root (CI does)")
    if not SETPRIV.exists():
        problems.append(f"{SETPRIV} is missing")
    if not SYSTEM_PYTHON.exists():
        problems.append(f"{SYSTEM_PYTHON} is missing")
    else:
        probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import venv, ensurepip"], capture_output=True)
        if probe.returncode != 0:
            problems.append(f"{SYSTEM_PYTHON} has no venv/ensurepip module")
    if problems:
        pytest.fail("; ".join(problems) + f" ({INSTALL_HINT})")


def _copy_source(destination: Path) -> None:
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, destination / name)
    for folder in ("gateway", "samples"):
        shutil.copytree(REPO / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_install() -> Path:
    """The venv, built (or reused) and holding this project as it is now; return its folder."""
    _require_root_tools()
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    home = CACHE_ROOT / f"caiasoft-gateway-test-venv-{key}"
    home.mkdir(mode=0o755, exist_ok=True)
    os.chmod(home, 0o755)
    venv = home / "venv"
    with open(home / ".lock", "w") as lock:  # several test runs on one machine build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
        fresh = not (venv / ".deps-installed").exists()
        if fresh:
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], check=True)
            subprocess.run([*pip, "install", "setuptools>=68", "wheel"], check=True)
        source = Path(tempfile.mkdtemp(prefix="source-", dir=home))
        try:
            _copy_source(source)
            subprocess.run(
                [
                    *pip,
                    "install",
                    "--no-build-isolation",
                    *([] if fresh else ["--no-deps"]),
                    "--force-reinstall",
                    str(source),
                ],
                check=True,
                cwd=source,
            )
        finally:
            shutil.rmtree(source, ignore_errors=True)
        (venv / ".deps-installed").touch()
    for folder, _dirs, files in os.walk(home):  # readable by everyone, whatever the umask was
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444 | (0o111 if os.stat(path).st_mode & 0o100 else 0))
    return venv


@pytest.fixture(scope="session")
def gateway_install() -> Unprivileged:
    return Unprivileged(build_install())


@pytest.fixture
def world_readable_tmp():
    """A temp folder every user can enter (pytest's tmp_path is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="caiasoft-unprivileged-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def unprivileged_site(world_readable_tmp, simulator, gateway_install):
    """A Site whose folders belong to the unprivileged user; run it with gateway_install.command()."""
    from conftest import Site

    made = Site(world_readable_tmp, simulator.url)
    made.key_file.chmod(0o600)
    for folder in (made.state, made.archive, made.error, made.log_dir):
        folder.mkdir(mode=0o750)
    gateway_install.give(world_readable_tmp)
    os.lchown(world_readable_tmp, 0, 0)  # the site root stays root's; what is inside is the user's
    return made
