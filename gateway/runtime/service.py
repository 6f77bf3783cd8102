"""The service: starts the parts, runs until told to stop, stops them in order.

Threads: one collector per source (inputs), the upload workers and the placer
(outputs), with [ncip] the relay (and the feed), and the main thread, which
handles signals, publishes status and pings systemd's watchdog. Every worker is
a worker.Worker: a fault in one item is that item's outcome, a fault of the
environment pauses the worker with its reason in `status`, and a worker that
ends anyway wakes the main loop at once (through the wakeup pipe).

Signals only set flags; the C-level handler writes to a pipe (signal.set_wakeup_fd)
so the main loop wakes at once:
  SIGTERM/SIGINT  stop: inputs first, then the outputs after the item in hand.
                  A second one exits at once (the ledger makes that safe too).
  SIGHUP          reload: the new config is validated first; if it is invalid
                  the service keeps running on the old one and logs why. New work
                  goes to parts built on the new config at once; an upload in hand
                  ends on its own deadline and is not waited for. A collector, the
                  feed or the relay of the new config starts when its predecessor
                  has ended, so a folder or the journal is never read by two at once.
Exit codes: 0 after a requested stop; 2 for a damaged ledger (named, with how to
recover; the unit does not restart on 2); 1 if a worker ended on a bug.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from gateway.archive.retention import Retention
from gateway.config import loader as config_module
from gateway.config.loader import Config
from gateway.core import logs, notify
from gateway.core.backoff import Backoff
from gateway.core.errors import DAMAGED, AlreadyRunning, ConfigError, LedgerDamaged, describe, fault_kind
from gateway.core.states import FileState
from gateway.core.worker import Worker
from gateway.runtime.parts import Parts
from gateway.state import snapshot
from gateway.state.check import LedgerCheck
from gateway.state.checkpointfile import FILE_NAME, CheckpointDamaged, CheckpointUnavailable, file_name, read
from gateway.state.ledger import Ledger

if TYPE_CHECKING:  # imported with [ncip] only
    from gateway.ncip.relay import Relay

log = logs.get("gateway.service")

HOUSEKEEPING_SECONDS = 5.0
REPEAT_LOG_SECONDS = 60.0  # the same housekeeping failure is logged at most this often while it lasts
PRUNE_SECONDS = 3600.0
PRUNE_PASS_SECONDS = 5.0  # longest one retention pass holds the main loop; the rest goes on at the next tick
JOIN_SECONDS = 60.0
RECOVERY_BACKOFF = (1.0, 60.0)


class StateLock:
    """An exclusive lock on state_dir, so two gateways never share one ledger."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> StateLock:
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


def _log_health(problems: list[str]) -> None:
    if problems:
        log.error(
            "service.unhealthy", problems=problems, detail="watchdog pings stop until every worker checks in again"
        )
    else:
        log.info("service.healthy")


def _log_worker_crash(args: threading.ExceptHookArgs) -> None:
    """A thread died on an error no boundary caught: say what and where, in the gateway's log."""
    log.error(
        "service.worker_crashed",
        worker=args.thread.name if args.thread else "?",
        error=f"{args.exc_type.__name__}: {args.exc_value}",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


class Service:
    def __init__(self, config: Config, environ: dict[str, str] | None = None):
        self.config = config
        self.environ = environ
        self._stop_requested = 0
        self._reload_requested = False
        self._parts: Parts | None = None
        self._retention: Retention | None = None  # made at start, when the ledger's time is read
        self._retiring: list[Parts] = []  # parts of an earlier config whose uploads are still ending
        # every page verified a minute after the start, then daily: one per process, not per config (a reload
        # would start the wait again)
        self._ledger_check = LedgerCheck(config.paths.database)
        self._wake_write: int | None = None
        self._failures_said: dict[str, float] = {}  # housekeeping failure -> when it was last logged

    # -- signal handlers: flags only -------------------------------------------

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop_requested += 1
        if self._stop_requested > 1:
            os._exit(1)

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def _worker_ended(self, worker: Worker) -> None:
        """Called in a worker's thread as it ends: wake the main loop."""
        fd = self._wake_write
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, b"w")

    # -- the main loop --------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped. Return the exit code: 0 after a requested stop, 1 if a worker ended on a bug.

        Raise LedgerDamaged (exit 2) if the ledger cannot be read as a database.
        """
        lock = StateLock(self.config.paths.lock_file).acquire()
        try:
            ledger = Ledger(self.config.paths.database)
        except BaseException:
            lock.release()
            raise
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_write = wake_write
        previous_fd = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        threading.excepthook = _log_worker_crash
        exit_code = 0
        try:
            for warning in self.config.warnings:
                log.warning("config.warning", detail=warning)
            self._retention = Retention(ledger)
            self._parts = Parts(self.config, ledger, self._worker_ended)
            if not self._recover(self._parts, wake_read):
                return 0
            self._parts.start()
            self._ledger_check.start(self._worker_ended)
            log.info(
                "service.started",
                sources=[s.name for s in self.config.sources],
                caiasoft=self.config.caiasoft.base_url,
                **(
                    {"connections": {c.name: c.base_url for c in self.config.connections}}
                    if self.config.several
                    else {}
                ),
                pid=os.getpid(),
            )
            self._say_stranded(ledger, self._parts)
            notify.send("READY=1")
            exit_code = self._loop(ledger, wake_read, self._parts)
        finally:
            notify.send("STOPPING=1")
            deadline = time.monotonic() + JOIN_SECONDS
            for parts in (*self._retiring, *([self._parts] if self._parts else [])):
                parts.stop(deadline)
                parts.close()
            self._ledger_check.stop()
            self._ledger_check.join(max(deadline - time.monotonic(), 0.0))
            try:
                snapshot.clear(ledger)
            except Exception as error:  # the ledger may be what failed
                log.error("service.status_not_cleared", error=describe(error))
            ledger.close()
            lock.release()
            signal.set_wakeup_fd(previous_fd)
            self._wake_write = None
            os.close(wake_read)
            os.close(wake_write)
            log.info("service.stopped", exit_code=exit_code)
        return exit_code

    def _recover(self, parts: Parts, wake_read: int) -> bool:
        """Finish what a crash interrupted; while the ledger or a folder fails, wait and try again.

        Return False if a stop was requested meanwhile. Raise LedgerDamaged.
        """
        backoff, failures = Backoff(*RECOVERY_BACKOFF), 0
        while not self._stop_requested:
            try:
                parts.pipeline.recover()
                return True
            except Exception as error:
                if fault_kind(error) == DAMAGED:
                    raise LedgerDamaged(self.config.paths.database, describe(error)) from None
                failures += 1
                delay = backoff.delay(failures)
                log.error(
                    "recovery.paused",
                    error=describe(error),
                    retry_in=round(delay, 2),
                    exc_info=(type(error), error, error.__traceback__),
                    detail="recovery is tried again; nothing is taken or sent meanwhile",
                )
                if failures == 1:
                    notify.send("READY=1")
                notify.send(f"STATUS=recovery paused: {describe(error)}")
                notify.send("WATCHDOG=1")
                _wait(wake_read, delay)
        return False

    def _loop(self, ledger: Ledger, wake_read: int, parts: Parts) -> int:
        watchdog = notify.watchdog_seconds()
        tick = min(HOUSEKEEPING_SECONDS, watchdog / 2) if watchdog else HOUSEKEEPING_SECONDS
        next_prune, last_status = 0.0, ""
        last_problems: list[str] = []
        while not self._stop_requested:
            if self._reload_requested:
                self._reload_requested = False
                parts = self._parts = self._reload(ledger, parts)
            parts.start_deferred()
            self._retire_ended()
            if not self._workers_alive(parts):
                return 1
            within = watchdog or JOIN_SECONDS
            problems = [*parts.problems(within), *filter(None, [self._ledger_check.health_problem(within)])]
            if watchdog and not problems:
                notify.send("WATCHDOG=1")
            if problems != last_problems:
                _log_health(problems)
                last_problems = problems
            now = time.time()
            if time.monotonic() >= next_prune:  # every PRUNE_SECONDS whatever the wall clock does
                next_prune = time.monotonic() + PRUNE_SECONDS
                self._housekeeping(functools.partial(self._prune, parts))
                if self._retention is not None and self._retention.unfinished:
                    next_prune = time.monotonic()  # the pass ran out of its budget: go on at the next tick
            status = self._housekeeping(functools.partial(self._publish, ledger, parts, now)) or last_status
            self._housekeeping(functools.partial(self._watch, parts))
            if status != last_status:
                notify.send(f"STATUS={status}")
                last_status = status
            _wait(wake_read, tick)
        log.info(
            "service.stopping",
            detail="no new files are taken; the upload in hand is finished first; a second SIGTERM exits at once",
        )
        return 0

    def _workers_alive(self, parts: Parts) -> bool:
        """False if a worker ended on a bug; raise LedgerDamaged if one ended on a damaged ledger."""
        workers = [*parts.workers(), self._ledger_check]
        for worker in workers:
            if worker.fatal is not None:
                raise LedgerDamaged(self.config.paths.database, describe(worker.fatal))
        dead = [worker.name for worker in workers if worker.ended]
        if dead:
            log.error("service.worker_died", workers=dead, detail="stopping so the service manager restarts us")
        return not dead

    def _housekeeping(self, task: Callable[[], object]) -> str | None:
        """Run one housekeeping task: a failure is logged, never ends the service; a damaged ledger does."""
        try:
            result = task()
            return result if isinstance(result, str) else None
        except Exception as error:
            if fault_kind(error) == DAMAGED:
                raise LedgerDamaged(self.config.paths.database, describe(error)) from None
            said, now = describe(error), time.monotonic()
            if now - self._failures_said.get(said, -REPEAT_LOG_SECONDS) >= REPEAT_LOG_SECONDS:
                self._failures_said = {
                    text: at for text, at in self._failures_said.items() if now - at < REPEAT_LOG_SECONDS
                }
                self._failures_said[said] = now
                log.error(
                    "service.housekeeping_failed",
                    error=said,
                    detail=f"logged once every {REPEAT_LOG_SECONDS:.0f} s while it lasts",
                )
            return f"cannot publish status: {said}"

    def _retire_ended(self) -> None:
        still = []
        for parts in self._retiring:
            if parts.ended():
                parts.close()
            else:
                still.append(parts)
        self._retiring = still

    def _prune(self, parts: Parts) -> None:
        """Delete archive days older than archive.retention_days (0: keep everything), and error days older
        than archive.error_retention_days (0: keep), on a day the ledger's time agrees with, in passes of at
        most PRUNE_PASS_SECONDS; a day a crash left half-removed is finished first (gateway/archive/retention.py)."""
        days, error_days = self.config.archive.retention_days, self.config.archive.error_retention_days
        if self._retention is not None and (days or error_days or self._retention.ledger.retired.pruning()):
            self._retention.prune(
                parts.pipeline.placing.archive,
                days,
                parts.pipeline.placing.errors,
                error_days,
                budget=PRUNE_PASS_SECONDS,
            )

    def _watch(self, parts: Parts) -> None:
        """Hand alerts and metrics the lasting states (paused, unreachable, sources), if either is configured."""
        if parts.monitor.watching:  # the conditions cost a journal read behind the relay: none for nobody
            parts.monitor.tick(parts.conditions())

    def _publish(self, ledger: Ledger, parts: Parts, now: float) -> str:
        """Write the service's state for `status`, and return the one-line summary for systemd."""
        sources = {
            c.source.name: snapshot.SourceState(
                mode=c.source.mode,
                problem=c.current_problem(),
                healthy=c.source.healthy(),
                writers_unknown=c.ready_check.writers_unknown,
                waiting=sorted(c.ready_check.waiting.values(), key=lambda w: w["file"]),
                not_taken=dict(c.claim_failures),
                originals_kept=c.originals_kept,
            )
            for c in parts.collectors
        }
        paused = parts.gate.paused_reason
        connections = {
            connection.name: snapshot.ConnectionState(
                paused=parts.gates[connection.name].paused_reason,
                problem=parts.gates[connection.name].problem,
                sources=[s.name for s in self.config.sources if s.caiasoft == connection.name],
            )
            for connection in self.config.connections
        }
        faults = {
            **parts.faults(),
            **({self._ledger_check.name: self._ledger_check.fault} if self._ledger_check.fault else {}),
        }
        servers = {relay.settings.name: _ncip_state(relay, parts) for relay in parts.relays}
        ncip = servers.get(self.config.ncip.name) if self.config.ncip else None
        retention = self._retention.problem if self._retention is not None else None
        snapshot.publish(
            ledger,
            snapshot.Snapshot(
                pid=os.getpid(),
                updated=now,
                sources=sources,
                paused=paused,
                ncip=ncip,
                faults=faults,
                retention=retention,
                connections=connections,
                ncip_servers=servers,
            ),
        )
        return self._summary(ledger, ncip, paused, connections, retention, faults, sources)

    def _summary(
        self,
        ledger: Ledger,
        ncip: snapshot.NcipState | None,
        paused: str | None,
        connections: dict[str, snapshot.ConnectionState],
        retention: str | None,
        faults: dict[str, str],
        sources: dict[str, snapshot.SourceState],
    ) -> str:
        """The one-line summary for systemd (STATUS=)."""
        counts = ledger.files.counts()
        midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
        queued = sum(counts.get(state, 0) for state in (FileState.CLAIMED, FileState.QUEUED, FileState.UPLOADING))
        line = (
            f"queued {queued}, uploaded today {ledger.files.count_finished_since(FileState.ARCHIVED, midnight)}, "
            f"errors today {ledger.files.count_finished_since(FileState.REFUSED, midnight)}"
        )
        if ncip:
            line += f", NCIP lag {ncip['lag_entries']}"
            if ncip["journal_problem"]:
                line += f"; NCIP JOURNAL NOT READ: {ncip['journal_problem']}"
            if ncip["feed_problem"]:
                line += "; STATUS FEED: see caiasoft-gateway status"
        line += _paused_words(paused, connections, self.config.several)
        if retention:
            line += "; RETENTION HELD (see caiasoft-gateway status)"
        waiting = ledger.files.problems(limit=1)
        if waiting:
            row = waiting[0]
            line += f"; {'STUCK' if row.state == FileState.STUCK else 'PLACING PAUSED'}: {row.problem}"
        for name, fault in faults.items():
            line += f"; {name} paused: {fault}"
        problems = [name for name, source in sources.items() if source["problem"]]
        if problems:
            line += f"; source problem: {', '.join(problems)}"
        return line

    def _say_stranded(self, ledger: Ledger, parts: Parts) -> None:
        """Files queued for a connection the config no longer names wait for it, and so do the journal entries of
        an NCIP server it no longer names: say so, loudly, at each start and reload."""
        _say_removed_servers(self.config)
        for connection, count in parts.stranded(ledger).items():
            log.warning(
                "connection.removed_with_files",
                connection=connection,
                files=count,
                detail=f"{count} file(s) for CaiaSoft connection {connection!r}, which the config no longer has, "
                "wait (never dropped; an upload already on the wire ends on the previous configuration): add "
                f"[caiasoft.{connection}] back and reload to send them",
            )

    def _reload(self, ledger: Ledger, parts: Parts) -> Parts:
        """Validate the config file again; on success swap in parts built on it, else keep the old.

        Never waits for the old parts: their uploads in hand end on their own deadline
        (the old parts are kept in _retiring until then).
        """
        try:
            new = config_module.load(self.config.file, environ=self.environ)
        except ConfigError as error:
            log.error(
                "config.reload_refused",
                file=str(self.config.file),
                problems=[str(problem) for problem in error.problems],
                detail="still running on the previous configuration",
            )
            return parts
        if new.paths.state_dir != self.config.paths.state_dir:
            log.error(
                "config.reload_refused",
                file=str(self.config.file),
                problems=["paths.state_dir cannot change while running: restart the service"],
                detail="still running on the previous configuration",
            )
            return parts
        unopened = _checkpoint_problems(ledger, new)
        if unopened:  # before anything stops: one server's file must not stop every connection
            log.error(
                "config.reload_refused",
                file=str(self.config.file),
                problems=unopened,
                detail="still running on the previous configuration",
            )
            return parts
        notify.send("RELOADING=1")
        for key in new.keys:
            logs.add_secret(key.value)
        parts.stop()
        self._retiring.append(parts)
        logs.setup(new.paths.log_dir, console=True)
        self.config = new
        fresh = Parts(new, ledger, self._worker_ended)
        fresh.start(previous=parts)
        for warning in new.warnings:
            log.warning("config.warning", detail=warning)
        log.info(
            "config.reloaded",
            file=str(new.file),
            sources=[s.name for s in new.sources],
            connections=[c.name for c in new.connections],
            ncip_servers=[n.name for n in new.ncip_servers],
        )
        self._say_stranded(ledger, fresh)
        notify.send("READY=1")
        return fresh


def _say_removed_servers(config: Config) -> None:
    """A checkpoint file of an [ncip.NAME] the config no longer has: its journal's later entries wait for it."""
    configured = {file_name(server.name) for server in config.ncip_servers}
    for path in sorted(config.paths.state_dir.glob(FILE_NAME + "-*")):
        if path.name in configured or not path.is_file():
            continue
        try:
            saved = read(path)
        except Exception:  # noqa: BLE001 - a damaged file of a server not configured: nothing is read from it
            saved = None
        offset = saved.position["offset"] if saved is not None and saved.position else 0
        name = path.name.removeprefix(FILE_NAME + "-")
        log.warning(
            "ncip.server_removed",
            connection=name,
            checkpoint=str(path),
            read_up_to=offset,
            detail=f"[ncip.{name}] is not in the config: the entries its journal holds beyond byte {offset} are "
            f"not relayed (nor dropped) until it is back; once that server is gone for good, delete {path}",
        )


def _checkpoint_problems(ledger: Ledger, config: Config) -> list[str]:
    """Why an NCIP server of a config cannot have its checkpoint file (gone although made, damaged, not
    readable), each naming its table: opened here, as its relay would, so a reload adding such a server is
    refused while the running config goes on, rather than stopping the whole gateway half-way."""
    problems = []
    for server in config.ncip_servers:
        try:
            ledger.ncip.journal_checkpoint(server.name, server.journal)
        except (CheckpointDamaged, CheckpointUnavailable) as error:
            problems.append(f"{server.table}: {error}")
    return problems


def _paused_words(paused: str | None, connections: dict[str, snapshot.ConnectionState], several: bool) -> str:
    """What the summary says of paused uploads: of each connection by name, when there are several."""
    if not several:
        return "; UPLOADS PAUSED (API key refused)" if paused else ""
    return "".join(f"; UPLOADS TO {name} PAUSED (API key refused)" for name, c in connections.items() if c["paused"])


def _ncip_state(relay: Relay, parts: Parts) -> snapshot.NcipState:
    """One NCIP server's relay (and feed), for `status`."""
    lag_bytes, lag_entries = relay.lag()
    feed = next((feed for feed in parts.feeds if feed.settings is relay.settings), None)
    return snapshot.NcipState(
        lag_bytes=lag_bytes,
        lag_entries=lag_entries,
        last_success=relay.last_success,
        last_problem=relay.last_problem,
        dead_letters=relay.dead_letters.count(),
        feed_problem=feed.problem if feed else None,
        journal_problem=relay.journal_problem,
    )


def _wait(wake_read: int, seconds: float) -> None:
    """Sleep until a signal or a worker's end writes to the wakeup pipe, or seconds pass; drain it."""
    select.select([wake_read], [], [], seconds)
    try:
        while os.read(wake_read, 512):
            pass
    except BlockingIOError:
        pass
