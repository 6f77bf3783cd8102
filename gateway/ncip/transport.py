"""How an NCIP message reaches ALEPH and its answer comes back, as ALEPH sites run it.

  http(s)://HOST:PORT/PATH, send_as = body   POST, the message as the body (content_type, default
                                             text/xml; charset=UTF-8)
  http(s)://..., send_as = query             GET URL?MESSAGE, the message URL-encoded after '?'
                                             (ALEPH's web server: http://HOST:8991/ncip?<?xml ...)
  http(s)://..., send_as = form              POST, the message URL-encoded as the body
  tcp://HOST:PORT                            the message written on a raw socket to ALEPH's NCIP
                                             port; the answer read until it is a whole NCIP message
                                             or the server closes
Every exchange has one total deadline (timeout_seconds: connect, send and the
whole answer) and a cap on the answer's size (max_answer_bytes).
"""

from __future__ import annotations

import socket
import time
from typing import Protocol
from urllib.parse import quote, urlsplit

import requests

from gateway import __version__
from gateway.config import Ncip
from gateway.ncip.answers import complete

READ_CHUNK = 64 * 1024


class NcipUnavailable(Exception):
    """No answer to read: the server cannot be reached, timed out, answered HTTP non-2xx or too much."""

    def __init__(self, reason: str, http_status: int | None = None):
        super().__init__(reason)
        self.http_status = http_status


class Transport(Protocol):
    def exchange(self, message: bytes) -> bytes:
        """Send one message; return the answer's bytes. Raise NcipUnavailable."""

    def close(self) -> None: ...


def for_settings(settings: Ncip) -> Transport:
    if urlsplit(settings.url).scheme == "tcp":
        return RawSocket(settings)
    return Http(settings)


class Http:
    """One requests.Session to the NCIP server's HTTP address."""

    def __init__(self, settings: Ncip):
        self.settings = settings
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"aleph-caiasoft-gateway/{__version__}"

    def close(self) -> None:
        self.session.close()

    def exchange(self, message: bytes) -> bytes:
        settings = self.settings
        deadline = time.monotonic() + settings.timeout_seconds
        if settings.send_as == "query":
            request = requests.Request("GET", settings.url.split("?", 1)[0] + "?" + quote(message, safe=""))
        elif settings.send_as == "form":
            request = requests.Request("POST", settings.url, data=quote(message, safe="").encode("ascii"),
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
        else:
            request = requests.Request("POST", settings.url, data=message,
                                       headers={"Content-Type": settings.content_type})
        try:
            response = self.session.send(self.session.prepare_request(request), stream=True,
                                         timeout=settings.timeout_seconds, allow_redirects=False)
            try:
                body = self._read(response, deadline)
            finally:
                response.close()
        except requests.RequestException as error:
            raise NcipUnavailable(f"cannot reach the NCIP server: {_describe(error)}") from None
        if not 200 <= response.status_code < 300:
            raise NcipUnavailable(f"NCIP server answered HTTP {response.status_code}", response.status_code)
        return body

    def _read(self, response: requests.Response, deadline: float) -> bytes:
        data = bytearray()
        for chunk in response.iter_content(READ_CHUNK):
            data += chunk
            if len(data) > self.settings.max_answer_bytes:
                raise NcipUnavailable(f"the NCIP answer is larger than max_answer_bytes "
                                      f"({self.settings.max_answer_bytes})", response.status_code)
            if time.monotonic() > deadline:
                raise NcipUnavailable(f"no whole answer within timeout_seconds ({self.settings.timeout_seconds:g} s)",
                                      response.status_code)
        return bytes(data)


class RawSocket:
    """tcp://HOST:PORT: one connection per message, closed after the answer."""

    def __init__(self, settings: Ncip):
        self.settings = settings
        parts = urlsplit(settings.url)
        self.address = (parts.hostname or "", parts.port or 0)

    def close(self) -> None:
        pass

    def exchange(self, message: bytes) -> bytes:
        settings = self.settings
        deadline = time.monotonic() + settings.timeout_seconds
        where = f"{self.address[0]}:{self.address[1]}"
        try:
            connection = socket.create_connection(self.address, timeout=settings.timeout_seconds)
        except OSError as error:
            raise NcipUnavailable(f"cannot connect to the NCIP port {where}: {error.strerror or error}") from None
        with connection:
            data = bytearray()
            try:
                connection.settimeout(max(deadline - time.monotonic(), 0.001))
                connection.sendall(message)
                while not complete(data):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise socket.timeout
                    connection.settimeout(remaining)
                    chunk = connection.recv(READ_CHUNK)
                    if not chunk:
                        break  # the server closed: what came is the answer
                    data += chunk
                    if len(data) > settings.max_answer_bytes:
                        raise NcipUnavailable(f"the NCIP answer from {where} is larger than max_answer_bytes "
                                              f"({settings.max_answer_bytes})")
            except socket.timeout:
                raise NcipUnavailable(f"no whole answer from {where} within timeout_seconds "
                                      f"({settings.timeout_seconds:g} s; {len(data)} bytes came)") from None
            except OSError as error:
                if not data:
                    raise NcipUnavailable(f"the NCIP port {where} dropped the connection: "
                                          f"{error.strerror or error}") from None
        if not data:
            raise NcipUnavailable(f"the NCIP port {where} closed the connection without an answer")
        return bytes(data)


def _describe(error: requests.RequestException) -> str:
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS certificate could not be verified (" + str(error)[:200] + ")"
    if isinstance(error, requests.Timeout):
        return "no answer in time (timeout)"
    if isinstance(error, requests.ConnectionError):
        return "connection failed (" + str(error)[:300] + ")"
    return f"{error.__class__.__name__}: {str(error)[:300]}"
