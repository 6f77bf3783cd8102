"""Group commit: the ledger's transitions from every thread, made durable together.

Each transition runs in the calling thread, inside one shared SQLite transaction
and its own SAVEPOINT (so one that fails is rolled back alone), while holding the
ledger's lock only for its few statements. It then waits for the commit. One
writer thread commits whatever has gathered: one COMMIT, one fsync (synchronous
stays FULL) for all the transitions that joined the batch, then wakes their
threads. A caller returns only once its batch is durable, as before: only the cost
of an fsync is shared, not the guarantee. A failed COMMIT (disk full, I/O error)
is raised in every thread of the batch, and nothing of it is kept.

The writer lets the transitions already on their way in (waiting for the lock)
join the open batch before it commits, for at most GATHER_SECONDS: while a COMMIT
holds the lock, the next transitions queue up behind it, and they then share the
next COMMIT instead of each paying its own. Only the writer is woken when a
transition ends; the waiting threads are woken once, when their batch is durable.

A transition may also be lazy (wait=False): it joins the next commit but its
thread does not wait for it. Only a step that recovery can redo is lazy (a row
moved to archived after its file and sidecar are already in place and synced),
or one whose thread waits for it later, before anything depends on it
(durable(): the batch it joined, to wait for with wait_for()). A batch of lazy
transitions alone is committed once a waited transition joins it, someone waits
for it, or LAZY_SECONDS after the first of them ended: lazy steps ride the
commits others wait for instead of each costing an fsync (and holding the lock
meanwhile) of their own.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SAVEPOINT = "transition"
GATHER_SECONDS = 0.002  # longest the writer waits for transitions on their way in before it commits
LAZY_SECONDS = 0.02  # longest a batch of lazy transitions alone waits for one to share its commit with
FAILURES_KEPT = 4096  # failed COMMITs remembered for wait_for(); only failures count, not the batches between


class CommitForgotten(sqlite3.OperationalError):
    """wait_for() a batch so old that whether its COMMIT failed is no longer known: taken as failed."""


class GroupCommit:
    """Transactions on db (guarded by lock) committed in batches by one writer thread."""

    def __init__(
        self,
        db: sqlite3.Connection,
        lock: threading.RLock,
        name: str = "ledger-writer",
        before_commit: Callable[[], object] = lambda: None,
    ):
        self._db = db
        self._before_commit = before_commit  # tests hold the writer here to gather a known batch
        self._lock = lock
        self._batch = 0  # id of the batch now open (or last opened)
        self._open = False  # a BEGIN is outstanding
        self._committed = 0  # every batch up to this id is durable (or failed)
        self._failures: dict[int, BaseException] = {}  # the last FAILURES_KEPT failed batches, by id
        self._forgotten = 0  # the newest failed batch no longer in _failures
        guard = threading.Lock()
        self._signal = threading.Condition(guard)  # batches committed: the waiting threads
        self._wake = threading.Condition(guard)  # a transition ended or the ledger closes: the writer
        self._pending = False  # a transition of the open batch has ended: the batch is to be committed
        self._pending_since = 0.0  # when the first of them ended (time.monotonic)
        self._wanted = False  # somebody waits for the open batch: commit it now
        self._entering = 0  # transitions on their way in (waiting for the lock, or running)
        self._closing = False
        self._local = threading.local()
        self._writer = threading.Thread(target=self._commit_loop, name=name, daemon=True)
        self._writer.start()

    @contextmanager
    def transaction(self, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """Run the body inside the shared transaction; on leaving, wait until it is durable (unless not wait).

        Raise what the body raised (its statements are rolled back alone), or what the
        BEGIN or the batch's COMMIT raised. Without wait, the batch it joined is
        durable() afterwards, for wait_for().
        """
        depth = getattr(self._local, "depth", 0)
        if depth:  # nested in a transition of this thread: part of it
            self._local.depth = depth + 1
            try:
                yield self._db
            finally:
                self._local.depth = depth
            return
        with self._signal:
            self._entering += 1
        try:
            self._lock.acquire()
        except BaseException:
            self._left()
            raise
        try:
            if not self._open:
                self._db.execute("BEGIN IMMEDIATE")  # a failure leaves nothing open, and the lock is released
                self._open = True
                self._batch += 1
            batch = self._local.batch = self._batch
            self._db.execute(f"SAVEPOINT {SAVEPOINT}")
            self._local.depth = 1
            try:
                yield self._db
            except BaseException:
                self._db.execute(f"ROLLBACK TO {SAVEPOINT}")
                self._db.execute(f"RELEASE {SAVEPOINT}")
                raise
            else:
                self._db.execute(f"RELEASE {SAVEPOINT}")
            finally:
                self._local.depth = 0
        finally:
            self._lock.release()
            self._left(ended=True, waits=wait)
        if wait:
            self.wait_for(batch)

    def _left(self, ended: bool = False, waits: bool = False) -> None:
        """A transition is out of the lock: the writer hears of it (and, if it ended, of a batch to commit)."""
        with self._wake:
            self._entering -= 1
            # the writer hears of the first transition of a batch to end (lazy: it starts its LAZY_SECONDS),
            # of the first that waits, and then of those on their way in
            wanted = ended and (not self._pending or (waits and not self._wanted)) or not self._entering
            if ended and not self._pending:
                self._pending, self._pending_since = True, time.monotonic()
            if ended and waits:
                self._wanted = True
            if wanted:
                self._wake.notify()

    def durable(self) -> int:
        """The batch this thread's last transition joined: wait_for() it before anything relies on that step."""
        batch: int = self._local.batch
        return batch

    def wait_for(self, batch: int) -> None:
        """Return once batch is durable (at once if it is already); raise what its COMMIT raised."""
        with self._signal:
            if self._committed < batch and not self._wanted:
                self._wanted = True  # a lazy batch: commit it now
                self._wake.notify()
            self._signal.wait_for(lambda: self._committed >= batch)
            failure = self._failures.get(batch)
            if failure is None and batch <= self._forgotten:
                failure = CommitForgotten(f"whether the ledger's commit {batch} failed is no longer known")
        if failure is not None:
            raise failure

    def _commit_loop(self) -> None:
        while True:
            with self._wake:
                while not (self._wanted or self._closing):  # a lazy batch alone waits for company
                    left = self._pending_since + LAZY_SECONDS - time.monotonic() if self._pending else None
                    if left is not None and left <= 0:
                        break
                    self._wake.wait(left)
                if not self._pending and self._closing:
                    return
                if self._entering and not self._closing:  # let those on their way in join this batch
                    deadline = time.monotonic() + GATHER_SECONDS
                    while self._entering and (left := deadline - time.monotonic()) > 0:
                        self._wake.wait(left)
                self._pending = self._wanted = False
            self._before_commit()
            self._commit()

    def _commit(self) -> None:
        with self._lock:  # no transition is between its statements now
            if not self._open:
                return
            batch, failure = self._batch, None
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                failure = error
                with contextlib.suppress(sqlite3.Error):  # COMMIT may have rolled back already
                    self._db.execute("ROLLBACK")
            self._open = False
        with self._signal:
            if failure is not None:
                self._failures[batch] = failure.with_traceback(None)
                if len(self._failures) > FAILURES_KEPT:  # a lazy step's thread may wait for it much later
                    oldest = min(self._failures)
                    del self._failures[oldest]
                    self._forgotten = oldest
            self._committed = batch
            self._signal.notify_all()

    def close(self) -> None:
        """Commit what is waiting, then stop the writer."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._writer.join()
        self._commit()
