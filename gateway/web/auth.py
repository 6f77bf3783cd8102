"""HTTP basic auth for the staff page, from [web] users_file (gateway/web/users.py).

The file is read again when it changes, so `caiasoft-gateway web-user NAME` takes effect without a restart.
A right name and password are remembered for the life of the process (as a keyed digest, never the
password), so a page and its stylesheet cost one scrypt, not one each; a wrong one always costs a whole
check, and at most CHECKS_AT_ONCE checks run at once (each takes 16 MiB).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
import time
from pathlib import Path

from gateway.core import logs
from gateway.core.errors import describe
from gateway.core.names import printable
from gateway.web import users

log = logs.get("gateway.web")

REALM = 'Basic realm="caiasoft-gateway", charset="UTF-8"'
CHECKS_AT_ONCE = 2
REMEMBERED = 64
MAX_HEADER = 4096
REFUSALS_SAID_EVERY = 60.0  # seconds: wrong passwords are logged once a minute at most, with how many


def credentials(header: str | None) -> tuple[str, str] | None:
    """(name, password) from an Authorization header, or None if it holds no basic credentials."""
    if not header or len(header) > MAX_HEADER:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    name, colon, password = decoded.decode("utf-8", "surrogateescape").partition(":")
    return (name, password) if colon else None


class BasicAuth:
    """Whether a request's Authorization header names a user of the users file with its password."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._checks = threading.BoundedSemaphore(CHECKS_AT_ONCE)
        self._key = secrets.token_bytes(32)
        self._users: dict[str, str] = {}
        self._version: tuple[int, int, int] | None = None
        self._problem: str | None = None
        self._known: dict[bytes, None] = {}  # keyed digests of name, stored hash and password that matched
        self._refused = 0  # logins refused since the last log line about them
        self._refused_said = -REFUSALS_SAID_EVERY  # time.monotonic() of that line

    def allows(self, header: str | None) -> bool:
        given = credentials(header)
        if given is None:
            return False
        name, password = given
        known = self._current()
        stored = known.get(name, "")
        token = hmac.new(
            self._key, "\0".join((name, stored, password)).encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()
        with self._lock:
            if token in self._known:
                return True
        with self._checks:
            matches = users.verify(known, name, password)
        if matches:
            with self._lock:
                if len(self._known) >= REMEMBERED:
                    self._known.pop(next(iter(self._known)))
                self._known[token] = None
        else:
            self._refused_login(name)
        return matches

    def _refused_login(self, name: str) -> None:
        """A name and a wrong password (or an unknown name): logged at once, then once a minute at most with how
        many there were since, so guessing shows in the log without filling it."""
        now = time.monotonic()
        with self._lock:
            self._refused += 1
            if now - self._refused_said < REFUSALS_SAID_EVERY:
                return
            count, self._refused, self._refused_said = self._refused, 0, now
        log.warning(
            "web.login_refused",
            user=printable(name[:64]),
            refused=count,
            detail="a wrong name or password; said at most once a minute, with how many since",
        )

    def _current(self) -> dict[str, str]:
        """The users, read again if the file changed; none (everyone refused, said in the log) if it cannot be."""
        try:
            info = os.stat(self.path)
            version = (info.st_ino, info.st_mtime_ns, info.st_size)
            with self._lock:
                if version == self._version:
                    return self._users
            found = users.load_users(self.path)
        except OSError as error:
            self._said(f"cannot read {self.path}: {describe(error)}: every request is refused")
            return {}
        with self._lock:
            self._users, self._version, self._known = found, version, {}
        self._said(None)
        return found

    def _said(self, problem: str | None) -> None:
        with self._lock:
            if problem == self._problem:
                return
            self._problem = problem
        if problem is not None:
            log.error("web.users_file", problem=problem)
