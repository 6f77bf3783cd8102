"""A local or mounted folder: inotify events (watchdog) plus full rescans, or polling alone.

Events only hint that a name changed; readiness is always decided by looking at
the file. Rescans catch whatever events missed (inotify queue overflow, files
that were there before the start). On network filesystems there are no events
for changes made by other hosts, so watch = "auto" polls there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from pathlib import Path
from typing import Callable

from watchdog.events import (FileClosedEvent, FileCreatedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers.inotify import InotifyObserver

from gateway import intake, logs, markers, readiness
from gateway.errors import SourceGone
from gateway.files import copy_no_clobber, fsync_dir, place_no_clobber, undo_place
from gateway.settings import LocalSourceSettings
from gateway.sources.base import Entry, Released, Taken

NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p", "afs", "ceph",
    "glusterfs", "fuse.glusterfs", "davfs", "fuse.davfs2", "lustre", "gpfs", "ocfs2", "gfs2",
})
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
    """A folder on this host (local disk or a mount)."""

    keeps_originals = False  # fetch() moves the file out, or copies it where a writer may be unseen

    def __init__(self, settings: LocalSourceSettings):
        self.settings = settings
        self.name = settings.name
        self.folder = settings.path
        self.location = str(settings.path)
        self.mode = choose_mode(settings)
        self.filesystem = filesystem_type(settings.path)
        self.trust_mtime = self.filesystem not in NETWORK_FILESYSTEMS
        self.marker = markers.Marker(settings.ready_marker) if settings.ready_marker else None
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
        observer.schedule(_Hints(self.folder, self._notice), str(self.folder), recursive=False,
                          event_filter=[FileCreatedEvent, FileClosedEvent, FileMovedEvent])
        try:
            observer.start()
        except OSError as error:
            log.warning("source.inotify_unavailable", source=self.name, folder=str(self.folder),
                        error=str(error), fallback="polling")
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
        if not stat.S_ISREG(info.st_mode) or not intake.wanted(name, self.settings.include):
            return None
        if self.marker and self.marker.is_marker(name):
            return None  # markers are never taken themselves
        return Entry(name=name, origin=str(self.folder / name), size=info.st_size, mtime=info.st_mtime)

    def scan(self) -> list[Entry]:
        entries = []
        with os.scandir(self.folder) as found:
            for item in found:
                if not intake.wanted(item.name, self.settings.include):
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
        for name in names:
            try:
                entry = self._entry(name, os.lstat(self.folder / name))
            except (FileNotFoundError, NotADirectoryError):
                continue
            if entry:
                entries.append(entry)
        return entries

    def changed(self, taken: Taken) -> int | None:
        try:
            info = os.lstat(taken.origin)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return info.st_size if (info.st_size, info.st_mtime) != (taken.size, taken.mtime) else None

    def release(self, taken: Taken) -> Released:
        """Delete an original that was copied (not moved) when taken, if it is still exactly what was taken."""
        try:
            fd = os.open(taken.origin, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return Released("already gone")
        except OSError as error:
            if error.errno == errno.ELOOP:
                return Released("left alone: it was replaced by a link")
            raise
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            same = (info.st_size, info.st_mtime) == (taken.size, taken.mtime) and \
                intake.digest_of(handle) == taken.sha256
            after = os.fstat(handle.fileno())
            if not same or (after.st_size, after.st_mtime) != (info.st_size, info.st_mtime):
                return Released("left in place: it changed after it was taken", after.st_size)
            try:
                named = os.lstat(taken.origin)
            except FileNotFoundError:
                return Released("already gone")
            if (named.st_dev, named.st_ino) != (info.st_dev, info.st_ino):
                return Released("left alone: another file of that name is there now")
            os.unlink(taken.origin)
        return Released("deleted (it was copied when taken)")

    def writers(self, entry: Entry) -> readiness.Writers:
        if not self.trust_mtime:
            return readiness.Writers(readiness.UNKNOWN,
                                     f"a writer on another host is invisible here ({self.filesystem})")
        return readiness.open_writers(Path(entry.origin))

    def peek(self, entry: Entry, limit: int) -> bytes:
        try:
            fd = os.open(entry.origin, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise SourceGone(f"{entry.origin} disappeared") from None
        with os.fdopen(fd, "rb") as handle:
            handle.seek(max(os.fstat(handle.fileno()).st_size - limit, 0))
            return handle.read(limit)

    def has_marker(self, entry: Entry) -> bool:
        if self.marker is None:
            return False
        try:
            return stat.S_ISREG(os.lstat(self.folder / self.marker.of(entry.name)).st_mode)
        except OSError:
            return False

    def drop_marker(self, entry: Entry) -> None:
        if self.marker is not None:
            (self.folder / self.marker.of(entry.name)).unlink(missing_ok=True)

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
        """fetch() for each file, with one sync of the destination folder for all of them.

        Each file is linked at its destination first; then the folder is synced once;
        only then are the originals removed (a crash or power loss leaves each file at
        one name or both, never at neither) and each checked for a writer that opened
        it in the instant before (it is put back).
        """
        results: list[bool | Exception] = []
        moved: dict[int, bool] = {}  # index of a file put at its destination -> its original is still there
        for entry, destination in jobs:
            try:
                kept, still_there = self._place(entry, destination)
            except Exception as error:
                results.append(error)
                continue
            if not kept:
                moved[len(results)] = still_there
            results.append(kept)
        for folder in {jobs[index][1].parent for index in moved}:
            try:
                fsync_dir(folder)
            except OSError as error:  # not taken: the original is still the file (if it was linked)
                for index in [index for index in moved if jobs[index][1].parent == folder]:
                    results[index] = error
                    if moved.pop(index):
                        with contextlib.suppress(OSError):
                            os.unlink(jobs[index][1])
        for index, still_there in moved.items():
            try:
                self._finish_move(*jobs[index], still_there)
            except Exception as error:
                results[index] = error
        return results

    def complete_take(self, origin: str, destination: Path) -> bool:
        """A take cut short after the link into work/: the original is removed if it is the same file
        (the same inode: nothing new was written under its name) and nobody has it open for writing."""
        try:
            there, taken = os.lstat(origin), os.lstat(destination)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(there.st_mode) or (there.st_dev, there.st_ino) != (taken.st_dev, taken.st_ino) \
                or readiness.open_writers(destination).state != readiness.NOBODY:
            return False  # released once its outcome is known, if unchanged, like any original kept
        fsync_dir(destination.parent)
        os.unlink(origin)
        if readiness.open_writers(destination).state == readiness.WRITING:  # opened in the instant before
            with contextlib.suppress(FileExistsError):  # a new file under its name: that one is the writer's
                os.link(destination, origin)
            return False  # the original stays, checked again before upload and released like any kept
        return True

    def _place(self, entry: Entry, destination: Path) -> tuple[bool, bool]:
        """Put the file at destination: (True, False) copied, the original stays in the source;
        (False, True) linked, the original to be removed once the folder is synced; (False, False)
        renamed there (a filesystem without hard links)."""
        origin = Path(entry.origin)
        try:
            info = os.lstat(origin)
        except FileNotFoundError:
            raise SourceGone(f"{origin} disappeared before it could be taken") from None
        if not stat.S_ISREG(info.st_mode):
            raise SourceGone(f"{origin} is no longer a regular file")
        if (info.st_size, info.st_mtime) != (entry.size, entry.mtime):
            raise SourceGone(f"{origin} changed since it settled; it is taken once it settles again")
        writers = self.writers(entry)
        if writers.state == readiness.WRITING:
            raise SourceGone(f"{origin} was opened for writing again; it is taken once it settles again")
        if writers.state == readiness.UNKNOWN:
            self._copy(origin, destination, entry)
            return True, False
        try:
            return False, place_no_clobber(origin, destination)  # a link; a synced copy across filesystems
        except FileNotFoundError:
            raise SourceGone(f"{origin} disappeared before it could be taken") from None

    def _finish_move(self, entry: Entry, destination: Path, still_there: bool) -> None:
        """After the folder sync: remove the original, and check what was taken is the file, unwritten."""
        origin = Path(entry.origin)
        if still_there:
            try:
                os.unlink(origin)
            except FileNotFoundError:  # removed meanwhile: taken all the same
                pass
            except OSError:  # a read-only source: the original stays the file, and work/ keeps no copy of it
                undo_place(origin, destination)
                raise
        moved = os.lstat(destination)
        if not stat.S_ISREG(moved.st_mode):  # swapped for a symlink in between: never follow it
            os.unlink(destination)
            raise SourceGone(f"{origin} was replaced by a link while being taken; not followed")
        if readiness.open_writers(destination).state == readiness.WRITING:
            self._put_back(destination, origin)  # opened for writing in the instant before the move

    def _copy(self, origin: Path, destination: Path, entry: Entry) -> None:
        try:
            copy_no_clobber(origin, destination)
        except FileNotFoundError:
            raise SourceGone(f"{origin} disappeared before it could be taken") from None
        try:
            after = os.lstat(origin)
        except FileNotFoundError:
            after = None
        if after is None or (after.st_size, after.st_mtime) != (entry.size, entry.mtime) \
                or os.stat(destination).st_size != entry.size:
            os.unlink(destination)
            raise SourceGone(f"{origin} changed while it was copied; it is taken once it settles again")

    def _put_back(self, destination: Path, origin: Path) -> None:
        try:
            os.link(destination, origin)
        except OSError as error:
            log.warning("file.opened_while_taken", source=self.name, file=origin.name,
                        detail=f"it could not be put back ({error.strerror or error}); taken as it is")
            return
        os.unlink(destination)
        raise SourceGone(f"{origin} was opened for writing as it was taken; put back, taken once it settles")
