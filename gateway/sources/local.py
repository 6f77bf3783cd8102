"""A local or mounted folder: inotify events (watchdog) plus full rescans, or polling alone.

Events only hint that a name changed; readiness is always decided by looking at
the file. Rescans catch whatever events missed (inotify queue overflow, files
that were there before the start). On network filesystems there are no events
for changes made by other hosts, so watch = "auto" polls there.

The folder is held open (gateway.sources.folder) and every file is looked up,
opened and removed relative to it; taking a file into work/ is
gateway.sources.taking.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileClosedEvent, FileCreatedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

from gateway.config import markers
from gateway.config.settings import LocalSourceSettings
from gateway.core import logs
from gateway.core.errors import SourceGone
from gateway.core.files import digest_of
from gateway.sources import writers
from gateway.sources.base import Entry, Released, Taken, wanted
from gateway.sources.folder import HeldFolder, identity, open_entry
from gateway.sources.taking import Taker

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "fuse.sshfs",
        "sshfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "davfs",
        "fuse.davfs2",
        "lustre",
        "gpfs",
        "ocfs2",
        "gfs2",
    }
)
MOUNTINFO = Path("/proc/self/mountinfo")
OBSERVER_POLL_SECONDS = 0.2  # how soon the observer thread notices stop()

log = logs.get("gateway.sources.local")


def filesystem_type(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """Return the filesystem type the path lives on (from mountinfo), or None if unknown."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, right_fields = left.split(), right.split()
        if len(fields) < 5 or not right_fields:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right_fields[0]
    return best_type


def choose_mode(settings: LocalSourceSettings) -> str:
    """inotify or polling, as configured; for auto, polling on network filesystems."""
    if settings.watch != "auto":
        return settings.watch
    return "polling" if filesystem_type(settings.path) in NETWORK_FILESYSTEMS else "inotify"


class _Hints(FileSystemEventHandler):
    def __init__(self, folder: Path, notice: Callable[[str], None]):
        self.folder = str(folder)
        self.notice = notice

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
        path = os.fsdecode(path)
        if os.path.dirname(path) == self.folder:
            self.notice(os.path.basename(path))


class LocalSource:
    """A folder on this host (local disk or a mount), held open by a directory fd (gateway.sources.folder)."""

    keeps_originals = False  # fetch() moves the file out, or copies it where a writer may be unseen

    def __init__(
        self,
        settings: LocalSourceSettings,
        max_file_bytes: int | None = None,
        trees: tuple[Path, ...] = (),
        holders: tuple[Path, ...] = (),
    ):
        self.settings = settings
        self.name = settings.name
        self.folder = settings.path
        self.location = str(settings.path)
        self.mode = choose_mode(settings)
        self.filesystem = filesystem_type(settings.path)
        self.trust_mtime = self.filesystem not in NETWORK_FILESYSTEMS
        self.marker = markers.Marker(settings.ready_marker) if settings.ready_marker else None
        self.max_file_bytes = max_file_bytes
        self.held = HeldFolder(settings.path, trees, holders)
        self.taker = Taker(settings.name, self.held, self.trust_mtime, max_file_bytes)
        self._observer: InotifyObserver | None = None
        self._watching = False  # an observer was started (and so must be alive until stop)
        self._hints: set[str] = set()
        self._lock = threading.Lock()
        self._wake: Callable[[], None] = lambda: None

    @property
    def scan_interval(self) -> float:
        return self.settings.rescan_seconds if self.mode == "inotify" else self.settings.poll_seconds

    def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        if self.mode != "inotify":
            return
        observer = InotifyObserver(timeout=OBSERVER_POLL_SECONDS)
        observer.schedule(
            _Hints(self.folder, self._notice),
            str(self.folder),
            recursive=False,
            event_filter=[FileCreatedEvent, FileClosedEvent, FileMovedEvent],
        )
        try:
            observer.start()
        except OSError as error:
            log.warning(
                "source.inotify_unavailable",
                source=self.name,
                folder=str(self.folder),
                error=str(error),
                fallback="polling",
            )
            self.mode = "polling"
            return
        observer.name = f"inotify-{self.name}"
        self._observer = observer
        self._watching = True

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def healthy(self) -> bool:
        """False once a started inotify observer has died (or was stopped)."""
        return not self._watching or (self._observer is not None and self._observer.is_alive())

    def _notice(self, name: str) -> None:
        marked = self.marker.marks(name) if self.marker else None
        name = marked or name  # a marker appearing means its file may now be ready
        with self._lock:
            self._hints.add(name)
        self._wake()

    def hints(self) -> set[str]:
        with self._lock:
            names, self._hints = self._hints, set()
        return names

    def _entry(self, name: str, info: os.stat_result) -> Entry | None:
        if not stat.S_ISREG(info.st_mode) or not wanted(name, self.settings.include):
            return None
        if self.marker and self.marker.is_marker(name):
            return None  # markers are never taken themselves
        return Entry(name=name, origin=str(self.folder / name), size=info.st_size, mtime=info.st_mtime)

    def scan(self) -> list[Entry]:
        entries = []
        with os.scandir(self.held.fd()) as found:
            for item in found:
                if not wanted(item.name, self.settings.include):
                    continue
                try:
                    entry = self._entry(item.name, item.stat(follow_symlinks=False))
                except FileNotFoundError:
                    continue
                if entry:
                    entries.append(entry)
        return entries

    def look(self, names: set[str]) -> list[Entry]:
        entries = []
        folder = self.held.fd()
        for name in names:
            if not _plain(name):
                continue
            try:
                entry = self._entry(name, os.stat(name, dir_fd=folder, follow_symlinks=False))
            except (FileNotFoundError, NotADirectoryError):
                continue
            if entry:
                entries.append(entry)
        return entries

    def _name_of(self, origin: str) -> str | None:
        """The name in this folder of an original recorded by its path; None if it is not one of this folder's."""
        path = Path(origin)
        return path.name if path.parent == self.folder and _plain(path.name) else None

    def changed(self, taken: Taken) -> int | None:
        name = self._name_of(taken.origin)
        if name is None:
            return None
        try:
            info = os.stat(name, dir_fd=self.held.fd(), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None  # not the original rewritten: something else has its name (release() leaves it alone)
        return info.st_size if (info.st_size, info.st_mtime) != (taken.size, taken.mtime) else None

    def release(self, taken: Taken) -> Released:
        """Delete an original that was copied (not moved) when taken, if it is still exactly what was taken."""
        name = self._name_of(taken.origin)
        if name is None:
            return Released("left alone: it is not in this source's folder")
        folder = self.held.fd()
        try:
            fd, info = open_entry(folder, name)
        except (FileNotFoundError, NotADirectoryError):
            return Released("already gone")
        except OSError as error:
            if error.errno == errno.ELOOP:
                return Released("left alone: it was replaced by a link")
            raise
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(info.st_mode):
                return Released("left alone: it was replaced by something that is not a regular file")
            same = (info.st_size, info.st_mtime) == (taken.size, taken.mtime) and digest_of(handle) == taken.sha256
            after = os.fstat(handle.fileno())
            if not same or (after.st_size, after.st_mtime) != (info.st_size, info.st_mtime):
                return Released("left in place: it changed after it was taken", after.st_size)
            try:
                named = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                return Released("already gone")
            if identity(named) != identity(info):
                return Released("left alone: another file of that name is there now")
            os.unlink(name, dir_fd=folder)
        return Released("deleted (it was copied when taken)")

    def writers(self, entry: Entry) -> writers.Writers:
        if not self.trust_mtime:
            return writers.Writers(writers.UNKNOWN, f"a writer on another host is invisible here ({self.filesystem})")
        try:
            fd, _info = open_entry(self.held.fd(), entry.name)
        except OSError as error:  # the folder paused (FolderReplaced) is reported by the next look
            return writers.Writers(writers.UNKNOWN, f"cannot open it: {error.strerror or error}", file_problem=True)
        try:
            return writers.lease_writers(fd)
        finally:
            os.close(fd)

    def peek(self, entry: Entry, limit: int) -> bytes:
        try:
            fd, info = open_entry(self.held.fd(), entry.name)
        except (FileNotFoundError, NotADirectoryError):
            raise SourceGone(f"{entry.origin} disappeared") from None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(info.st_mode):
                raise SourceGone(f"{entry.origin} is no longer a regular file")
            return os.pread(handle.fileno(), limit, max(info.st_size - limit, 0))

    def has_marker(self, entry: Entry) -> bool:
        if self.marker is None:
            return False
        try:
            info = os.stat(self.marker.of(entry.name), dir_fd=self.held.fd(), follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode)

    def drop_marker(self, entry: Entry) -> None:
        if self.marker is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.marker.of(entry.name), dir_fd=self.held.fd())

    def fetch(self, entry: Entry, destination: Path) -> bool:
        """Take the file into destination: moved where nobody can be writing it, else copied (True).

        Where open writers cannot be seen (no CAP_LEASE, a network mount) the original
        stays until its outcome is known, so a writer that was only pausing finishes
        it in place and it is taken again whole (see release()).
        """
        [result] = self.fetch_many([(entry, destination)])
        if isinstance(result, Exception):
            raise result
        return result

    def fetch_many(self, jobs: list[tuple[Entry, Path]]) -> list[bool | Exception]:
        """fetch() for each file, with one sync of work/ for all of them (gateway.sources.taking)."""
        return self.taker.fetch_many(jobs)

    def complete_take(self, origin: str, destination: Path) -> bool:
        """A take cut short after the link into work/: the original is removed if it is the same file
        (the same inode: nothing new was written under its name) and nobody has it open for writing."""
        name = self._name_of(origin)
        return name is not None and self.taker.complete_take(name, destination)


def _plain(name: str) -> bool:
    """A name that can only be an entry of the folder itself."""
    return bool(name) and "/" not in name and "\x00" not in name and name not in (".", "..")
