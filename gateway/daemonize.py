"""`daemon --pidfile P`: the service detached from the terminal, for hosts without systemd."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import daemon

from gateway import logs
from gateway.config import Config
from gateway.errors import AlreadyRunning, LedgerDamaged
import contextlib

UMASK = 0o027


class PidFile:
    """A pidfile held with flock while the daemon runs.

    A second start is refused while the lock is held; a file left behind by a
    crash or kill -9 is not locked by anyone, so it does not block a restart.
    Used as python-daemon's pidfile (a context manager entered after detaching).
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def holder(self) -> int | None:
        """The pid of a running instance holding the pidfile, or None."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None

    def __enter__(self) -> "PidFile":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another gateway holds the pidfile {self.path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None


def run_detached(config: Config, pidfile: Path) -> int:
    """Detach (double fork, umask 027, cwd /), hold the pidfile, run the service. The caller's process returns 0."""
    from gateway.service import Service, StateLock

    pidfile = pidfile.absolute()
    lock = PidFile(pidfile)
    holder = lock.holder()
    if holder is not None:
        raise AlreadyRunning(f"the gateway is already running (pid {holder}, pidfile {pidfile})")
    StateLock(config.paths.lock_file).acquire().release()  # another instance on this state_dir: exit 1 here
    context = daemon.DaemonContext(pidfile=lock, umask=UMASK, working_directory="/", detach_process=True)
    with context:  # the terminal's process exits here; what follows runs in the daemon
        logs.setup(config.paths.log_dir, console=False)  # opened after detaching, so not closed by it
        log = logs.get("gateway.daemon")
        try:
            return Service(config).run()
        except AlreadyRunning as error:
            log.error("service.refused", reason=str(error))
            return 1
        except LedgerDamaged as error:
            log.error("service.ledger_damaged", reason=str(error))
            return 2
