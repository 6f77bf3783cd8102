"""A local source folder held open: a directory fd, not a path read again at each look.

ALEPH's user owns the print folder (and usually its parent), so it can swap the
folder for a symlink or for another directory at any moment. The gateway opens
the folder once, without following a symlink, and does every lookup, open and
removal relative to that fd. On every look the configured path must still name
the very folder that was opened (same device and inode); if it does not, the
source pauses (FolderReplaced, shown in `status`, STATUS=, the log and an alert)
and nothing is read through the new path. A folder that is, or lies inside, one
of the gateway's own folders (state, archive, error, log), or that holds its
config or a key file, is never read, whatever path led there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import weakref
from pathlib import Path

from gateway.config.settings import Settings, SftpSourceSettings
from gateway.core.errors import SourceUnavailable

Identity = tuple[int, int]  # (st_dev, st_ino)

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ENTRY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_DEPTH = 256  # ancestors walked up from a source folder (a loop of bind mounts ends here)


class FolderReplaced(SourceUnavailable):
    """The source's path no longer names the folder that was opened, or names one the gateway must not read."""


def own_folders(settings: Settings) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """The gateway's own folders: (trees no source may be in or be: state, archive, error, log; folders no source
    may be: those holding the config file, a key or password file, the journal)."""
    trees = (settings.paths.state_dir, settings.paths.archive_dir, settings.paths.error_dir, settings.paths.log_dir)
    files: list[Path | None] = [settings.file, settings.caiasoft.api_key_file, settings.caiasoft.ca_file]
    if settings.alerts is not None:
        files.append(settings.alerts.password_file)
    if settings.ncip is not None:
        files.append(settings.ncip.journal)
    for source in settings.sources:
        if isinstance(source, SftpSourceSettings):
            files += [
                source.known_hosts_file,
                source.private_key_file,
                source.private_key_passphrase_file,
                source.password_file,
            ]
    holders = tuple(dict.fromkeys(Path(os.path.abspath(file)).parent for file in files if file is not None))
    return trees, holders


def open_entry(folder_fd: int, name: str) -> tuple[int, os.stat_result]:
    """Open a file in the folder for reading, never following a link and never blocking (a FIFO or a device
    opens at once); return (fd, its fstat). The caller checks the type and closes the fd."""
    fd = os.open(name, ENTRY_FLAGS, dir_fd=folder_fd)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def identity(info: os.stat_result) -> Identity:
    return info.st_dev, info.st_ino


class HeldFolder:
    """The source folder, opened once (lazily: it may not exist yet) and checked on every use."""

    def __init__(self, path: Path, trees: tuple[Path, ...] = (), holders: tuple[Path, ...] = ()):
        self.path = path
        self.trees = trees
        self.holders = holders
        self._fd: int | None = None
        self._identity: Identity | None = None
        self._closer: weakref.finalize[[int], HeldFolder] | None = None
        self._lock = threading.Lock()

    def fd(self) -> int:
        """The folder's fd, after checking that the path still names it. Raise FolderReplaced (the source
        pauses) if it was replaced or is one of the gateway's own folders; OSError if it cannot be opened."""
        with self._lock:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            self._check()
            return self._fd

    def close(self) -> None:
        """Close the folder now (for a one-off check); a source keeps it until it is dropped."""
        with self._lock:
            self._fd = None
            if self._closer is not None:
                self._closer()

    def _open(self) -> None:
        try:
            fd = os.open(self.path, FOLDER_FLAGS)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(self.path):
                raise FolderReplaced(
                    f"{self.path} is a symlink (to {os.path.realpath(self.path)}): a source "
                    "folder is never followed through a link; paused. Configure the real "
                    "folder as path"
                ) from None
            if error.errno == errno.ENOTDIR:
                raise FolderReplaced(f"{self.path} is not a folder; paused until it is") from None
            raise
        try:
            problem = self._own_folder_problem(fd)
        except BaseException:
            os.close(fd)
            raise
        if problem:
            os.close(fd)
            raise FolderReplaced(problem)
        self._fd, self._identity = fd, identity(os.fstat(fd))
        self._closer = weakref.finalize(self, os.close, fd)  # closed with the source: no thread uses a stale fd

    def _check(self) -> None:
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            raise FolderReplaced(
                f"{self.path} is gone (moved or removed); paused, nothing is read until the "
                "folder that was opened is back at its path"
            ) from None
        if stat.S_ISLNK(now.st_mode):
            raise FolderReplaced(
                f"{self.path} was replaced by a symlink (to {os.path.realpath(self.path)}); "
                "paused: nothing is read through it until the folder is back"
            )
        if identity(now) != self._identity:
            what = "folder" if stat.S_ISDIR(now.st_mode) else "file"
            raise FolderReplaced(
                f"{self.path} was replaced by another {what}; paused: nothing is read from it "
                "until the folder that was opened is back "
                "(reload or restart the service to take files from the new one)"
            )

    def _own_folder_problem(self, fd: int) -> str | None:
        """Why this opened folder must never be read (it is, or is inside, a folder of the gateway's), or None."""
        trees = _identities(self.trees)
        holders = _identities(self.holders)
        here = identity(os.fstat(fd))
        if here in holders:
            return f"{self.path} is the folder of the gateway's {holders[here]}: never read as a source; paused"
        current = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        try:
            for _ in range(MAX_DEPTH):
                found = identity(os.fstat(current))
                if found in trees:
                    return (
                        f"{self.path} is {'' if found == here else 'inside '}the gateway's own folder "
                        f"{trees[found]}: never read as a source; paused"
                    )
                parent = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=current)
                os.close(current)
                current = parent
                if identity(os.fstat(current)) == found:  # / is its own parent
                    break
        finally:
            os.close(current)
        return None


def _identities(paths: tuple[Path, ...]) -> dict[Identity, Path]:
    """The identity of each path that exists (followed: the admin's own links count as their targets)."""
    found: dict[Identity, Path] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            found.setdefault(identity(os.stat(path)), path)
    return found
