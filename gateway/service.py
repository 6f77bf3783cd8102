"""The service: starts the parts, runs until told to stop, stops them in order.

Threads: one collector per source (inputs), one uploader (output), and the main
thread, which handles signals, publishes status and pings systemd's watchdog.

Signals only set flags; the C-level handler writes to a pipe (signal.set_wakeup_fd)
so the main loop wakes at once:
  SIGTERM/SIGINT  stop: inputs first, then the uploader after the file in hand.
                  A second one exits at once (the ledger makes that safe too).
  SIGHUP          reload: the new config is validated first; if it is invalid
                  the service keeps running on the old one and logs why. Logs reopen.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import select
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Callable, Protocol

from gateway import config as config_module, logs, notify, snapshot, sources
from gateway.caiasoft import Backoff, CaiaSoftClient
from gateway.collector import Collector
from gateway.config import CaiaSoft, Config
from gateway.errors import AlreadyRunning, ConfigError
from gateway.ledger import Ledger
from gateway.ncip.feed import Feed
from gateway.ncip.relay import Relay
from gateway.pipeline import Pipeline

log = logs.get("gateway.service")


class Worker(Protocol):
    """What the main loop needs of a worker thread."""

    name: str
    heartbeat: float  # time.monotonic() of its last check-in

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...
    def is_alive(self) -> bool: ...

HOUSEKEEPING_SECONDS = 5.0
PRUNE_SECONDS = 3600.0
IDLE_POLL_SECONDS = 1.0
CHECK_IN_SECONDS = 1.0
JOIN_SECONDS = 60.0


class StateLock:
    """An exclusive lock on state_dir, so two gateways never share one ledger."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> "StateLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the service's life, closed by release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise AlreadyRunning(f"another gateway (pid {holder}) is using {self.path.parent}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class Gate:
    """Shared by the upload workers: one backoff and one pause for the CaiaSoft endpoint.

    A transient failure makes every worker wait (CaiaSoft is down for all of them);
    a 401/403 pauses them all; any success reopens the gate.
    """

    def __init__(self, settings: CaiaSoft, clock: Callable[[], float] = time.monotonic):
        self.backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)
        self.auth_pause = settings.auth_pause_seconds
        self.clock = clock
        self.failures = 0
        self.paused_reason: str | None = None
        self._not_before = 0.0
        self._lock = threading.Lock()

    def wait_seconds(self) -> float:
        return max(self._not_before - self.clock(), 0.0)

    def failed(self, retry_after: float | None) -> None:
        """A transient failure. Workers that fail together while the gate is open count once."""
        with self._lock:
            if self.wait_seconds() == 0 or not self.failures:
                self.failures += 1
            self._not_before = max(self._not_before, self.clock() + self.backoff.delay(self.failures, retry_after))

    def pause(self, reason: str) -> None:
        with self._lock:
            first = self.paused_reason is None or self.wait_seconds() == 0
            self.paused_reason = reason
            self._not_before = self.clock() + self.auth_pause
        if first:
            log.error("upload.paused", reason=reason, retry_in=self.auth_pause,
                      detail="no file is moved to error while paused; fix the key, then wait or reload")

    def succeeded(self) -> None:
        with self._lock:
            self.failures = 0
            resumed, self.paused_reason = self.paused_reason, None
        if resumed:
            log.info("upload.resumed", detail="CaiaSoft accepts the API key again")


class Uploader(threading.Thread):
    """One upload worker: takes the oldest due file from the ledger and sends it.

    Several run side by side (caiasoft.upload_workers); they start uploads in the
    order files arrived. A worker checks in (heartbeat) at least every
    CHECK_IN_SECONDS except while an upload is on the wire, so an upload stuck
    longer than the watchdog period shows as hung.
    """

    def __init__(self, pipeline: Pipeline, gate: Gate, wake: threading.Event, name: str = "uploader",
                 clock: Callable[[], float] = time.time):
        super().__init__(name=name, daemon=True)
        self.pipeline = pipeline
        self.gate = gate
        self.wake = wake
        self.clock = clock
        self.stop_event = threading.Event()
        self.heartbeat = time.monotonic()

    def stop(self) -> None:
        """Ask the loop to end after the upload in hand (idempotent)."""
        self.stop_event.set()
        self.wake.set()

    def _rest(self, seconds: float, event: threading.Event) -> None:
        """Wait up to seconds (until event is set), checking in as it goes."""
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set():
            self.heartbeat = now = time.monotonic()
            if now >= deadline or event.wait(min(deadline - now, CHECK_IN_SECONDS)):
                return

    def run(self) -> None:
        ledger = self.pipeline.ledger
        while not self.stop_event.is_set():
            self.heartbeat = time.monotonic()
            closed_for = self.gate.wait_seconds()
            if closed_for:
                self._rest(closed_for, self.stop_event)
                continue
            self.wake.clear()
            row = ledger.take_next(self.clock())
            if row is None:
                due = ledger.next_due_at()
                self._rest(IDLE_POLL_SECONDS if due is None else max(due - self.clock(), 0.01), self.wake)
                continue
            outcome = self.pipeline.upload(row)
            if outcome.verdict == "transient":
                self.gate.failed(outcome.retry_after)
            elif outcome.verdict == "paused":
                self.gate.pause(outcome.reason)
            else:
                self.gate.succeeded()


class Parts:
    """Everything that runs on one config: the request-file pipeline and, with [ncip], the relay."""

    def __init__(self, config: Config, ledger: Ledger):
        self.config = config
        self.client = CaiaSoftClient(config.caiasoft, config.api_key)
        self.pipeline = Pipeline(config, ledger, self.client)
        self.gate = Gate(config.caiasoft)
        wake = threading.Event()
        self.uploaders = [Uploader(self.pipeline, self.gate, wake, name=f"uploader-{number}")
                          for number in range(1, config.caiasoft.upload_workers + 1)]
        self.pipeline.on_queued = wake.set
        self.collectors = [Collector(sources.build(settings), settings.settle_seconds, self.pipeline,
                                     grace_seconds=settings.incomplete_grace_seconds,
                                     marker_mode=bool(settings.ready_marker),
                                     keep_original_seconds=settings.keep_original_seconds)
                           for settings in config.sources]
        self.pipeline.sources = {collector.source.name: collector.source for collector in self.collectors}
        self.relay = Relay(config.ncip, ledger, config.paths.error_dir) if config.ncip else None
        self.feed = None
        if config.ncip and config.ncip.feed:
            self.feed_client = CaiaSoftClient(config.caiasoft, config.api_key)
            self.feed = Feed(config.ncip, self.feed_client, ledger)

    def inputs(self) -> list[Worker]:
        return [*self.collectors, *([self.feed] if self.feed else [])]

    def outputs(self) -> list[Worker]:
        return [*self.uploaders, *([self.relay] if self.relay else [])]

    def start(self) -> None:
        for worker in (*self.outputs(), *self.inputs()):
            worker.start()

    def stop(self) -> None:
        """Inputs first (no new files or entries are taken), then the outputs after the item in hand."""
        for group in (self.inputs(), self.outputs()):
            for worker in group:
                worker.stop()
            for worker in group:
                worker.join(JOIN_SECONDS)
        self.client.close()
        if self.feed:
            self.feed_client.close()

    def workers(self) -> list[Worker]:
        return [*self.outputs(), *self.inputs()]

    def problems(self, within: float) -> list[str]:
        """Why the service is not healthy (empty if every worker checked in within the last seconds)."""
        now = time.monotonic()
        found = []
        for worker in self.workers():
            if not worker.is_alive():
                found.append(f"{worker.name} has stopped")
            elif now - worker.heartbeat > within:
                found.append(f"{worker.name} has not checked in for {now - worker.heartbeat:.0f}s")
        for collector in self.collectors:
            if collector.is_alive() and not collector.source.healthy():
                found.append(f"the watcher of source {collector.source.name} has stopped")
        return found


def _log_worker_crash(args: threading.ExceptHookArgs) -> None:
    """A worker thread died on an unexpected error: say what and where, in the gateway's log."""
    log.error("service.worker_crashed", worker=args.thread.name if args.thread else "?",
              error=f"{args.exc_type.__name__}: {args.exc_value}",
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _log_health(problems: list[str]) -> None:
    if problems:
        log.error("service.unhealthy", problems=problems,
                  detail="watchdog pings stop until every worker checks in again")
    else:
        log.info("service.healthy")


class Service:
    def __init__(self, config: Config, environ: dict[str, str] | None = None):
        self.config = config
        self.environ = environ
        self._stop_requested = 0
        self._reload_requested = False
        self._parts: Parts | None = None

    # -- signal handlers: flags only -------------------------------------------

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested += 1
        if self._stop_requested > 1:
            os._exit(1)

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    # -- the main loop --------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped. Return the exit code: 0 after a requested stop, 1 if a worker died."""
        lock = StateLock(self.config.paths.lock_file).acquire()
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous_fd = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        threading.excepthook = _log_worker_crash
        ledger = Ledger(self.config.paths.database)
        exit_code = 0
        try:
            for warning in self.config.warnings:
                log.warning("config.warning", detail=warning)
            self._parts = Parts(self.config, ledger)
            self._parts.pipeline.recover()
            self._parts.start()
            log.info("service.started", sources=[s.name for s in self.config.sources],
                     caiasoft=self.config.caiasoft.base_url, pid=os.getpid())
            notify.send("READY=1")
            exit_code = self._loop(ledger, wake_read, self._parts)
        finally:
            notify.send("STOPPING=1")
            if self._parts is not None:
                self._parts.stop()
            snapshot.clear(ledger)
            ledger.close()
            lock.release()
            signal.set_wakeup_fd(previous_fd)
            os.close(wake_read)
            os.close(wake_write)
            log.info("service.stopped", exit_code=exit_code)
        return exit_code

    def _loop(self, ledger: Ledger, wake_read: int, parts: Parts) -> int:
        watchdog = notify.watchdog_seconds()
        tick = min(HOUSEKEEPING_SECONDS, watchdog / 2) if watchdog else HOUSEKEEPING_SECONDS
        next_prune, last_status = 0.0, ""
        last_problems: list[str] = []
        while not self._stop_requested:
            if self._reload_requested:
                self._reload_requested = False
                parts = self._parts = self._reload(ledger, parts)
            problems = parts.problems(within=watchdog or JOIN_SECONDS)
            dead = [worker.name for worker in parts.workers() if not worker.is_alive()]
            if dead:
                log.error("service.worker_died", workers=dead, detail="stopping so the service manager restarts us")
                return 1
            if watchdog and not problems:
                notify.send("WATCHDOG=1")
            if problems != last_problems:
                _log_health(problems)
                last_problems = problems
            now = time.time()
            if now >= next_prune:
                self._prune(parts)
                next_prune = now + PRUNE_SECONDS
            status = self._publish(ledger, parts, now)
            if status != last_status:
                notify.send(f"STATUS={status}")
                last_status = status
            select.select([wake_read], [], [], tick)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 512)
        log.info("service.stopping", detail="no new files are taken; the upload in hand is finished first; "
                 "a second SIGTERM exits at once")
        return 0

    def _prune(self, parts: Parts) -> None:
        """Delete archive days older than archive.retention_days (0: keep everything)."""
        days = self.config.archive.retention_days
        if days:
            removed = parts.pipeline.archive.prune(days, dt.date.today())
            if removed:
                log.info("archive.pruned", days=len(removed), retention_days=days)

    def _publish(self, ledger: Ledger, parts: Parts, now: float) -> str:
        """Write the service's state for `status`, and return the one-line summary for systemd."""
        sources = {c.source.name: snapshot.SourceState(
                       mode=c.source.mode, problem=c.problem, healthy=c.source.healthy(),
                       writers_unknown=c.ready_check.writers_unknown,
                       waiting=sorted(c.ready_check.waiting.values(), key=lambda w: w["file"]))
                   for c in parts.collectors}
        paused = parts.gate.paused_reason
        ncip = None
        if parts.relay:
            lag_bytes, lag_entries = parts.relay.lag()
            ncip = snapshot.NcipState(lag_bytes=lag_bytes, lag_entries=lag_entries,
                                      last_success=parts.relay.last_success, last_problem=parts.relay.last_problem,
                                      dead_letters=parts.relay.dead_letters.count(),
                                      feed_problem=parts.feed.problem if parts.feed else None)
        snapshot.publish(ledger, snapshot.Snapshot(pid=os.getpid(), updated=now, sources=sources, paused=paused,
                                                   ncip=ncip))
        counts = ledger.counts()
        midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
        queued = sum(counts.get(state, 0) for state in ("claimed", "queued", "uploading"))
        line = (f"queued {queued}, uploaded today {ledger.count_finished_since('archived', midnight)}, "
                f"errors today {ledger.count_finished_since('refused', midnight)}")
        if ncip:
            line += f", NCIP lag {ncip['lag_entries']}"
        if paused:
            line += "; UPLOADS PAUSED (API key refused)"
        problems = [name for name, source in sources.items() if source["problem"]]
        if problems:
            line += f"; source problem: {', '.join(problems)}"
        return line

    def _reload(self, ledger: Ledger, parts: Parts) -> Parts:
        """Validate the config file again; on success restart the parts on it, else keep the old."""
        try:
            new = config_module.load(self.config.file, environ=self.environ)
        except ConfigError as error:
            log.error("config.reload_refused", file=str(self.config.file),
                      problems=[str(problem) for problem in error.problems],
                      detail="still running on the previous configuration")
            return parts
        if new.paths.state_dir != self.config.paths.state_dir:
            log.error("config.reload_refused", file=str(self.config.file),
                      problems=["paths.state_dir cannot change while running: restart the service"],
                      detail="still running on the previous configuration")
            return parts
        notify.send("RELOADING=1")
        logs.add_secret(new.api_key.value)
        parts.stop()
        logs.setup(new.paths.log_dir, console=True)
        self.config = new
        fresh = Parts(new, ledger)
        fresh.start()
        for warning in new.warnings:
            log.warning("config.warning", detail=warning)
        log.info("config.reloaded", file=str(new.file), sources=[s.name for s in new.sources])
        notify.send("READY=1")
        return fresh
