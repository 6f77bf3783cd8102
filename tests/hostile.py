"""Hostile HTTP peers: real loopback servers that answer slowly, hugely, wrongly, or never.

Each peer reads the whole request (so the client is never cut off while sending),
then plays its part on the raw socket. A peer counts the requests it saw and the
bytes it managed to send, so a test can prove the client stopped reading.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class HostilePeer:
    """A TCP server on 127.0.0.1 that runs act(connection, request bytes) for each request."""

    def __init__(self, act: Callable[[HostilePeer, socket.socket, bytes], None], tls_context=None):
        self.act = act
        self.stopping = threading.Event()
        self.requests: list[bytes] = []
        self.sent_bytes = 0
        self._tls = tls_context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="hostile-peer", daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        host = "localhost" if self._tls else "127.0.0.1"
        return f"{scheme}://{host}:{self._listener.getsockname()[1]}"

    def start(self) -> HostilePeer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(5)
        with self._lock:
            for connection in self._connections:
                connection.close()
        self._listener.close()

    def __enter__(self) -> HostilePeer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self._tls:
                try:
                    connection = self._tls.wrap_socket(connection, server_side=True)
                except OSError:
                    connection.close()
                    continue
            with self._lock:
                self._connections.append(connection)
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        try:
            while not self.stopping.is_set():
                request = read_request(connection)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                self.act(self, connection, request)
        except OSError:
            pass
        finally:
            connection.close()

    def send(self, connection: socket.socket, data: bytes) -> None:
        connection.sendall(data)
        with self._lock:
            self.sent_bytes += len(data)


def read_request(connection: socket.socket) -> bytes | None:
    """One HTTP request (head and Content-Length body) from connection; None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head + b"\r\n\r\n" + body


def head(
    status: int = 200, length: int | None = None, content_type: str = "application/json", extra: str = ""
) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


# -- the parts they play -----------------------------------------------------------


def dribble(
    body: bytes = b'{"success": true, "error": ""}' + b" " * 100_000, interval: float = 0.05, headers_too: bool = False
) -> Callable:
    """Answer 200 one byte at a time, interval seconds apart (the status line too, if headers_too)."""

    def act(peer: HostilePeer, connection: socket.socket, request: bytes) -> None:
        whole = head(200, len(body)) + body
        start = 0 if headers_too else len(head(200, len(body)))
        if start:
            peer.send(connection, whole[:start])
        for index in range(start, len(whole)):
            if peer.stopping.wait(interval):
                return
            peer.send(connection, whole[index : index + 1])

    return act


def huge(total: int = 100 * 1024 * 1024, prefix: bytes = b'{"success": true, "error": "') -> Callable:
    """Answer 200 with a body of total bytes (a JSON string that never ends before the cap)."""

    def act(peer: HostilePeer, connection: socket.socket, request: bytes) -> None:
        peer.send(connection, head(200, total) + prefix)
        block = b"x" * 65536
        left = total - len(prefix)
        while left > 0 and not peer.stopping.is_set():
            piece = block[: min(left, len(block))]
            peer.send(connection, piece)
            left -= len(piece)

    return act


def never_answers() -> Callable:
    """Read the request, then say nothing until the test ends."""

    def act(peer: HostilePeer, connection: socket.socket, request: bytes) -> None:
        peer.stopping.wait()

    return act


def fixed(
    status: int, body: bytes, content_type: str = "application/json", body_for: Callable[[bytes], bytes] | None = None
) -> Callable:
    """Answer every request at once with status and body (or body_for(request))."""

    def act(peer: HostilePeer, connection: socket.socket, request: bytes) -> None:
        data = body_for(request) if body_for else body
        peer.send(connection, head(status, len(data), content_type) + data)

    return act


def header_value(request: bytes, name: str) -> str | None:
    for line in request.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode("latin-1")
    return None
