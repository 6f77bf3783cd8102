"""The source protocol: what the collector needs from a folder of request files."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.sources.writers import Writers

IGNORED_PATTERNS = (".*", "*.tmp", "*.part", "*~")  # never request files: hidden, temporary, backups


@dataclass(frozen=True)
class Entry:
    """One file seen in a source: its name, where it is (path or URL), size and mtime."""

    name: str
    origin: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Taken:
    """What the gateway took of a file whose original stays in the source until its outcome is known."""

    origin: str
    size: int
    mtime: float
    sha256: str | None


@dataclass(frozen=True)
class Released:
    """What release() did with an original: done says it in words; changed_size is set if the original
    changed after it was taken (it is then left where it is, to be taken again whole)."""

    done: str
    changed_size: int | None = None


class Source(Protocol):
    name: str
    location: str  # the folder or URL, for messages
    mode: str  # how changes are noticed: inotify, polling, sftp...
    trust_mtime: bool  # mtime is from our own clock (local disk), so its age means something
    keeps_originals: bool  # fetch() always copies; the original stays until release() (SFTP)

    @property
    def scan_interval(self) -> float:
        """Seconds between full scans (read-only: a source may work it out from its mode)."""

    def start(self, wake: Callable[[], None]) -> None:
        """Begin watching; call wake() whenever something may have changed."""

    def stop(self) -> None:
        """Stop watching. Idempotent."""

    def scan(self) -> list[Entry]:
        """Every wanted file now in the source (no symlinks, folders, hidden or temporary names)."""

    def look(self, names: set[str]) -> list[Entry]:
        """The wanted files among these names that still exist."""

    def hints(self) -> set[str]:
        """Names touched since the last call (from events); empty where there are no events."""

    def writers(self, entry: Entry) -> Writers:
        """Whether a process has the file open for writing: NOBODY, WRITING or UNKNOWN (and why)."""

    def peek(self, entry: Entry, limit: int) -> bytes:
        """The file's last limit bytes (all of it if smaller), without taking it. Raise SourceGone if it vanished."""

    def has_marker(self, entry: Entry) -> bool:
        """Marker mode (ready_marker): True if the file's marker exists."""

    def drop_marker(self, entry: Entry) -> None:
        """Marker mode: remove the file's marker once the file is taken (gone already is fine)."""

    def fetch(self, entry: Entry, destination: Path) -> bool:
        """Move or copy the file to destination, durably; return True if the original stays in the source
        (a copy: a writer may still add to it). Raise SourceGone if it vanished or changed meanwhile."""

    def fetch_many(self, jobs: list[tuple[Entry, Path]]) -> list[bool | Exception]:
        """fetch() for each (entry, destination), in order: for each, what fetch() returned or the
        Exception it raised (one file's failure does not stop the others)."""

    def complete_take(self, origin: str, destination: Path) -> bool:
        """After a crash between putting a file at destination and removing its original: remove the
        original if it is still the very file at destination and nobody writes it. True if removed."""

    def changed(self, taken: Taken) -> int | None:
        """The original's size now if it differs from what was taken; None if unchanged (or gone)."""

    def release(self, taken: Taken) -> Released:
        """Remove (or move) an original whose outcome is known, unless it changed after it was taken."""

    def healthy(self) -> bool:
        """False if the watching machinery has died (e.g. the observer thread)."""


def fetch_each(source: Source, jobs: list[tuple[Entry, Path]]) -> list[bool | Exception]:
    """fetch_many() as one fetch() after the other, for a source that gains nothing by batching."""
    results: list[bool | Exception] = []
    for entry, destination in jobs:
        try:
            results.append(source.fetch(entry, destination))
        except Exception as error:
            results.append(error)
    return results


def wanted(name: str, include: tuple[str, ...]) -> bool:
    """Return True if a file of this name is one to take: matches include, not hidden or temporary."""
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED_PATTERNS):
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in include)
