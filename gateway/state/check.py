"""Every page of the ledger verified at a quiet moment, not when the service starts.

SQLite's quick_check reads the whole file: about a second per GB, and a ledger that kept
five years of history is about a GB. Opening the ledger only checks that the file is a
database holding the gateway's tables (gateway.state.db); this worker verifies every page,
on a read-only connection of its own (WAL readers block no writer, and the ledger's own
connection is never held), FIRST_SECONDS after the start and then every EVERY_SECONDS.
A damaged page ends the worker as a damaged ledger, so the service stops with exit 2 and
names the file, as it would had the damage been found at the start.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from gateway.core import logs
from gateway.core.worker import Worker
from gateway.state.db import verify

FIRST_SECONDS = 60.0  # after the start: start-up work is over by then
EVERY_SECONDS = 86400.0  # then once a day

log = logs.get("gateway.ledgercheck")


class LedgerCheck(Worker):
    def __init__(self, path: Path, first_seconds: float = FIRST_SECONDS, every_seconds: float = EVERY_SECONDS):
        super().__init__(name="ledger-check")
        self.path = path
        self.first_seconds = first_seconds
        self.every_seconds = every_seconds
        self.verified: float | None = None  # when every page was last found sound (time.time())
        self._waited = False

    def step(self) -> None:
        if not self._waited:
            self._waited = True
            self.rest(self.first_seconds)
            return
        problem = verify(self.path)
        if problem:  # contained as a damaged ledger (gateway.core.worker): the service exits 2 naming the file
            raise sqlite3.DatabaseError(problem)
        self.verified = time.time()
        log.info("ledger.verified", path=str(self.path))
        self.rest(self.every_seconds)
