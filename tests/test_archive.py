"""Archive and error folders: dated layout, names that never clash or escape, retention."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

from gateway.archive.folders import Folder, numbered, safe_name
from gateway.core.files import move_no_clobber

DAY = dt.datetime(2026, 11, 28, 9, 30)


def test_dated_layout(tmp_path):
    folder = Folder(tmp_path)
    assert folder.choose("slip.xml", DAY) == tmp_path / "2026" / "11" / "28" / "slip.xml"


@pytest.mark.parametrize(
    "name,first,second",
    [
        ("slip.xml", "slip.1.xml", "slip.2.xml"),
        (
            "anx.cir.12.paging20261128_am_barcode",
            "anx.cir.12.paging20261128_am_barcode.1",
            "anx.cir.12.paging20261128_am_barcode.2",
        ),
        ("README", "README.1", "README.2"),
    ],
)
def test_numbered_names(name, first, second):
    assert (numbered(name, 1), numbered(name, 2)) == (first, second)


def test_a_name_clash_gets_a_suffix_and_nothing_is_overwritten(tmp_path):
    folder = Folder(tmp_path / "archive")
    placed = []
    for content in (b"first", b"second", b"third"):
        work = tmp_path / f"work-{content.decode()}"
        work.write_bytes(content)
        target = folder.choose("slip.xml", DAY)
        placed.append(folder.put(work, target)[0])
        folder.write_sidecar(placed[-1], {"content": content.decode()})
    assert [p.name for p in placed] == ["slip.xml", "slip.1.xml", "slip.2.xml"]
    assert [p.read_bytes() for p in placed] == [b"first", b"second", b"third"]
    assert (placed[1].parent / "slip.1.xml.json").exists()


def test_put_takes_the_next_name_if_the_chosen_one_was_taken_meanwhile(tmp_path):
    folder = Folder(tmp_path)
    target = folder.choose("slip.xml", DAY)
    target.write_bytes(b"someone else's")
    work = tmp_path / "w"
    work.write_bytes(b"ours")
    placed, in_work = folder.put(work, target)
    assert in_work and placed.name == "slip.1.xml" and placed.read_bytes() == b"ours"
    assert target.read_bytes() == b"someone else's"


def test_put_after_a_crash_that_already_moved_the_file(tmp_path):
    folder = Folder(tmp_path)
    target = folder.choose("slip.xml", DAY)
    target.write_bytes(b"ours")
    assert folder.put(tmp_path / "gone", target) == (target, False), "placed already: nothing left in work/"


@pytest.mark.parametrize("moved_by", [os.link, shutil.copy2], ids=["link", "copy across filesystems"])
def test_put_after_a_crash_between_the_move_and_the_unlink(tmp_path, moved_by):
    """kill -9 after the file reached the archive, before its work name was removed: no second copy."""
    folder = Folder(tmp_path / "archive")
    target = folder.choose("slip.xml", DAY)
    work = tmp_path / "work"
    work.write_bytes(b"ours")
    moved_by(work, target)
    assert folder.put(work, target) == (target, True), "its own copy: only the work name is left to remove"
    assert target.read_bytes() == b"ours"
    assert sorted(p.name for p in target.parent.iterdir()) == ["slip.xml", "slip.xml.json"]


@pytest.mark.parametrize(
    "hostile,expected",
    [
        ("../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
        ("a/b", "a%2Fb"),
        ("slip\x1b[31m.xml", "slip%1B[31m.xml"),
        ("..", "%2E."),
        ("-rf", "%2Drf"),
        ("", "unnamed"),
    ],
)
def test_names_cannot_escape_or_hide(hostile, expected):
    assert safe_name(hostile) == expected


def test_over_long_names_are_shortened_within_the_folder(tmp_path):
    target = Folder(tmp_path).choose("é" * 300, DAY)
    assert len(target.name.encode()) <= 200 and target.parent == tmp_path / "2026" / "11" / "28"


def test_sidecar_write_never_contains_a_registered_secret(tmp_path):
    from gateway.core import logs

    logs.add_secret("sidecar-secret-42")
    folder = Folder(tmp_path)
    target = folder.choose("a", DAY)
    target.write_bytes(b"x")
    sidecar = folder.write_sidecar(target, {"answer": "echo of sidecar-secret-42"})
    assert "sidecar-secret-42" not in sidecar.read_text()


def test_retention_prunes_old_days_only(tmp_path):
    folder = Folder(tmp_path)
    for day in ("2026/11/01", "2026/11/20", "2026/11/28", "2025/12/31"):
        (tmp_path / day).mkdir(parents=True)
        (tmp_path / day / "slip.xml").write_text("x")
    (tmp_path / "notes").mkdir()
    removed = folder.prune(10, dt.date(2026, 11, 28))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == ["2025/12/31", "2026/11/01"]
    assert (tmp_path / "2026/11/20/slip.xml").exists() and (tmp_path / "notes").exists()
    assert not (tmp_path / "2025").exists()
    assert folder.prune(0, dt.date(2030, 1, 1)) == []


def test_move_across_filesystems_copies_then_removes(fs):
    """pyfakefs: a second mount point gives EXDEV, which a real test machine cannot easily produce."""
    fs.create_file("/var/lib/gw/work/00000001.slip.xml", contents=b"<printout/>")
    fs.add_mount_point("/srv/archive")
    fs.create_dir("/srv/archive/2026/11/28")
    move_no_clobber(Path("/var/lib/gw/work/00000001.slip.xml"), Path("/srv/archive/2026/11/28/slip.xml"))
    assert Path("/srv/archive/2026/11/28/slip.xml").read_bytes() == b"<printout/>"
    assert not os.path.exists("/var/lib/gw/work/00000001.slip.xml")
    assert os.listdir("/srv/archive/2026/11/28") == ["slip.xml"]  # no partial left behind


def test_move_across_filesystems_never_overwrites(fs):

    fs.create_file("/state/w", contents=b"new")
    fs.add_mount_point("/archive")
    fs.create_file("/archive/slip.xml", contents=b"old")
    with pytest.raises(FileExistsError):
        move_no_clobber(Path("/state/w"), Path("/archive/slip.xml"))
    assert Path("/archive/slip.xml").read_bytes() == b"old"
    assert Path("/state/w").read_bytes() == b"new"


def test_a_move_is_on_disk_at_its_new_name_before_the_old_name_goes(tmp_path, monkeypatch):
    """Power loss between the two steps leaves the file at both names, never at neither."""
    source, target = tmp_path / "in" / "slip.xml", tmp_path / "work" / "00000001.slip.xml"
    source.parent.mkdir()
    target.parent.mkdir()
    source.write_bytes(b"<printout/>")
    steps: list[str] = []
    real_fsync, real_unlink = os.fsync, os.unlink

    def fsync(fd: int) -> None:
        steps.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    def unlink(path, *args, **kwargs) -> None:
        steps.append(f"unlink {path}")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    move_no_clobber(source, target)
    assert steps == [f"fsync {target.parent}", f"unlink {source}"]
    assert target.read_bytes() == b"<printout/>" and not source.exists()
