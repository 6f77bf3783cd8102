"""The CaiaSoft client: upload a request file, read the answer, decide what it means.

Every answer becomes an Outcome with one of four verdicts:
  accepted   2xx and success true (per-item denials are kept, not a failure)
  refused    success false, a non-empty error, or another 4xx: the file goes to error_dir
  transient  network error, timeout, 408, 429, 5xx, or an unreadable 2xx: retry later
  paused     401/403 (wrong key) or a redirect (wrong base_url): stop uploading, move nothing
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import requests

from gateway import __version__
from gateway.config import CaiaSoft, Secret
from gateway.errors import GatewayError

RETRY_AFTER_CAP_SECONDS = 3600.0
ANSWER_EXCERPT_CHARS = 2000
CONTENT_TYPES = {"xml": "application/xml", "text": "text/plain"}
STOP_LIST_PATH = "/api/circstoplist/v1/ACTIVE"


@dataclass(frozen=True)
class Outcome:
    verdict: str
    reason: str
    http_status: int | None = None
    answer: Any = None
    retry_after: float | None = None
    denials: list[dict[str, Any]] = field(default_factory=list)
    elapsed_ms: int = 0


def classify(status: int, headers: dict[str, str] | requests.structures.CaseInsensitiveDict,
             body: str, now: float | None = None) -> Outcome:
    """Given an HTTP answer from CaiaSoft, return the Outcome it means."""
    parsed = _parse_json(body)
    answer = parsed if parsed is not None or not body.strip() else {"unparsed": body[:ANSWER_EXCERPT_CHARS]}
    words = _error_words(parsed) if parsed is not None else body.strip()[:200]
    said = f": {words}" if words else ""
    if status in (401, 403):
        return Outcome("paused", f"CaiaSoft refused the API key (HTTP {status}): check api_key_file "
                       f"and the key in CaiaSoft's Admin Module{said}", status, answer)
    if 300 <= status < 400:
        location = headers.get("Location", "?")
        return Outcome("paused", f"CaiaSoft answered with a redirect (HTTP {status} to {location}): "
                       "check caiasoft.base_url and requestfile_path", status, answer)
    if status in (408, 429) or status >= 500:
        return Outcome("transient", f"CaiaSoft is unavailable (HTTP {status}{said})",
                       status, answer, retry_after=parse_retry_after(headers.get("Retry-After"), now))
    if status >= 400:
        return Outcome("refused", f"CaiaSoft refused the file (HTTP {status}){said}", status, answer)
    if not isinstance(parsed, dict):
        return Outcome("transient", f"CaiaSoft's answer (HTTP {status}) is not a JSON object; "
                       "will retry", status, answer)
    success = parsed.get("success")
    error = parsed.get("error")
    if success is False or str(success).lower() == "false" or error not in (None, "", [], {}):
        return Outcome("refused", f"CaiaSoft refused the file: {words or 'success: false'}", status, answer)
    if success is not True and str(success).lower() != "true":
        return Outcome("refused", "CaiaSoft's answer has no success: true", status, answer)
    denials = [item for item in parsed.get("results") or [] if is_denied(item)]
    reason = "accepted" + (f", {len(denials)} item(s) denied" if denials else "")
    return Outcome("accepted", reason, status, answer, denials=denials)


def is_denied(item: Any) -> bool:
    """True for a per-item result CaiaSoft denied (deny: "Y")."""
    return isinstance(item, dict) and str(item.get("deny", "")).upper() in ("Y", "YES", "TRUE")


def _parse_json(body: str) -> Any:
    """The JSON in body, or None if there is none."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _error_words(answer: Any) -> str:
    if isinstance(answer, dict):
        for key in ("error", "message", "istatus"):
            if answer.get(key):
                return str(answer[key])[:ANSWER_EXCERPT_CHARS]
    return ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return seconds to wait from a Retry-After header (seconds or HTTP date), capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


@dataclass
class Backoff:
    """Exponential backoff with jitter, capped; a server's Retry-After wins if longer."""

    initial: float
    maximum: float
    random: Callable[[], float] = random.random

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the given number of consecutive failures (1 = first)."""
        base = min(self.maximum, self.initial * 2 ** max(failures - 1, 0))
        delay = base / 2 + self.random() * base / 2
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay


class CaiaSoftClient:
    """One requests.Session to CaiaSoft. Thread-safe for sequential use by one thread each call."""

    def __init__(self, settings: CaiaSoft, api_key: Secret, session: requests.Session | None = None):
        self.settings = settings
        self._key = api_key
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"aleph-caiasoft-gateway/{__version__}"
        self.session.verify = str(settings.ca_file) if settings.ca_file else settings.verify_tls

    def close(self) -> None:
        self.session.close()

    def _headers(self) -> dict[str, str]:
        return {"X-API-Key": self._key.value, "Accept": "application/json"}

    def upload(self, path: Path, name: str, kind: str) -> Outcome:
        """POST one file (opened afresh) to requestfile; return the Outcome. Never raises for HTTP."""
        started = time.monotonic()
        try:
            with open(path, "rb") as body:
                response = self.session.post(
                    self.settings.requestfile_url,
                    headers=self._headers(),
                    files={self.settings.upload_field: (name, body, CONTENT_TYPES.get(kind, "application/octet-stream"))},
                    data=dict(self.settings.extra_fields),
                    timeout=self.settings.timeout_seconds,
                    allow_redirects=False,
                )
                text = response.text
        except requests.RequestException as error:
            return Outcome("transient", f"cannot reach CaiaSoft: {_describe(error)}",
                           elapsed_ms=_ms(started))
        outcome = classify(response.status_code, response.headers, text)
        return _with_elapsed(outcome, started)

    def check(self) -> Outcome:
        """A harmless GET (the active circulation stops) to prove URL, TLS and key work."""
        started = time.monotonic()
        url = self.settings.base_url.rstrip("/") + STOP_LIST_PATH
        try:
            response = self.session.get(url, headers=self._headers(), timeout=self.settings.timeout_seconds,
                                        allow_redirects=False)
        except requests.RequestException as error:
            return Outcome("transient", f"cannot reach CaiaSoft at {self.settings.base_url}: {_describe(error)}",
                           elapsed_ms=_ms(started))
        outcome = classify(response.status_code, response.headers, response.text)
        return _with_elapsed(outcome, started)


    def status_list(self, kind: str, day: str, collection: str) -> list[str]:
        """Barcodes CaiaSoft retrieved or refiled (kind) on day (YYYYMMDD) in collection. Raise GatewayError."""
        url = f"{self.settings.base_url.rstrip('/')}/api/{kind}list/v1/{day}/{day}/{quote(collection, safe='')}"
        try:
            response = self.session.get(url, headers=self._headers(), timeout=self.settings.timeout_seconds,
                                        allow_redirects=False)
        except requests.RequestException as error:
            raise GatewayError(f"cannot read CaiaSoft's {kind} list: {_describe(error)}") from None
        if response.status_code != 200:
            raise GatewayError(f"CaiaSoft's {kind} list: {classify(response.status_code, response.headers, response.text).reason}")
        answer = _parse_json(response.text)
        barcodes = answer.get("barcodes") if isinstance(answer, dict) else None
        if not isinstance(barcodes, list) or not all(isinstance(b, str) for b in barcodes):
            raise GatewayError(f"CaiaSoft's {kind} list for {day} has no list of barcodes")
        return [barcode.strip() for barcode in barcodes if barcode.strip()]


def _describe(error: requests.RequestException) -> str:
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS certificate could not be verified (" + str(error)[:200] + ")"
    if isinstance(error, requests.Timeout):
        return "no answer in time (timeout)"
    if isinstance(error, requests.ConnectionError):
        return "connection failed (" + str(error)[:300] + ")"
    return f"{error.__class__.__name__}: {str(error)[:300]}"


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _with_elapsed(outcome: Outcome, started: float) -> Outcome:
    return dataclasses.replace(outcome, elapsed_ms=_ms(started))
