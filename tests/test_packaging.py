"""Packaging: the sdist builds, the wheel built from it installs into a fresh venv, and the installed
command runs. (The install itself, from a wheelhouse, is tests/test_install_docs.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import KEY, REPO

from gateway import __version__


def run(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    result = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def test_the_wheel_built_from_the_sdist_installs_into_a_fresh_venv_and_runs(tmp_path):
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, REPO)  # sdist first, then the wheel from the sdist
    [sdist] = dist.glob("*.tar.gz")
    [wheel] = dist.glob("*.whl")
    assert sdist.name == f"aleph_caiasoft_gateway-{__version__}.tar.gz"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"aleph_caiasoft_gateway-{__version__}.dist-info/METADATA").decode()
    assert {"gateway/ncip/ncip_v2_02.xsd", "gateway/samples/hold-request-slip-0001.xml"} <= names
    modules = {str(path.relative_to(REPO)) for path in (REPO / "gateway").rglob("*.py")}
    assert modules - names == set(), "a package of the tree is missing from pyproject.toml's packages"
    assert "License-Expression: MIT" in metadata and f"\nVersion: {__version__}\n" in metadata
    requirements = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: xmlschema")]
    assert requirements and all("extra ==" in line for line in requirements), "xmlschema is only an extra"

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", wheel)
    command = venv / "bin" / "caiasoft-gateway"
    assert run(command, "--version").stdout.strip() == f"caiasoft-gateway {__version__}"
    assert (
        "None"
        in run(
            venv / "bin" / "python", "-c", "import importlib.util; print(importlib.util.find_spec('xmlschema'))"
        ).stdout
    )

    key = tmp_path / "api-key"
    key.write_text(KEY + "\n")
    key.chmod(0o600)
    folder = tmp_path / "print"
    folder.mkdir()
    config = tmp_path / "gateway.toml"
    config.write_text(
        (REPO / "conf" / "gateway.toml")
        .read_text()
        .replace("/etc/caiasoft-gateway/api-key", str(key))
        .replace("/exlibris/aleph/u23_1/usm50/print/caiasoft", str(folder))
        .replace("/var/lib/caiasoft-gateway", str(tmp_path / "state"))
        .replace("/var/log/caiasoft-gateway", str(tmp_path / "log"))
    )
    check = run(command, "-c", config, "check", "--offline")
    assert "all checks passed" in check.stdout
