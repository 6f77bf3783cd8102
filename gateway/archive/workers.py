"""The workers that place answered files: the finisher and the placer.

Finisher (one) places the files the upload workers answered, in the order they
were handed over, in batches (archive.placing.Placing.place_many), while the
upload workers send their next files. Placer (one) places the files whose placing
failed earlier (a folder that could not be written), once their backoff has passed.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from gateway.archive.placing import Placing
from gateway.core import logs
from gateway.core.errors import describe
from gateway.core.worker import Worker
from gateway.state.ledger import FileRow

log = logs.get("gateway.uploader")  # its lines were always the upload workers': scripts filter on the logger

IDLE_POLL_SECONDS = 1.0
PLACE_AT_MOST = 8  # files whose final paths the finisher records in one commit
HANDED_AT_MOST = 16  # answered files waiting for the finisher; an upload worker waits beyond that


class Finisher(Worker):
    """Places the files upload workers have answered, in the order they were handed over.

    The answer is durable before a file is handed over (docs/design.md, "Answer before placing"),
    so what the finisher has in hand at a crash is placed by recovery. Once it
    ends, hand() refuses and the upload workers place their files themselves;
    what it still held is placed before it ends.
    """

    def __init__(self, placing: Placing, name: str = "finisher", most: int = HANDED_AT_MOST):
        super().__init__(name=name)
        self.placing = placing
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
        self.placing.place_many(rows)

    def end(self) -> None:
        with self._lock:
            self._closed = True
            rows, self._rows = list(self._rows), collections.deque()
            self.room.set()
        for row in rows:
            try:
                self.placing.place(row)
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

    def __init__(
        self,
        placing: Placing,
        wake: threading.Event,
        name: str = "placer",
        clock: Callable[[], float] | None = None,
    ):
        """wake is set when a placing fails (Placing's on_failed): the placer looks again at once."""
        super().__init__(name=name)
        self.placing = placing
        self.clock = clock or placing.ledger.db.schedule  # the clock next_attempt_at is on, not the wall clock
        self.wake = wake

    def step(self) -> None:
        self.wake.clear()
        if self.placing.place_due():
            return
        due = self.placing.ledger.files.next_placement_due()
        wait = IDLE_POLL_SECONDS * 5 if due is None else min(max(due - self.clock(), 0.01), IDLE_POLL_SECONDS * 5)
        self.rest(wait, self.wake)
