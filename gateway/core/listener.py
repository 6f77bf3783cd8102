"""A bounded HTTP listener for the gateway's read-only pages (/metrics, and any later web page).

Any local user can reach a loopback port, so what one client can take is capped:
  * at most MAX_CONNECTIONS connections are open at once, each with its own
    thread (a fixed pool): further clients wait in the kernel's accept queue,
    which holds none of the service's file descriptors or threads;
  * a connection gets CONNECTION_SECONDS in all (request and answer): one that
    is idle or trickles its request is shut down when its time is up;
  * one request per connection (HTTP/1.0, no keep-alive).
So idle or slow clients can slow the page down, never the pipeline: its file
descriptors and threads are not theirs to take.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

MAX_CONNECTIONS = 16
CONNECTION_SECONDS = 5.0
ACCEPT_QUEUE = 32  # the kernel's backlog: clients beyond it are refused by the kernel, not by a thread here
LOOK_SECONDS = 0.25  # how often the accept loop looks for expired connections and for stop


HEAD_BYTES = 16 * 1024  # a request line and its headers: what is sent beyond is never read into memory
# On the answers http.server makes itself (400, 414, 431, 501, 505): what every page's answer carries.
ERROR_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)


class _CappedReader:
    """A connection's reader that gives at most limit bytes in all (the request's head; a page reads no body):
    a client sending more is read as if it had stopped there."""

    def __init__(self, raw: Any, limit: int):
        self.raw = raw
        self.left = limit

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(self.raw.readline, size)

    def read(self, size: int | None = -1) -> bytes:
        return self._take(self.raw.read, size)

    def _take(self, reader: Any, size: int | None) -> bytes:
        if self.left <= 0:
            return b""
        data: bytes = reader(self.left if size is None or size < 0 else min(size, self.left))
        self.left -= len(data)
        return data

    def __getattr__(self, name: str) -> Any:  # close(), and whatever else the server asks of its reader
        return getattr(self.raw, name)


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without a line on stderr per request (the service logs in JSON), reading at most
    HEAD_BYTES of a request, naming no software, and with the security headers on the errors it answers itself."""

    server_version = ""
    sys_version = ""
    _erring = False

    def setup(self) -> None:
        super().setup()
        self.rfile = _CappedReader(self.rfile, HEAD_BYTES)  # type: ignore[assignment]

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self._erring = True
        super().send_error(code, message, explain)

    def end_headers(self) -> None:
        if self._erring:
            for name, value in ERROR_HEADERS:
                self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return


class _Server(WSGIServer):
    """wsgiref's server, used for its request handling only: this module accepts and threads."""

    request_queue_size = ACCEPT_QUEUE


def _server_for(host: str, port: int) -> _Server:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("_BoundServer", (_Server,), {"address_family": family})
    server: _Server = server_class((host, port), _QuietHandler)
    return server


class BoundedListener:
    """Serve a WSGI app on host:port with capped connections, threads and time per connection.

    Raise OSError from the constructor if the address cannot be bound (a port in use).
    """

    def __init__(
        self,
        host: str,
        port: int,
        app: Any,
        name: str,
        max_connections: int = MAX_CONNECTIONS,
        connection_seconds: float = CONNECTION_SECONDS,
    ):
        self.name = name
        self.connection_seconds = connection_seconds
        self._server = _server_for(host, port)
        self._server.set_app(app)
        self._server.socket.setblocking(False)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._pool = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix=f"{name}-connection")
        self._open: dict[socket.socket, float] = {}  # connection -> when its time is up
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-listener", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> BoundedListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end the open connections, wait for their threads. Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            for connection in self._open:
                _shut(connection)
        self._pool.shutdown(wait=True)
        self._server.server_close()

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._server.socket, selectors.EVENT_READ)
            while not self._stop.is_set():
                self._expire()
                if not self._slots.acquire(timeout=LOOK_SECONDS):
                    continue  # every slot taken: new clients wait in the accept queue
                taken = False
                try:
                    if selector.select(LOOK_SECONDS):
                        taken = self._accept()
                finally:
                    if not taken:
                        self._slots.release()

    def _accept(self) -> bool:
        """Accept one connection and hand it to a thread of the pool; False if there was none to accept."""
        try:
            connection, address = self._server.socket.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # e.g. EMFILE: this client is refused; the listener looks again a little later
            self._stop.wait(LOOK_SECONDS)
            return False
        connection.setblocking(True)
        connection.settimeout(self.connection_seconds)
        with self._lock:
            self._open[connection] = time.monotonic() + self.connection_seconds
        self._pool.submit(self._serve, connection, address)
        return True

    def _serve(self, connection: socket.socket, address: Any) -> None:
        try:
            with contextlib.suppress(OSError, ValueError):  # a client that went away, or was shut down
                self._server.finish_request(connection, address)
        finally:
            with self._lock:
                self._open.pop(connection, None)
            _shut(connection)
            connection.close()
            self._slots.release()

    def _expire(self) -> None:
        """Shut down connections whose time is up: their thread's read or write returns and it ends."""
        now = time.monotonic()
        with self._lock:
            for connection, deadline in self._open.items():
                if now >= deadline:
                    _shut(connection)


def _shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
