"""state_dir/ncip-checkpoint: the NCIP relay's place in the journal and how many entries it finished.

One file per NCIP server, each on its own: ncip-checkpoint for [ncip] (as ever), ncip-checkpoint-NAME for
[ncip.NAME] (file_name()); everything below holds for each.

The relay moves this checkpoint after each answer, before it sends the next entry,
so writing it must be durable and cheap: one pwrite of a fixed-size record into a
file that never changes size, then one fdatasync (no journal commit of the
filesystem, no hand-over to the ledger's writer thread).

The file holds two slots of SLOT_BYTES, written in turn. Each record carries a
sequence number and a CRC-32 of itself:

    magic  8 bytes   b"GWNCIP01"
    seq    u64       one more than the record it replaces
    flags  u8        1: the position fields below are set
    device, inode, offset  u64 each; fingerprint_length u32; fingerprint 64 bytes (hex, as the tailer made it)
    done, already, dead_letter  u64 each: entries finished, by outcome (the metrics' counters)
    crc    u32       CRC-32 of everything before it

Reading takes the valid record with the highest sequence number. A write cut short
by a crash or power loss can only damage the slot being written, whose record was
not durable yet: the other slot holds the record before it, so at most the entry in
flight is sent again. If neither slot is valid (a disk fault, an edit by hand),
CheckpointDamaged says so, naming the file, and the service does not start (exit 2).
The same holds when the file is missing although the ledger says it was made
(CheckpointMissing): starting afresh would send every entry of the journal again.
An empty file is how an admin asks for exactly that on purpose: the relay then
reads the journal from its start. This code never leaves an empty file behind (the
file is created whole, below), so an empty one can only have been put there.

The counts live in the same record as the place, so after kill -9 they agree with it:
an entry sent again is counted again only if its first count was lost with the place.
The file is created whole (a temporary file, synced, renamed, and the folder synced).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.settings import DEFAULT_CONNECTION
from gateway.core.errors import GatewayError
from gateway.core.files import fsync_dir
from gateway.core.states import NcipOutcome

FILE_NAME = "ncip-checkpoint"  # the default server's ([ncip]); [ncip.NAME]'s is file_name(NAME)
MAGIC = b"GWNCIP01"
SLOT_BYTES = 512
OUTCOMES = (NcipOutcome.DONE, NcipOutcome.ALREADY, NcipOutcome.DEAD_LETTER)  # the record's order: never change it
_RECORD = struct.Struct("<8sQBQQQI64sQQQ")
_CRC = struct.Struct("<I")
_HAS_POSITION = 1


def file_name(connection: str = DEFAULT_CONNECTION) -> str:
    """The checkpoint file of an NCIP server, in state_dir: ncip-checkpoint for [ncip], ncip-checkpoint-NAME for
    [ncip.NAME] (a name is letters, digits, '-' and '_': it makes a plain file name)."""
    return FILE_NAME if connection == DEFAULT_CONNECTION else f"{FILE_NAME}-{connection}"


START_OVER = (
    "Stop the service. Restore the file from a backup of state_dir if there is one; otherwise "
    "move it aside (mv {path} {path}.damaged) and put an empty file in its place (touch {path}), then "
    "start the service: the relay then reads the journal from its start, so entries relayed before "
    "are sent to the NCIP server a second time (most are answered 'already done'); to skip them, move "
    "the journal aside too before starting"
)


class CheckpointDamaged(GatewayError):
    """Neither copy of the checkpoint file can be read. Not fixed by a restart: an admin decides."""

    def __init__(self, path: Path, detail: str, state: str = "damaged"):
        self.path = path
        super().__init__(f"the NCIP checkpoint {path} is {state} ({detail}). {START_OVER.format(path=path)}")


class CheckpointMissing(CheckpointDamaged):
    """The file is gone although the ledger says it was made: starting afresh would resend the whole journal."""

    def __init__(self, path: Path, made: str):
        super().__init__(
            path,
            f"the ledger says it was made {made}; without it every entry of the journal would be sent again",
            state="missing",
        )


class CheckpointClaimed(CheckpointDamaged):
    """A new server's journal is the one another checkpoint file (a server renamed or removed) has read into:
    starting afresh would send every entry of it again, so an admin decides."""

    def __init__(self, path: Path, journal: Path, other: Path, offset: int):
        self.path = path
        GatewayError.__init__(
            self,
            f"{journal} is the journal {other} has read up to byte {offset} (an NCIP server renamed?); a new "
            f"checkpoint {path.name} would send every entry of it again, so none is sent. Stop the service, then "
            f"rename {other} to {path} to carry on where it was (or delete {other} to send the whole journal "
            "again), and start it",
        )


class CheckpointUnavailable(GatewayError):
    """The file is there but the service's user cannot open it (owner, mode): nothing is damaged, so nothing is
    started over; once it is given back, the next start goes on from it (exit 1: the unit restarts)."""

    def __init__(self, path: Path, error: OSError):
        self.path = path
        super().__init__(
            f"cannot open the NCIP checkpoint {path}: {error.strerror or error}. The service's user "
            f"must be able to read and write it and its folder (give them back: chown, chmod), and "
            f"state_dir needs room; the relay then goes on from where it was. Do not empty or remove it"
        )


@dataclass
class Saved:
    """One record: the tailer's checkpoint (None before the first entry) and the counts by outcome."""

    seq: int = 0
    position: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=lambda: {str(outcome): 0 for outcome in OUTCOMES})


def _pack(saved: Saved) -> bytes:
    position = saved.position
    if position is None:
        flags, device, inode, offset, length, fingerprint = 0, 0, 0, 0, 0, b""
    else:
        flags, device, inode, offset = _HAS_POSITION, position["device"], position["inode"], position["offset"]
        length, fingerprint = position["fingerprint_length"], position["fingerprint"].encode("ascii")
    record = _RECORD.pack(
        MAGIC,
        saved.seq,
        flags,
        device,
        inode,
        offset,
        length,
        fingerprint,
        *(saved.counts.get(outcome, 0) for outcome in OUTCOMES),
    )
    return record + _CRC.pack(zlib.crc32(record))


def _unpack(slot: bytes) -> Saved | None:
    """The record in one slot, or None if it is empty, cut short or damaged."""
    size = _RECORD.size
    if len(slot) < size + _CRC.size or slot[: len(MAGIC)] != MAGIC:
        return None
    if _CRC.unpack_from(slot, size)[0] != zlib.crc32(slot[:size]):
        return None
    _, seq, flags, device, inode, offset, length, fingerprint, *counts = _RECORD.unpack_from(slot)
    position = None
    if flags & _HAS_POSITION:
        position = {
            "device": device,
            "inode": inode,
            "offset": offset,
            "fingerprint_length": length,
            "fingerprint": fingerprint.rstrip(b"\0").decode("ascii"),
        }
    return Saved(seq, position, dict(zip(OUTCOMES, counts, strict=True)))


def read(path: Path) -> Saved | None:
    """The newest valid record in the file at path; None if there is no file, or an empty one (start over).

    Raise CheckpointDamaged, or CheckpointUnavailable if the file cannot be opened."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError as error:
        raise CheckpointUnavailable(path, error) from None
    except OSError as error:
        raise CheckpointDamaged(path, f"cannot be read: {error.strerror or error}") from None
    if not data:
        return None  # put there by an admin: read the journal from its start
    found = [saved for saved in (_unpack(data[:SLOT_BYTES]), _unpack(data[SLOT_BYTES : 2 * SLOT_BYTES])) if saved]
    if not found:
        raise CheckpointDamaged(path, f"neither of its two records is whole ({len(data)} bytes)")
    return max(found, key=lambda saved: saved.seq)


class CheckpointFile:
    """The open checkpoint file: read once, then each save() overwrites the older slot and syncs it.

    count() adds to a count in memory; the next save() makes it durable with the place."""

    def __init__(self, path: Path, saved: Saved, started_over: bool = False):
        self.path = path
        self._started_over = started_over  # made afresh in place of an empty file an admin left
        self._saved = saved
        self._lock = threading.Lock()
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:  # readable, not writable: e.g. left owned by root
            raise CheckpointUnavailable(path, error) from None

    @classmethod
    def open(cls, path: Path) -> CheckpointFile | None:
        """The file at path, opened; None if there is none. Raise CheckpointDamaged."""
        saved = read(path)
        return cls(path, saved) if saved is not None else None

    @classmethod
    def create(
        cls, path: Path, position: dict[str, Any] | None, counts: dict[str, int], started_over: bool = False
    ) -> CheckpointFile:
        """A new file holding position and counts, durable (file and folder synced) before it is returned;
        started_over: made in place of an empty file an admin left (the relay says so once, see started_over()).

        Raise CheckpointUnavailable if it cannot be made (the folder is not the service user's to write, the disk
        is full)."""
        saved = Saved(
            1, dict(position) if position else None, {outcome: counts.get(outcome, 0) for outcome in OUTCOMES}
        )
        data = _pack(saved).ljust(SLOT_BYTES, b"\0") + bytes(SLOT_BYTES)
        temporary = path.with_name(f".{path.name}.new")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
            fsync_dir(path.parent)
        except OSError as error:  # no permission, a full state_dir: nothing is damaged
            raise CheckpointUnavailable(path, error) from None
        return cls(path, saved, started_over)

    def started_over(self) -> bool:
        """True the first time it is asked of a file made in place of an empty one (the journal is read from
        its start): said once, not again after a reload."""
        with self._lock:
            said, self._started_over = self._started_over, False
        return said

    def position(self) -> dict[str, Any] | None:
        with self._lock:
            return dict(self._saved.position) if self._saved.position else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._saved.counts)

    def count(self, outcome: str) -> None:
        """One more entry finished with outcome; durable with the next save()."""
        with self._lock:
            self._saved.counts[outcome] = self._saved.counts.get(outcome, 0) + 1

    def save(self, position: dict[str, Any]) -> None:
        """Make position (and the counts) durable: overwrite the older slot, then fdatasync.

        If the write fails, the sequence number is not used up: the next save writes the same slot, so the
        other one keeps the last durable record."""
        with self._lock:
            saved = Saved(self._saved.seq + 1, dict(position), dict(self._saved.counts))
            os.pwrite(self._fd, _pack(saved), (saved.seq % 2) * SLOT_BYTES)
            os.fdatasync(self._fd)
            self._saved = saved

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
