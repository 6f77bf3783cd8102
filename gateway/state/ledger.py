"""The ledger: SQLite (WAL) record of every file the gateway has taken.

It is the one owner of state. A file's row moves through the states in
gateway.core.states (claiming -> claimed -> queued -> uploading -> answered ->
archiving/refusing -> archived/refused, or stuck). Each step is committed
before the file moves on, so after a crash every row says what to redo (see
pipeline.Pipeline.recover):

  claiming            the work file exists: it was claimed; else the claim is forgotten
  claimed             validated again
  uploading           back to queued (the upload is sent again: the answer was not recorded)
  answered            the verdict is durable: placed now (a name is reserved only after this)
  archiving/refusing  carry their reserved final path: finished there
  stuck               given one more try at placing

CaiaSoft's answer is recorded ('answered', with the verdict) before any name is
reserved or folder written, so a file CaiaSoft answered is never uploaded again
because placing it failed. A row whose placing fails keeps its state, with the
reason in `problem` and a later next_attempt_at (see pipeline.Pipeline.place).

The ledger is made of small parts, each a mixin of Ledger over one connection:

  ledgerdb.py      opening gateway.db, its lock and transactions, meta values
  ledgerschema.py  the tables, and migrating an older ledger
  transitions.py   the file-state transitions above
  filequeries.py   questions for recovery, status, find, alerts and metrics
  checkpoints.py   the NCIP journal's checkpoint (a file of its own) and the status feed's memory
  itemindex.py     each file's records and the barcode index
  monitorstore.py  alerts waiting to go out, and counters
  prunestore.py    the day folders retention removed, and the newest time recorded
  retiredstore.py  what is kept of the files of removed days (a row per item), the days being pruned

Transitions are committed by group commit (gateway/state/groupcommit.py): a method
returns once its change is durable, but the changes of all threads waiting at
once share one COMMIT. Only finished() (recovery redoes it) and a assign_due() that
its caller waits for later (before sending) do not wait. The NCIP relay's
checkpoint is not a ledger row but a small file the ledger hands out
(checkpoints.py): moving it costs one pwrite and one fdatasync per entry.
"""

from __future__ import annotations

from gateway.state.checkpoints import Checkpoints
from gateway.state.db import LedgerUnavailable
from gateway.state.filequeries import FileQueries
from gateway.state.filerow import FileRow, Seen, work_name
from gateway.state.itemindex import ItemIndex
from gateway.state.monitorstore import MonitorStore
from gateway.state.prunestore import PruneStore
from gateway.state.retiredstore import RetiredStore
from gateway.state.schema import SCHEMA_VERSION
from gateway.state.transitions import PLACE_LEASE_SECONDS, FileTransitions

__all__ = ["Ledger", "FileRow", "Seen", "work_name", "LedgerUnavailable", "SCHEMA_VERSION", "PLACE_LEASE_SECONDS"]


class Ledger(FileTransitions, FileQueries, Checkpoints, ItemIndex, MonitorStore, PruneStore, RetiredStore):
    """SQLite-backed state of every file. Thread-safe; safe to open from a second process.

    Ledger(path, clock=time.time) opens (or creates) the ledger at path; it raises LedgerDamaged
    if the file is not a readable SQLite database or holds no ledger, LedgerUnavailable if it cannot
    be opened now (see gateway.state.db.LedgerDb). Every page is verified by gateway.state.check.
    """
