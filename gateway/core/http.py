"""HTTP with a total deadline and a cap on the answer's size: how the gateway calls a server.

requests' ``timeout`` is per socket operation: a server that sends one byte a
second never trips it, and ``response.content`` reads a body of any size into
memory. Every call the gateway makes goes through ``send()`` instead:

    session = http.new_session()          # one per thread (requests does not promise sharing is safe)
    answer = http.send(session, "POST", url, deadline=120, max_bytes=1_048_576,
                       step_timeout=30, verify=True, headers=..., data=..., files=...)
    answer.status      # int
    answer.headers     # case-insensitive mapping
    answer.body        # bytes, at most max_bytes
    answer.truncated   # True if the server sent more than max_bytes (the rest was never read)
    answer.elapsed     # seconds from start to the end of the (capped) body
    answer.text        # body decoded (charset from Content-Type, else UTF-8; bad bytes replaced)

Contract:
- Given a session from new_session(), return a Reply once the status line,
  headers and body (cut at max_bytes) have arrived, all within ``deadline``
  seconds of the call. Any status is a Reply; redirects are not followed
  unless ``allow_redirects=True`` is passed.
- Raise DeadlineExceeded (a requests.Timeout) when the whole exchange (connect,
  sending the request, reading the answer) takes longer than ``deadline``: at the
  deadline the connection's socket is shut down, whatever it was doing.
- Raise another requests.RequestException for any other network failure
  (refused, reset, TLS, per-step timeout, a body cut short).
- ``step_timeout`` bounds each connect and each wait for data (default: the
  deadline). Name resolution and the steps of a TLS handshake are bounded by it
  per step, and the deadline cuts the call as soon as the handshake returns.
- TLS and proxies: sessions from new_session() do not read the environment for
  TLS (``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` would otherwise override the
  caller's ``verify``) or ``.netrc``; pass ``verify`` (True, False or a CA bundle
  path) on each call. Proxies still come from the environment
  (``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``) unless ``proxies`` is passed; a
  session reads them once per scheme and host, at its first call there.

Deadline is public so a non-HTTP transport (a raw TCP socket) can be bounded
the same way: ``with Deadline(seconds) as deadline: deadline.attach(sock); ...``.
"""

from __future__ import annotations

import contextlib
import email.message
import functools
import heapq
import itertools
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from gateway import __version__

USER_AGENT = f"aleph-caiasoft-gateway/{__version__}"
DEFAULT_MAX_ANSWER_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
JOINED_BODY_BYTES = 256 * 1024  # a request body up to this size is sent in one write with its headers


class DeadlineExceeded(requests.Timeout):
    """The whole exchange did not end within its deadline."""


@dataclass(frozen=True)
class Reply:
    """A server's answer: status, headers, body (at most max_bytes), whether it was cut, seconds taken."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    truncated: bool
    elapsed: float

    @property
    def text(self) -> str:
        """The body as text: the charset the server named, else UTF-8; undecodable bytes replaced."""
        charset = _charset(self.headers.get("Content-Type", ""))
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=64)
def _charset(content_type: str) -> str:
    """The charset a Content-Type names (parsed as email does), else utf-8; a server sends the same few."""
    message = email.message.Message()
    message["Content-Type"] = content_type
    return message.get_content_charset() or "utf-8"


# -- the deadline: a shared timer that shuts down the sockets of late calls ------


class Deadline:
    """A moment after which every socket or connection attached to it is shut down.

    Used as a context manager: entering arms it, leaving disarms it (nothing is shut
    down after the block ended). attach() takes a socket or an object with a
    ``sock`` attribute (a urllib3 connection: its current socket is shut down).
    Shutting down (not closing) makes a read or write blocked in another thread
    return at once, and the descriptor stays owned by its object.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._armed = False
        self._attached: dict[int, Any] = {}
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    def attach(self, target: Any) -> None:
        """Shut target down when the deadline passes (at once if it already has)."""
        with self._lock:
            if not self.expired:
                self._attached[id(target)] = target
                return
        _shut(target)

    def expire(self) -> None:
        with self._lock:
            if not self._armed or self.expired:
                return
            self.expired = True
            targets = list(self._attached.values())
        for target in targets:
            _shut(target)

    def __enter__(self) -> Deadline:
        with self._lock:
            self._armed = True
        _REAPER.add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._armed = False
            self._attached.clear()


def _shut(target: Any) -> None:
    sock = target if isinstance(target, socket.socket) else getattr(target, "sock", None)
    if not isinstance(sock, socket.socket):
        return
    # socket.socket's own shutdown, also for an SSLSocket: SSLSocket.shutdown would drop
    # its TLS object under a reader in another thread. OSError: closed or not connected yet.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Reaper:
    """One daemon thread that expires deadlines in time order (no thread per call)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._wake:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][2] is deadline:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wake.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, deadline = heapq.heappop(self._heap)
            deadline.expire()


_REAPER = _Reaper()
_current = threading.local()  # the Deadline of the call this thread is making, for the connections


# -- urllib3 connections that put themselves under the caller's deadline ---------


class _DeadlineConnection(urllib3.connection.HTTPConnection):
    """Also sends a small request's header block and body in one write (one packet, not two)."""

    _joining = False
    _held: bytes | None = None

    def connect(self) -> None:
        _attach_current(self)
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self)
        body = args[2] if len(args) > 2 else kwargs.get("body")
        self._joining = isinstance(body, bytes) and 0 < len(body) <= JOINED_BODY_BYTES and not kwargs.get("chunked")
        try:
            super().request(*args, **kwargs)
        finally:
            self._held, self._joining = None, False  # sent with the body, or the request failed

    def send(self, data: Any) -> None:
        if self._joining:
            if self._held is None:  # the header block: it goes with the body
                self._held = bytes(data)
                return
            data, self._held, self._joining = self._held + bytes(data), None, False
        super().send(data)


class _DeadlineHTTPSConnection(_DeadlineConnection, urllib3.connection.HTTPSConnection):
    """The same hooks over TLS (the method order puts them before HTTPSConnection's own)."""


def _attach_current(connection: Any) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.attach(connection)


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_POOLS = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections that the caller's Deadline can shut down."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools have their own classes: per-step timeouts only
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


class _Session(requests.Session):
    """A session that remembers, per scheme and host, the proxies the environment named for it."""

    def __init__(self) -> None:
        super().__init__()
        self.environment_proxies: dict[str, dict[str, str]] = {}

    def proxies_for(self, url: str) -> dict[str, str]:
        split = urllib.parse.urlsplit(url)
        where = f"{split.scheme}://{split.netloc}"
        proxies = self.environment_proxies.get(where)
        if proxies is None:  # reading them scans the whole environment: once per host, not per call
            proxies = self.environment_proxies[where] = environment_proxies(url)
        return dict(proxies)


def new_session(user_agent: str = USER_AGENT) -> requests.Session:
    """A requests.Session for send(): deadline-aware connections, TLS never taken from the environment."""
    session = _Session()
    session.trust_env = False
    session.headers["User-Agent"] = user_agent
    adapter = DeadlineAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def environment_proxies(url: str) -> dict[str, str]:
    """The proxies the environment names for url (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY)."""
    return requests.utils.get_environ_proxies(url)


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    deadline: float,
    max_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    step_timeout: float | None = None,
    verify: bool | str = True,
    **kwargs: Any,
) -> Reply:
    """Make one HTTP call within deadline seconds and return its Reply, body cut at max_bytes.

    kwargs go to requests (headers, data, files, params, proxies, allow_redirects).
    Raise DeadlineExceeded past the deadline, another requests.RequestException for
    other network failures, TypeError for a session not made by new_session().
    """
    if not isinstance(session.get_adapter(url), DeadlineAdapter):
        raise TypeError("http.send() needs a session from http.new_session()")
    started = time.monotonic()
    kwargs.setdefault("allow_redirects", False)
    if "proxies" not in kwargs and not session.trust_env:
        kwargs["proxies"] = session.proxies_for(url) if isinstance(session, _Session) else environment_proxies(url)
    step = min(step_timeout or deadline, deadline)
    watch = Deadline(deadline)
    previous = getattr(_current, "deadline", None)
    _current.deadline = watch
    try:
        with watch:
            response = session.request(method, url, stream=True, timeout=step, verify=verify, **kwargs)
            try:
                body, truncated = _read_capped(response, max_bytes)
            finally:
                response.close()
        if watch.expired:  # a shut-down socket can look like a short, complete answer
            raise requests.ConnectionError("cut at the deadline")
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
        if watch.expired or watch.remaining() == 0:
            raise DeadlineExceeded(f"no complete answer within {deadline:g} s (the call's total deadline)") from None
        if isinstance(error, requests.RequestException):
            raise
        raise requests.ConnectionError(f"{error.__class__.__name__}: {error}") from error
    finally:
        _current.deadline = previous
    return Reply(
        response.status_code, CaseInsensitiveDict(response.headers), body, truncated, time.monotonic() - started
    )


def _read_capped(response: requests.Response, max_bytes: int) -> tuple[bytes, bool]:
    """The body up to max_bytes, and whether more was there (the rest is never read)."""
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_content(chunk_size=min(READ_CHUNK_BYTES, max_bytes + 1)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            return b"".join(chunks)[:max_bytes], True
    return b"".join(chunks), False
