"""Sending request files to CaiaSoft and making the answers durable: the Sender and the upload workers.

The Sender is the upload stage: send() posts the file and reads the answer,
save() makes the answer durable in the ledger and tells the upload gate. It never
places a file: the answered row it returns goes to archive.placing (through the
Finisher, archive.workers), so there is one way to place a file.

Uploader (several, caiasoft.upload_workers) is assigned the oldest due file by the
ledger and drives the Sender, then hands the answered file to the Finisher, which
places it while the worker sends its next file.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from pathlib import Path

from gateway.archive import aftertake
from gateway.archive.placing import Placing
from gateway.archive.workers import IDLE_POLL_SECONDS, Finisher
from gateway.config.settings import CaiaSoft
from gateway.core import logs
from gateway.core.backoff import Gate
from gateway.core.errors import describe
from gateway.core.names import safe_name
from gateway.core.states import Verdict
from gateway.core.worker import Worker
from gateway.monitor.events import NO_EVENTS, Events
from gateway.sources.base import Source
from gateway.state.ledger import FileRow, Ledger
from gateway.upload.caiasoft import CaiaSoftClient, Outcome, counts_unreadable, settle_unreadable

log = logs.get("gateway.pipeline")  # its lines were always the pipeline's: scripts filter on the logger
worker_log = logs.get("gateway.uploader")

ASSIGN_AT_MOST = 4  # files the ledger assigns one worker in one commit, from a backlog


class Sender:
    """Sends 'uploading' rows with client and records CaiaSoft's answers.

    gate is the one retry policy for uploads (core.backoff), shared by every upload
    worker; sources are where originals that stay after the take are checked for
    changes before a file is sent.
    """

    def __init__(
        self,
        settings: CaiaSoft,
        client: CaiaSoftClient | None,
        ledger: Ledger,
        gate: Gate,
        work_dir: Path,
        sources: dict[str, Source],
        events: Events = NO_EVENTS,
    ):
        self.settings = settings
        self.client = client
        self.ledger = ledger
        self.gate = gate
        self.work_dir = work_dir
        self.sources = sources
        self.events = events

    def send(self, row: FileRow) -> Outcome:
        """POST the file and read the answer; never raises (an unexpected error refuses this file).

        An original that changed since it was taken is not sent: it is taken again, whole.
        """
        if self.client is None:
            raise RuntimeError("this pipeline was made without a CaiaSoft client; it cannot upload")
        work = self.work_dir / row.work_name
        try:
            size_now = aftertake.changed_since_take(row, self.sources, "before upload")
            if size_now is not None:
                return Outcome(Verdict.REFUSED, aftertake.reason(row, size_now))
            outcome = settle_unreadable(
                self.client.upload(work, safe_name(row.name), row.kind or "text"),
                row.answer_json,
                self.settings.unreadable_answer_retries,
                self.settings.table,
            )
            self.events.upload_timed(outcome.elapsed_ms / 1000, connection=self.settings.name)
            return outcome
        except Exception as error:
            log.error(
                "upload.failed",
                connection=row.connection,
                id=row.id,
                file=row.name,
                error=describe(error),
                exc_info=(type(error), error, error.__traceback__),
            )
            if isinstance(error, OSError) and error.filename == str(work):
                return Outcome(
                    Verdict.REFUSED,
                    f"the gateway could not open it in work/ ({describe(error)}); it "
                    "was not sent: fix the cause, then `retry`",
                )
            return Outcome(
                Verdict.REFUSED,
                f"the gateway failed while sending it ({describe(error)}); it may "
                "have reached CaiaSoft: check there before `retry`",
            )

    def save(self, row: FileRow, outcome: Outcome) -> FileRow | None:
        """Make the answer durable and tell the gate; return the answered row, to be placed, if any."""
        fields = dict(
            id=row.id,
            connection=row.connection,
            source=row.source,
            file=row.name,
            sha256=row.sha256,
            attempt=row.attempts,
            status=outcome.http_status,
            ms=outcome.elapsed_ms,
        )
        if outcome.verdict == Verdict.TRANSIENT:
            delay = self.gate.failed(outcome.retry_after, row.attempts, outcome.reason)
            log.warning("upload.retry", **fields, reason=outcome.reason, retry_in=round(delay, 2))
            self.ledger.files.requeue(
                row.id,
                outcome.reason,
                self.ledger.db.schedule() + delay,
                outcome.http_status,
                answer=outcome.answer if counts_unreadable(outcome) else None,
            )
            return None
        if outcome.verdict == Verdict.PAUSED:  # the key or URL is wrong; the file waits, unharmed
            self.gate.pause(outcome.reason)
            self.ledger.files.requeue_paused(row.id, outcome.reason, outcome.http_status)
            return None
        if outcome.http_status is not None:
            self.gate.succeeded()
        if outcome.verdict == Verdict.ACCEPTED:
            log.info("upload.ok", **fields, denied=len(outcome.denials))
            for item in outcome.denials:
                log.warning(
                    "upload.item_denied",
                    connection=row.connection,
                    id=row.id,
                    file=row.name,
                    item=item.get("item"),
                    istatus=item.get("istatus"),
                )
            verdict = Verdict.ACCEPTED
        else:
            log.warning("upload.refused", **fields, reason=outcome.reason)
            verdict = Verdict.REFUSED
        return self.ledger.files.answered(
            row.id,
            verdict,
            outcome.reason,
            http_status=outcome.http_status,
            answer=outcome.answer,
            uploaded=outcome.http_status is not None,
        )


class Uploader(Worker):
    """One upload worker of a CaiaSoft connection (its sender's). They start its uploads in the order files
    arrived; each connection has workers of its own, so a backlog on one never waits for another's.

    From a backlog a worker is assigned several due files in one ledger commit (its share
    of what is due, at most ASSIGN_AT_MOST) and sends them one after the other; files
    assigned but not sent go back to the queue when uploads pause or the worker stops.
    Once the last of them is answered, it is assigned the next ones, if more files are due
    than there are workers (a backlog: no idle worker is kept from them), in the
    commit that saves that answer, so the assignment costs no wait of its own; its files
    are sent only once that commit is durable.
    It checks in at least every CHECK_IN_SECONDS except while an upload is on the
    wire, so an upload stuck longer than the watchdog period shows as hung. An
    answer the ledger could not save (locked, disk full) is kept and saved
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
        self.gate = sender.gate  # shared by every upload worker of the connection
        self.connection = sender.settings.name
        self.placing = placing
        self.finisher = finisher  # places answered files; without one (or once it has ended) placed here
        self.wake = wake or threading.Event()
        self.clock = clock or sender.ledger.db.schedule  # the clock next_attempt_at is on, not the wall clock
        self.workers = workers
        self._unsaved: tuple[FileRow, Outcome] | None = None
        self._assigned: collections.deque[FileRow] = collections.deque()
        self._next: tuple[int, list[FileRow]] | None = None  # assigned in a commit not yet waited for: (commit, rows)

    def step(self) -> None:
        if self._unsaved is not None:
            self._save(*self._unsaved)
            return
        closed_for = self.gate.wait_seconds()
        if closed_for:
            self._give_back()
            self.rest(closed_for)
            return
        ledger = self.ledger
        if not self._assigned and self._next is not None:
            commit, rows = self._next
            self._next = None
            ledger.db.wait_for(commit)  # almost always durable by now; if that commit failed, they were never assigned
            self._assigned.extend(rows)
        if not self._assigned:
            self.wake.clear()
            self._assigned.extend(
                ledger.files.assign_due(self.clock(), self.workers, ASSIGN_AT_MOST, connection=self.connection)
            )
            if not self._assigned:
                due = ledger.files.next_due_at(self.connection)
                self.rest(
                    IDLE_POLL_SECONDS if due is None else min(max(due - self.clock(), 0.01), IDLE_POLL_SECONDS * 5),
                    self.wake,
                )
                return
        row = self._assigned.popleft()
        outcome = self.sender.send(row)
        self._unsaved = (row, outcome)
        if not self._assigned and self._next is None and outcome.verdict not in (Verdict.TRANSIENT, Verdict.PAUSED):
            self._assign_ahead()
        self._save(row, outcome)

    def _assign_ahead(self) -> None:
        """The last file in hand is answered: be assigned the next ones in the commit that saves its answer.

        Only from a backlog (more files due than workers). Not waited for here: the
        answer's commit is (this assignment joins it, or the one before), and the assignment is
        waited for again before any of its files is sent.
        """
        ledger = self.ledger
        rows = ledger.files.assign_due(
            self.clock(), self.workers, ASSIGN_AT_MOST, beyond=self.workers, wait=False, connection=self.connection
        )
        if rows:
            self._next = (ledger.db.durable(), rows)

    def end(self) -> None:
        self._give_back()

    def _give_back(self) -> None:
        if self._next is not None:
            commit, rows = self._next
            self._next = None
            self.ledger.db.wait_for(commit)  # if that commit failed, they were never assigned: not ours to unassign
            self._assigned.extend(rows)
        if self._assigned:
            self.ledger.files.unassign(*(row.id for row in self._assigned))
            self._assigned.clear()

    def _save(self, row: FileRow, outcome: Outcome) -> None:
        answered = self.sender.save(row, outcome)
        self._unsaved = None
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
