"""Alert delivery: mail through the host's MTA (or a relay) and, optionally, a webhook.

Alerts wait in the ledger (gateway.state.monitorstore) until each channel took them. The
AlertSender thread sends what is due: the first alert of a kind at once, further ones
of that kind gathered into one digest per alerts.min_interval_seconds; a recovery
("uploads resumed") goes at once. It is its own thread, so a mail server that hangs or
is gone never slows the pipeline: a failure is logged (once, then at most every
PROBLEM_LOG_SECONDS while it lasts), shown in `status`, and retried with a capped backoff.

Delivery(settings).send(channel, alerts) is also what `check --send-test-alert` uses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

import requests

from gateway.config.settings import Alerts
from gateway.core import http, logs
from gateway.core.backoff import Backoff
from gateway.core.worker import Worker
from gateway.monitor import alerttexts
from gateway.state.ledger import Ledger
from gateway.state.monitorstore import StoredAlert

log = logs.get("gateway.alerts")

SMTP_TIMEOUT_SECONDS = 20.0  # each step of the SMTP conversation
WEBHOOK_DEADLINE_SECONDS = 20.0  # the whole POST
WEBHOOK_MAX_ANSWER_BYTES = 64 * 1024
RETRY_INITIAL_SECONDS = 5.0
RETRY_MAX_SECONDS = 600.0
PROBLEM_LOG_SECONDS = 600.0  # a lasting delivery problem is logged again this often
IDLE_SECONDS = 60.0
PROBLEM_META = "alerts_problem"  # ledger meta: why the last delivery failed ("" = it did not)
SUBJECT_MAX = 200
DIGEST_DETAILED = 20  # alerts told in full in one digest; the rest are listed by title

KIND_LABELS = {
    "refused": "request files refused",
    "denied": "items denied by CaiaSoft",
    "paused": "uploads paused",
    "unreachable": "CaiaSoft or NCIP unreachable",
    "dead_letter": "NCIP entries refused",
    "source_problem": "source folders unreadable",
    "stuck": "request files waiting too long",
    "unknown_status": "CaiaSoft item statuses not known",
    "test": "test alert",
}


class DeliveryFailed(Exception):
    """A channel did not take an alert; the text says why (never a password)."""


def host_name() -> str:
    return socket.gethostname()


def compose(alerts: list[StoredAlert], host: str, interval: float) -> tuple[str, str]:
    """The subject and body of one mail (or webhook text) for alerts of one kind."""
    prefix = f"[caiasoft-gateway] {host} "
    if len(alerts) == 1:
        subject = prefix + alerts[0].message["title"]
        body = alerts[0].message["text"]
    else:
        kind = alerts[0].kind
        subject = prefix + f"{len(alerts)} alerts: {KIND_LABELS.get(kind, kind)}: {_titles(alerts)}"
        detailed = [
            f"{_when(alert.created_at)}  {alert.message['title']}\n\n{alert.message['text']}"
            for alert in alerts[:DIGEST_DETAILED]
        ]
        rest = [f"  {_when(alert.created_at)}  {alert.message['title']}" for alert in alerts[DIGEST_DETAILED:]]
        body = f"{len(alerts)} alerts of the same kind, gathered into one mail:\n\n" + (
            "\n\n" + "-" * 60 + "\n\n"
        ).join(detailed)
        if rest:
            body += f"\n\n{'-' * 60}\n\nAnd {len(rest)} more of the same kind:\n" + "\n".join(rest)
    footer = (
        f"\n\n-- \ncaiasoft-gateway on {host}. The first alert of a kind is sent at once; more of "
        f"that kind are gathered into one mail every {round(interval / 60)} minute(s). "
        "`caiasoft-gateway status` shows the gateway's state."
    )
    subject = " ".join(subject.split())
    if len(subject) > SUBJECT_MAX:
        subject = subject[: SUBJECT_MAX - 3] + "..."
    return subject, body + footer


def _titles(alerts: list[StoredAlert]) -> str:
    """The alerts' titles for a subject, without the words they share ("request file refused: a; b")."""
    titles = list(dict.fromkeys(alert.message["title"] for alert in alerts))
    shared = os.path.commonprefix(titles)
    cut = shared.rfind(": ") + 2 if ": " in shared else 0
    return "; ".join(title[cut:] for title in titles)


def _when(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")


class Delivery:
    """Sends alerts of one kind on one channel; raises DeliveryFailed."""

    def __init__(self, settings: Alerts, host: str | None = None):
        self.settings = settings
        self.host = host or host_name()
        self.channels = (("mail",) if settings.to else ()) + (("webhook",) if settings.webhook_url else ())
        self._session: requests.Session | None = None
        self._socket: socket.socket | None = None  # of the mail conversation in progress, for abort()
        if settings.webhook_url:  # its path, query and password often are the token: never in any text
            parts = urlsplit(settings.webhook_url)
            for secret in (parts.path.strip("/"), parts.query, parts.password or ""):
                logs.add_secret(secret)

    def send(self, channel: str, alerts: list[StoredAlert]) -> None:
        subject, body = compose(alerts, self.host, self.settings.min_interval_seconds)
        if channel == "mail":
            self.mail(subject, body)
        else:
            self.post(subject, body, alerts)

    def mail(self, subject: str, body: str) -> None:
        settings = self.settings
        message = EmailMessage()
        message["From"] = settings.from_
        message["To"] = ", ".join(settings.to)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain=self.host)
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(body)
        try:
            with _Conversation(settings.smtp_host, settings.smtp_port, self._hold) as smtp:
                if settings.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if settings.username:
                    smtp.login(settings.username, self._password())
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as error:
            raise DeliveryFailed(
                f"mail to {settings.smtp_host}:{settings.smtp_port} failed: {logs.redact(_describe(error))}"
            ) from None
        finally:
            self._socket = None

    def _hold(self, sock: socket.socket) -> None:
        self._socket = sock

    def abort(self) -> None:
        """Cut a mail conversation in progress short (the service is stopping): its socket is shut down."""
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _password(self) -> str:
        assert self.settings.password_file is not None, "config requires password_file with username"
        try:
            password = self.settings.password_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise DeliveryFailed(
                f"alerts.password_file {self.settings.password_file} cannot be read: "
                f"{error.strerror or error.__class__.__name__}"
            ) from None
        logs.add_secret(password)
        return password

    def post(self, subject: str, body: str, alerts: list[StoredAlert]) -> None:
        payload: dict[str, Any] = {
            "source": "caiasoft-gateway",
            "host": self.host,
            "kind": alerts[0].kind,
            "recovery": any(alert.recovery for alert in alerts),
            "subject": subject,
            "text": body,
            "alerts": [
                {"at": _when(alert.created_at), "recovery": alert.recovery, **alert.message} for alert in alerts
            ],
        }
        if self._session is None:
            self._session = http.new_session()
        try:
            answer = http.send(
                self._session,
                "POST",
                self.settings.webhook_url,
                json=payload,
                deadline=WEBHOOK_DEADLINE_SECONDS,
                max_bytes=WEBHOOK_MAX_ANSWER_BYTES,
            )
        except requests.RequestException as error:
            raise DeliveryFailed(
                f"webhook {_url_for_humans(self.settings.webhook_url)} failed: {logs.redact(_describe(error))}"
            ) from None
        if not 200 <= answer.status < 300:
            raise DeliveryFailed(f"webhook {_url_for_humans(self.settings.webhook_url)} answered HTTP {answer.status}")

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def send_test(settings: Alerts, clock: Callable[[], float] = time.time) -> list[tuple[str, str | None]]:
    """Send a test alert on every channel now; return (channel, problem or None) for each."""
    delivery = Delivery(settings)
    alert = StoredAlert(0, "test", False, clock(), alerttexts.test_message(delivery.host))
    results: list[tuple[str, str | None]] = []
    try:
        for channel in delivery.channels:
            try:
                delivery.send(channel, [alert])
                results.append((channel, None))
            except DeliveryFailed as error:
                results.append((channel, str(error)))
    finally:
        delivery.close()
    return results


def delivery_state(ledger: Ledger) -> dict[str, Any]:
    """For `status`: when the last alert went out, how many wait, and the delivery problem, if any."""
    sent = [
        moment
        for moment in (ledger.alerts.last_alert_sent(channel) for channel in ("mail", "webhook"))
        if moment is not None
    ]
    return {
        "last_sent": _when(max(sent)) if sent else None,
        "waiting": ledger.alerts.alerts_waiting(),
        "problem": ledger.db.get_meta(PROBLEM_META) or None,
    }


class _Conversation(smtplib.SMTP):
    """smtplib.SMTP that hands its socket over as soon as it is connected (before the server's greeting)."""

    def __init__(self, host: str, port: int, hold: Callable[[socket.socket], None]):
        self._hold = hold
        super().__init__(host, port, timeout=SMTP_TIMEOUT_SECONDS)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's hook for making the connection (SMTP_SSL overrides it too); typeshed does not list it
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self._hold(sock)
        return sock


def _url_for_humans(url: str) -> str:
    """The webhook's scheme and host only: its path often carries a token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/..."


def _describe(error: BaseException) -> str:
    text = str(error) or error.__class__.__name__
    return text if len(text) < 300 else text[:300] + "..."


class AlertSender(Worker):
    """Sends the alerts waiting in the ledger when they are due; never blocks anyone else."""

    def __init__(
        self, settings: Alerts, ledger: Ledger, delivery: Delivery | None = None, clock: Callable[[], float] = time.time
    ):
        super().__init__("alerts")
        self.settings = settings
        self.ledger = ledger
        self.delivery = delivery or Delivery(settings)
        self.clock = clock
        self.backoff = Backoff(RETRY_INITIAL_SECONDS, RETRY_MAX_SECONDS)
        self.wake = threading.Event()
        self.failures: dict[str, int] = {}  # consecutive failed deliveries, by channel
        self._retry_at: dict[str, float] = {}  # by channel, on time.monotonic: a wall-clock step moves no retry
        self._sent_at: dict[tuple[str, str], float] = {}  # (channel, kind) -> last sent, on time.monotonic
        self._problem: str | None = None
        self._problem_logged_at = 0.0

    def notify(self) -> None:
        """A new alert is in the ledger."""
        self.wake.set()

    def stop(self) -> None:
        """End the loop; a mail server that hangs is cut off (the alert stays in the ledger)."""
        super().stop()
        self.delivery.abort()

    def step(self) -> None:
        self.wake.clear()
        self.rest(self.deliver_due(), self.wake)

    def end(self) -> None:
        self.delivery.close()

    def deliver_due(self) -> float:
        """Send every batch that is due; return the seconds until the next one may be."""
        next_due = IDLE_SECONDS
        for channel in self.delivery.channels:
            now, steady = self.clock(), time.monotonic()
            if steady < self._retry_at.get(channel, 0.0):
                next_due = min(next_due, self._retry_at[channel] - steady)
                continue
            pending = self.ledger.alerts.pending_alerts(channel)
            by_kind = itertools.groupby(
                sorted(pending, key=lambda alert: (alert.kind, alert.id)), key=lambda alert: alert.kind
            )
            for kind, group in by_kind:
                batch = list(group)
                wait = 0.0 if any(alert.recovery for alert in batch) else self._interval_left(channel, kind, now)
                if wait > 0:
                    next_due = min(next_due, wait)
                    continue
                if not self._send(channel, batch):
                    next_due = min(next_due, self._retry_at[channel] - time.monotonic())
                    break
        return max(next_due, 0.05)

    def _interval_left(self, channel: str, kind: str, now: float) -> float:
        """Seconds until the next alert of this kind may go on this channel: min_interval_seconds after the last.

        Counted on the monotonic clock; a last sending recorded by an earlier run is taken at its wall-clock
        age, at most the interval (one 'after now' is a clock stepped back since: the interval starts now).
        """
        interval = self.settings.min_interval_seconds
        sent = self._sent_at.get((channel, kind))
        if sent is None:
            last = self.ledger.alerts.last_alert_sent(channel, kind)
            if last is None:
                return 0.0
            sent = self._sent_at[(channel, kind)] = time.monotonic() - min(max(now - last, 0.0), interval)
        return sent + interval - time.monotonic()

    def _send(self, channel: str, batch: list[StoredAlert]) -> bool:
        try:
            self.delivery.send(channel, batch)
        except DeliveryFailed as error:
            self._failed(channel, str(error))
            return False
        self.failures[channel] = 0
        self._retry_at.pop(channel, None)
        if self._problem is not None and not any(self.failures.values()):
            log.info("alert.delivery_recovered", detail="alerts are delivered again")
            self._problem = None
            self.ledger.db.set_meta(PROBLEM_META, "")
        self.ledger.alerts.alerts_sent(channel, [alert.id for alert in batch], self.clock())
        self._sent_at[(channel, batch[0].kind)] = time.monotonic()
        log.info(
            "alert.sent", channel=channel, kind=batch[0].kind, alerts=len(batch), title=batch[0].message.get("title")
        )
        return True

    def _failed(self, channel: str, problem: str) -> None:
        failures = self.failures[channel] = self.failures.get(channel, 0) + 1
        delay = self.backoff.delay(failures)
        self._retry_at[channel] = time.monotonic() + delay
        now = time.monotonic()
        if problem != self._problem or now - self._problem_logged_at >= PROBLEM_LOG_SECONDS:
            log.error(
                "alert.delivery_failed",
                channel=channel,
                problem=problem,
                attempts=failures,
                retry_in=round(delay, 1),
                detail="alerts wait in the ledger and are sent once it works",
            )
            self._problem_logged_at = now
        if problem != self._problem:
            self._problem = problem
            self.ledger.db.set_meta(PROBLEM_META, f"{problem} (since {_when(self.clock())})")
