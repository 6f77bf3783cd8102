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

    Each CaiaSoft connection has its own sender, with its own client and gate (its backoff and
    pause): client is the default connection's, clients those of the others (by name).
    Each connection's wake event is set whenever files are queued (it wakes its upload workers;
    queued is the default connection's); place_failed whenever a placing failed (it wakes the placer).
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
        clients: dict[str, CaiaSoftClient] | None = None,
    ):
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.work_dir = config.paths.work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.sources = dict(sources or {})  # where originals that stay after the take are checked
        self.wakes = {connection.name: threading.Event() for connection in config.connections}
        self.queued = self.wakes[config.caiasoft.name]
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
            config.intake,
            ledger,
            self.work_dir,
            self.sources,
            self.placing,
            on_queued=self._wake_uploaders,
            connections={source.name: source.caiasoft for source in config.sources},
        )
        # the one retry policy for uploads (core.backoff), one per connection
        self.gates = {connection.name: Gate(connection, name=connection.name) for connection in config.connections}
        if gate is not None:
            self.gates[caiasoft.name] = gate
        every_client = {caiasoft.name: client, **(clients or {})}
        self.senders = {
            connection.name: Sender(
                connection,
                every_client.get(connection.name),
                ledger,
                self.gates[connection.name],
                self.work_dir,
                self.sources,
                events,
            )
            for connection in config.connections
        }
        self.gate = self.gates[caiasoft.name]
        self.sender = self.senders[caiasoft.name]

    def _wake_uploaders(self) -> None:
        for wake in self.wakes.values():
            wake.set()

    def upload(self, row: FileRow) -> Outcome:
        """Send one 'uploading' row, record the answer and place the file (the `send` command, no workers)."""
        sender = self.senders.get(row.connection)
        if sender is None:
            raise LookupError(f"CaiaSoft connection {row.connection!r} is not in the config")
        outcome = sender.send(row)
        answered = sender.save(row, outcome)
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
