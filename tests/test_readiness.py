"""Readiness signals: open writers (read leases), content cut off at its end, marker names."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import SAMPLES
from unprivileged import Unprivileged

from gateway.config.markers import Marker, marker_problem
from gateway.intake.readiness import cut_off
from gateway.sources import writers
from gateway.sources.writers import NOBODY, UNKNOWN, WRITING, open_writers

SLIP = (SAMPLES / "hold-request-slip-0001.xml").read_bytes()


def test_a_file_open_for_writing_is_detected_by_its_owner(tmp_path):
    path = tmp_path / "slip.xml"
    with open(path, "wb") as writer:
        writer.write(b"<printout/>")
        assert open_writers(path).state == WRITING
    assert open_writers(path).state == NOBODY


def _run_as_nobody(install: Unprivileged, code: str, path: Path, *caps: str) -> str:
    """Run Python code (given path as argv[1]) as the unprivileged user, with the gateway installed for
    every user (the work tree may sit in a folder only root can enter); return what it printed."""
    python = install.venv / "bin" / "python"
    result = subprocess.run(
        [
            "setpriv",
            f"--reuid={install.uid}",
            f"--regid={install.gid}",
            "--clear-groups",
            *caps,
            str(python),
            "-c",
            code,
            str(path),
        ],
        capture_output=True,
        text=True,
        cwd="/",
        env=install.environment(),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _as_nobody(install: Unprivileged, path: Path, *caps: str) -> str:
    """Run the open-writer check on path as an unprivileged user (optionally with capabilities); its state."""
    return _run_as_nobody(
        install,
        "import sys; from pathlib import Path; "
        "from gateway.sources.writers import open_writers, has_cap_lease; "
        "answer = open_writers(Path(sys.argv[1])); "
        "print(answer.state, has_cap_lease(), answer.reason)",
        path,
        *caps,
    )


@pytest.fixture
def foreign_file():
    """A root-owned file in a folder every user can reach (pytest's own tmp folders are private)."""
    assert os.geteuid() == 0, "these tests switch users with setpriv: run them as root (CI does)"
    folder = Path(tempfile.mkdtemp(prefix="readiness-"))
    folder.chmod(0o755)
    path = folder / "slip.xml"
    path.write_bytes(SLIP)
    path.chmod(0o644)
    yield path
    shutil.rmtree(folder)


def test_without_cap_lease_another_users_writer_is_unknown_never_nobody(foreign_file, gateway_install):
    with open(foreign_file, "ab"):
        assert _as_nobody(gateway_install, foreign_file, "--inh-caps=-all").startswith(f"{UNKNOWN} False ")
    answer = _as_nobody(gateway_install, foreign_file, "--inh-caps=-all")
    assert answer.startswith(UNKNOWN) and "CAP_LEASE" in answer, "closed, but still not knowable without the capability"


def test_with_cap_lease_another_users_writer_is_detected(foreign_file, gateway_install):
    caps = ("--inh-caps=+lease", "--ambient-caps=+lease")
    with open(foreign_file, "ab"):
        assert _as_nobody(gateway_install, foreign_file, *caps) == f"{WRITING} True"
    assert _as_nobody(gateway_install, foreign_file, *caps) == f"{NOBODY} True"


def test_has_cap_lease_reads_the_effective_set(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000010000000\n")
    assert writers.has_cap_lease(status)
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    assert not writers.has_cap_lease(status)
    assert not writers.has_cap_lease(tmp_path / "missing")


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "empty"),
        (b"  \n", "blank"),
        (SLIP[: len(SLIP) // 2], "XML stops"),
        (SLIP.rstrip()[:-1], "XML stops"),  # "</printout" : an unclosed token on the last line
        (b'## - XML_XSL\n<?xml version="1.0"?>\n<printout><form-name>x', "XML stops"),
        (SLIP + b"## - XML_XSL\n", "routing line"),  # a batch file whose next record has not come yet
        (SLIP + SLIP[: len(SLIP) // 3], "XML stops"),  # ... or is half there
        (b"31234001234567\n3123400", "no newline"),
    ],
)
def test_content_that_stops_mid_way_is_named(data, why):
    reason = cut_off(data)
    assert reason is not None and why in reason


@pytest.mark.parametrize(
    "data",
    [
        SLIP,
        SLIP.rstrip(),  # XML need not end with a newline
        SLIP + SLIP,  # two whole records
        b"31234001234567\n31234001234568\n",
        b"<printout><a></b></printout>",  # broken before its end: refused, not waited for
        b'<!DOCTYPE x [<!ENTITY e "e">]><printout>',  # refused for its DTD, whatever its end
        b"%PDF-1.4\x00\x00binary",  # binary: refused at once
    ],
)
def test_content_whose_end_is_complete_or_whose_fault_is_elsewhere(data):
    assert cut_off(data) is None


def test_only_the_end_of_a_large_file_is_judged():
    """A window of the file's last bytes: the last record is judged whole when the window holds its start."""
    batch = SLIP * 400
    assert cut_off(batch[-5000:], whole=False) is None
    reason = cut_off((batch + SLIP[:300])[-5000:], whole=False)
    assert reason is not None and "XML stops" in reason
    big_document = b"<printout>" + b"<line>x</line>\n" * 1000 + b"</printout>\n"
    assert cut_off(big_document[-2000:], whole=False) is None
    assert "no newline" in cut_off(big_document[-2000:-20], whole=False)
    assert cut_off(b"3123400123\n" * 1000, whole=False) is None
    assert cut_off(b"3123400123\n" * 1000 + b"31", whole=False) is not None


def test_marker_names():
    marker = Marker("{name}.done")
    assert marker.of("slip.xml") == "slip.xml.done"
    assert marker.is_marker("slip.xml.done") and not marker.is_marker("slip.xml")
    assert marker.marks("slip.xml.done") == "slip.xml" and marker.marks("done") is None
    prefixed = Marker("ready-{name}")
    assert prefixed.of("a_barcode") == "ready-a_barcode" and prefixed.marks("ready-a_barcode") == "a_barcode"


@pytest.mark.parametrize(
    "pattern, problem",
    [
        ("{name}.done", None),
        ("done.{name}", None),
        ("{name}", "differ"),
        ("done", "exactly once"),
        ("{name}.{name}", "exactly once"),
        ("../{name}.done", "no /"),
    ],
)
def test_marker_settings(pattern, problem):
    found = marker_problem(pattern)
    assert (found is None) if problem is None else (problem in found)


def _detection_as_nobody(install: Unprivileged, folder: Path, *caps: str) -> str:
    return _run_as_nobody(
        install,
        "import sys; from pathlib import Path; from gateway.sources.writers import "
        "writer_detection; print(*writer_detection(Path(sys.argv[1]), False, 'ext4', 2.0))",
        folder,
        *caps,
    )


def test_check_says_whether_writers_can_be_detected_and_what_to_do_if_not(foreign_file, gateway_install):
    without = _detection_as_nobody(gateway_install, foreign_file.parent, "--inh-caps=-all")
    assert without.startswith("False") and "uid 0" in without and "CAP_LEASE" in without
    assert "settle_seconds (now 2" in without and "ready_marker" in without
    with_lease = _detection_as_nobody(
        gateway_install, foreign_file.parent, "--inh-caps=+lease", "--ambient-caps=+lease"
    )
    assert with_lease.startswith("True open writers are detected")


def test_check_says_writers_on_network_filesystems_cannot_be_seen(tmp_path):
    detectable, why = writers.writer_detection(tmp_path, True, "nfs4", 2.0)
    assert not detectable and "nfs4" in why and "another host" in why and "settle_seconds" in why
