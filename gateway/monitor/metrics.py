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
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call] # *_created series only confuse the rules and dashboards


class Metrics:
    """The gateway's metrics registry, its HTTP endpoint and its textfile."""

    def __init__(
        self,
        settings: MetricsSettings,
        ledger: Ledger,
        sources: list[str],
        clock: Callable[[], float] = time.time,
        live: Callable[[], Conditions] | None = None,
    ):
        self.settings = settings
        self.ledger = ledger
        self.clock = clock
        self.conditions = Conditions(sources={name: None for name in sources})
        self.live = live  # the service's conditions, read at each scrape, if given
        self.registry = CollectorRegistry(auto_describe=False)
        self.files = Counter(
            PREFIX + "files",
            "Request files finished, by source and outcome (archived: "
            "CaiaSoft accepted it; refused: it went to error_dir).",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.denied = Counter(
            PREFIX + "denied_items",
            "Items CaiaSoft denied in request files it accepted.",
            ["source"],
            registry=self.registry,
        )
        self.ncip = Counter(
            PREFIX + "ncip_entries", "NCIP journal entries finished, by outcome.", ["outcome"], registry=self.registry
        )
        self.upload_seconds = Histogram(
            PREFIX + "upload_seconds",
            "Seconds one call to CaiaSoft's request-file endpoint took.",
            buckets=UPLOAD_BUCKETS,
            registry=self.registry,
        )
        self._seed(sources)
        self.registry.register(_Gauges(self))
        self._listener: BoundedListener | None = None
        self._next_textfile = 0.0

    def _seed(self, sources: list[str]) -> None:
        """Start each counter where the ledger says it is (and at 0 for every source known)."""
        for source in sources:
            for state in FINAL_STATES:
                self.files.labels(source, state)
            self.denied.labels(source)
        for (source, state), count in self.ledger.alerts.finished_by_source().items():
            self.files.labels(source, state).inc(count)
        for source, count in self.ledger.alerts.denied_items_by_source().items():
            self.denied.labels(source).inc(count)
        counts = self.ledger.ncip.ncip_counts()
        for outcome in NcipOutcome:
            self.ncip.labels(outcome).inc(counts.get(outcome, 0))

    # -- what happened --------------------------------------------------------

    def file_finished(self, source: str, outcome: FileState, denied: int) -> None:
        self.files.labels(source, outcome).inc()
        if denied:
            self.denied.labels(source).inc(denied)

    def ncip_entry(self, outcome: NcipOutcome) -> None:
        self.ncip.labels(outcome).inc()

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
        ledger, conditions = self.metrics.ledger, self.metrics.current()
        counts = ledger.files.counts()
        oldest = ledger.files.oldest_open()
        yield GaugeMetricFamily(
            PREFIX + "pending_files",
            "Request files taken and not yet archived or refused.",
            value=sum(counts.get(state, 0) for state in OPEN_STATES),
        )
        yield GaugeMetricFamily(
            PREFIX + "oldest_pending_seconds",
            "Age of the oldest pending file (0: none).",
            value=max(self.metrics.clock() - oldest.seen_at, 0.0) if oldest else 0.0,
        )
        yield GaugeMetricFamily(
            PREFIX + "uploads_paused",
            "1 while uploads are paused (API key refused).",
            value=1 if conditions.paused else 0,
        )
        yield GaugeMetricFamily(
            PREFIX + "ncip_behind_entries", "NCIP journal entries not yet relayed.", value=conditions.ncip_behind
        )
        unreachable = GaugeMetricFamily(
            PREFIX + "unreachable", "1 while calls to this system keep failing.", labels=["system"]
        )
        unreachable.add_metric(["caiasoft"], 1 if conditions.caiasoft_problem else 0)
        unreachable.add_metric(["ncip"], 1 if conditions.ncip_problem else 0)
        yield unreachable
        up = GaugeMetricFamily(PREFIX + "source_up", "1 while the source's folder can be read.", labels=["source"])
        for source, problem in sorted(conditions.sources.items()):
            up.add_metric([source], 0 if problem else 1)
        yield up
