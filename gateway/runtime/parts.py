"""The parts that run on one config: collectors, upload workers, finisher, placer, NCIP relay and feed.

The service (service.py) builds one Parts per config, starts it, asks it how its
workers are, and stops it; after SIGHUP it builds a new one beside the old, whose
uploads in hand end on their own deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway import sources
from gateway.archive.workers import Finisher, Placer
from gateway.config.loader import Config
from gateway.core.backoff import Gate
from gateway.core.worker import Worker
from gateway.intake.collector import Collector
from gateway.monitor.events import Conditions
from gateway.monitor.monitor import Monitor
from gateway.runtime.pipeline import Pipeline
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient
from gateway.upload.sender import Uploader

if TYPE_CHECKING:  # imported with [ncip] only: a run without it starts sooner
    from gateway.ncip.feed import Feed
    from gateway.ncip.relay import Relay


class Parts:
    """Everything that runs on one config: the request-file pipeline and, with [ncip], the relay.

    on_exit is called (from the worker's thread) whenever one of its workers ends.
    """

    def __init__(self, config: Config, ledger: Ledger, on_exit: Callable[[Worker], None] | None = None):
        self.config = config
        self.on_exit = on_exit
        self.client = CaiaSoftClient(config.caiasoft, config.api_key)
        self.gate = Gate(config.caiasoft)
        self.monitor = Monitor(config, ledger, live=self.conditions)  # alerts and metrics: the parts tell it
        found = {settings.name: sources.build(settings, config) for settings in config.sources}
        self.pipeline = Pipeline(config, ledger, self.client, gate=self.gate, sources=found, events=self.monitor)
        placing = self.pipeline.placing
        self.finisher = Finisher(placing)
        self.uploaders = [
            Uploader(
                self.pipeline.sender,
                placing,
                wake=self.pipeline.queued,
                name=f"uploader-{number}",
                workers=config.caiasoft.upload_workers,
                finisher=self.finisher,
            )
            for number in range(1, config.caiasoft.upload_workers + 1)
        ]
        self.placer = Placer(placing, wake=self.pipeline.place_failed)
        self.collectors = [
            Collector(
                found[settings.name],
                settings.settle_seconds,
                self.pipeline.admission,
                placing,
                grace_seconds=settings.incomplete_grace_seconds,
                marker_mode=bool(settings.ready_marker),
                keep_original_seconds=settings.keep_original_seconds,
                state_dir=config.paths.state_dir,
            )
            for settings in config.sources
        ]
        self.relay: Relay | None = None
        if config.ncip:
            from gateway.ncip.relay import Relay

            self.relay = Relay(config.ncip, ledger, config.paths.error_dir, events=self.monitor)
        self.feed: Feed | None = None
        if config.ncip and config.ncip.feed:
            from gateway.ncip.feed import Feed

            self.feed_client = CaiaSoftClient(config.caiasoft, config.api_key)
            self.feed = Feed(config.ncip, self.feed_client, ledger, events=self.monitor)
        self._deferred: list[tuple[Worker, Worker]] = []  # (new worker, the old one it waits for)

    def inputs(self) -> list[Worker]:
        return [*self.collectors, *([self.feed] if self.feed else [])]

    def outputs(self) -> list[Worker]:
        return [
            *self.uploaders,
            self.finisher,
            self.placer,
            *([self.relay] if self.relay else []),
            *([self.monitor.sender] if self.monitor.sender else []),
        ]

    def workers(self) -> list[Worker]:
        return [*self.outputs(), *self.inputs()]

    def start(self, previous: Parts | None = None) -> None:
        """Start every worker. After a reload (previous given), a collector, the feed or the relay
        whose predecessor is still running starts when that one has ended (start_deferred)."""
        before = {worker.name: worker for worker in previous.exclusive()} if previous else {}
        self.monitor.start()
        for worker in (*self.outputs(), *self.inputs()):
            old = before.get(worker.name)
            if old is not None and not old.ended:
                self._deferred.append((worker, old))
            else:
                worker.start(self.on_exit)

    def exclusive(self) -> list[Worker]:
        """Workers of which two must never run at once (they read a folder or the journal)."""
        return [*self.inputs(), *([self.relay] if self.relay else [])]

    def start_deferred(self) -> None:
        waiting = []
        for worker, old in self._deferred:
            if not old.ended:  # its end() is over once it says so: the new one may start at once
                waiting.append((worker, old))
            elif not worker.stopping:
                worker.start(self.on_exit)
        self._deferred = waiting

    def stop(self, deadline: float | None = None) -> None:
        """Inputs first (no new files or entries are taken), then the outputs after the item in hand.

        With a deadline (time.monotonic()), wait for the threads until then at most;
        without one, only ask them to stop (a reload: an upload in hand ends on its own).
        """
        for group in (self.inputs(), self.outputs()):
            for worker in group:
                worker.stop()
            if deadline is not None:
                for worker in group:
                    worker.join(max(deadline - time.monotonic(), 0.0))
        for worker, _old in self._deferred:
            worker.stop()
        self._deferred = []
        self.monitor.stop()

    def conditions(self) -> Conditions:
        """The lasting states alerts and metrics watch (gateway.monitor.events.Conditions)."""
        return Conditions(
            paused=self.gate.paused_reason,
            caiasoft_problem=self.gate.problem,
            ncip_problem=self.relay.last_problem if self.relay else None,
            ncip_behind=self.relay.lag()[1] if self.relay else 0,
            ncip_journal_problem=self.relay.journal_problem if self.relay else None,
            sources={
                c.source.name: c.current_problem() or (None if c.source.healthy() else "its watcher has stopped")
                for c in self.collectors
            },
            locations={settings.name: settings.location for settings in self.config.sources},
        )

    def ended(self) -> bool:
        return all(worker.ended or worker.ident is None for worker in self.workers())

    def close(self) -> None:
        """Release the HTTP sessions (once every worker has ended)."""
        self.client.close()
        if self.feed:
            self.feed_client.close()

    def problems(self, within: float) -> list[str]:
        """Why the service is not healthy (empty if every worker checked in within the last seconds)."""
        waiting = {worker.name for worker, _old in self._deferred}
        found = [
            problem
            for worker in self.workers()
            if worker.name not in waiting
            for problem in [worker.health_problem(within)]
            if problem
        ]
        for collector in self.collectors:
            if collector.is_alive() and not collector.source.healthy():
                found.append(f"the watcher of source {collector.source.name} has stopped")
        return found

    def faults(self) -> dict[str, str]:
        """Workers pausing after a fault, with the reason."""
        return {worker.name: worker.fault for worker in self.workers() if worker.fault}
