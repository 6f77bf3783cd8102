"""Prometheus metrics: GET /metrics on [metrics].listen, and/or a node_exporter textfile.

Counters (files, denied items, NCIP entries) are seeded from the ledger when the service
starts, so a restart does not reset a rate; gauges are read when scraped (the ledger's
pending files) or from the service's last Conditions (paused, sources, NCIP lag).

The names are a contract (docs/operations.md, "Alerts and metrics"):
    caiasoft_gateway_files_total{source,outcome}     outcome archived | refused
    caiasoft_gateway_denied_items_total{source}
    caiasoft_gateway_pending_files
    caiasoft_gateway_oldest_pending_seconds
    caiasoft_gateway_uploads_paused                   0 or 1
    caiasoft_gateway_upload_seconds                   histogram of calls to CaiaSoft
    caiasoft_gateway_ncip_entries_total{outcome}      done | already | dead_letter
    caiasoft_gateway_ncip_behind_entries
    caiasoft_gateway_source_up{source}                0 or 1
    caiasoft_gateway_unreachable{system}              0 or 1: caiasoft, ncip failing right now

With several CaiaSoft connections or NCIP servers (Settings.several), the CaiaSoft and NCIP
series (and source_up) carry one more label, connection: the CaiaSoft connection (files,
denied items, pending, paused, upload time, unreachable{system="caiasoft"}, a source's) or
the NCIP server (NCIP entries, behind, unreachable{system="ncip"}). The names stay. With
one of each, no series has the label: the lines are what they always were.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config.settings import DEFAULT_CONNECTION, Settings
from gateway.config.settings import Metrics as MetricsSettings
from gateway.core import logs
from gateway.core.listener import BoundedListener
from gateway.core.states import FINAL_STATES, OPEN_STATES, FileState, NcipOutcome
from gateway.monitor.events import Conditions
from gateway.state.ledger import Ledger

log = logs.get("gateway.metrics")

PREFIX = "caiasoft_gateway_"
TEXTFILE_SECONDS = 15.0
UPLOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
PENDING_HELP = "Request files taken and not yet archived or refused."
OLDEST_HELP = "Age of the oldest pending file (0: none)."
PAUSED_HELP = "1 while uploads are paused (API key refused)."
BEHIND_HELP = "NCIP journal entries not yet relayed."
UNREACHABLE_HELP = "1 while calls to this system keep failing."

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call] # *_created series only confuse the rules and dashboards


@dataclass(frozen=True)
class Layout:
    """The CaiaSoft connections and NCIP servers a config has, and each source's connection: whether the series
    carry a connection label (only with several), and which values it takes."""

    several: bool = False
    connections: tuple[str, ...] = (DEFAULT_CONNECTION,)
    servers: tuple[str, ...] = ()  # NCIP servers; none without [ncip]
    sources: Mapping[str, str] = field(default_factory=dict)  # source -> the connection its files go to

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        return cls(
            several=settings.several,
            connections=tuple(connection.name for connection in settings.connections),
            servers=tuple(server.name for server in settings.ncip_servers),
            sources={source.name: source.caiasoft for source in settings.sources},
        )

    def connection_of(self, source: str) -> str:
        """The connection a source's files go to; a source no longer in the config counts as the default's."""
        return self.sources.get(source, DEFAULT_CONNECTION)

    def label(self, connection: str) -> tuple[str, ...]:
        """The connection label's value to add to a series, or none with one connection."""
        return (connection,) if self.several else ()

    @property
    def labels(self) -> list[str]:
        """The label names to add to the CaiaSoft and NCIP series: ["connection"] with several, else none."""
        return ["connection"] if self.several else []


class Metrics:
    """The gateway's metrics registry, its HTTP endpoint and its textfile."""

    def __init__(
        self,
        settings: MetricsSettings,
        ledger: Ledger,
        sources: list[str],
        clock: Callable[[], float] = time.time,
        live: Callable[[], Conditions] | None = None,
        layout: Layout | None = None,
    ):
        """layout says which connections there are (Layout.of(settings)); without it, one connection."""
        self.settings = settings
        self.ledger = ledger
        self.clock = clock
        self.layout = layout or Layout(sources={name: DEFAULT_CONNECTION for name in sources})
        named = self.layout.labels
        self.conditions = Conditions(sources={name: None for name in sources})
        self.live = live  # the service's conditions, read at each scrape, if given
        self.registry = CollectorRegistry(auto_describe=False)
        self.files = Counter(
            PREFIX + "files",
            "Request files finished, by source and outcome (archived: "
            "CaiaSoft accepted it; refused: it went to error_dir).",
            ["source", "outcome", *named],
            registry=self.registry,
        )
        self.denied = Counter(
            PREFIX + "denied_items",
            "Items CaiaSoft denied in request files it accepted.",
            ["source", *named],
            registry=self.registry,
        )
        self.ncip = Counter(
            PREFIX + "ncip_entries",
            "NCIP journal entries finished, by outcome.",
            ["outcome", *named],
            registry=self.registry,
        )
        self.upload_seconds = Histogram(
            PREFIX + "upload_seconds",
            "Seconds one call to CaiaSoft's request-file endpoint took.",
            named,
            buckets=UPLOAD_BUCKETS,
            registry=self.registry,
        )
        self._seed(sources)
        self.registry.register(_Gauges(self))
        self._listener: BoundedListener | None = None
        self._next_textfile = 0.0

    def _seed(self, sources: list[str]) -> None:
        """Start each counter where the ledger says it is (and at 0 for every source and connection known).

        The ledger counts finished files by source: with several connections, a source's files are counted
        under the connection the config gives the source now. NCIP entries are counted by each server's
        checkpoint file."""
        layout = self.layout
        for source in sources:
            label = layout.label(layout.connection_of(source))
            for state in FINAL_STATES:
                self.files.labels(source, state, *label)
            self.denied.labels(source, *label)
        for (source, state), count in self.ledger.alerts.finished_by_source().items():
            self.files.labels(source, state, *layout.label(layout.connection_of(source))).inc(count)
        for source, count in self.ledger.alerts.denied_items_by_source().items():
            self.denied.labels(source, *layout.label(layout.connection_of(source))).inc(count)
        if layout.several:
            for connection in layout.connections:
                self.upload_seconds.labels(connection)
            for server in layout.servers:
                self._seed_ncip(self.ledger.ncip.ncip_counts(server), (server,))
        else:
            self._seed_ncip(self.ledger.ncip.ncip_counts(), ())

    def _seed_ncip(self, counts: dict[str, int], label: tuple[str, ...]) -> None:
        for outcome in NcipOutcome:
            self.ncip.labels(outcome, *label).inc(counts.get(outcome, 0))

    # -- what happened --------------------------------------------------------

    def file_finished(self, source: str, outcome: FileState, denied: int, connection: str = DEFAULT_CONNECTION) -> None:
        """A file of source, sent on connection (FileRow.connection), finished."""
        label = self.layout.label(connection)
        self.files.labels(source, outcome, *label).inc()
        if denied:
            self.denied.labels(source, *label).inc(denied)

    def ncip_entry(self, outcome: NcipOutcome, connection: str = DEFAULT_CONNECTION) -> None:
        """A journal entry of that NCIP server finished."""
        self.ncip.labels(outcome, *self.layout.label(connection)).inc()

    def upload_timed(self, seconds: float, connection: str = DEFAULT_CONNECTION) -> None:
        """One call to that connection's CaiaSoft took seconds."""
        label = self.layout.label(connection)
        (self.upload_seconds.labels(*label) if label else self.upload_seconds).observe(seconds)

    def update(self, conditions: Conditions) -> None:
        """The service's latest reading; the textfile is written if it is time."""
        self.conditions = conditions
        if self.settings.textfile is not None and time.monotonic() >= self._next_textfile:
            self._next_textfile = time.monotonic() + TEXTFILE_SECONDS
            self.write_textfile()

    def current(self) -> Conditions:
        """The service's state now (live), else as of its last tick."""
        if self.live is not None:
            try:
                return self.live()
            except Exception as error:  # a scrape must answer even if a part cannot be read now
                log.warning("metrics.conditions_unread", error=f"{error.__class__.__name__}: {error}")
        return self.conditions

    # -- where they are read --------------------------------------------------

    def start(self) -> None:
        address = self.settings.address
        if address is None:
            return
        host, port = address
        try:  # bounded: idle local clients cannot take the threads or file descriptors the pipeline needs
            self._listener = BoundedListener(
                host, port, prometheus_client.make_wsgi_app(self.registry), "metrics"
            ).start()
        except OSError as error:  # a port in use must not stop the gateway
            log.error(
                "metrics.not_served",
                listen=self.settings.listen,
                error=error.strerror or str(error),
                detail="the gateway runs on; fix [metrics].listen and reload",
            )
            return
        log.info("metrics.serving", url=f"http://{self.settings.listen}/metrics")

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self.settings.textfile is not None:
            self.write_textfile()

    def write_textfile(self) -> None:
        """Write the figures to the textfile: a new temporary file beside it, renamed over it (atomic).

        The folder is node_exporter's, which other users may write: the temporary file has a random name and
        is created with O_EXCL|O_NOFOLLOW, so a name planted there (a symlink to the ledger, say) is never
        written through; the rename replaces whatever is at the textfile's name, a link included, without
        following it."""
        assert self.settings.textfile is not None
        target = self.settings.textfile
        text = prometheus_client.generate_latest(self.registry)
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:  # the name is taken (never ours to remove) or the folder is not writable
            log.warning("metrics.textfile_failed", file=str(target), error=error.strerror or str(error))
            return
        try:
            with open(fd, "wb") as handle:
                handle.write(text)
            os.rename(temporary, target)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            log.warning("metrics.textfile_failed", file=str(self.settings.textfile), error=error.strerror or str(error))


class _Gauges(Collector):
    """The gauges, read at each scrape."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        conditions = self.metrics.current()
        if self.metrics.layout.several:
            yield from self._by_connection(conditions)
        else:
            yield from self._one(conditions)
        layout = self.metrics.layout
        up = GaugeMetricFamily(
            PREFIX + "source_up", "1 while the source's folder can be read.", labels=["source", *layout.labels]
        )
        for source, problem in sorted(conditions.sources.items()):
            up.add_metric([source, *layout.label(layout.connection_of(source))], 0 if problem else 1)
        yield up

    def _one(self, conditions: Conditions) -> Iterator[Metric]:
        """One CaiaSoft connection and at most one NCIP server: the series without a connection label."""
        ledger = self.metrics.ledger
        counts = ledger.files.counts()
        oldest = ledger.files.oldest_open()
        yield GaugeMetricFamily(
            PREFIX + "pending_files",
            PENDING_HELP,
            value=sum(counts.get(state, 0) for state in OPEN_STATES),
        )
        yield GaugeMetricFamily(
            PREFIX + "oldest_pending_seconds",
            OLDEST_HELP,
            value=max(self.metrics.clock() - oldest.seen_at, 0.0) if oldest else 0.0,
        )
        yield GaugeMetricFamily(PREFIX + "uploads_paused", PAUSED_HELP, value=1 if conditions.paused else 0)
        yield GaugeMetricFamily(PREFIX + "ncip_behind_entries", BEHIND_HELP, value=conditions.ncip_behind)
        unreachable = GaugeMetricFamily(PREFIX + "unreachable", UNREACHABLE_HELP, labels=["system"])
        unreachable.add_metric(["caiasoft"], 1 if conditions.caiasoft_problem else 0)
        unreachable.add_metric(["ncip"], 1 if conditions.ncip_problem else 0)
        yield unreachable

    def _by_connection(self, conditions: Conditions) -> Iterator[Metric]:
        """Several connections or NCIP servers: each series once per connection (or server), labelled with it.
        A connection no longer in the config that still has files waiting is shown too (they wait for it)."""
        layout, now = self.metrics.layout, self.metrics.clock()
        pending = self.metrics.ledger.files.by_connection(*OPEN_STATES)
        connections = list(dict.fromkeys((*layout.connections, *sorted(pending))))
        files = GaugeMetricFamily(PREFIX + "pending_files", PENDING_HELP, labels=["connection"])
        oldest = GaugeMetricFamily(PREFIX + "oldest_pending_seconds", OLDEST_HELP, labels=["connection"])
        for connection in connections:
            count, seen_at = pending.get(connection, (0, now))
            files.add_metric([connection], count)
            oldest.add_metric([connection], max(now - seen_at, 0.0))
        yield files
        yield oldest
        paused = GaugeMetricFamily(PREFIX + "uploads_paused", PAUSED_HELP, labels=["connection"])
        unreachable = GaugeMetricFamily(PREFIX + "unreachable", UNREACHABLE_HELP, labels=["system", "connection"])
        for connection in layout.connections:
            reason, problem = conditions.connection_state(connection)
            paused.add_metric([connection], 1 if reason else 0)
            unreachable.add_metric(["caiasoft", connection], 1 if problem else 0)
        behind = GaugeMetricFamily(PREFIX + "ncip_behind_entries", BEHIND_HELP, labels=["connection"])
        for server in layout.servers:
            problem, entries, _journal = conditions.ncip_state(server)
            behind.add_metric([server], entries)
            unreachable.add_metric(["ncip", server], 1 if problem else 0)
        yield paused
        yield behind
        yield unreachable
