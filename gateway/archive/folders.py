"""The folders admins read: ROOT/YYYY/MM/DD/NAME with NAME.json beside it.

Used for both archive_dir (accepted) and error_dir (refused). NAME is the
original name made safe (names.safe_name: printable, percent-encoded where it
must be); the sidecar keeps the original. A name that is
already taken gets a numbered suffix (NAME.1, NAME.2 ... before a short
extension: slip.1.xml); nothing is ever overwritten. Within one filesystem a
file is moved by hard link + unlink; across filesystems it is copied, fsynced,
then linked into place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import filecmp
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

from gateway.core.files import partial_path, place_no_clobber
from gateway.core.logs import redact
from gateway.core.names import MAX_NAME_BYTES, safe_name

__all__ = ["Folder", "MAX_NAME_BYTES", "SIDECAR_SUFFIX", "day_folder", "numbered", "safe_name"]

SIDECAR_SUFFIX = ".json"
_DAY = re.compile(r"^\d{4}/\d{2}/\d{2}$")


def numbered(name: str, number: int) -> str:
    """slip.xml -> slip.1.xml; anx.cir.12.paging_am_barcode -> anx.cir.12.paging_am_barcode.1"""
    stem, dot, extension = name.rpartition(".")
    if dot and stem and 1 <= len(extension) <= 5 and extension.isalnum():
        return f"{stem}.{number}.{extension}"
    return f"{name}.{number}"


def day_folder(root: Path, when: dt.datetime) -> Path:
    return root / f"{when:%Y}" / f"{when:%m}" / f"{when:%d}"


def day_date(parts: tuple[str, ...]) -> dt.date | None:
    """The day of a day folder's path parts below its root (YYYY, MM, DD), or None if they are not one."""
    if not _DAY.match("/".join(parts)):
        return None
    try:
        return dt.date(*map(int, parts))
    except ValueError:
        return None


class Folder:
    """A dated folder tree (archive_dir or error_dir) that never overwrites."""

    def __init__(self, root: Path):
        self.root = root

    def choose(self, name: str, when: dt.datetime) -> Path:
        """Reserve a free path for name in the day's folder and return it.

        The reservation is the sidecar NAME.json, created exclusively (O_EXCL), so
        two workers or processes can never pick the same name. write_sidecar()
        later replaces it with the real content.
        """
        folder = day_folder(self.root, when)
        folder.mkdir(parents=True, exist_ok=True)
        base = safe_name(name)
        candidate, number = base, 0
        while True:
            if not (folder / candidate).exists():
                try:
                    os.close(
                        os.open(folder / (candidate + SIDECAR_SUFFIX), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
                    )
                    return folder / candidate
                except FileExistsError:
                    pass
            number += 1
            candidate = numbered(base, number)

    def release_stale_reservations(self, name: str, when: dt.datetime, kept: set[str]) -> int:
        """At start, before an answered file whose place was never recorded is placed: remove the
        reservations (empty sidecars, see choose) a crash left for it in the day's folder, so it gets
        its own name, not NAME.1 beside an empty NAME.json. Only an empty sidecar with no file beside it
        and not the recorded place (kept) of another row goes. Return how many were removed."""
        folder = day_folder(self.root, when)
        base = safe_name(name)
        candidate, number, removed = base, 0, 0
        while True:
            sidecar = folder / (candidate + SIDECAR_SUFFIX)
            try:
                info = os.lstat(sidecar)
            except FileNotFoundError:
                if not os.path.lexists(folder / candidate):
                    return removed  # where choose() stops: no name beyond it was reserved
            else:
                if (
                    stat.S_ISREG(info.st_mode)
                    and info.st_size == 0
                    and not os.path.lexists(folder / candidate)
                    and str(folder / candidate) not in kept
                ):
                    sidecar.unlink()
                    removed += 1
            number += 1
            candidate = numbered(base, number)

    def put(self, work: Path, target: Path) -> tuple[Path, bool]:
        """Work's file at target (reserved by choose), or at the next free name if target was taken meanwhile,
        never overwriting anything; return where, and whether the work name is still there (a link or a copy:
        the caller removes it once the folder is synced, archive.placing). If the work file is gone but target
        exists (a crash after the move), or target is already work's own copy (a crash before the work name
        was removed), it is target."""
        if not work.exists() and target.exists():
            return target, False
        target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                return target, place_no_clobber(work, target)
            except FileExistsError:
                if not work.exists():
                    return target, False
                own = self._own_copy(work, target)  # linked or copied there, the work name not yet removed
                if own is not None:
                    return own, True
                target = self.choose(target.name, _day_of(target, self.root))

    def _own_copy(self, work: Path, target: Path) -> Path | None:
        """Where a crash left work's own copy: at target, or linked at one of the numbered names after it (the
        name was taken, the file went to the next free one, and the crash came before the row was closed).
        A numbered name counts only as the same file (a link): a copy with the same bytes may be another's."""
        if _moved_before_a_crash(work, target):
            return target
        base, number = target.name, 1
        candidate = target.with_name(numbered(base, number))
        while os.path.lexists(candidate) or os.path.lexists(candidate.with_name(candidate.name + SIDECAR_SUFFIX)):
            with contextlib.suppress(OSError):
                if os.path.samefile(work, candidate):
                    return candidate
            number += 1
            candidate = target.with_name(numbered(base, number))
        return None

    def write_sidecar(self, target: Path, content: dict[str, Any]) -> Path:
        sidecar = target.with_name(target.name + SIDECAR_SUFFIX)
        partial = partial_path(sidecar)
        text = redact(json.dumps(content, ensure_ascii=False, indent=2)) + "\n"
        # backslashreplace: a lone surrogate anywhere in the content is written as its JSON escape \udcXX
        with open(partial, "w", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, sidecar)
        return sidecar

    def remove_sidecar(self, target: Path) -> None:
        target.with_name(target.name + SIDECAR_SUFFIX).unlink(missing_ok=True)

    def prune(self, retention_days: int, today: dt.date) -> list[Path]:
        """Delete day folders older than retention_days (0 keeps all); return what was removed.

        today is taken as given: gateway/archive/retention.py decides which day it is, not trusting the clock alone.
        """
        removed = self.old_days(retention_days, today)
        for day in removed:
            self.remove_day(day)
        return removed

    def old_days(self, retention_days: int, today: dt.date) -> list[Path]:
        """The day folders older than retention_days on this day (none if retention_days is 0), oldest first."""
        if retention_days <= 0 or not self.root.is_dir():
            return []
        oldest_kept = today - dt.timedelta(days=retention_days)
        old = []
        for day in sorted(self.root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]")):
            date = day_date(day.relative_to(self.root).parts)
            if date is not None and not day.is_symlink() and date < oldest_kept:
                old.append(day)
        return old

    def remove_day(self, day: Path) -> None:
        """Delete one day folder (from old_days), then the month and year folders it leaves empty."""
        shutil.rmtree(day)
        for folder in (day.parent, day.parent.parent):  # its month, then its year, if now empty
            with contextlib.suppress(OSError):
                folder.rmdir()


def _moved_before_a_crash(work: Path, target: Path) -> bool:
    """Whether target is work's own move, cut short by a crash before work was removed."""
    if os.path.samefile(work, target):
        return True
    return (
        target.stat().st_size == work.stat().st_size
        and not target.is_symlink()
        and filecmp.cmp(work, target, shallow=False)
    )


def _day_of(target: Path, root: Path) -> dt.datetime:
    try:
        year, month, day = (int(part) for part in target.parent.relative_to(root).parts[:3])
        return dt.datetime(year, month, day)
    except (ValueError, TypeError):
        return dt.datetime.now()
