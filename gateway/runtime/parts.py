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
from gateway.config.settings import DEFAULT_CONNECTION
from gateway.core.states import FileState
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
        self.clients = {c.name: CaiaSoftClient(c, config.key_of(c.name)) for c in config.connections}
        self.client = self.clients[config.caiasoft.name]
        self.monitor = Monitor(config, ledger, live=self.conditions)  # alerts and metrics: the parts tell it
        found = {settings.name: sources.build(settings, config) for settings in config.sources}
        self.pipeline = Pipeline(
            config,
            ledger,
            self.client,
            sources=found,
            events=self.monitor,
            clients={name: client for name, client in self.clients.items() if client is not self.client},
        )
        self.gates = self.pipeline.gates
        self.gate = self.pipeline.gate
        placing = self.pipeline.placing
        self.finisher = Finisher(placing)
        self.uploaders = [  # each connection its own workers: a backlog on one never holds up another
            Uploader(
                self.pipeline.senders[connection.name],
                placing,
                wake=self.pipeline.wakes[connection.name],
                name=_worker_name("uploader", connection.name, number),
                workers=connection.upload_workers,
                finisher=self.finisher,
            )
            for connection in config.connections
            for number in range(1, connection.upload_workers + 1)
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
        self.relays: list[Relay] = []
        self.feeds: list[Feed] = []
        self.feed_clients: list[CaiaSoftClient] = []
        if config.ncip_servers:
            from gateway.ncip.feed import Feed
            from gateway.ncip.relay import Relay

            for server in config.ncip_servers:
                self.relays.append(Relay(server, ledger, config.paths.error_dir, events=self.monitor))
                if server.feed is not None:
                    connection = config.connection(server.feed.caiasoft) or config.caiasoft
                    client = CaiaSoftClient(connection, config.key_of(connection.name))
                    self.feed_clients.append(client)
                    self.feeds.append(Feed(server, client, ledger, events=self.monitor))
        self.relay: Relay | None = self.relays[0] if self.relays else None  # the default server's
        self.feed: Feed | None = next((feed for feed in self.feeds if feed.settings is config.ncip), None)
        self._deferred: list[tuple[Worker, Worker]] = []  # (new worker, the old one it waits for)
        # after stop(): for a deferred worker that never started, the old one it waited for (it may still run)
        self._superseded: dict[str, Worker] = {}

    def inputs(self) -> list[Worker]:
        return [*self.collectors, *self.feeds]

    def outputs(self) -> list[Worker]:
        return [
            *self.uploaders,
            self.finisher,
            self.placer,
            *self.relays,
            *([self.monitor.sender] if self.monitor.sender else []),
        ]

    def workers(self) -> list[Worker]:
        return [*self.outputs(), *self.inputs()]

    def start(self, previous: Parts | None = None) -> None:
        """Start every worker. After a reload (previous given), a collector, the feed or the relay
        whose predecessor is still running starts when that one has ended (start_deferred)."""
        before = previous.may_run() if previous else {}
        self.monitor.start()
        for worker in (*self.outputs(), *self.inputs()):
            old = before.get(worker.name)
            if old is not None and not old.ended:
                self._deferred.append((worker, old))
            else:
                worker.start(self.on_exit)

    def exclusive(self) -> list[Worker]:
        """Workers of which two must never run at once (they read a folder or the journal)."""
        return [*self.inputs(), *self.relays]

    def may_run(self) -> dict[str, Worker]:
        """By name, the exclusive worker of these parts that may still run: its own, or for one that was
        stopped before it ever started (a second reload while it waited), the predecessor it waited for,
        which may still run (a successor waiting for the one that never started would wait for ever)."""
        return {**{worker.name: worker for worker in self.exclusive()}, **self._superseded}

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
        for worker, old in self._deferred:
            worker.stop()
            if worker.ident is None:
                self._superseded[worker.name] = old
        self._deferred = []
        self.monitor.stop()

    def conditions(self) -> Conditions:
        """The lasting states alerts and metrics watch (gateway.monitor.events.Conditions). Each relay's lag is
        read once (it reads the journal behind the relay); the default server's also fills the ncip_ fields."""
        servers = {
            relay.settings.name: (relay.last_problem, relay.lag()[1], relay.journal_problem) for relay in self.relays
        }
        ncip_problem, ncip_behind, journal_problem = servers.get(DEFAULT_CONNECTION, (None, 0, None))
        return Conditions(
            paused=self.gate.paused_reason,
            caiasoft_problem=self.gate.problem,
            connections={name: (gate.paused_reason, gate.problem) for name, gate in self.gates.items()},
            ncip_servers=servers,
            ncip_problem=ncip_problem,
            ncip_behind=ncip_behind,
            ncip_journal_problem=journal_problem,
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
        for client in (*self.clients.values(), *self.feed_clients):
            client.close()

    def stranded(self, ledger: Ledger) -> dict[str, int]:
        """Files queued for a CaiaSoft connection the config no longer has: they wait for it, never dropped."""
        known = {connection.name for connection in self.config.connections}
        return {
            name: count
            for name, (count, _oldest) in ledger.files.by_connection(FileState.QUEUED, FileState.UPLOADING).items()
            if name not in known
        }

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


def _worker_name(kind: str, connection: str, number: int) -> str:
    """uploader-1 for the default connection (as ever), uploader-NAME-1 for [caiasoft.NAME]."""
    return f"{kind}-{number}" if connection == DEFAULT_CONNECTION else f"{kind}-{connection}-{number}"
