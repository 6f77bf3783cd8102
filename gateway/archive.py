"""The folders admins read: ROOT/YYYY/MM/DD/NAME with NAME.json beside it.

Used for both archive_dir (accepted) and error_dir (refused). A name that is
already taken gets a numbered suffix (NAME.1, NAME.2 ... before a short
extension: slip.1.xml); nothing is ever overwritten. Within one filesystem a
file is moved by hard link + unlink; across filesystems it is copied, fsynced,
then linked into place.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import threading
import unicodedata
from pathlib import Path
from typing import Any

from gateway.files import fsync_dir, move_no_clobber
from gateway.logs import redact

SIDECAR_SUFFIX = ".json"
MAX_NAME_BYTES = 200
_DAY = re.compile(r"^\d{4}/\d{2}/\d{2}$")


def safe_name(name: str) -> str:
    """Return a file name that cannot escape its folder or confuse a terminal."""
    name = name.replace("/", "_").replace("\\", "_")
    name = "".join("_" if unicodedata.category(ch)[0] == "C" else ch for ch in name)
    name = name.lstrip(".") or "unnamed"
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_NAME_BYTES:
        name = encoded[:MAX_NAME_BYTES].decode("utf-8", "ignore")
    return name


def numbered(name: str, number: int) -> str:
    """slip.xml -> slip.1.xml; anx.cir.12.paging_am_barcode -> anx.cir.12.paging_am_barcode.1"""
    stem, dot, extension = name.rpartition(".")
    if dot and stem and 1 <= len(extension) <= 5 and extension.isalnum():
        return f"{stem}.{number}.{extension}"
    return f"{name}.{number}"


def day_folder(root: Path, when: dt.datetime) -> Path:
    return root / f"{when:%Y}" / f"{when:%m}" / f"{when:%d}"


class Folder:
    """A dated folder tree (archive_dir or error_dir) that never overwrites."""

    def __init__(self, root: Path):
        self.root = root
        self._lock = threading.Lock()

    def choose(self, name: str, when: dt.datetime) -> Path:
        """Return a free path for name in the day's folder (created if needed)."""
        folder = day_folder(self.root, when)
        folder.mkdir(parents=True, exist_ok=True)
        base = safe_name(name)
        candidate, number = base, 0
        while (folder / candidate).exists() or (folder / (candidate + SIDECAR_SUFFIX)).exists():
            number += 1
            candidate = numbered(base, number)
        return folder / candidate

    def place(self, work: Path, target: Path) -> Path:
        """Move work to target without overwriting anything; return where it went.

        If target is taken meanwhile, the next free numbered name is used. If the
        work file is gone but target exists (a crash after the move), return target.
        A sidecar already written for target does not count as taking it.
        """
        with self._lock:
            if not work.exists() and target.exists():
                return target
            target.parent.mkdir(parents=True, exist_ok=True)
            while True:
                try:
                    move_no_clobber(work, target)
                    break
                except FileExistsError:
                    if not work.exists():
                        return target
                    target = self.choose(target.name, _day_of(target, self.root))
            fsync_dir(target.parent)
            return target

    def write_sidecar(self, target: Path, content: dict[str, Any]) -> Path:
        sidecar = target.with_name(target.name + SIDECAR_SUFFIX)
        partial = sidecar.with_name("." + sidecar.name + ".partial")
        text = redact(json.dumps(content, ensure_ascii=False, indent=2)) + "\n"
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, sidecar)
        fsync_dir(sidecar.parent)
        return sidecar

    def remove_sidecar(self, target: Path) -> None:
        target.with_name(target.name + SIDECAR_SUFFIX).unlink(missing_ok=True)

    def prune(self, retention_days: int, today: dt.date) -> list[Path]:
        """Delete day folders older than retention_days (0 keeps all); return what was removed."""
        if retention_days <= 0 or not self.root.is_dir():
            return []
        oldest_kept = today - dt.timedelta(days=retention_days)
        removed = []
        for day in sorted(self.root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]")):
            relative = day.relative_to(self.root).as_posix()
            if not _DAY.match(relative) or day.is_symlink():
                continue
            try:
                date = dt.date(*map(int, relative.split("/")))
            except ValueError:
                continue
            if date < oldest_kept:
                shutil.rmtree(day)
                removed.append(day)
        for folder in sorted(self.root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]"), reverse=True) + \
                sorted(self.root.glob("[0-9][0-9][0-9][0-9]"), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass
        return removed


def _day_of(target: Path, root: Path) -> dt.datetime:
    try:
        year, month, day = (int(part) for part in target.parent.relative_to(root).parts[:3])
        return dt.datetime(year, month, day)
    except (ValueError, TypeError):
        return dt.datetime.now()
