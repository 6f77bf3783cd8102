"""The monitor: listens to the parts (gateway.monitor.events) and feeds alerts and metrics.

Events (a file finished, an upload timed, an NCIP entry ended) arrive from the
pipeline's threads: the monitor counts them, and queues an alert in the ledger when one
is wanted; sending is the AlertSender's (gateway.monitor.alerts), on its own thread. Every few
seconds the service hands it the lasting Conditions; the monitor notes when each began
and ended, and raises "paused", "unreachable", "source_problem" and "stuck" (and their
recoveries) when they start and end.

With several CaiaSoft connections or NCIP servers (Settings.several), each connection's
lasting states are conditions of their own ("paused:law" and "paused:default" start and
end apart), and every alert names its connection (the file's, the server's); with one,
the conditions and the words are what they always were.

A listener must never raise into the pipeline: an unexpected error in here is logged
and the pipeline goes on.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

from gateway.config.settings import DEFAULT_CONNECTION, CaiaSoft, Config, Ncip
from gateway.core import logs
from gateway.core.states import CHANGED_AFTER_TAKE, OPEN_STATES, FileState, NcipOutcome
from gateway.monitor import alerttexts
from gateway.monitor.events import Conditions, Events
from gateway.state.itemindex import is_denied
from gateway.state.ledger import FileRow, Ledger

if TYPE_CHECKING:  # imported when [alerts] or [metrics] is configured: a run without them starts sooner
    from gateway.monitor.alerts import AlertSender, Delivery
    from gateway.monitor.metrics import Metrics

log = logs.get("gateway.monitor")

STUCK_LISTED = 20  # files named in one "stuck" alert
SOURCE_PROBLEM_SECONDS = 60.0  # a source unreadable this long is alerted (a blip, e.g. an SFTP reconnect, is not)
P = ParamSpec("P")


def _never_raises(method: Callable[P, None]) -> Callable[P, None]:
    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception as error:  # the caller is the pipeline: it must go on
            log.error(
                "monitor.failed", step=method.__name__, error=f"{error.__class__.__name__}: {error}", exc_info=True
            )

    return guarded


class Monitor(Events):
    """Alerts and metrics for one config: an Events listener plus the workers that go with it."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        clock: Callable[[], float] = time.time,
        delivery: Delivery | None = None,
        steady: Callable[[], float] = time.monotonic,
        live: Callable[[], Conditions] | None = None,
    ):
        """clock gives the times recorded and compared with the ledger's (a file's age); steady measures how long a
        condition has lasted (unreachable_after_seconds), so a wall-clock step neither delays nor hastens an alert."""
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.steady = steady
        self.host = socket.gethostname()
        self.alerting = config.alerts
        self.sender: AlertSender | None = None
        if config.alerts:
            from gateway.monitor.alerts import AlertSender, Delivery

            self.sender = AlertSender(config.alerts, ledger, delivery or Delivery(config.alerts, self.host), clock)
        self.metrics: Metrics | None = None
        if config.metrics:
            from gateway.monitor.metrics import Layout, Metrics

            sources = [source.name for source in config.sources]
            self.metrics = Metrics(config.metrics, ledger, sources, clock, live, Layout.of(config))
        self._since: dict[str, float] = {}  # condition -> when it was first seen (this run, on steady)
        self._alerted: set[str] = set()  # conditions an alert was raised for, whose end is announced
        self._tick = threading.local()  # .held: alerts the tick in this thread raised, queued together at its end

    # -- the workers ----------------------------------------------------------

    def start(self) -> None:
        """Serve the metrics. The sender is a worker: the service starts and stops it with the others."""
        if self.metrics:
            self.metrics.start()

    def stop(self) -> None:
        if self.metrics:
            self.metrics.stop()

    # -- events from the parts ------------------------------------------------

    @_never_raises
    def file_finished(self, row: FileRow, path: Path) -> None:
        accepted = row.accepted
        answer = row.answer_json
        denials = (
            [item for item in answer.get("results") or [] if is_denied(item)]
            if accepted and isinstance(answer, dict)
            else []
        )
        if self.metrics:
            outcome = FileState.ARCHIVED if accepted else FileState.REFUSED
            self.metrics.file_finished(row.source, outcome, len(denials), row.connection)
        named = self._named(row.connection)
        if not accepted and not (row.reason or "").startswith(CHANGED_AFTER_TAKE):
            # a partial copy set aside while the whole file is taken again needs nobody
            self.raise_alert(
                "refused", alerttexts.refused(row.name, row.source, row.reason, str(path), connection=named)
            )
        elif denials:
            self.raise_alert("denied", alerttexts.denied(row.name, row.source, denials, str(path), connection=named))

    @_never_raises
    def upload_timed(self, seconds: float, connection: str = DEFAULT_CONNECTION) -> None:
        if self.metrics:
            self.metrics.upload_timed(seconds, connection)

    @_never_raises
    def ncip_entry(
        self,
        outcome: NcipOutcome,
        entry: dict[str, Any] | None,
        reason: str | None = None,
        dead_letters: Path | None = None,
        connection: str = DEFAULT_CONNECTION,
    ) -> None:
        self.ledger.ncip.count_ncip_entry(outcome, connection)
        if self.metrics:
            self.metrics.ncip_entry(outcome, connection)
        if outcome == NcipOutcome.DEAD_LETTER:
            server = self._server(connection)
            message = alerttexts.dead_letter(
                entry,
                reason or "not given",
                str(dead_letters or ""),
                connection=self._named(connection),
                where=server.url if server else "",
            )
            self.raise_alert("dead_letter", message)

    @_never_raises
    def status_unknown(
        self, barcode: str, status: str, day: str, collection: str, connection: str = DEFAULT_CONNECTION
    ) -> None:
        message = alerttexts.unknown_status(barcode, status, day, collection, connection=self._named(connection))
        self.raise_alert("unknown_status", message)

    def raise_alert(self, kind: str, message: dict[str, Any], recovery: bool = False) -> None:
        """Queue an alert in the ledger (if [alerts] wants this kind) and wake the sender."""
        if self.alerting is None or self.sender is None or kind not in self.alerting.events:
            return
        alert = (kind, {**message, "kind": kind, "host": self.host}, recovery)
        held: list[tuple[str, dict[str, Any], bool]] | None = getattr(self._tick, "held", None)
        if held is not None:  # within a tick: queued with the others it raises
            held.append(alert)
            return
        self._queue([alert])

    def _queue(self, alerts: list[tuple[str, dict[str, Any], bool]]) -> None:
        """Queue alerts in one commit and wake the sender once, so those raised together go in one mail."""
        if not alerts or self.sender is None:
            return
        self.ledger.alerts.add_alerts(alerts, self.clock(), self.sender.delivery.channels)
        for kind, message, recovery in alerts:
            log.info("alert.queued", kind=kind, title=message["title"], recovery=recovery)
        self.sender.notify()

    # -- lasting conditions, every few seconds ---------------------------------

    @property
    def watching(self) -> bool:
        """Whether tick() has anything to do: [alerts] or [metrics] is configured."""
        return self.metrics is not None or self.alerting is not None

    @_never_raises
    def tick(self, conditions: Conditions) -> None:
        if self.metrics:
            self.metrics.update(conditions)
        if self.alerting is None:
            return
        self._tick.held = []
        try:
            self._check(conditions, self.alerting.unreachable_after_seconds)
        finally:
            held, self._tick.held = self._tick.held, None
            self._queue(held)

    def _check(self, conditions: Conditions, after: float) -> None:
        """Raise or end the alert of each lasting condition (unreachable after `after` seconds)."""
        now, lasting = self.clock(), self.steady()
        for connection in self.config.connections:
            self._check_connection(connection, conditions, after, lasting)
        for server in self.config.ncip_servers:
            self._check_server(server, conditions, after, lasting)
        for source, problem in conditions.sources.items():
            location = conditions.locations.get(source, "")
            self._edge(
                f"source_problem:{source}",
                problem is not None,
                SOURCE_PROBLEM_SECONDS,
                lasting,
                functools.partial(alerttexts.source_problem, source, location, problem or ""),
                functools.partial(alerttexts.source_ok, source, location),
            )
        if self.config.several:
            self._check_stuck_by_connection(conditions, now, after, lasting)
            return
        calm = conditions.paused is None and conditions.caiasoft_problem is None
        oldest = self.ledger.files.oldest_open() if calm else None  # one row a tick; the list only when raised
        self._edge(
            "stuck",
            oldest is not None and now - oldest.seen_at >= after,
            0.0,
            lasting,
            lambda: alerttexts.stuck(self._stuck(now, after), after),
            alerttexts.stuck_cleared,
        )

    def _check_connection(self, connection: CaiaSoft, conditions: Conditions, after: float, lasting: float) -> None:
        """One CaiaSoft connection's pause and outage. With several, each connection's are conditions of their
        own (paused:NAME), named in their alerts; with one, they are what they always were (paused)."""
        name, url = connection.name, connection.base_url
        named = self._named(name)
        suffix = f":{name}" if named else ""
        paused, problem = conditions.connection_state(name)

        def pending() -> int:
            return self._pending_of(name) if named else self._pending()

        self._edge(
            f"paused{suffix}",
            paused is not None,
            0.0,
            lasting,
            lambda: alerttexts.paused(
                paused or "",
                pending(),
                connection.auth_pause_seconds,
                connection=named,
                key_from=key_place(connection),
                sources=tuple(source.name for source in self.config.sources if source.caiasoft == name),
            ),
            functools.partial(alerttexts.resumed, connection=named),
        )
        of = f" of connection {name}" if named else ""
        self._edge(
            f"unreachable:caiasoft{suffix}",
            problem is not None and not paused,
            after,
            lasting,
            lambda: alerttexts.unreachable(
                "CaiaSoft",
                url,
                problem or "",
                self._duration(f"caiasoft{suffix}", lasting),
                f"{pending()} request file(s){of} wait in the queue",
                connection=named,
            ),
            functools.partial(alerttexts.reachable, "CaiaSoft", url, connection=named),
        )

    def _check_server(self, server: Ncip, conditions: Conditions, after: float, lasting: float) -> None:
        """One NCIP server's outage and journal (read as a source is: alerted once it lasts a minute); with
        several, as conditions of their own, named in their alerts."""
        name, url, journal = server.name, server.url, str(server.journal)
        named = self._named(name)
        suffix = f":{name}" if named else ""
        problem, behind, journal_problem = conditions.ncip_state(name)
        of = f" of server {name}" if named else ""
        self._edge(
            f"unreachable:ncip{suffix}",
            problem is not None,
            after,
            lasting,
            lambda: alerttexts.unreachable(
                "NCIP",
                url,
                problem or "",
                self._duration(f"ncip{suffix}", lasting),
                f"{behind} journal entries{of} wait",
                connection=named,
            ),
            functools.partial(alerttexts.reachable, "NCIP", url, connection=named),
        )
        self._edge(
            f"source_problem:ncip-journal{suffix}",
            journal_problem is not None,
            SOURCE_PROBLEM_SECONDS,
            lasting,
            lambda: alerttexts.journal_problem(journal, journal_problem or "", connection=named),
            functools.partial(alerttexts.journal_ok, journal, connection=named),
        )

    def _check_stuck_by_connection(self, conditions: Conditions, now: float, after: float, lasting: float) -> None:
        """Files waiting too long, per connection, counted only while their connection answers (its pause or
        outage explains the wait). A connection no longer in the config answers nobody: its files are stuck."""
        oldest = self.ledger.files.oldest_open()  # one row a tick; by connection only once some file is old
        old = (
            {
                name
                for name, (_count, seen) in self.ledger.files.by_connection(*OPEN_STATES).items()
                if now - seen >= after
            }
            if oldest is not None and now - oldest.seen_at >= after
            else set()
        )
        raised = [name.split(":", 1)[1] for name in self._since if name.startswith("stuck:")]
        names = dict.fromkeys([*(connection.name for connection in self.config.connections), *sorted(old), *raised])
        for name in names:
            self._edge(
                f"stuck:{name}",
                name in old and conditions.connection_state(name) == (None, None),
                0.0,
                lasting,
                functools.partial(self._stuck_alert, name, now, after),
                functools.partial(alerttexts.stuck_cleared, connection=name),
            )

    def _stuck_alert(self, connection: str, now: float, after: float) -> dict[str, Any]:
        return alerttexts.stuck(self._stuck(now, after, connection), after, connection=connection)

    def _edge(
        self,
        name: str,
        active: bool,
        after: float,
        now: float,
        raised: Callable[[], dict[str, Any]],
        ended: Callable[[], dict[str, Any]],
    ) -> None:
        """Raise name's alert once it has been active for after seconds; announce its end if it was raised.

        now is on the steady clock (self.steady), as the times in self._since are."""
        kind = name.split(":", 1)[0]
        if active:
            since = self._since.setdefault(name, now)
            if name not in self._alerted and now - since >= after:
                self._alerted.add(name)
                self.raise_alert(kind, raised())
            return
        self._since.pop(name, None)
        if name in self._alerted:
            self._alerted.discard(name)
            self.raise_alert(kind, ended(), recovery=True)

    def _duration(self, system: str, now: float) -> float:
        return now - self._since.get(f"unreachable:{system}", now)

    def _pending(self) -> int:
        counts = self.ledger.files.counts()
        return sum(counts.get(state, 0) for state in OPEN_STATES)

    def _pending_of(self, connection: str) -> int:
        """Files of one connection taken and not yet archived or refused."""
        return self.ledger.files.by_connection(*OPEN_STATES).get(connection, (0, 0.0))[0]

    def _named(self, connection: str) -> str | None:
        """The connection for an alert to name: only when the config has several."""
        return connection if self.config.several else None

    def _server(self, name: str) -> Ncip | None:
        return next((server for server in self.config.ncip_servers if server.name == name), None)

    def _stuck(self, now: float, after: float, connection: str | None = None) -> list[dict[str, Any]]:
        rows = [
            row
            for row in self.ledger.files.in_state(*OPEN_STATES)
            if now - row.seen_at >= after and connection in (None, row.connection)
        ]
        return [
            {
                "file": row.name,
                "source": row.source,
                "state": row.state,
                "attempts": row.attempts,
                "problem": row.reason,
            }
            for row in rows[:STUCK_LISTED]
        ]


def key_place(connection: CaiaSoft) -> str:
    """Where a connection's API key is read from, for the admin who must replace it (never the key itself)."""
    if connection.api_key_env:
        return f"the environment variable {connection.api_key_env} ({connection.table}.api_key_env)"
    if connection.api_key_file:
        return f"its key file {connection.api_key_file} ({connection.table}.api_key_file)"
    return f"the systemd credential {connection.credential}"
