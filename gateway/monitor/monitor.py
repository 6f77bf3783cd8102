"""The monitor: listens to the parts (gateway.monitor.events) and feeds alerts and metrics.

Events (a file finished, an upload timed, an NCIP entry ended) arrive from the
pipeline's threads: the monitor counts them, and queues an alert in the ledger when one
is wanted; sending is the AlertSender's (gateway.monitor.alerts), on its own thread. Every few
seconds the service hands it the lasting Conditions; the monitor notes when each began
and ended, and raises "paused", "unreachable", "source_problem" and "stuck" (and their
recoveries) when they start and end.

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

from gateway.config.settings import Config
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
            from gateway.monitor.metrics import Metrics

            self.metrics = Metrics(config.metrics, ledger, [source.name for source in config.sources], clock, live)
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
            self.metrics.file_finished(row.source, FileState.ARCHIVED if accepted else FileState.REFUSED, len(denials))
        if not accepted and not (row.reason or "").startswith(CHANGED_AFTER_TAKE):
            # a partial copy set aside while the whole file is taken again needs nobody
            self.raise_alert("refused", alerttexts.refused(row.name, row.source, row.reason, str(path)))
        elif denials:
            self.raise_alert("denied", alerttexts.denied(row.name, row.source, denials, str(path)))

    @_never_raises
    def upload_timed(self, seconds: float) -> None:
        if self.metrics:
            self.metrics.upload_seconds.observe(seconds)

    @_never_raises
    def ncip_entry(
        self,
        outcome: NcipOutcome,
        entry: dict[str, Any] | None,
        reason: str | None = None,
        dead_letters: Path | None = None,
    ) -> None:
        self.ledger.ncip.count_ncip_entry(outcome)
        if self.metrics:
            self.metrics.ncip_entry(outcome)
        if outcome == NcipOutcome.DEAD_LETTER:
            self.raise_alert(
                "dead_letter", alerttexts.dead_letter(entry, reason or "not given", str(dead_letters or ""))
            )

    @_never_raises
    def status_unknown(self, barcode: str, status: str, day: str, collection: str) -> None:
        self.raise_alert("unknown_status", alerttexts.unknown_status(barcode, status, day, collection))

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
        self._edge(
            "paused",
            conditions.paused is not None,
            0.0,
            lasting,
            lambda: alerttexts.paused(
                conditions.paused or "", self._pending(), self.config.caiasoft.auth_pause_seconds
            ),
            alerttexts.resumed,
        )
        pending = f"{self._pending()} request file(s) wait in the queue"
        self._edge(
            "unreachable:caiasoft",
            conditions.caiasoft_problem is not None and not conditions.paused,
            after,
            lasting,
            lambda: alerttexts.unreachable(
                "CaiaSoft",
                self.config.caiasoft.base_url,
                conditions.caiasoft_problem or "",
                self._duration("caiasoft", lasting),
                pending,
            ),
            lambda: alerttexts.reachable("CaiaSoft", self.config.caiasoft.base_url),
        )
        if self.config.ncip is not None:
            ncip_url = self.config.ncip.url
            self._edge(
                "unreachable:ncip",
                conditions.ncip_problem is not None,
                after,
                lasting,
                lambda: alerttexts.unreachable(
                    "NCIP",
                    ncip_url,
                    conditions.ncip_problem or "",
                    self._duration("ncip", lasting),
                    f"{conditions.ncip_behind} journal entries wait",
                ),
                lambda: alerttexts.reachable("NCIP", ncip_url),
            )
            journal = str(self.config.ncip.journal)  # read as a source is: alerted once it lasts a minute
            self._edge(
                "source_problem:ncip-journal",
                conditions.ncip_journal_problem is not None,
                SOURCE_PROBLEM_SECONDS,
                lasting,
                lambda: alerttexts.journal_problem(journal, conditions.ncip_journal_problem or ""),
                lambda: alerttexts.journal_ok(journal),
            )
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

    def _stuck(self, now: float, after: float) -> list[dict[str, Any]]:
        rows = [row for row in self.ledger.files.in_state(*OPEN_STATES) if now - row.seen_at >= after]
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
