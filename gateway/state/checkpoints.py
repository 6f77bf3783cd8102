"""What the NCIP side keeps: the journal tailer's checkpoint (with the relay's counts) and the feed's memory.

    state_dir/ncip-checkpoint  where the tailer is in the journal (device, inode, a fingerprint of
                 the file's head and its length, the offset of the next entry) and the entries
                 finished by outcome: a small file of two alternating records (gateway/state/checkpointfile.py),
                 so moving it after each entry costs one pwrite and one fdatasync, not a ledger commit
    feed_seen    (kind, barcode, day) the status feed has already written to the journal

Each NCIP connection has its own of both, so one never moves or forgets the other's:
  - [ncip] (the connection named "default") keeps exactly what a gateway with one connection always kept:
    state_dir/ncip-checkpoint, the meta key ncip_checkpoint_made, feed_seen kinds 'retrieved' and 'refiled';
  - [ncip.NAME] has state_dir/ncip-checkpoint-NAME, the meta key ncip_checkpoint_made:NAME, and feed_seen
    kinds 'NAME/retrieved' and 'NAME/refiled' (feed_kind()): two libraries may share a barcode, and a name
    holds no '/' (letters, digits, '-', '_'), so the prefix never mistakes one connection's rows for another's.
    The feed_seen table is unchanged (no migration): a prefix, not a column, because its primary key
    (kind, barcode, day) could only take a new column by rebuilding the table.

Before that file existed, the checkpoint was a row of the checkpoints table (name 'ncip-journal')
and the counts rows of the counters table: the first open of the default connection's file moves them into
it, then deletes them, so the file is the only place either lives. A named connection never had them: its
file starts empty.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from gateway.config.settings import DEFAULT_CONNECTION
from gateway.state.checkpointfile import (
    FILE_NAME,
    OUTCOMES,
    CheckpointClaimed,
    CheckpointFile,
    CheckpointMissing,
    file_name,
    read,
)
from gateway.state.db import LedgerDb

LEGACY_CHECKPOINT = "ncip-journal"  # the checkpoints table's row before the file
LEGACY_COUNTER = "ncip_entries_total:"  # + outcome: the counters table's rows before the file
MADE = "ncip_checkpoint_made"  # meta: when [ncip]'s file was first made (a missing file is then an error)
_OPENING = threading.Lock()


def made_key(connection: str = DEFAULT_CONNECTION) -> str:
    """The meta key saying when a server's checkpoint file was first made: MADE for [ncip], MADE:NAME else."""
    return MADE if connection == DEFAULT_CONNECTION else f"{MADE}:{connection}"


def feed_kind(kind: str, connection: str = DEFAULT_CONNECTION) -> str:
    """A feed_seen kind as stored for a server: kind itself for [ncip], NAME/kind for [ncip.NAME]."""
    return kind if connection == DEFAULT_CONNECTION else f"{connection}/{kind}"


class Checkpoints:
    """The NCIP checkpoint files and the feed memory (ledger.ncip), each per NCIP server by name."""

    def __init__(self, db: LedgerDb):
        self.db = db
        self._journal_checkpoints: dict[str, CheckpointFile] = {}  # by server, once opened

    def checkpoint_path(self, connection: str = DEFAULT_CONNECTION) -> Path:
        """Where a server's checkpoint file is: beside the ledger."""
        return self.db.path.parent / file_name(connection)

    def journal_checkpoint(self, connection: str = DEFAULT_CONNECTION, journal: Path | None = None) -> CheckpointFile:
        """A server's relay checkpoint file beside the ledger, opened once (created on the first call, from what
        an older ledger held for the default connection, or afresh when an admin left an empty file). Raise
        CheckpointDamaged if neither of its records can be read, CheckpointMissing if it is gone although this
        ledger made it, CheckpointClaimed if it would be new while another server's file has read its journal."""
        with _OPENING:  # not the ledger's lock: forgetting the old rows waits for the writer, which takes it
            opened = self._journal_checkpoints.get(connection)
            if opened is None:
                opened = self._open(connection, journal)
                with self.db.lock:
                    self._journal_checkpoints[connection] = opened
            return opened

    def _open(self, connection: str, journal: Path | None) -> CheckpointFile:
        path = self.checkpoint_path(connection)
        made = self.db.get_meta(made_key(connection))
        legacy = connection == DEFAULT_CONNECTION  # only [ncip] ever had rows in the ledger
        opened = CheckpointFile.open(path)
        if opened is None:
            if made is not None and not path.exists():
                raise CheckpointMissing(path, made)
            if made is None and journal is not None and not (legacy and self._legacy_checkpoint()):
                self._refuse_a_claimed_journal(path, journal)
            opened = CheckpointFile.create(  # started over: the relay says so in its log
                path,
                self._legacy_checkpoint() if legacy else None,
                self._legacy_counts() if legacy else {},
                started_over=made is not None,
            )
        if made is None:  # after the file is durable: a crash in between only sets it at the next start
            self.db.set_meta(made_key(connection), time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        if legacy:
            self._forget_legacy()
        return opened

    def _refuse_a_claimed_journal(self, path: Path, journal: Path) -> None:
        """A brand-new checkpoint for a journal another server's file has read into (a server renamed in the
        config, its file left under the old name) would resend every entry: raise CheckpointClaimed instead."""
        try:
            identity = os.stat(journal)
        except OSError:
            return  # no journal yet: nothing was read from it
        for other in sorted(path.parent.glob(FILE_NAME + "*")):
            if other == path or not (other.name == FILE_NAME or other.name.startswith(FILE_NAME + "-")):
                continue
            try:
                saved = read(other)
            except Exception:  # noqa: BLE001 - another server's damaged file is that server's problem
                continue
            position = saved.position if saved is not None else None
            if position and (position["device"], position["inode"]) == (identity.st_dev, identity.st_ino):
                raise CheckpointClaimed(path, journal, other, int(position["offset"]))

    def count_ncip_entry(self, outcome: str, connection: str = DEFAULT_CONNECTION) -> None:
        """One more journal entry of that server finished with outcome (done, already, dead_letter): durable
        with its relay's next checkpoint, which follows it at once."""
        self.journal_checkpoint(connection).count(outcome)

    def ncip_counts(self, connection: str = DEFAULT_CONNECTION) -> dict[str, int]:
        """A server's entries finished by outcome, as this process counts them, else as its file (or, for the
        default server, an older ledger) says."""
        with self.db.lock:
            opened = self._journal_checkpoints.get(connection)
        if opened is not None:
            return opened.counts()
        saved = read(self.checkpoint_path(connection))
        if saved is not None:
            return saved.counts
        return {**dict.fromkeys(OUTCOMES, 0), **(self._legacy_counts() if connection == DEFAULT_CONNECTION else {})}

    def close(self) -> None:
        """Close the checkpoint files that were opened (the ledger closes its database after this)."""
        with self.db.lock:
            opened = list(self._journal_checkpoints.values())
        for checkpoint in opened:
            checkpoint.close()

    def _legacy_checkpoint(self) -> dict[str, Any] | None:
        with self.db.lock:
            row = self.db.connection.execute(
                "SELECT device, inode, fingerprint, fingerprint_length, offset FROM checkpoints WHERE name = ?",
                (LEGACY_CHECKPOINT,),
            ).fetchone()
        return dict(row) if row else None

    def _legacy_counts(self) -> dict[str, int]:
        with self.db.lock:
            rows = self.db.connection.execute(
                "SELECT name, value FROM counters WHERE name GLOB ?", (LEGACY_COUNTER + "*",)
            ).fetchall()
        return {name[len(LEGACY_COUNTER) :]: value for name, value in rows if name[len(LEGACY_COUNTER) :] in OUTCOMES}

    def _forget_legacy(self) -> None:
        """Once the file holds them (it is durable before this runs), the ledger's copies go."""
        if self._legacy_checkpoint() is None and not self._legacy_counts():
            return  # nothing to delete: no write, no commit
        with self.db.transaction() as db:
            db.execute("DELETE FROM checkpoints WHERE name = ?", (LEGACY_CHECKPOINT,))
            db.execute("DELETE FROM counters WHERE name GLOB ?", (LEGACY_COUNTER + "*",))

    def feed_seen(self, kind: str, barcode: str, day: str, connection: str = DEFAULT_CONNECTION) -> bool:
        """Whether that server's feed has journaled kind (retrieved, refiled) for barcode on day."""
        with self.db.lock:
            return (
                self.db.connection.execute(
                    "SELECT 1 FROM feed_seen WHERE kind = ? AND barcode = ? AND day = ?",
                    (feed_kind(kind, connection), barcode, day),
                ).fetchone()
                is not None
            )

    def remember_feed(self, kind: str, barcode: str, day: str, connection: str = DEFAULT_CONNECTION) -> None:
        with self.db.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO feed_seen VALUES (?, ?, ?, ?)",
                (feed_kind(kind, connection), barcode, day, self.db.clock()),
            )

    def forget_feed_before(self, day: str, connection: str = DEFAULT_CONNECTION) -> int:
        """Forget what that server's feed journaled for days before day (YYYYMMDD), which it reads no more;
        return how many rows went. The table then holds lookback_days + 1 days of each feed, however long it
        runs; another server's rows are left to its own feed (its lookback_days may be longer)."""
        arguments: tuple[str | int, ...]
        if connection == DEFAULT_CONNECTION:  # its kinds are the ones without a '/'
            sql, arguments = "DELETE FROM feed_seen WHERE day < ? AND instr(kind, '/') = 0", (day,)
        else:
            prefix = feed_kind("", connection)  # NAME/
            sql, arguments = (
                "DELETE FROM feed_seen WHERE day < ? AND substr(kind, 1, ?) = ?",
                (day, len(prefix), prefix),
            )
        with self.db.transaction() as db:
            return int(db.execute(sql, arguments).rowcount)
