"""Simulators of CaiaSoft and of ALEPH's NCIP server: real HTTP servers on loopback."""

from __future__ import annotations

import collections
import socketserver
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Self

POLL_SECONDS = 0.05  # how soon stop() is noticed


class LoopbackServer:
    """What both simulators share: the server thread, scripted faults, and what was received."""

    kind = "simulator"

    def __init__(
        self,
        host: str,
        port: int,
        handler: type[socketserver.BaseRequestHandler],
        server_class: type[socketserver.TCPServer] = ThreadingHTTPServer,
    ):
        self.received: list[Any] = []
        self._faults: collections.deque[str] = collections.deque()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._server = server_class((host, port), handler)  # both server classes use daemon threads

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    def start(self) -> Self:
        threading.Thread(target=self._server.serve_forever, args=(POLL_SECONDS,), name=self.kind, daemon=True).start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(POLL_SECONDS)

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def queue_faults(self, *faults: str) -> None:
        """Script how the next requests are answered (each simulator documents its faults)."""
        with self._changed:
            self._faults.extend(faults)

    def clear_faults(self) -> None:
        """Forget the faults not acted out yet (the server is "up" again)."""
        with self._changed:
            self._faults.clear()

    def next_fault(self) -> str | None:
        with self._changed:
            return self._faults.popleft() if self._faults else None

    def record(self, item: Any) -> None:
        with self._changed:
            self.received.append(item)
            self._recorded(item)
            self._changed.notify_all()

    def _recorded(self, item: Any) -> None:
        """Hook: called under the lock for each received item."""

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Any]:
        """Block until at least count requests were received; return them. Raise TimeoutError if not."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= count, timeout):
                raise TimeoutError(f"{self.kind} received {len(self.received)}, expected {count}")
            return list(self.received)
