"""The ledger: SQLite (WAL) record of every file the gateway has taken.

It is the one owner of state. A file's row moves through the states in
gateway.core.states (claiming -> claimed -> queued -> uploading -> answered ->
archiving/refusing -> archived/refused, or stuck). Each step is committed
before the file moves on, so after a crash every row says what to redo (see
runtime.pipeline.Pipeline.recover):

  claiming            the work file exists: it was claimed; else the claim is forgotten
  claimed             validated again
  uploading           back to queued (the upload is sent again: the answer was not recorded)
  answered            the verdict is durable: placed now (a name is reserved only after this)
  archiving/refusing  carry their reserved final path: finished there
  stuck               given one more try at placing

CaiaSoft's answer is recorded ('answered', with the verdict) before any name is
reserved or folder written, so a file CaiaSoft answered is never uploaded again
because placing it failed. A row whose placing fails keeps its state, with the
reason in `problem` and a later next_attempt_at (see archive.placing).

The ledger is one object composed of its tables, each an object over the one
database (ledger.db, a LedgerDb: the connection, its lock, transactions, meta values):

  ledger.files    the files table: its questions (filequeries.py) and the transitions above (transitions.py)
  ledger.items    each file's records and the barcode index (itemindex.py)
  ledger.alerts   alerts waiting to go out, and counters (monitorstore.py)
  ledger.prunes   the day folders retention removed, and the newest time recorded (prunestore.py)
  ledger.retired  what is kept of the files of removed days (a row per item), the days being pruned
                  (retiredstore.py)
  ledger.ncip     the NCIP journal's checkpoint (a file of its own) and the status feed's memory
                  (checkpoints.py)
schema.py holds the tables and migrates an older ledger.

Transitions are committed by group commit (gateway/state/groupcommit.py): a method
returns once its change is durable, but the changes of all threads waiting at
once share one COMMIT. Only finished() (recovery redoes it) and a assign_due() that
its caller waits for later (before sending) do not wait. The NCIP relay's
checkpoint is not a ledger row but a small file the ledger hands out
(checkpoints.py): moving it costs one pwrite and one fdatasync per entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from gateway.core.backoff import STEADY
from gateway.state.checkpoints import Checkpoints
from gateway.state.db import LedgerDb, LedgerUnavailable
from gateway.state.filerow import FileRow, Seen, work_name
from gateway.state.itemindex import ItemIndex
from gateway.state.monitorstore import MonitorStore
from gateway.state.prunestore import PruneStore
from gateway.state.retiredstore import RetiredStore
from gateway.state.schema import SCHEMA_VERSION
from gateway.state.transitions import PLACE_LEASE_SECONDS, Files

__all__ = ["Ledger", "FileRow", "Seen", "work_name", "LedgerUnavailable", "SCHEMA_VERSION", "PLACE_LEASE_SECONDS"]


class Ledger:
    """SQLite-backed state of every file. Thread-safe; safe to open from a second process.

    Ledger(path, clock=time.time) opens (or creates) the ledger at path; it raises LedgerDamaged
    if the file is not a readable SQLite database or holds no ledger, LedgerUnavailable if it cannot
    be opened now (see gateway.state.db.LedgerDb). Every page is verified by gateway.state.check.
    """

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        check: bool = False,
        schedule: Callable[[], float] = STEADY,
    ):
        self.path = path
        self.db = LedgerDb(path, clock, check, schedule)
        self.files = Files(self.db)
        self.items = ItemIndex(self.db)
        self.alerts = MonitorStore(self.db)
        self.prunes = PruneStore(self.db)
        self.retired = RetiredStore(self.db)
        self.ncip = Checkpoints(self.db)

    def close(self) -> None:
        self.ncip.close()
        self.db.close()
