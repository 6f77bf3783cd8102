"""The CaiaSoft client: upload a request file, read the answer, decide what it means.

Every answer becomes an Outcome with one of five verdicts:
  accepted    2xx and success true (per-item denials are kept, not a failure)
  refused     success false (or no success true), or another 4xx: the file goes to error_dir
              (success is read first: error text beside success true is kept in the reason)
  transient   network error, total deadline passed, 408, 429, 5xx: retry later
  unreadable  a 2xx that is not CaiaSoft's JSON (an HTML maintenance page from a proxy, an
              answer cut at max_answer_bytes): CaiaSoft may have the file, so it is sent again
              only caiasoft.unreadable_answer_retries times, then it goes to error_dir
  paused      401/403 (wrong key) or a redirect (wrong base_url): stop uploading, move nothing

Every call goes through gateway.core.http: a total deadline (caiasoft.deadline_seconds),
an answer cut at caiasoft.max_answer_bytes (the rest is never read; only an
excerpt of an answer that is not JSON is kept), TLS verified as the config says
whatever REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE say (proxies still come from
HTTPS_PROXY / NO_PROXY).
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from gateway.config.loader import CaiaSoft, Secret
from gateway.core import http, logs
from gateway.core.errors import ApiError
from gateway.core.logs import REDACTED
from gateway.core.states import Verdict
from gateway.state.itemindex import is_denied

RETRY_AFTER_CAP_SECONDS = 3600.0
ANSWER_EXCERPT_CHARS = 2000
CONTENT_TYPES = {"xml": "application/xml", "text": "text/plain"}
STOP_LIST_PATH = "/api/circstoplist/v1/ACTIVE"
UNREADABLE_COUNT = "unreadable_answers"  # kept in the ledger's answer while the file waits

log = logs.get("gateway.caiasoft")


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str
    http_status: int | None = None
    answer: Any = None
    retry_after: float | None = None
    denials: list[dict[str, Any]] = field(default_factory=list)
    elapsed_ms: int = 0


def unavailable(status: int) -> bool:
    """408, 429 or 5xx: CaiaSoft cannot answer now; the same call may be taken later."""
    return status in (408, 429) or status >= 500


def about_every_call(error: ApiError) -> bool:
    """Whether a failed call says nothing about what it asked for: CaiaSoft not reached (no HTTP status), the
    API key refused (401, 403), or CaiaSoft unavailable. Any other failure concerns that call alone."""
    status = error.http_status
    return status is None or status in (401, 403) or unavailable(status)


def classify(
    status: int,
    headers: Mapping[str, str],
    body: str,
    now: float | None = None,
    truncated_at: int | None = None,
    table: str = "caiasoft",
) -> Outcome:
    """Given an HTTP answer from CaiaSoft, return the Outcome it means.

    truncated_at: the answer was longer than this many bytes and body is only its start. table: the
    connection's table (caiasoft, caiasoft.NAME), whose keys the reasons name.
    """
    parsed = None if truncated_at else _parse_json(body)
    cut = (
        (f" (the answer was longer than {table}.max_answer_bytes = {truncated_at} bytes; the rest was not read)")
        if truncated_at
        else ""
    )
    if parsed is not None or not body.strip():
        answer: Any = parsed
    else:
        answer = {
            "unparsed": body[:ANSWER_EXCERPT_CHARS],
            **({"truncated_at_bytes": truncated_at} if truncated_at else {}),
        }
    words = _error_words(parsed) if parsed is not None else " ".join(body.split())[:200]
    said = f": {words}" if words else ""
    if status in (401, 403):
        return Outcome(
            Verdict.PAUSED,
            f"CaiaSoft refused the API key (HTTP {status}): check {_key_of(table, 'api_key_file')} "
            f"and the key in CaiaSoft's Admin Module{said}",
            status,
            answer,
        )
    if 300 <= status < 400:
        location = headers.get("Location", "?")
        return Outcome(
            Verdict.PAUSED,
            f"CaiaSoft answered with a redirect (HTTP {status} to {location}): "
            f"check {table}.base_url and requestfile_path",
            status,
            answer,
        )
    if unavailable(status):
        return Outcome(
            Verdict.TRANSIENT,
            f"CaiaSoft is unavailable (HTTP {status}{said}){cut}",
            status,
            answer,
            retry_after=parse_retry_after(headers.get("Retry-After"), now),
        )
    if status >= 400:
        return Outcome(Verdict.REFUSED, f"CaiaSoft refused the file (HTTP {status}){said}{cut}", status, answer)
    if not isinstance(parsed, dict):
        kind = headers.get("Content-Type") or "no Content-Type"
        return Outcome(
            Verdict.UNREADABLE,
            f"CaiaSoft's answer (HTTP {status}, {kind}) is not its JSON answer{cut}{said}",
            status,
            answer,
        )
    success = parsed.get("success")
    error = parsed.get("error")
    succeeded = success is True or str(success).lower() == "true"
    if not succeeded and (success is False or str(success).lower() == "false" or error not in (None, "", [], {})):
        return Outcome(Verdict.REFUSED, f"CaiaSoft refused the file: {words or 'success: false'}", status, answer)
    if not succeeded:
        return Outcome(Verdict.REFUSED, "CaiaSoft's answer has no success: true", status, answer)
    denials = [item for item in parsed.get("results") or [] if is_denied(item)]
    reason = "accepted" + (f", {len(denials)} item(s) denied" if denials else "")
    if error not in (None, "", [], {}):  # success is read first: error text on success is a remark, kept
        reason += f"; CaiaSoft also said: {words}"
    return Outcome(Verdict.ACCEPTED, reason, status, answer, denials=denials)


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


class CaiaSoftClient:
    """CaiaSoft over HTTP, through gateway.core.http (total deadline, answer size cap, TLS from the config).

    Each thread that uses the client (each upload worker, the feed) gets its own
    requests.Session: requests does not promise a session is safe to share.
    Every Outcome it returns has the API key scrubbed from its reason and answer,
    so an error text that quotes the key is never stored or shown raw.
    """

    def __init__(
        self, settings: CaiaSoft, api_key: Secret, session_factory: Callable[[], requests.Session] = http.new_session
    ):
        self.settings = settings
        self._key = api_key
        self._session_factory = session_factory
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        # verify is passed on every call: the config wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
        self._verify: bool | str = str(settings.ca_file) if settings.ca_file else settings.verify_tls

    @property
    def session(self) -> requests.Session:
        """This thread's session (made on first use)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._session_factory()
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def _headers(self) -> dict[str, str]:
        return {"X-API-Key": self._key.value, "Accept": "application/json"}

    def _call(self, method: str, url: str, **kwargs: Any) -> http.Reply:
        return http.send(
            self.session,
            method,
            url,
            deadline=self.settings.deadline_seconds,
            max_bytes=self.settings.max_answer_bytes,
            step_timeout=self.settings.timeout_seconds,
            verify=self._verify,
            headers=self._headers(),
            **kwargs,
        )

    def _outcome(self, answer: http.Reply) -> Outcome:
        body = scrub(answer.text, self._key.value)
        outcome = classify(
            answer.status,
            answer.headers,
            body,
            truncated_at=self.settings.max_answer_bytes if answer.truncated else None,
            table=self.settings.table,
        )
        return dataclasses.replace(
            outcome,
            reason=scrub(outcome.reason, self._key.value),
            answer=scrub(outcome.answer, self._key.value),
            elapsed_ms=int(answer.elapsed * 1000),
        )

    def _failure(self, prefix: str, error: requests.RequestException, started: float) -> Outcome:
        reason = scrub(
            f"{prefix}: {_describe(error, self.settings.deadline_seconds, self.settings.table)}", self._key.value
        )
        return Outcome(Verdict.TRANSIENT, reason, elapsed_ms=_ms(started))

    def upload(self, path: Path, name: str, kind: str) -> Outcome:
        """POST one file (opened afresh) to requestfile; return the Outcome. Never raises for HTTP."""
        started = time.monotonic()
        try:
            content_type = CONTENT_TYPES.get(kind, "application/octet-stream")
            with open(path, "rb") as body:
                answer = self._call(
                    "POST",
                    self.settings.requestfile_url,
                    files={self.settings.upload_field: (name, body, content_type)},
                    data=dict(self.settings.extra_fields),
                )
        except requests.RequestException as error:
            return self._failure("cannot reach CaiaSoft", error, started)
        return self._outcome(answer)

    def check(self) -> Outcome:
        """A harmless GET (the active circulation stops) to prove URL, TLS and key work."""
        started = time.monotonic()
        try:
            answer = self._call("GET", self.settings.base_url.rstrip("/") + STOP_LIST_PATH)
        except requests.RequestException as error:
            return self._failure(f"cannot reach CaiaSoft at {self.settings.base_url}", error, started)
        return self._outcome(answer)

    def read(self, path: str, what: str) -> dict[str, Any]:
        """GET base_url + path; return the JSON object CaiaSoft answered.

        Raise ApiError, in words naming what was read, for a network failure, any status
        but 200, an answer that is not a whole JSON object, success: false or an error:
        an HTTP 200 can carry a failure (a wrong collection code), and it is never read
        as an empty answer.
        """
        started = time.monotonic()
        try:
            answer = self._call("GET", self.settings.base_url.rstrip("/") + path)
        except requests.RequestException as error:
            raise ApiError(self._failure(f"cannot read {what}", error, started).reason) from None
        if answer.status != 200:
            raise ApiError(f"{what}: {self._outcome(answer).reason}", answer.status)
        parsed = scrub(_parse_json(answer.text), self._key.value)  # callers quote answers in errors and status
        if not isinstance(parsed, dict) or answer.truncated:
            cut = f" (cut at {self.settings.table}.max_answer_bytes)" if answer.truncated else ""
            raise ApiError(f"{what}: CaiaSoft's answer is not a JSON object{cut}", answer.status)
        success, said = parsed.get("success"), parsed.get("error")
        words = scrub(str(said or "success: false"), self._key.value)[:ANSWER_EXCERPT_CHARS]
        if success is True or str(success).lower() == "true":
            if said not in (None, "", [], {}):  # some endpoints say something on success: worth a look, no more
                log.warning("caiasoft.said_on_success", what=what, said=words)
            return parsed
        if success is False or str(success).lower() == "false" or said not in (None, "", [], {}):
            raise ApiError(f"{what}: CaiaSoft answered with a failure: {words}", answer.status)
        return parsed


def scrub(value: Any, secret: str) -> Any:
    """value (a str, or JSON-like lists and dicts of them) with secret replaced by [redacted], also in keys.

    The JSON-escaped spelling of the secret is replaced too, in case the text is JSON.
    """
    if not secret:
        return value
    if isinstance(value, str):
        if secret in value:
            value = value.replace(secret, REDACTED)
        escaped = json.dumps(secret)[1:-1]
        return value.replace(escaped, REDACTED) if escaped != secret and escaped in value else value
    if isinstance(value, dict):
        return {scrub(key, secret): scrub(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item, secret) for item in value]
    return value


def _key_of(table: str, key: str) -> str:
    """A key as a reason names it: bare for [caiasoft] (as ever), table.key for [caiasoft.NAME]."""
    return key if table == "caiasoft" else f"{table}.{key}"


def _describe(error: requests.RequestException, deadline: float, table: str = "caiasoft") -> str:
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS certificate could not be verified (" + str(error)[:200] + ")"
    if isinstance(error, http.DeadlineExceeded):
        return (
            f"no complete answer within {deadline:g} s ({table}.deadline_seconds); the upload may have reached CaiaSoft"
        )
    if isinstance(error, requests.Timeout):
        return "no answer in time (timeout)"
    if isinstance(error, requests.ConnectionError):
        return "connection failed (" + str(error)[:300] + ")"
    return f"{error.__class__.__name__}: {str(error)[:300]}"


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def settle_unreadable(outcome: Outcome, previous_answer: Any, retries: int, table: str = "caiasoft") -> Outcome:
    """Turn an 'unreadable' Outcome into what the pipeline does with it; other Outcomes pass through.

    previous_answer is what the ledger holds for the file (counts earlier unreadable
    answers). Within retries the file is sent again later (transient, the count kept
    in the answer); after that it is refused with the answer's excerpt, since each
    sending may have reached CaiaSoft.
    """
    if outcome.verdict != Verdict.UNREADABLE:
        return outcome
    before = previous_answer.get(UNREADABLE_COUNT, 0) if isinstance(previous_answer, dict) else 0
    count = (before if isinstance(before, int) else 0) + 1
    answer = {
        **(outcome.answer if isinstance(outcome.answer, dict) else {"unparsed": outcome.answer}),
        UNREADABLE_COUNT: count,
    }
    if count > retries:
        return dataclasses.replace(
            outcome,
            verdict=Verdict.REFUSED,
            answer=answer,
            reason=f"{outcome.reason}; sent {count} time(s), never answered in JSON ({table}.unreadable_"
            "answer_retries): CaiaSoft may have it, check there before `retry`",
        )
    return dataclasses.replace(
        outcome,
        verdict=Verdict.TRANSIENT,
        answer=answer,
        reason=f"{outcome.reason}; sent again later ({count} of at most {retries + 1})",
    )


def counts_unreadable(outcome: Outcome) -> bool:
    """True if outcome carries a count of unreadable answers the ledger must keep with the file."""
    return isinstance(outcome.answer, dict) and UNREADABLE_COUNT in outcome.answer
