"""What the NCIP side keeps in the ledger: the journal tailer's checkpoint and the status feed's memory.

    checkpoints  name -> where the tailer is in the journal: device, inode, a fingerprint of the
                 file's head (and its length), the offset of the next entry
    feed_seen    (kind, barcode, day) the status feed has already written to the journal
"""

from __future__ import annotations

from typing import Any

from gateway.ledgerdb import LedgerDb


class Checkpoints(LedgerDb):
    """The ledger's checkpoints and feed memory (mixed into Ledger)."""

    def checkpoint(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT device, inode, fingerprint, fingerprint_length, offset FROM checkpoints "
                                   "WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def set_checkpoint(self, name: str, device: int, inode: int, fingerprint: str, fingerprint_length: int,
                       offset: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                       "device = excluded.device, inode = excluded.inode, fingerprint = excluded.fingerprint, "
                       "fingerprint_length = excluded.fingerprint_length, offset = excluded.offset, "
                       "updated_at = excluded.updated_at",
                       (name, device, inode, fingerprint, fingerprint_length, offset, self.clock()))

    def feed_seen(self, kind: str, barcode: str, day: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM feed_seen WHERE kind = ? AND barcode = ? AND day = ?",
                                    (kind, barcode, day)).fetchone() is not None

    def remember_feed(self, kind: str, barcode: str, day: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO feed_seen VALUES (?, ?, ?, ?)", (kind, barcode, day, self.clock()))
