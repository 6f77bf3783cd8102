"""The journal: JSON Lines of checkout/checkin entries, appended by anyone, read by the relay.

Writers append one whole line under an exclusive flock (append()). The Tailer
reads complete lines only (a line without its newline is not read yet) from a
checkpoint: byte offset plus the file's identity (device, inode) and a
fingerprint of its head at the checkpoint (its first bytes and the bytes just
before the offset). The fingerprint is checked before every read, not only on
open, so a journal emptied and refilled between two reads is never read from
the middle. Stated policies:
  rotation (renamed, new file created)  the old file is read to its end first,
                                        then the new one from its start
  truncation (same file, now shorter    if a copy of the old content sits in the same folder
  or rewritten before the checkpoint)   (logrotate copytruncate), its rest is read first; then
                                        the journal from its start (journal.truncated)
  replacement (another file, old gone)  read the new one from its start (journal.replaced)
  not a regular file (a symbolic link,  nothing read, never opened through the link nor blocked
  a directory, a FIFO, a device ...)    on; Tailer.problem says why (journal.refused) until a
                                        regular file is back: the same file again from the
                                        checkpoint, another as a replacement
Anybody who may write the journal is an outside party: a value that no NCIP
message can carry (gateway.core.xmltext) makes its line invalid (a dead letter), and
append() refuses it at the door, as it refuses to follow a link or open a FIFO.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core import logs, xmltext

ACTIONS = ("checkout", "checkin")
FIELDS = {"action", "item", "stop", "user", "request_id", "id"}
FINGERPRINT_BYTES = 128
READ_CHUNK = 64 * 1024
LAG_COUNT_LIMIT = 16 * 1024 * 1024
_ROTATED_NAME = re.compile(r"\.\d+|-\d{8,14}")  # what logrotate appends: NAME.1, NAME-20261128 (dateext)

log = logs.get("gateway.ncip.journal")


@dataclass(frozen=True)
class JournalEntry:
    action: str
    item: str
    stop: str | None = None
    user: str | None = None
    request_id: str | None = None
    id: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


def _padding(char: str) -> bool:
    """A space of any kind (U+0020, a no-break space, U+2003, ...) or a carriage return (a script reading a CRLF
    list): dropped around a value. Other control characters are not, though str.isspace() counts some of them
    (tab, U+001C-U+001F, U+0085): they make the entry refused instead of silently changed."""
    return char == "\r" or (char.isspace() and unicodedata.category(char) != "Cc")


def trimmed(value: str) -> str:
    """value without the padding around it (see _padding), as an NCIP server reads an element's text."""
    start, end = 0, len(value)
    while start < end and _padding(value[start]):
        start += 1
    while end > start and _padding(value[end - 1]):
        end -= 1
    return value[start:end]


def parse_entry(raw: bytes) -> JournalEntry:
    """Given one line (without its newline), return the entry. Raise ValueError saying what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("line is not UTF-8") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"line is not JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(data, dict):
        raise ValueError("line is not a JSON object")
    unknown = set(data) - FIELDS
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if data.get("action") not in ACTIONS:
        raise ValueError(f"action must be checkout or checkin, got {data.get('action')!r}")
    for key in FIELDS - {"action"}:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not trimmed(value)):
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    if not data.get("item"):
        raise ValueError("item (the barcode) is missing")

    def text(key: str) -> str | None:  # a script's CRLF or padding is not part of a barcode or a user id
        value = data.get(key)
        return trimmed(value) if isinstance(value, str) else None

    entry = JournalEntry(
        action=data["action"],
        item=trimmed(data["item"]),
        stop=text("stop"),
        user=text("user"),
        request_id=text("request_id"),
        id=text("id"),
    )
    refuse_uncarried(entry)
    return entry


def refuse_uncarried(entry: JournalEntry) -> None:
    """Raise ValueError naming the first value an NCIP message cannot carry (gateway.core.xmltext)."""
    for key, value in entry.as_dict().items():
        problem = xmltext.problem(key, value)
        if problem is not None:
            raise ValueError(problem)


def append(path: Path, entry: JournalEntry) -> None:
    """Append one whole line under an exclusive lock, synced to disk before returning.

    Raise ValueError (naming the value) for an entry the relay would refuse, OSError if the journal cannot be
    appended to: a symbolic link there is not followed and anything but a regular file is refused, so whoever
    may write the journal's folder cannot make the writer (the feed runs as the gateway) append elsewhere."""
    refuse_uncarried(entry)
    line = (json.dumps(entry.as_dict(), ensure_ascii=False) + "\n").encode("utf-8")
    parse_entry(line[:-1])  # never write what the relay would refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG
    if stat.S_ISLNK(mode):
        raise OSError(errno.ELOOP, "it is a symbolic link, which is not followed", str(path))
    kind = None if stat.S_ISDIR(mode) else file_kind(mode)  # a directory: open() says "Is a directory"
    if kind is not None:  # a FIFO or a device is never opened
        raise OSError(errno.EINVAL, f"it is {kind}, not a regular file", str(path))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o640)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "it is a symbolic link, which is not followed", str(path)) from None
        raise
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise OSError(errno.EINVAL, f"it is {kind}, not a regular file", str(path))
        fcntl.flock(fd, fcntl.LOCK_EX)
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


class JournalRefused(Exception):
    """What is at the journal's path is not read: a symbolic link, a directory, a FIFO, a device ..."""


def file_kind(mode: int) -> str | None:
    """None for a regular file; otherwise what the file is, in words."""
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((words for test, words in kinds if test(mode)), "not a regular file")


def open_journal(path: Path) -> int | None:
    """Open the journal for reading: never through a symbolic link, never blocking, only a regular file.

    Return the descriptor, or None if nothing is at path. Raise JournalRefused naming the path and what is
    there instead (checked before opening, so a device or a FIFO is never opened, and again on the descriptor,
    so nothing swapped in between is read), or why it cannot be opened."""
    try:
        kind = file_kind(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise JournalRefused(f"cannot look at the journal {path}: {error.strerror or error}") from None
    if kind is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise JournalRefused(f"cannot open the journal {path}: {error.strerror or error}") from None
            kind = "a symbolic link"
        else:
            kind = file_kind(os.fstat(fd).st_mode)
            if kind is None:
                return fd
            os.close(fd)
    raise JournalRefused(
        f"the journal {path} is {kind}: not read (the journal must be a regular file; a symbolic "
        "link is not followed); the relay resumes once a regular file is there"
    )


def _open_regular(path: Path) -> int | None:
    """A rotated or copied journal beside the journal, open, if it is a regular file (links not followed)."""
    try:
        return open_journal(path)
    except JournalRefused:
        return None


@dataclass(frozen=True)
class Line:
    """One complete journal line: where it starts and ends, and the entry or what is wrong with it."""

    raw: bytes
    start: int
    end: int
    entry: JournalEntry | None
    problem: str | None
    fingerprint: str = ""  # of the file as it was when the line was read (see Tailer.commit)


def _fingerprint(fd: int, length: int, offset: int | None = None) -> str:
    """A hash of the first length bytes and, given the offset, of the bytes just before it."""
    digest = hashlib.sha256(os.pread(fd, length, 0))
    if offset is not None:
        tail = min(FINGERPRINT_BYTES, offset)
        digest.update(os.pread(fd, tail, offset - tail))
    return digest.hexdigest()


def _same_content(fd: int, saved: dict[str, Any]) -> bool:
    """True if the file holds, up to the checkpoint's offset, what it held when the checkpoint was taken."""
    if os.fstat(fd).st_size < saved["offset"]:
        return False
    if _fingerprint(fd, saved["fingerprint_length"], saved["offset"]) == saved["fingerprint"]:
        return True
    legacy: bool = _fingerprint(fd, saved["fingerprint_length"]) == saved["fingerprint"]  # 1.0: head only
    return legacy


class Tailer:
    """Reads a journal line by line from a checkpoint; commit() moves the checkpoint past a line."""

    def __init__(self, path: Path, checkpoint: dict[str, Any] | None, max_line_bytes: int):
        self.path = path
        self.max_line_bytes = max_line_bytes
        self._saved = checkpoint
        self._fd: int | None = None
        self._offset = 0
        self._rotated = False  # reading an old (renamed or copied) file; the one at path comes next
        self._mark: dict[str, Any] | None = None  # the last checkpoint: what the file held up to the offset
        self.problem: str | None = None  # why what is at the journal's path is not read, while it is not

    @property
    def _file(self) -> int:
        """The open descriptor (only called once the journal is open)."""
        assert self._fd is not None, "the journal is not open"
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._file)
            self._fd = None

    # -- opening, following rotation, noticing truncation --------------------------------

    def _open(self) -> bool:
        try:
            fd = open_journal(self.path)
        except JournalRefused as error:
            self._note_problem(str(error))
            return False
        self._note_problem(None)
        if fd is None:
            return False
        saved, self._saved = self._saved, None
        self._fd, self._offset, self._rotated, self._mark = fd, 0, False, None
        if not saved:
            return True
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) == (saved["device"], saved["inode"]):
            if _same_content(fd, saved):
                self._offset, self._mark = saved["offset"], saved
            else:
                self._truncated(saved, info.st_size)
            return True
        old = self._find_old(saved, by_inode=True)
        if old is not None:
            os.close(fd)
            self._fd, self._offset, self._rotated, self._mark = old, saved["offset"], True, saved
            log.info("journal.rotated", journal=str(self.path), policy="reading the old file to its end first")
        else:
            log.warning(
                "journal.replaced",
                journal=str(self.path),
                policy="reading the new file from its start",
                detail="the file checkpointed before is gone; what it held after the checkpoint was never relayed",
            )
        return True

    def _note_problem(self, problem: str | None) -> None:
        """Say when the journal's path starts or stops holding something that is not read."""
        if problem == self.problem:
            return
        if problem is not None:
            log.warning(
                "journal.refused",
                journal=str(self.path),
                reason=problem,
                policy="nothing is read from it; the relay waits and resumes once a regular file is there",
            )
        else:
            log.info("journal.readable", journal=str(self.path), after=self.problem)
        self.problem = problem

    def _find_old(self, saved: dict[str, Any], by_inode: bool) -> int | None:
        """In the journal's folder, the old journal: renamed (same inode, by_inode) or copied (same content
        up to the checkpoint, as logrotate's copytruncate leaves it). An open descriptor, or None."""
        try:
            current = None if by_inode else os.lstat(self.path)
        except OSError:
            current = None
        for candidate in sorted(self.path.parent.iterdir()):
            try:
                info = candidate.lstat()
            except OSError:
                continue
            if not candidate.is_file() or candidate.is_symlink():
                continue
            if by_inode and (info.st_dev, info.st_ino) != (saved["device"], saved["inode"]):
                continue
            if not by_inode and (
                current is None
                or (info.st_dev, info.st_ino) == (current.st_dev, current.st_ino)
                or info.st_size < saved["offset"]
            ):
                continue
            fd = _open_regular(candidate)
            if fd is None:
                continue
            if _same_content(fd, saved):
                return fd
            os.close(fd)
        return None

    def _truncated(self, saved: dict[str, Any], size: int) -> None:
        """The file at the checkpoint no longer holds what it held: find a copy of the old content, else restart."""
        copy = self._find_old(saved, by_inode=False) if saved["offset"] else None
        if copy is not None:
            os.close(self._file)
            self._fd, self._offset, self._rotated, self._mark = copy, saved["offset"], True, saved
            log.warning(
                "journal.truncated",
                journal=str(self.path),
                was=saved["offset"],
                now=size,
                policy="reading the rest of the copy of the old content first, then the journal from its start",
            )
            return
        self._offset, self._mark = 0, None
        log.warning(
            "journal.truncated",
            journal=str(self.path),
            was=saved["offset"],
            now=size,
            policy="reading the journal again from its start",
            detail="no copy of the old content found beside it: lines written after the checkpoint "
            "and before the truncation were never relayed",
        )

    def _check(self) -> None:
        """Before every read: has the file been truncated or rewritten below the checkpoint?"""
        if self._mark is None or self._rotated:
            return
        if not _same_content(self._file, self._mark):
            self._truncated(self._mark, os.fstat(self._file).st_size)

    def _switched(self) -> bool:
        """At the end of the file: if it was rotated, move on to the new one. True if the position changed."""
        try:
            info = os.lstat(self.path)  # a link put in its place is another file (and refused by _open)
        except FileNotFoundError:
            return False
        current = os.fstat(self._file)
        if self._rotated or (info.st_dev, info.st_ino) != (current.st_dev, current.st_ino):
            mark = None if self._rotated else self._mark
            rest = current.st_size - self._offset
            if rest:
                log.warning(
                    "journal.partial_line_dropped",
                    journal=str(self.path),
                    bytes=rest,
                    detail="the rotated file ended without a newline",
                )
            os.close(self._file)
            self._fd = None
            later = self._rotated_after(current, info)
            if later is not None:  # rotated again before the old file was finished: read each in turn
                fd, name = later
                self._fd, self._offset, self._rotated, self._mark = fd, 0, True, None
                log.warning(
                    "journal.rotated",
                    journal=str(self.path),
                    next=name,
                    policy="the journal was rotated more than once: reading the next rotated file "
                    "from its start, then the journal",
                )
                return True
            if not self._rotated:
                if current.st_nlink == 0:
                    log.warning(
                        "journal.replaced",
                        journal=str(self.path),
                        policy="old file read to its end, then the new one from its start",
                    )
                else:
                    log.info("journal.rotated", journal=str(self.path), policy="old file read to its end")
            if self._open():
                return True
            if self.problem is not None and mark is not None:  # a link, a directory ... in its place: the file
                self._saved = mark  # that comes back is compared with where reading stopped, as on a start
        return False

    def _rotated_after(self, finished: os.stat_result, journal: os.stat_result) -> tuple[int, str] | None:
        """The oldest rotated copy written after the finished file, open, if any: the journal was rotated
        twice or more before the finished file was read to its end."""
        for name in self._rotated_names_after(finished, journal):
            fd = _open_regular(self.path.parent / name)
            if fd is not None:
                return fd, name
        return None

    def _rotated_names_after(self, finished: os.stat_result, journal: os.stat_result | None) -> list[str]:
        """Rotated copies (NAME.N or NAME-DATE, uncompressed) written after the finished file, oldest first."""
        found: list[tuple[int, str]] = []
        skip = {(finished.st_dev, finished.st_ino)} | ({(journal.st_dev, journal.st_ino)} if journal else set())
        for candidate in self.path.parent.iterdir():
            name = candidate.name
            if not name.startswith(self.path.name) or not _ROTATED_NAME.fullmatch(name[len(self.path.name) :]):
                continue
            try:
                info = candidate.lstat()
            except OSError:
                continue
            if (
                stat.S_ISREG(info.st_mode)
                and info.st_mtime_ns > finished.st_mtime_ns
                and (info.st_dev, info.st_ino) not in skip
            ):
                found.append((info.st_mtime_ns, name))
        return [name for _, name in sorted(found)]

    # -- reading ----------------------------------------------------------------------

    def next(self) -> Line | None:
        """The next complete line after the checkpoint (the same one until committed), or None."""
        if self._fd is None and not self._open():
            return None
        self._check()
        line = self._read_line()
        if line is None and self._switched():
            line = self._read_line()
        return line

    def _read_line(self) -> Line | None:
        """The line at the offset, with the fingerprint of the file up to its end taken as it was read."""
        line = self._read_raw_line()
        if line is None:
            return None
        fingerprint = _fingerprint(self._file, min(FINGERPRINT_BYTES, line.end), line.end)
        if os.pread(self._file, len(line.raw), line.start) != line.raw:
            return None  # the file changed while it was read: the next read's check says how
        return dataclasses.replace(line, fingerprint=fingerprint)

    def _read_raw_line(self) -> Line | None:
        limit = self.max_line_bytes + 1
        data = os.pread(self._file, limit, self._offset)
        newline = data.find(b"\n")
        if newline >= 0:
            raw = data[:newline]
            try:
                return Line(raw, self._offset, self._offset + newline + 1, parse_entry(raw), None)
            except ValueError as error:
                return Line(raw, self._offset, self._offset + newline + 1, None, str(error))
        if len(data) < limit:
            return None  # a line still being written
        end = self._find_newline(self._offset + limit)
        if end is None:
            return None
        return Line(data[:200], self._offset, end, None, f"line longer than max_line_bytes ({self.max_line_bytes})")

    def _find_newline(self, position: int) -> int | None:
        while True:
            chunk = os.pread(self._file, READ_CHUNK, position)
            if not chunk:
                return None
            found = chunk.find(b"\n")
            if found >= 0:
                return position + found + 1
            position += len(chunk)

    def commit(self, line: Line) -> dict[str, Any]:
        """Move past line; return the checkpoint to store (offset, the file's identity and fingerprint).

        The fingerprint is the one taken when the line was read: if the file was emptied and refilled
        while the line was out, the next read notices, instead of taking the new content for the old."""
        self._offset = line.end
        info = os.fstat(self._file)
        self._mark = {
            "device": info.st_dev,
            "inode": info.st_ino,
            "offset": self._offset,
            "fingerprint": line.fingerprint,
            "fingerprint_length": min(FINGERPRINT_BYTES, line.end),
        }
        return dict(self._mark)

    def lag(self) -> tuple[int, int]:
        """(bytes, entries) not yet relayed, including the new file when an old one is being finished."""
        if self._fd is None:
            return 0, 0
        pending = [(self._fd, self._offset)]
        opened: list[int] = []
        try:
            journal: os.stat_result | None = os.lstat(self.path)
        except OSError:
            journal = None
        reading = os.fstat(self._fd)
        if self._rotated or (
            journal is not None and (journal.st_dev, journal.st_ino) != (reading.st_dev, reading.st_ino)
        ):
            # an old file (renamed, or a copy): the rotated copies after it, then the journal, are behind too
            for path in [self.path.parent / name for name in self._rotated_names_after(reading, journal)] + [self.path]:
                fd = _open_regular(path)
                if fd is None:
                    continue
                opened.append(fd)
                pending.append((fd, 0))
        try:
            total_bytes = total_entries = 0
            for fd, offset in pending:
                behind = max(os.fstat(fd).st_size - offset, 0)
                total_bytes += behind
                if behind <= LAG_COUNT_LIMIT:
                    total_entries += os.pread(fd, behind, offset).count(b"\n")
            return total_bytes, total_entries
        finally:
            for fd in opened:
                os.close(fd)
