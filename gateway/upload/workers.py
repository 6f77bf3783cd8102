"""The output side of the request-file pipeline: upload workers, the finisher and the placer.

Uploader (several, caiasoft.upload_workers) takes the oldest due file from the
ledger, sends it, records CaiaSoft's answer and hands the answered file to the
Finisher (one), which places it (sidecar, archive or error folder) while the
worker sends its next file. Placer (one) places the files whose placing failed
earlier (a folder that could not be written), once their backoff has passed.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from gateway.core import logs
from gateway.core.backoff import Gate
from gateway.core.errors import describe
from gateway.core.states import Verdict
from gateway.core.worker import Worker
from gateway.runtime.pipeline import Pipeline
from gateway.state.ledger import FileRow
from gateway.upload.caiasoft import Outcome

log = logs.get("gateway.uploader")

IDLE_POLL_SECONDS = 1.0
TAKE_AT_MOST = 4  # files one worker takes from the ledger in one commit, from a backlog
PLACE_AT_MOST = 8  # files whose final paths the finisher records in one commit
HANDED_AT_MOST = 16  # answered files waiting for the finisher; an upload worker waits beyond that


class Uploader(Worker):
    """One upload worker. They start uploads in the order files arrived.

    From a backlog a worker takes several due files in one ledger commit (its share
    of what is due, at most TAKE_AT_MOST) and sends them one after the other; files
    taken but not sent go back to the queue when uploads pause or the worker stops.
    Once the last of them is answered, it takes the next ones, if more files are due
    than there are workers (a backlog: no idle worker is kept from them), in the
    commit that records that answer, so the take costs no wait of its own; its files
    are sent only once that commit is durable.
    It checks in at least every CHECK_IN_SECONDS except while an upload is on the
    wire, so an upload stuck longer than the watchdog period shows as hung. An
    answer the ledger could not record (locked, disk full) is kept and recorded
    first at the next step, so it is never lost to a retry.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        gate: Gate | None = None,
        wake: threading.Event | None = None,
        name: str = "uploader",
        clock: Callable[[], float] | None = None,
        workers: int = 1,
        finisher: Finisher | None = None,
    ):
        super().__init__(name=name)
        self.pipeline = pipeline
        self.finisher = finisher  # places answered files; without one (or once it has ended) placed here
        if gate is not None:
            pipeline.gate = gate
        self.wake = wake or threading.Event()
        self.clock = clock or pipeline.ledger.schedule  # the clock next_attempt_at is on, not the wall clock
        self.workers = workers
        self._unrecorded: tuple[FileRow, Outcome] | None = None
        self._taken: collections.deque[FileRow] = collections.deque()
        self._next: tuple[int, list[FileRow]] | None = None  # taken in a commit not yet waited for: (commit, rows)

    @property
    def gate(self) -> Gate:
        return self.pipeline.gate

    def step(self) -> None:
        if self._unrecorded is not None:
            self._record(*self._unrecorded)
            return
        closed_for = self.gate.wait_seconds()
        if closed_for:
            self._give_back()
            self.rest(closed_for)
            return
        ledger = self.pipeline.ledger
        if not self._taken and self._next is not None:
            commit, rows = self._next
            self._next = None
            ledger.wait_for(commit)  # almost always durable by now; if that commit failed, they were never taken
            self._taken.extend(rows)
        if not self._taken:
            self.wake.clear()
            self._taken.extend(ledger.take_due(self.clock(), self.workers, TAKE_AT_MOST))
            if not self._taken:
                due = ledger.next_due_at()
                self.rest(
                    IDLE_POLL_SECONDS if due is None else min(max(due - self.clock(), 0.01), IDLE_POLL_SECONDS * 5),
                    self.wake,
                )
                return
        row = self._taken.popleft()
        outcome = self.pipeline.send(row)
        self._unrecorded = (row, outcome)
        if not self._taken and self._next is None and outcome.verdict not in (Verdict.TRANSIENT, Verdict.PAUSED):
            self._take_ahead()
        self._record(row, outcome)

    def _take_ahead(self) -> None:
        """The last file in hand is answered: take the next ones in the commit that records its answer.

        Only from a backlog (more files due than workers). Not waited for here: the
        answer's commit is (this take joins it, or the one before), and the take is
        waited for again before any of its files is sent.
        """
        ledger = self.pipeline.ledger
        rows = ledger.take_due(self.clock(), self.workers, TAKE_AT_MOST, beyond=self.workers, wait=False)
        if rows:
            self._next = (ledger.durable(), rows)

    def end(self) -> None:
        self._give_back()

    def _give_back(self) -> None:
        if self._next is not None:
            commit, rows = self._next
            self._next = None
            self.pipeline.ledger.wait_for(commit)  # if that commit failed, they were never taken: not ours to untake
            self._taken.extend(rows)
        if self._taken:
            self.pipeline.ledger.untake(*(row.id for row in self._taken))
            self._taken.clear()

    def _record(self, row: FileRow, outcome: Outcome) -> None:
        answered = self.pipeline.record(row, outcome)
        self._unrecorded = None
        if answered is not None and not self._hand(answered):
            self.pipeline.place(answered)

    def _hand(self, row: FileRow) -> bool:
        """Hand an answered row to the finisher, resting while its queue is full; False: place it here."""
        while self.finisher is not None:
            handed = self.finisher.offer(row)
            if handed is not None:
                return handed
            if self.stopping:
                return False  # no waiting for room on the way out
            self.rest(IDLE_POLL_SECONDS, self.finisher.room)
        return False


class Finisher(Worker):
    """Places the files upload workers have answered, in the order they were handed over.

    The answer is durable before a file is handed over (ARCHITECTURE guarantee 7),
    so what the finisher has in hand at a crash is placed by recovery. Once it
    ends, hand() refuses and the upload workers place their files themselves;
    what it still held is placed before it ends.
    """

    def __init__(self, pipeline: Pipeline, name: str = "finisher", most: int = HANDED_AT_MOST):
        super().__init__(name=name)
        self.pipeline = pipeline
        self.most = most
        self.wake = threading.Event()
        self.room = threading.Event()  # set while fewer than most rows are queued, or once ended
        self.room.set()
        self._rows: collections.deque[FileRow] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    def offer(self, row: FileRow) -> bool | None:
        """Queue an answered row to be placed: True if queued, False once ended, None while HANDED_AT_MOST are
        queued (room is set again when there is room)."""
        with self._lock:
            if self._closed:
                return False
            if len(self._rows) >= self.most:
                self.room.clear()
                return None
            self._rows.append(row)
        self.wake.set()
        return True

    def step(self) -> None:
        """Place what has been handed over, with the final paths of up to PLACE_AT_MOST files in one commit.

        A ledger fault (the worker pauses) leaves the files of this step answered, their
        answers durable: the Placer takes them once their lease runs out, or recovery does.
        """
        self.wake.clear()
        with self._lock:
            rows = [self._rows.popleft() for _ in range(min(len(self._rows), PLACE_AT_MOST))]
            self.room.set()
        if not rows:
            self.rest(IDLE_POLL_SECONDS * 5, self.wake)
            return
        self.pipeline.place_many(rows)

    def end(self) -> None:
        with self._lock:
            self._closed = True
            rows, self._rows = list(self._rows), collections.deque()
            self.room.set()
        for row in rows:
            try:
                self.pipeline.place(row)
            except Exception as error:  # the ledger: the row stays answered, and recovery places it at the next start
                log.error(
                    "file.place_deferred",
                    id=row.id,
                    file=row.name,
                    error=describe(error),
                    detail="its answer is recorded; it is placed at the next start",
                )


class Placer(Worker):
    """Places files whose placing failed (the folder could not be written), each after its backoff."""

    def __init__(self, pipeline: Pipeline, name: str = "placer", clock: Callable[[], float] | None = None):
        super().__init__(name=name)
        self.pipeline = pipeline
        self.clock = clock or pipeline.ledger.schedule  # the clock next_attempt_at is on, not the wall clock
        self.wake = threading.Event()
        pipeline.on_place_failed = self.wake.set

    def step(self) -> None:
        self.wake.clear()
        if self.pipeline.place_due():
            return
        due = self.pipeline.ledger.next_placement_due()
        wait = IDLE_POLL_SECONDS * 5 if due is None else min(max(due - self.clock(), 0.01), IDLE_POLL_SECONDS * 5)
        self.rest(wait, self.wake)
