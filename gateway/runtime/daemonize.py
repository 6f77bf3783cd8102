"""`daemon --pidfile P`: the service detached from the terminal, for hosts without systemd."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
from pathlib import Path

import daemon

from gateway.config.loader import Config
from gateway.core import logs
from gateway.core.errors import AlreadyRunning, GatewayError, LedgerDamaged

UMASK = 0o027


class StartRefused(GatewayError):
    """`daemon` cannot start as asked (user, pidfile folder, state or log folder): said before detaching, exit 2."""


def drop_privileges(user: str | None, group: str | None) -> None:
    """Become user (with its groups, or group as the primary one), as the init script does with setpriv.

    Raise StartRefused if the user or group does not exist, if this process may not change to them, or if no
    user is given while running as root (a service run as root writes root-owned files nobody else can move).
    """
    if user is None:
        if group is not None:
            raise StartRefused("--group needs --user")
        if os.geteuid() == 0:
            raise StartRefused(
                "started as root: say which user to run as (--user caiasoft-gateway), or start it "
                "as that user (the init script uses setpriv, which also keeps CAP_LEASE); "
                "--user root runs it as root on purpose"
            )
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartRefused(f"--user {user}: there is no such user") from None
    try:
        gid = grp.getgrnam(group).gr_gid if group is not None else entry.pw_gid
    except KeyError:
        raise StartRefused(f"--group {group}: there is no such group") from None
    if (os.geteuid(), os.getegid()) == (entry.pw_uid, gid):
        return
    if os.geteuid() != 0:
        raise StartRefused(f"--user {user}: only root can change to another user (this is uid {os.geteuid()})")
    os.initgroups(user, gid)
    os.setgid(gid)
    os.setuid(entry.pw_uid)


def _writable_folder(path: Path, what: str) -> None:
    """Raise StartRefused unless path is a folder this process can create files in (made if missing)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        hint = f": add ReadWritePaths={path} to the unit's site.conf" if error.errno == errno.EROFS else ""
        raise StartRefused(
            f"the {what} {path} does not exist and cannot be made ({error.strerror or error}){hint}"
        ) from None
    if not path.is_dir():
        raise StartRefused(f"the {what} {path} is not a folder")
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        raise StartRefused(
            f"the {what} {path} is on a read-only filesystem (under systemd: the unit's "
            f"ProtectSystem=strict; add ReadWritePaths={path} to its drop-in site.conf, or install "
            f"again with --writable-path {path}; `caiasoft-gateway check --as-service` compares them)"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartRefused(
            f"the {what} {path} is not writable by uid {os.geteuid()} (owned by uid "
            f"{path.stat().st_uid}, mode {path.stat().st_mode & 0o7777:o})"
        )


def writable_folders(
    config: Config, keys: tuple[str, ...] = ("state_dir", "archive_dir", "error_dir", "log_dir")
) -> None:
    """Raise StartRefused naming the first of these folders of the service it cannot write (read-only, not its own).

    `run` checks the state and log folders only: an archive or error folder that cannot be written holds the
    files it should receive (shown in `status`) and is resumed by the running service once fixed.
    """
    for key in keys:
        _writable_folder(Path(getattr(config.paths, key)), f"{key.replace('_dir', '')} folder (paths.{key})")


def preflight(config: Config, pidfile: Path) -> None:
    """Every reason `daemon` could not run, found while the terminal still sees the answer."""
    folder = pidfile.parent
    if not folder.is_dir():
        raise StartRefused(
            f"the pidfile's folder {folder} does not exist (the install's tmpfiles make "
            "/run/caiasoft-gateway; the init script makes it at start)"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StartRefused(f"the pidfile's folder {folder} is not writable by uid {os.geteuid()}")
    if (pidfile.exists() or pidfile.is_symlink()) and not os.access(pidfile, os.R_OK | os.W_OK):
        raise StartRefused(
            f"the pidfile {pidfile} belongs to uid {pidfile.lstat().st_uid} and uid {os.geteuid()} "
            "cannot write it (left by a start as another user): remove it"
        )
    writable_folders(config)
    for path in (config.paths.lock_file, config.paths.database):  # left by a start as another user (root)
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise StartRefused(
                f"{path} belongs to uid {path.stat().st_uid} and uid {os.geteuid()} cannot write it "
                f"(a start as another user left it): chown -R that user's files in "
                f"{config.paths.state_dir} to the service user"
            )


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

    def __enter__(self) -> PidFile:
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


def run_detached(config: Config, pidfile: Path, user: str | None = None, group: str | None = None) -> int:
    """Become user, check the folders, detach (double fork, umask 027, cwd /), hold the pidfile, run the service.

    The caller's process returns 0. Raise StartRefused (before detaching) for a start that cannot work.
    """
    from gateway.runtime.service import Service, StateLock

    pidfile = pidfile.absolute()
    drop_privileges(user, group)
    preflight(config, pidfile)
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
