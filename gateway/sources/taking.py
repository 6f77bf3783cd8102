"""Taking a file from a local source folder into state_dir/work/, as a file of the gateway's own.

A file is hard-linked into work/ only where that is safe: it is already the
gateway's own file (its owner is the service user), it has one name, and nobody
has it open for writing (a read lease). Anything else is copied, from the one
handle that was opened (never following a link, never blocking) and checked to
be the regular file that settled, into a new file of the gateway's user that no
other user can write: a snapshot, capped by max_file_bytes and a deadline. So
the bytes validated, hashed, sent and archived are the same, and no other user
can change them later (gateway.sources.local uses this; docs/design.md, "Trust boundaries").
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.core import logs
from gateway.core.errors import SourceGone
from gateway.core.files import CopyCut, fsync_dir, snapshot
from gateway.sources import writers
from gateway.sources.base import Entry
from gateway.sources.folder import HeldFolder, identity, open_entry

log = logs.get("gateway.sources.local")

COPY_BASE_SECONDS = 30.0  # a copy into work/ may take this long, plus a second per MiB, before it is cut
COPY_BYTES_PER_SECOND = 1024 * 1024
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)  # then a copy is taken


@dataclass
class _Placed:
    """A file put at its destination in work/, its original still held open (fd) until the take is finished."""

    fd: int
    info: os.stat_result
    kept: bool  # the original stays in the source until its outcome is known (writers cannot be seen)
    remove: bool  # the original is removed once work/ is synced
    linked: bool  # the destination is the original's own inode (a hard link), not a snapshot


class Taker:
    """Takes files out of one held source folder (name: the source's, for the log)."""

    def __init__(self, name: str, held: HeldFolder, trust_mtime: bool, max_file_bytes: int | None):
        self.name = name
        self.held = held
        self.trust_mtime = trust_mtime
        self.max_file_bytes = max_file_bytes

    def fetch_many(self, jobs: list[tuple[Entry, Path]]) -> list[bool | Exception]:
        """fetch() for each file, with one sync of the destination folder for all of them.

        Each file is put at its destination first (a link of a file of the gateway's own
        nobody else can write, else a snapshot: a copy of the gateway's own, capped by
        max_file_bytes and a deadline); then the folder is synced once; only then are the
        originals removed (a crash or power loss leaves each file at one name or both,
        never at neither) and each checked for a writer that opened it in the instant
        before (it is put back).
        """
        results: list[bool | Exception] = []
        placed: dict[int, _Placed] = {}
        try:
            folder = self.held.fd()
        except OSError as error:
            return [error for _job in jobs]
        try:
            for entry, destination in jobs:
                try:
                    made = self._place(folder, entry, destination)
                except Exception as error:
                    results.append(error)
                    continue
                placed[len(results)] = made
                results.append(made.kept)
            removing = {index for index, made in placed.items() if made.remove}
            for parent in {jobs[index][1].parent for index in removing}:
                try:
                    fsync_dir(parent)
                except OSError as error:  # not taken: the original is still the file
                    for index in [index for index in removing if jobs[index][1].parent == parent]:
                        results[index] = error
                        removing.discard(index)
                        with contextlib.suppress(OSError):
                            os.unlink(jobs[index][1])
            for index in removing:
                try:
                    self._finish_move(folder, *jobs[index], placed[index])
                except Exception as error:
                    results[index] = error
        finally:
            for made in placed.values():
                os.close(made.fd)
        return results

    def complete_take(self, name: str, destination: Path) -> bool:
        """A take cut short after the link into work/: the original (name) is removed if it is the same file
        (the same inode: nothing new was written under its name) and nobody has it open for writing."""
        folder = self.held.fd()
        try:
            there = os.stat(name, dir_fd=folder, follow_symlinks=False)
            taken = os.lstat(destination)
        except FileNotFoundError:
            return False
        if (
            not stat.S_ISREG(there.st_mode)
            or identity(there) != identity(taken)
            or writers.open_writers(destination).state != writers.NOBODY
        ):
            return False  # released once its outcome is known, if unchanged, like any original kept
        fsync_dir(destination.parent)
        os.unlink(name, dir_fd=folder)
        if writers.open_writers(destination).state == writers.WRITING:  # opened in the instant before
            with contextlib.suppress(FileExistsError):  # a new file under its name: that one is the writer's
                os.link(destination, name, dst_dir_fd=folder)
            return False  # the original stays, checked again before upload and released like any kept
        _own(destination)
        return True

    def _place(self, folder: int, entry: Entry, destination: Path) -> _Placed:
        """Open the file (never following a link, never blocking), check it is the regular file that settled,
        and put it at destination: a hard link where it is the gateway's own file, one link, nobody writing
        it; else a snapshot. The original stays held open for _finish_move."""
        origin = entry.origin
        try:
            fd, info = open_entry(folder, entry.name)
        except (FileNotFoundError, NotADirectoryError):
            raise SourceGone(f"{origin} disappeared before it could be taken") from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise SourceGone(f"{origin} was replaced by a link; not followed") from None
            raise
        try:
            if not stat.S_ISREG(info.st_mode):
                raise SourceGone(f"{origin} is no longer a regular file; not read")
            if (info.st_size, info.st_mtime) != (entry.size, entry.mtime):
                raise SourceGone(f"{origin} changed since it settled; it is taken once it settles again")
            seen = writers.lease_writers(fd) if self.trust_mtime else writers.Writers(writers.UNKNOWN)
            if seen.state == writers.WRITING:
                raise SourceGone(f"{origin} was opened for writing again; it is taken once it settles again")
            nobody = seen.state == writers.NOBODY
            if (
                nobody
                and info.st_uid == os.geteuid()
                and info.st_nlink == 1
                and self._link(folder, entry, fd, info, destination)
            ):
                return _Placed(fd, info, kept=False, remove=True, linked=True)
            self._snapshot(folder, entry, fd, info, destination)
            return _Placed(fd, info, kept=not nobody, remove=nobody, linked=False)
        except BaseException:
            os.close(fd)
            raise

    def _link(self, folder: int, entry: Entry, fd: int, info: os.stat_result, destination: Path) -> bool:
        """Hard-link the held file at destination; False where links cannot be made (then it is copied)."""
        try:
            os.link(entry.name, destination, src_dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            raise SourceGone(f"{entry.origin} disappeared before it could be taken") from None
        except FileExistsError:
            raise
        except OSError as error:
            if error.errno in _NO_LINK:
                return False
            raise
        if identity(os.lstat(destination)) != identity(info):  # its name was given to another file meanwhile
            os.unlink(destination)
            raise SourceGone(f"{entry.origin} was replaced while being taken; it is taken once it settles again")
        if info.st_mode & 0o022:  # nobody else may change what is validated, sent and archived
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~0o022)
        return True

    def _snapshot(self, folder: int, entry: Entry, fd: int, info: os.stat_result, destination: Path) -> None:
        """Copy the held file into destination as the gateway's own, capped by max_file_bytes and a deadline;
        the original must be unchanged, and still at its name, once the copy is done."""
        deadline = time.monotonic() + COPY_BASE_SECONDS + info.st_size / COPY_BYTES_PER_SECOND
        try:
            copied = snapshot(fd, destination, self.max_file_bytes, deadline)
        except CopyCut as cut:
            raise CopyCut(cut.errno, cut.strerror, entry.origin) from None
        try:
            after, named = os.fstat(fd), os.stat(entry.name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        if (
            named is None
            or identity(named) != identity(info)
            or copied != info.st_size
            or (after.st_size, after.st_mtime) != (info.st_size, info.st_mtime)
        ):
            os.unlink(destination)
            raise SourceGone(f"{entry.origin} changed while it was copied; it is taken once it settles again")

    def _finish_move(self, folder: int, entry: Entry, destination: Path, made: _Placed) -> None:
        """After the folder sync: remove the original, if still the file taken, and check nobody opened it for
        writing in the instant before (then it is put back, or, if it was copied, left where it is)."""
        try:
            named = os.stat(entry.name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:  # removed meanwhile: taken all the same
            named = None
        if named is not None:
            if identity(named) != identity(made.info):
                os.unlink(destination)
                raise SourceGone(f"{entry.origin} was replaced while being taken; it is taken once it settles again")
            try:
                os.unlink(entry.name, dir_fd=folder)
            except OSError:  # a read-only source: the original stays the file, and work/ keeps no copy of it
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(destination)
                raise
        if writers.lease_writers(made.fd).state == writers.WRITING:  # opened in the instant before
            self._put_back(folder, entry, destination, made)
        if made.linked:
            _own(destination)

    def _put_back(self, folder: int, entry: Entry, destination: Path, made: _Placed) -> None:
        try:
            if made.linked:
                os.link(destination, entry.name, dst_dir_fd=folder)
            else:  # the held original: its writer goes on writing it, under its name again
                os.link(f"/proc/self/fd/{made.fd}", entry.name, dst_dir_fd=folder, follow_symlinks=True)
        except OSError as error:
            log.warning(
                "file.opened_while_taken",
                source=self.name,
                file=entry.name,
                detail=f"it could not be put back ({error.strerror or error}); taken as it is",
            )
            return
        os.unlink(destination)
        raise SourceGone(f"{entry.origin} was opened for writing as it was taken; put back, taken once it settles")


def _own(path: Path) -> None:
    """Make the file at path the gateway's own, if it is not (another link to it, another owner): a snapshot
    replaces it, so nobody else can change what is validated, sent and archived."""
    info = os.lstat(path)
    if info.st_nlink == 1 and info.st_uid == os.geteuid():
        return
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        copy = path.with_name(f".{path.name}.own.partial-{os.getpid()}")  # what a crash leaves: removed at start
        snapshot(fd, copy)
        os.rename(copy, path)
    finally:
        os.close(fd)
