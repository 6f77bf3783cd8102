"""The staff page as a WSGI app: Today (/), Find an item (/find?barcode=X), One file (/file/ID), its
stylesheet (/style.css) and its own request counter (/metrics).

Read-only: GET and HEAD only, and nothing here writes to the ledger (it is opened once, when it exists, and
only read; `find` runs without its backfill). Every answer carries a strict Content-Security-Policy and no
script; every value is escaped by the templates (Jinja2, autoescape on) and every text redacted of the
API key and alert secrets. A page that fails answers 500 saying what failed; the next request is served
as usual.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jinja2
import markupsafe
import prometheus_client
from prometheus_client import CollectorRegistry, Counter

from gateway import __version__
from gateway.config import credentials
from gateway.config.settings import Settings
from gateway.core import logs
from gateway.core.errors import GatewayError, describe
from gateway.core.names import printable
from gateway.state.ledger import SCHEMA_VERSION, Ledger
from gateway.web import chart, data, lookup
from gateway.web.auth import REALM, BasicAuth

log = logs.get("gateway.web")

SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
HTML = "text/html; charset=utf-8"
CSS = "text/css; charset=utf-8"
REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}
_FILE = re.compile(r"/file/([0-9]{1,18})")

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call] # as the service's metrics: no *_created


@dataclass(frozen=True)
class Response:
    code: int
    body: bytes
    content_type: str = HTML
    headers: tuple[tuple[str, str], ...] = ()


def page_of(path: str) -> str:
    """The page a path is, as /metrics counts it."""
    if path == "/":
        return "today"
    if path == "/find":
        return "find"
    if path.startswith("/file/"):
        return "file"
    return {"/style.css": "style", "/metrics": "metrics"}.get(path, "other")


class StaffPage:
    """The WSGI app. Thread-safe: the listener serves each connection on a thread of its own."""

    def __init__(self, config: Settings, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        users_file = config.web.users_file if config.web is not None else None
        self.auth = BasicAuth(users_file) if users_file is not None else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "caiasoft_gateway_web_requests",
            "Requests the staff page answered, by page and HTTP status code.",
            ["page", "code"],
            registry=self.registry,
        )
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            finalize=_redacted,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.style = resources.files("gateway.web").joinpath("static/style.css").read_bytes()
        self._ledger: Ledger | None = None
        self._opening = threading.Lock()
        register_secrets(config)

    def close(self) -> None:
        with self._opening:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD") or "GET")
        path = str(environ.get("PATH_INFO") or "/")
        page = page_of(path)
        try:
            answer = self._answer(method, path, environ)
        except Exception as error:  # noqa: BLE001 - any failure of a page is said on the page and logged
            answer = self._failed(page, path, error)
        self.requests.labels(page=page, code=str(answer.code)).inc()
        start_response(
            f"{answer.code} {REASONS[answer.code]}",
            [
                ("Content-Type", answer.content_type),
                ("Content-Length", str(len(answer.body))),
                *SECURITY_HEADERS,
                *answer.headers,
            ],
        )
        return [b""] if method == "HEAD" else [answer.body]

    def _answer(self, method: str, path: str, environ: dict[str, Any]) -> Response:
        if self.auth is not None and not self.auth.allows(environ.get("HTTP_AUTHORIZATION")):
            return self._render(
                401,
                "message.html",
                title="Name and password needed",
                message="This page needs the name and password the gateway's administrator gave you.",
                headers=(("WWW-Authenticate", REALM),),
            )
        if method not in ("GET", "HEAD"):
            return self._render(
                405,
                "message.html",
                title="Only for reading",
                message="This page only shows what the gateway did: it takes no orders (GET and HEAD only).",
                headers=(("Allow", "GET, HEAD"),),
            )
        if path == "/":
            return self._today()
        if path == "/find":
            return self._find(str(environ.get("QUERY_STRING") or ""))
        found = _FILE.fullmatch(path)
        if found:
            return self._file(int(found.group(1)))
        if path == "/style.css":
            return Response(200, self.style, CSS)
        if path == "/metrics":
            return Response(
                200, prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST
            )
        return self._not_found("There is no such page here.")

    def _today(self) -> Response:
        now = self.clock()
        ledger = self._ledger_if_any()
        today = data.nothing_yet(self.config, now) if ledger is None else data.today(ledger, self.config, now)
        return self._render(200, "today.html", title="Today", today=today, chart=chart.svg(today.days))

    def _find(self, query: str) -> Response:
        try:
            typed = parse_qs(query, max_num_fields=10).get("barcode", [""])[0]
        except ValueError:  # more fields than a form sends
            typed = ""
        result = lookup.search(self._ledger_if_any(), self.config, typed)
        return self._render(200, "find.html", title=f"Find {result.barcode}", search=result, barcode=result.barcode)

    def _file(self, file_id: int) -> Response:
        ledger = self._ledger_if_any()
        view = lookup.file_view(ledger, self.config, file_id) if ledger is not None else None
        if view is None:
            return self._not_found(f"The ledger has no file {file_id}.")
        return self._render(200, "file.html", title=view.name, file=view)

    def _not_found(self, message: str) -> Response:
        return self._render(404, "message.html", title="Not found", message=message)

    def _failed(self, page: str, path: str, error: Exception) -> Response:
        said = printable(logs.redact(describe(error)))
        log.exception("web.failed", page=page, path=path[:200], error=said)
        message = (
            f"This page could not be made: {said}. Uploads are not affected; the failure is in the log "
            "(journalctl -u caiasoft-gateway-web)."
        )
        try:
            return self._render(500, "message.html", title="Something failed", message=message)
        except Exception:  # noqa: BLE001 - the templates themselves: plain text then
            return Response(500, logs.redact(message).encode("utf-8", "replace"), "text/plain; charset=utf-8")

    def _render(self, code: int, template: str, headers: tuple[tuple[str, str], ...] = (), **values: Any) -> Response:
        text = self.templates.get_template(template).render(
            version=__version__, shown_at=data.when(self.clock()), barcode=values.pop("barcode", ""), **values
        )
        return Response(code, logs.redact(text).encode("utf-8", "replace"), HTML, headers)

    def _ledger_if_any(self) -> Ledger | None:
        """The ledger, opened once and only read; None while there is none (it is never created here, nor
        upgraded: opening a ledger of the current schema writes nothing)."""
        with self._opening:
            if self._ledger is None and self.config.paths.database.is_file():
                if not _check_schema(self.config.paths.database):
                    return None  # the service is making it (its first start): nothing to show yet
                self._ledger = Ledger(self.config.paths.database)
            return self._ledger


class LedgerNotCurrent(GatewayError):
    """The ledger is of another version than this gateway's: the service upgrades it when it starts."""


def _check_schema(database: Path) -> bool:
    """True if the ledger is at this gateway's schema, False while the service is still making it (no version
    yet); raise LedgerNotCurrent if it is of another version (read on a read-only connection)."""
    db = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError as error:  # no meta table yet: the service's first start is making it
        if "no such table" in str(error):
            return False
        raise
    finally:
        db.close()
    if row is None:
        return False
    if row[0] != str(SCHEMA_VERSION):
        raise LedgerNotCurrent(
            f"the ledger {database} is of version {row[0] if row else 'unknown'}, this gateway reads version "
            f"{SCHEMA_VERSION}: start the service once (it upgrades the ledger), then reload this page"
        )
    return True


def _redacted(value: Any) -> Any:
    """Every value a template shows, before it is escaped: no registered secret (the API key) in it."""
    return logs.redact(value) if isinstance(value, str) and not isinstance(value, markupsafe.Markup) else value


def register_secrets(config: Settings) -> None:
    """Register the API key and the alert secrets for redaction, where this user can read them (quietly)."""
    for key in credentials.readable_keys(config, os.environ):
        logs.add_secret(key.value)
    alerts = config.alerts
    if alerts is None:
        return
    if alerts.webhook_url:  # its path, query and password are often the token
        parts = urlsplit(alerts.webhook_url)
        for secret in (parts.path.strip("/"), parts.query, parts.password or ""):
            logs.add_secret(secret)
    if alerts.password_file is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            logs.add_secret(alerts.password_file.read_text(encoding="utf-8").strip())
