"""The upload workers.

Uploader (several, caiasoft.upload_workers) takes the oldest due file from the
ledger, sends it and records CaiaSoft's answer (upload.sender.Sender), and hands
the answered file to the Finisher (archive.workers), which places it while the
worker sends its next file.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from gateway.archive.placing import Placing
from gateway.archive.workers import IDLE_POLL_SECONDS, Finisher
from gateway.core import logs
from gateway.core.states import Verdict
from gateway.core.worker import Worker
from gateway.state.ledger import FileRow
from gateway.upload.caiasoft import Outcome
from gateway.upload.sender import Sender

log = logs.get("gateway.uploader")

TAKE_AT_MOST = 4  # files one worker takes from the ledger in one commit, from a backlog


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
        sender: Sender,
        placing: Placing,
        wake: threading.Event | None = None,
        name: str = "uploader",
        clock: Callable[[], float] | None = None,
        workers: int = 1,
        finisher: Finisher | None = None,
    ):
        super().__init__(name=name)
        self.sender = sender
        self.ledger = sender.ledger
        self.gate = sender.gate  # shared by every upload worker
        self.placing = placing
        self.finisher = finisher  # places answered files; without one (or once it has ended) placed here
        self.wake = wake or threading.Event()
        self.clock = clock or sender.ledger.schedule  # the clock next_attempt_at is on, not the wall clock
        self.workers = workers
        self._unrecorded: tuple[FileRow, Outcome] | None = None
        self._taken: collections.deque[FileRow] = collections.deque()
        self._next: tuple[int, list[FileRow]] | None = None  # taken in a commit not yet waited for: (commit, rows)

    def step(self) -> None:
        if self._unrecorded is not None:
            self._record(*self._unrecorded)
            return
        closed_for = self.gate.wait_seconds()
        if closed_for:
            self._give_back()
            self.rest(closed_for)
            return
        ledger = self.ledger
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
        outcome = self.sender.send(row)
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
        ledger = self.ledger
        rows = ledger.take_due(self.clock(), self.workers, TAKE_AT_MOST, beyond=self.workers, wait=False)
        if rows:
            self._next = (ledger.durable(), rows)

    def end(self) -> None:
        self._give_back()

    def _give_back(self) -> None:
        if self._next is not None:
            commit, rows = self._next
            self._next = None
            self.ledger.wait_for(commit)  # if that commit failed, they were never taken: not ours to untake
            self._taken.extend(rows)
        if self._taken:
            self.ledger.untake(*(row.id for row in self._taken))
            self._taken.clear()

    def _record(self, row: FileRow, outcome: Outcome) -> None:
        answered = self.sender.record(row, outcome)
        self._unrecorded = None
        if answered is not None and not self._hand(answered):
            self.placing.place(answered)

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
