"""The loopback /metrics listener cannot be starved: idle or trickling local clients hold neither the service's
file descriptors nor its threads, and are cut off when their time is up (the real daemon, with a low fd limit)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import urllib.request
from pathlib import Path

from conftest import wait_for
from peers import free_port
from test_end_to_end import barcode_list

from gateway.core.listener import CONNECTION_SECONDS, MAX_CONNECTIONS

FD_LIMIT = 256
LISTEN = "0A"  # a listening socket's state in /proc/net/tcp
IDLE_CLIENTS = 400  # more than the daemon may open files


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return answer.read().decode()
    except OSError:
        return None


def _accepted(pid: int, port: int) -> int:
    """How many connections to port the process holds open now (its sockets, as /proc/net/tcp lists them)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
        count += local_port == port and state != LISTEN and inode in inodes
    return count


def _accept_queue_full(port: int) -> bool:
    """True if the kernel's accept queue of the listener on port is full (new clients wait for a SYN retry)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == LISTEN:
            backlog, queued = fields[4].split(":")  # a listener's tx_queue:rx_queue is its backlog:queued clients
            return int(queued, 16) >= int(backlog, 16)
    return False


def test_idle_clients_cannot_take_the_descriptors_files_need(site, simulator, daemon_factory):
    port = free_port()
    site.write(simulator.url, extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    daemon = daemon_factory(
        site.config_file, command=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--", sys.executable, "-m", "gateway"]
    )
    wait_for(lambda: _scrape(port), timeout=20, message="/metrics served")
    idle = []
    try:
        for _ in range(IDLE_CLIENTS):  # connections that never send a byte (started, never awaited)
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            idle.append(client)

        def pressed() -> bool:
            held = _accepted(daemon.process.pid, port)
            assert held <= MAX_CONNECTIONS, f"the daemon holds {held} idle connections"
            return held == MAX_CONNECTIONS and _accept_queue_full(port)

        wait_for(pressed, timeout=20, interval=0.05, message="the listener's slots and accept queue full")
        (site.source / "a_barcode").write_bytes(barcode_list(1))
        wait_for(lambda: site.archived(), timeout=30, message="the file taken and archived meanwhile")
        assert _accepted(daemon.process.pid, port) <= MAX_CONNECTIONS, "no more connections than the cap"
        assert "Too many open files" not in daemon.output()
    finally:
        for client in idle:
            client.close()
    assert wait_for(lambda: _scrape(port), timeout=4 * CONNECTION_SECONDS, message="/metrics once they are gone")

    slow = socket.create_connection(("127.0.0.1", port), timeout=5)  # a request that never ends
    with slow:
        slow.sendall(b"GET /metr")
        slow.settimeout(3 * CONNECTION_SECONDS)
        assert slow.recv(1024) == b"", "the listener hangs up on a client whose time is up"
    assert daemon.stop() == 0


def _exchange(port: int, request: bytes) -> bytes:
    """Send request (the server may answer and close before it has all of it) and read the whole answer."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.sendall(request)
            client.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                answer += chunk
    return answer


def test_a_huge_request_head_is_not_read_and_the_listeners_own_errors_carry_the_security_headers():
    """16 clients each sending 99 headers of 60 KB once grew the process by hundreds of MB: the head is now read up
    to HEAD_BYTES only. What http.server answers itself (a bad request line) names no software and carries the
    headers every page carries."""
    from gateway.core.listener import HEAD_BYTES, BoundedListener

    seen = []

    def app(environ, start_response):
        seen.append(sum(len(value) for key, value in environ.items() if key.startswith("HTTP_")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    listener = BoundedListener("127.0.0.1", 0, app, "test").start()
    try:
        huge = b"".join(b"X-Filler-%d: %s\r\n" % (number, b"a" * 60_000) for number in range(99))
        _exchange(listener.port, b"GET / HTTP/1.0\r\n" + huge + b"\r\n")
        assert all(size <= HEAD_BYTES for size in seen), "at most the capped head reached the page"
        many = b"".join(b"X-%d: 1\r\n" % number for number in range(120))  # http.server answers it itself: 431
        bad = _exchange(listener.port, b"GET / HTTP/1.0\r\n" + many + b"\r\n")
        head = bad.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        assert head.startswith("HTTP/1.0 431") and "Content-Security-Policy: default-src 'none'" in head
        assert "X-Content-Type-Options: nosniff" in head and "WSGIServer" not in head and "CPython" not in head
        assert _exchange(listener.port, b"GET / HTTP/1.0\r\n\r\n").endswith(b"ok"), "the next client is served"
    finally:
        listener.stop()
