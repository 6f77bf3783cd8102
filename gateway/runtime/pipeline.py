"""The request-file stages on one config, built together: claim -> validate -> upload -> answered -> placed.

  intake.admission.Admission  claims ready files into work/ and validates them: queued, or refused
  upload.sender.Sender        sends a queued file and makes CaiaSoft's answer durable
  archive.placing.Placing     puts each answered file in the archive or the error folder (the one way)
  archive.recovery            at start, finishes what a crash interrupted and hands placements back

Each stage records its step in the ledger before the next one starts. The workers
that drive them (collectors, upload workers, finisher, placer) are built in
runtime.parts; the `send` and `retry` commands use a Pipeline without workers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from gateway.archive import recovery
from gateway.archive.folders import Folder
from gateway.archive.placing import Placing
from gateway.config.settings import Settings
from gateway.core.backoff import Backoff, Gate
from gateway.core.states import FileState
from gateway.intake.admission import Admission
from gateway.monitor.events import NO_EVENTS, Events
from gateway.sources.base import Source
from gateway.state.ledger import FileRow, Ledger
from gateway.upload.caiasoft import CaiaSoftClient, Outcome
from gateway.upload.sender import Sender


class Pipeline:
    """The stages, sharing one ledger, one work/ folder and the sources (by name).

    queued is set whenever files are queued (it wakes the upload workers); place_failed
    whenever a placing failed (it wakes the placer).
    """

    def __init__(
        self,
        config: Settings,
        ledger: Ledger,
        client: CaiaSoftClient | None,
        clock: Callable[[], float] = time.time,
        gate: Gate | None = None,
        sources: dict[str, Source] | None = None,
        events: Events = NO_EVENTS,
    ):
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.work_dir = config.paths.work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.sources = dict(sources or {})  # where originals that stay after the take are checked
        self.gate = gate or Gate(config.caiasoft)  # the one retry policy for uploads (core.backoff)
        self.queued = threading.Event()
        self.place_failed = threading.Event()
        caiasoft = config.caiasoft
        self.placing = Placing(
            ledger,
            Folder(config.paths.archive_dir),
            Folder(config.paths.error_dir),
            self.work_dir,
            Backoff(caiasoft.backoff_initial_seconds, caiasoft.backoff_max_seconds),
            clock,
            events,
            on_failed=self.place_failed.set,
        )
        self.admission = Admission(
            config.intake, ledger, self.work_dir, self.sources, self.placing, on_queued=self.queued.set
        )
        self.sender = Sender(caiasoft, client, ledger, self.gate, self.work_dir, self.sources, events)

    def upload(self, row: FileRow) -> Outcome:
        """Send one 'uploading' row, record the answer and place the file (the `send` command, no workers)."""
        outcome = self.sender.send(row)
        answered = self.sender.save(row, outcome)
        if answered is not None:
            self.placing.place(answered)
        return outcome

    def recover(self) -> dict[str, int]:
        """Finish or resume everything a crash interrupted (archive.recovery), then validate the files a
        crash left claimed; return what was done, by kind."""
        done = recovery.recover(
            self.ledger,
            self.placing,
            self.sources,
            [source.name for source in self.config.sources if not source.is_sftp],
            self.config.caiasoft.backoff_max_seconds,
        )
        self.admission.admit_many([row.id for row in self.ledger.files.in_state(FileState.CLAIMED)])
        return done
