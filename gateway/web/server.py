"""`caiasoft-gateway web`: the staff page in a process of its own (its unit: caiasoft-gateway-web.service).

Why its own process (docs/web.md): it works while the service is down, and a slow or hostile client or a
crash in a page cannot slow or stop uploads: it shares no thread, file descriptor or lock with the service.
It serves through gateway/core/listener.py's BoundedListener (capped connections, threads and time per
connection) and reads the ledger as `status` and `find` do.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from gateway.config.settings import Settings
from gateway.core import logs
from gateway.core.errors import describe
from gateway.core.listener import BoundedListener
from gateway.web.app import StaffPage

# The page's CPU priority, below the service's (0): under a flood of requests during a backlog the uploads get
# the CPU first and the page waits (under systemd, its unit's CPUWeight= does the same between the two units).
NICENESS = 19

log = logs.get("gateway.web")


class WebServer:
    """The staff page on [web] listen. start() binds (OSError naming the address if it cannot), stop() ends it."""

    def __init__(self, config: Settings, clock: Callable[[], float] = time.time):
        if config.web is None:
            raise ValueError(f"{config.file} has no [web] table")
        self.config = config
        self.host, self.port = config.web.address
        self.app = StaffPage(config, clock)
        self._listener: BoundedListener | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> WebServer:
        try:
            self._listener = BoundedListener(self.host, self.port, self.app, "web")
        except OSError as error:
            raise OSError(
                error.errno, f"cannot serve the staff page on {self.host}:{self.port}: {describe(error)}"
            ) from None
        self.port = self._listener.port  # the port bound, when [web] listen asked for any (port 0)
        self._listener.start()
        return self

    def stop(self) -> None:
        """Stop serving, end open connections, close the ledger. Idempotent."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self.app.close()


def run(config: Settings) -> int:
    """Serve the page until SIGTERM or SIGINT; return 0. Raise OSError if the address cannot be bound."""
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    server = WebServer(config).start()
    os.nice(NICENESS)  # the page waits for CPU whenever uploads want it: a flood of page requests takes none of theirs
    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    log.info(
        "web.started",
        url=server.url,
        login="users_file" if config.web is not None and config.web.users_file is not None else "none",
    )
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        server.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
        log.info("web.stopped")
    return 0
