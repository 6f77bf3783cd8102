"""What the NCIP side keeps: the journal tailer's checkpoint (with the relay's counts) and the feed's memory.

    state_dir/ncip-checkpoint  where the tailer is in the journal (device, inode, a fingerprint of
                 the file's head and its length, the offset of the next entry) and the entries
                 finished by outcome: a small file of two alternating records (gateway/state/checkpointfile.py),
                 so moving it after each entry costs one pwrite and one fdatasync, not a ledger commit
    feed_seen    (kind, barcode, day) the status feed has already written to the journal

Before that file existed, the checkpoint was a row of the checkpoints table (name 'ncip-journal')
and the counts rows of the counters table: the first open moves them into the file, then
deletes them, so the file is the only place either lives.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from gateway.state.checkpointfile import FILE_NAME, OUTCOMES, CheckpointFile, CheckpointMissing, read
from gateway.state.db import LedgerDb

LEGACY_CHECKPOINT = "ncip-journal"  # the checkpoints table's row before the file
LEGACY_COUNTER = "ncip_entries_total:"  # + outcome: the counters table's rows before the file
MADE = "ncip_checkpoint_made"  # meta: when the file was first made (a missing file is then an error)
_OPENING = threading.Lock()


class Checkpoints:
    """The NCIP checkpoint file and the feed memory (ledger.ncip)."""

    def __init__(self, db: LedgerDb):
        self.db = db
        self._journal_checkpoint: CheckpointFile | None = None

    def journal_checkpoint(self) -> CheckpointFile:
        """The relay's checkpoint file beside the ledger, opened once (created on the first call, from what an
        older ledger held, or afresh when an admin left an empty file). Raise CheckpointDamaged if neither of
        its records can be read, CheckpointMissing if it is gone although this ledger made it."""
        with _OPENING:  # not the ledger's lock: forgetting the old rows waits for the writer, which takes it
            if self._journal_checkpoint is None:
                path = self.db.path.parent / FILE_NAME
                made = self.db.get_meta(MADE)
                opened = CheckpointFile.open(path)
                if opened is None:
                    if made is not None and not path.exists():
                        raise CheckpointMissing(path, made)
                    opened = CheckpointFile.create(  # started over: the relay says so in its log
                        path, self._legacy_checkpoint(), self._legacy_counts(), started_over=made is not None
                    )
                if made is None:  # after the file is durable: a crash in between only sets it at the next start
                    self.db.set_meta(MADE, time.strftime("%Y-%m-%d %H:%M:%S %Z"))
                self._forget_legacy()
                with self.db.lock:
                    self._journal_checkpoint = opened
            return self._journal_checkpoint

    def count_ncip_entry(self, outcome: str) -> None:
        """One more journal entry finished with outcome (done, already, dead_letter): durable with the relay's
        next checkpoint, which follows it at once."""
        self.journal_checkpoint().count(outcome)

    def ncip_counts(self) -> dict[str, int]:
        """Entries finished by outcome, as this process counts them, else as the file or an older ledger says."""
        with self.db.lock:
            if self._journal_checkpoint is not None:
                return self._journal_checkpoint.counts()
        saved = read(self.db.path.parent / FILE_NAME)
        return saved.counts if saved is not None else {**dict.fromkeys(OUTCOMES, 0), **self._legacy_counts()}

    def close(self) -> None:
        """Close the checkpoint file, if it was opened (the ledger closes its database after this)."""
        with self.db.lock:
            if self._journal_checkpoint is not None:
                self._journal_checkpoint.close()

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

    def feed_seen(self, kind: str, barcode: str, day: str) -> bool:
        with self.db.lock:
            return (
                self.db.connection.execute(
                    "SELECT 1 FROM feed_seen WHERE kind = ? AND barcode = ? AND day = ?", (kind, barcode, day)
                ).fetchone()
                is not None
            )

    def remember_feed(self, kind: str, barcode: str, day: str) -> None:
        with self.db.transaction() as db:
            db.execute("INSERT OR IGNORE INTO feed_seen VALUES (?, ?, ?, ?)", (kind, barcode, day, self.db.clock()))

    def forget_feed_before(self, day: str) -> int:
        """Forget what the feed journaled for days before day (YYYYMMDD), which it reads no more; return how many
        rows went. The table then holds lookback_days + 1 days, however long the feed runs."""
        with self.db.transaction() as db:
            return int(db.execute("DELETE FROM feed_seen WHERE day < ?", (day,)).rowcount)
