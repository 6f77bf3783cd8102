"""File moves that never overwrite and never leave a file at no name: for work/, the archive and error.

move_no_clobber makes the target's folder entry durable (fsync of the folder)
before it removes the source, so a crash or power loss leaves the file at its
new name, or at both names, never at neither. Removing the source is not synced:
after a power loss the original may be back, and is taken again (docs/design.md,
"A crash needs no admin": a file in flight may be sent twice, never lost). Other entries a caller
writes into a folder (sidecars) are its to sync, with fsync_dir.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import time
from pathlib import Path
from typing import Protocol

_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)
PARTIAL_GLOB = ".*.partial-*"  # what a crash can leave behind: hidden, and never taken for a finished file


def partial_path(target: Path) -> Path:
    """Where a file is written before it is committed at target (same folder, hidden)."""
    return target.with_name(f".{target.name}.partial-{os.getpid()}")


def partials_left(target: Path) -> list[Path]:
    """target's partial files (partial_path's names) whose writing process is gone: what a crash left behind."""
    prefix = f".{target.name}.partial-"
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return []
    return [target.parent / name for name in names if name.startswith(prefix) and writer_gone(target.parent / name)]


def writer_gone(partial: Path) -> bool:
    """Whether the process that wrote a partial file (partial_path's name: ...partial-PID) is gone."""
    pid = partial.name.rsplit("-", 1)[-1]
    return pid.isdigit() and not running(int(pid))


def running(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def move_no_clobber(source: Path, target: Path) -> None:
    """Move source to target; raise FileExistsError if target exists.

    Before returning, target's data and folder entry are on disk; only then is source removed.
    If that sync or the removal fails while source is still there, target is taken away again
    (the file is at one name, source, never left at two), and the error raised.
    """
    linked = place_no_clobber(source, target)
    try:
        fsync_dir(target.parent)
        if linked:
            os.unlink(source)
    except OSError:
        if linked:
            undo_place(source, target)
        raise


def undo_place(source: Path, target: Path) -> None:
    """A move that cannot be finished (source cannot be removed): if source is still there, take target away,
    so the file is not at two names (say, taken and yet still in its source folder)."""
    if os.path.lexists(source):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)


def place_no_clobber(source: Path, target: Path) -> bool:
    """The first half of move_no_clobber, for moving many files with one folder sync: put source's
    file at target (a hard link, a rename where links are unsupported, a synced copy across
    filesystems); raise FileExistsError if target exists. Return True if source is still there:
    the caller removes it only after fsync_dir(target.parent)."""
    try:
        return _link_or_rename(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        copy_no_clobber(source, target)
        return True


def _link_or_rename(source: Path, target: Path) -> bool:
    """Hard-link source at target (True), or rename it where links are unsupported (False)."""
    try:
        os.link(source, target)
        return True
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
    if target.exists():  # a filesystem without hard links (CIFS, some FUSE): check, then rename
        raise FileExistsError(target)
    os.rename(source, target)
    return False


def copy_no_clobber(source: Path, target: Path) -> None:
    """Copy source to target through a synced partial file; raise FileExistsError if target exists.

    source is opened without following a link and without blocking, and must be a regular file (a FIFO
    or a device is refused with an OSError naming it). The data is on disk before it appears at target;
    target's folder entry is the caller's to sync.
    """
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(source))
        snapshot(fd, target)
    finally:
        os.close(fd)


COPY_CHUNK = 1024 * 1024


def snapshot(fd: int, target: Path, limit: int | None = None, deadline: float | None = None) -> int:
    """Copy what the open regular file fd holds (from its start) to target, as a file of the gateway's own:
    a new inode through a synced partial file, mode without write for group or others, the source's
    times. Raise FileExistsError if target exists; CopyCut if the file holds more than limit bytes or
    the copy goes past deadline (time.monotonic()). Return the bytes copied. target's folder entry is
    the caller's to sync."""
    info = os.fstat(fd)
    if limit is not None and info.st_size > limit:
        raise CopyCut(errno.EFBIG, f"it is {info.st_size} bytes, above max_file_bytes ({limit}); not taken")
    partial = partial_path(target)
    copied = 0
    try:
        out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        with open(out, "wb") as writer:
            os.lseek(fd, 0, os.SEEK_SET)  # the fd is this take's own: read it from its start
            while chunk := os.read(fd, COPY_CHUNK):
                copied += len(chunk)
                if limit is not None and copied > limit:
                    raise CopyCut(errno.EFBIG, f"it grew above max_file_bytes ({limit}) while copied; not taken")
                if deadline is not None and time.monotonic() > deadline:
                    raise CopyCut(
                        errno.ETIMEDOUT, f"its copy ran past its deadline ({copied} bytes copied); taken again later"
                    )
                writer.write(chunk)
            writer.flush()
            os.fchmod(writer.fileno(), stat.S_IMODE(info.st_mode) & 0o640 | 0o600)  # no one else writes it
            os.utime(writer.fileno(), ns=(info.st_atime_ns, info.st_mtime_ns))
            os.fsync(writer.fileno())
        _link_or_rename(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return copied


class CopyCut(OSError):
    """A copy stopped before its end: the file is larger than allowed, or the copy ran past its deadline."""


def fsync_dir(folder: Path) -> None:
    """Make the entries of folder (names added, removed or renamed) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


HASH_CHUNK = 1024 * 1024


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def digest_of(handle: Readable) -> str:
    """The sha256 hex of what is left to read in an open file, read in chunks."""
    digest = hashlib.sha256()
    while chunk := handle.read(HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> tuple[str, int]:
    """Return (sha256 hex, size) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
