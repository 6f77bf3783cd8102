"""The output side of the request-file pipeline: upload workers and the placer.

Uploader (several, caiasoft.upload_workers) takes the oldest due file from the
ledger, sends it, records CaiaSoft's answer and places the file. Placer (one)
places the files whose placing failed earlier (a folder that could not be
written), once their backoff has passed.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from gateway.backoff import Gate
from gateway.caiasoft import Outcome
from gateway.ledger import FileRow
from gateway.pipeline import Pipeline
from gateway.worker import Worker

IDLE_POLL_SECONDS = 1.0


class Uploader(Worker):
    """One upload worker. They start uploads in the order files arrived.

    It checks in at least every CHECK_IN_SECONDS except while an upload is on
    the wire, so an upload stuck longer than the watchdog period shows as hung.
    An answer the ledger could not record (locked, disk full) is kept and
    recorded first at the next step, so it is never lost to a retry.
    """

    def __init__(self, pipeline: Pipeline, gate: Gate | None = None, wake: threading.Event | None = None,
                 name: str = "uploader", clock: Callable[[], float] = time.time):
        super().__init__(name=name)
        self.pipeline = pipeline
        if gate is not None:
            pipeline.gate = gate
        self.wake = wake or threading.Event()
        self.clock = clock
        self._unrecorded: tuple[FileRow, Outcome] | None = None

    @property
    def gate(self) -> Gate:
        return self.pipeline.gate

    def step(self) -> None:
        if self._unrecorded is not None:
            self._record(*self._unrecorded)
            return
        closed_for = self.gate.wait_seconds()
        if closed_for:
            self.rest(closed_for)
            return
        self.wake.clear()
        ledger = self.pipeline.ledger
        row = ledger.take_next(self.clock())
        if row is None:
            due = ledger.next_due_at()
            self.rest(IDLE_POLL_SECONDS if due is None else min(max(due - self.clock(), 0.01), IDLE_POLL_SECONDS * 5),
                      self.wake)
            return
        self._unrecorded = (row, self.pipeline.send(row))
        self._record(*self._unrecorded)

    def _record(self, row: FileRow, outcome: Outcome) -> None:
        answered = self.pipeline.record(row, outcome)
        self._unrecorded = None
        if answered is not None:
            self.pipeline.place(answered)


class Placer(Worker):
    """Places files whose placing failed (the folder could not be written), each after its backoff."""

    def __init__(self, pipeline: Pipeline, name: str = "placer", clock: Callable[[], float] = time.time):
        super().__init__(name=name)
        self.pipeline = pipeline
        self.clock = clock
        self.wake = threading.Event()
        pipeline.on_place_failed = self.wake.set

    def step(self) -> None:
        self.wake.clear()
        if self.pipeline.place_due():
            return
        due = self.pipeline.ledger.next_placement_due()
        wait = IDLE_POLL_SECONDS * 5 if due is None else min(max(due - self.clock(), 0.01), IDLE_POLL_SECONDS * 5)
        self.rest(wait, self.wake)
