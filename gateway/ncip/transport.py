"""How an NCIP message reaches ALEPH and its answer comes back, as ALEPH sites run it.

  http(s)://HOST:PORT/PATH, send_as = body   POST, the message as the body (content_type, default
                                             text/xml; charset=UTF-8)
  http(s)://..., send_as = query             GET URL?MESSAGE, the message URL-encoded after '?'
                                             (ALEPH's web server: http://HOST:8991/ncip?<?xml ...)
  http(s)://..., send_as = form              POST, the message URL-encoded as the body
                                             (form_content_type)
  tcp://HOST:PORT[/PATH], framing = http10   a raw socket to ALEPH's NCIP port, written as the most
                                             used open-source ALEPH client writes it: "POST PATH
                                             HTTP/1.0", Content-Length, Content-Type
                                             (form_content_type), a blank line, the message itself
                                             (not URL-encoded)
  tcp://HOST:PORT, framing = bare            the message alone on the raw socket
On a raw socket the answer is read until it holds a whole NCIP message or the
server closes; an HTTP status line and headers before it are allowed, not
needed. ALEPH's NCIP port may also answer an http:// request that way, the
NCIP XML alone with no status line: that answer is read the same way, not
taken for a broken connection. Every exchange has one total deadline
(timeout_seconds: connect, send and the whole answer) and a cap on the answer's
size (max_answer_bytes).

Plain http:// with no proxy in the environment (how ALEPH's NCIP server is
reached on a campus network) goes over one kept-alive http.client connection
(PlainHttp): the relay sends one small message at a time, and a requests call
costs about half a millisecond of CPU more, most of what the relay spent per
entry. https:// and calls through a proxy go through a requests session
(gateway.core.http: certificates verified, the environment's proxies honoured).
Both put the exchange under the same gateway.core.http.Deadline.
"""

from __future__ import annotations

import re
import select
import socket
from http import client as http_client
from typing import Protocol
from urllib.parse import quote, urlsplit

import requests

from gateway.config.loader import Ncip
from gateway.core import http
from gateway.ncip.answers import UnreadableAnswer, complete

READ_CHUNK = 64 * 1024
PEEK_BYTES = 16
_STATUS_LINE = re.compile(rb"\A\s*HTTP/\d(?:\.\d)? +(\d{3})\b")


class NcipUnavailable(Exception):
    """No answer to read: the server cannot be reached, timed out, or answered HTTP non-2xx."""

    def __init__(self, reason: str, http_status: int | None = None):
        super().__init__(reason)
        self.http_status = http_status


class Transport(Protocol):
    def exchange(self, message: bytes) -> bytes:
        """Send one message; return the answer's bytes. Raise NcipUnavailable when there is no answer to
        read, UnreadableAnswer when it is larger than max_answer_bytes."""

    def close(self) -> None: ...


def for_settings(settings: Ncip) -> Transport:
    scheme = urlsplit(settings.url).scheme
    if scheme == "tcp":
        return RawSocket(settings)
    if scheme == "http" and not http.environment_proxies(settings.url):
        return PlainHttp(settings)
    return Http(settings)


def _request(settings: Ncip, message: bytes) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, url, headers, body) of one message as send_as says."""
    if settings.send_as == "query":
        return "GET", settings.url.split("?", 1)[0] + "?" + quote(message, safe=""), {}, None
    if settings.send_as == "form":
        return (
            "POST",
            settings.url,
            {"Content-Type": settings.form_content_type},
            quote(message, safe="").encode("ascii"),
        )
    return "POST", settings.url, {"Content-Type": settings.content_type}, message


class PlainHttp:
    """http://HOST:PORT/PATH without a proxy: one kept-alive connection, opened again when the server closed it."""

    def __init__(self, settings: Ncip):
        self.settings = settings
        parts = urlsplit(settings.url)
        self.host, self.port = parts.hostname or "", parts.port or 80
        self._connection: http_client.HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def exchange(self, message: bytes) -> bytes:
        settings = self.settings
        method, url, headers, body = _request(settings, message)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers["User-Agent"] = http.USER_AGENT
        with http.Deadline(settings.timeout_seconds) as deadline:
            try:
                status, answer, truncated = self._call(deadline, method, target, headers, body)
            except (OSError, http_client.HTTPException) as error:
                self.close()
                if deadline.expired or deadline.remaining() == 0 or isinstance(error, socket.timeout):
                    raise self._late() from None
                raise NcipUnavailable(
                    f"cannot reach the NCIP server: connection failed ({self.host}:{self.port}: {_text(error)})"
                ) from None
            if deadline.expired:  # a shut-down socket can look like a short, complete answer
                self.close()
                raise self._late()
        if not 200 <= status < 300:
            raise NcipUnavailable(f"NCIP server answered HTTP {status}", status)
        if truncated:
            raise UnreadableAnswer(
                f"the NCIP answer is larger than max_answer_bytes ({settings.max_answer_bytes})", answer
            )
        return answer

    def _late(self) -> NcipUnavailable:
        return NcipUnavailable(
            f"cannot reach the NCIP server: no whole answer within timeout_seconds "
            f"({self.settings.timeout_seconds:g} s)"
        )

    def _call(
        self, deadline: http.Deadline, method: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, bytes, bool]:
        """Status, body (at most max_answer_bytes) and whether there was more."""
        connection = self._connection
        if connection is not None and connection.sock is not None and _closed_by_peer(connection.sock):
            self.close()  # the server closed the kept-alive connection while it was idle
            connection = None
        if connection is None:
            connection = self._connection = http_client.HTTPConnection(self.host, self.port)
        connection.timeout = max(deadline.remaining(), 0.001)
        deadline.attach(connection)  # shut down at the deadline, whatever it is doing (connecting included)
        if connection.sock is None:
            connection.connect()
        else:
            connection.sock.settimeout(connection.timeout)
        connection.request(method, target, body=body, headers=headers)
        limit = self.settings.max_answer_bytes
        sock = connection.sock
        if sock is not None and not _status_line_ahead(sock, deadline, limit):
            try:  # no HTTP framing: the connection cannot carry another request
                return 200, _read_bare(sock, deadline, limit), False
            finally:
                self.close()
        response = connection.getresponse()
        if response.length is None and not response.chunked:  # no framing: the answer ends with its message
            try:
                return response.status, *_read_unframed(response, limit)
            finally:
                self.close()  # what the server does next cannot be known: the connection is not used again
        answer = response.read(limit + 1)
        if len(answer) > limit:
            self.close()  # the rest is never read
            return response.status, answer[:limit], True
        if not response.isclosed():
            response.read()  # nothing left (the cap was not reached); makes the connection ready again
        return response.status, answer, False


def _status_line_ahead(sock: socket.socket, deadline: http.Deadline, limit: int) -> bool:
    """Wait for the answer's first bytes: True if it starts (after blank lines) like an HTTP status line, or the
    server closed (http.client tells that); False if it is something else, such as the NCIP XML alone, which
    ALEPH's NCIP port writes with no status line. Only blank lines are taken off the socket."""
    skipped = 0
    while skipped <= limit:  # past it, http.client refuses what follows
        sock.settimeout(max(deadline.remaining(), 0.001))
        ahead = sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        if not ahead:
            return True
        text = ahead.lstrip()
        if len(text) < len(ahead):  # blank lines before the answer
            skipped += len(sock.recv(len(ahead) - len(text)))
            continue
        return b"HTTP/".startswith(text[:5]) if len(text) < 5 else text.startswith(b"HTTP/")
    return True


def _read_whole(sock: socket.socket, deadline: http.Deadline, limit: int, answer: bytearray) -> None:
    """Read into answer until it holds a whole NCIP message or the server closes. Raise UnreadableAnswer if it
    grows past limit, socket.timeout at the deadline, OSError if the connection breaks (answer keeps what came)."""
    while not complete(answer):
        sock.settimeout(max(deadline.remaining(), 0.001))
        chunk = sock.recv(READ_CHUNK)
        if not chunk:
            return  # the server closed: what came is the answer
        answer += chunk
        if len(answer) > limit:
            raise UnreadableAnswer(f"the NCIP answer is larger than max_answer_bytes ({limit})", bytes(answer))


def _read_bare(sock: socket.socket, deadline: http.Deadline, limit: int) -> bytes:
    """An answer without HTTP framing, read as on a raw socket; a connection broken after some of it came ends it."""
    answer = bytearray()
    try:
        _read_whole(sock, deadline, limit, answer)
    except TimeoutError:
        raise  # the deadline, even if its timer has not fired yet
    except OSError:
        if not answer or deadline.expired:
            raise
    return bytes(answer)


def _read_unframed(response: http_client.HTTPResponse, limit: int) -> tuple[bytes, bool]:
    """An HTTP answer with neither Content-Length nor chunks: read until it holds a whole NCIP message or the
    server closes (a server that keeps the connection open would otherwise hold every answer until the deadline).
    Return the body (at most limit bytes) and whether there was more."""
    answer = bytearray()
    while not complete(answer) and len(answer) <= limit:
        chunk = response.read1(READ_CHUNK)
        if not chunk:
            break
        answer += chunk
    return bytes(answer[:limit]), len(answer) > limit


def _closed_by_peer(sock: socket.socket) -> bool:
    """True if an idle connection has something to read: the server closed it (or broke the protocol)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _text(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)[:300] or type(error).__name__


class Http:
    """https://..., or http:// through a proxy: one session (gateway.core.http) per relay thread."""

    def __init__(self, settings: Ncip):
        self.settings = settings
        self.session = http.new_session()

    def close(self) -> None:
        self.session.close()

    def exchange(self, message: bytes) -> bytes:
        settings = self.settings
        method, url, headers, data = _request(settings, message)
        try:
            answer = http.send(
                self.session,
                method,
                url,
                deadline=settings.timeout_seconds,
                max_bytes=settings.max_answer_bytes,
                headers=headers,
                data=data or None,
            )
        except requests.RequestException as error:
            raise NcipUnavailable(f"cannot reach the NCIP server: {_describe(error)}") from None
        if not 200 <= answer.status < 300:
            raise NcipUnavailable(f"NCIP server answered HTTP {answer.status}", answer.status)
        if answer.truncated:
            raise UnreadableAnswer(
                f"the NCIP answer is larger than max_answer_bytes ({settings.max_answer_bytes})", answer.body
            )
        return answer.body


class RawSocket:
    """tcp://HOST:PORT[/PATH]: one connection per message, closed after the answer, under one total deadline.
    framing = http10 writes an HTTP/1.0 request around the message; bare writes the message alone."""

    def __init__(self, settings: Ncip):
        self.settings = settings
        parts = urlsplit(settings.url)
        self.address = (parts.hostname or "", parts.port or 0)
        self.path = parts.path or "/"

    def close(self) -> None:
        pass

    def frame(self, message: bytes) -> bytes:
        """What is written on the socket for one message."""
        if self.settings.framing == "bare":
            return message
        head = (
            f"POST {self.path} HTTP/1.0\r\nContent-Length: {len(message)}\r\n"
            f"Content-Type: {self.settings.form_content_type}\r\n\r\n"
        )
        return head.encode("latin-1") + message

    def exchange(self, message: bytes) -> bytes:
        where = f"{self.address[0]}:{self.address[1]}"
        with http.Deadline(self.settings.timeout_seconds) as deadline:
            connection = self._connect(deadline, where)
            with connection:
                deadline.attach(connection)  # shut down at the deadline, whatever it is doing
                data = self._talk(connection, self.frame(message), deadline, where)
            if deadline.expired:
                raise self._late(where)
        if not data.strip():
            raise NcipUnavailable(f"the NCIP port {where} closed the connection without an answer")
        status = _STATUS_LINE.match(data)
        code = int(status.group(1)) if status else 200
        if not 200 <= code < 300 and not complete(data):
            raise NcipUnavailable(f"the NCIP port {where} answered HTTP {code} without an NCIP message", code)
        return data

    def _late(self, where: str) -> NcipUnavailable:
        return NcipUnavailable(
            f"no whole answer from {where} within timeout_seconds ({self.settings.timeout_seconds:g} s)"
        )

    def _connect(self, deadline: http.Deadline, where: str) -> socket.socket:
        try:
            return socket.create_connection(self.address, timeout=max(deadline.remaining(), 0.001))
        except OSError as error:
            if deadline.expired or isinstance(error, socket.timeout):
                raise self._late(where) from None
            raise NcipUnavailable(f"cannot connect to the NCIP port {where}: {error.strerror or error}") from None

    def _talk(self, connection: socket.socket, request: bytes, deadline: http.Deadline, where: str) -> bytes:
        """Write the request; read until the answer is a whole NCIP message, or the server closes."""
        data = bytearray()
        try:
            connection.settimeout(max(deadline.remaining(), 0.001))
            connection.sendall(request)
            _read_whole(connection, deadline, self.settings.max_answer_bytes, data)
        except TimeoutError:
            raise self._late(where) from None
        except OSError as error:
            if not data:
                raise NcipUnavailable(
                    f"the NCIP port {where} dropped the connection: {error.strerror or error}"
                ) from None
        return bytes(data)


def _describe(error: requests.RequestException) -> str:
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS certificate could not be verified (" + str(error)[:200] + ")"
    if isinstance(error, http.DeadlineExceeded):
        return f"no whole answer within timeout_seconds ({error})"
    if isinstance(error, requests.Timeout):
        return "no answer in time (timeout)"
    if _no_status_line(error):
        return (
            "the server answered without an HTTP status line, as ALEPH's NCIP port can: reach that port with "
            "http:// and no proxy, or with tcp://"
        )
    if isinstance(error, requests.ConnectionError):
        return "connection failed (" + str(error)[:300] + ")"
    return f"{error.__class__.__name__}: {str(error)[:300]}"


def _no_status_line(error: BaseException) -> bool:
    """True if http.client found no status line somewhere in what error wraps (requests and urllib3 nest it)."""
    seen: set[int] = set()
    pending: list[object] = [error]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, http_client.BadStatusLine) and not isinstance(current, http_client.RemoteDisconnected):
            return True
        pending += [*current.args, current.__cause__, current.__context__]
    return False
