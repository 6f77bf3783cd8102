"""An SFTP folder on another host (paramiko), polled.

The remote copy stays where it is until CaiaSoft has accepted or refused the
file; then release() deletes it or moves it (remote_after). Until then the
ledger remembers it (source, remote path, size, mtime), so a file that is
listed again is never taken twice. Host keys are checked against
known_hosts_file and never accepted blindly. Every network step has a timeout;
a lost connection is re-made with capped backoff.

Remote names are bytes: the folder is listed with list_folder() (paramiko's own
listing decodes names as strict UTF-8 and fails on the first that is not), names
are held in surrogate-escape form (gateway.core.names) and every path goes to the
server as its exact bytes, so a Latin-1 name is fetched, deleted or moved as is.

The server is not trusted to end a file: a download reads at most the size the
listing gave (one byte more tells that the file goes on), a file listed above
max_file_bytes is not downloaded at all, and a download (or a reading before the
original is removed) that runs past its deadline is cut. A file cut so is left on
the server with its reason, shown by `status`; nothing fills state_dir.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import paramiko
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR, SFTPError

from gateway.config import markers
from gateway.config.settings import SftpSourceSettings
from gateway.core import logs
from gateway.core.backoff import Backoff
from gateway.core.errors import SourceGone, SourceUnavailable, describe
from gateway.core.files import partial_path
from gateway.core.names import from_bytes, printable, to_bytes
from gateway.sources import writers
from gateway.sources.base import Entry, Released, Taken, fetch_each, wanted

KEEPALIVE_SECONDS = 30
RECONNECT_INITIAL_SECONDS = 1.0
RECONNECT_MAX_SECONDS = 120.0
COPY_CHUNK = 256 * 1024
DOWNLOAD_BYTES_PER_SECOND = 256 * 1024  # a download may take timeout_seconds plus a second per 256 KiB listed
DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024  # [intake] max_file_bytes' default, when no config is given
MAX_LISTED = 100_000  # entries one listing may hold: a server that never ends a listing is cut there
_FILE_ERRORS = (errno.ENOENT, errno.EACCES, errno.EPERM)

log = logs.get("gateway.sources.sftp")
T = TypeVar("T")


class DownloadCut(OSError):
    """A remote file was not taken (listed above max_file_bytes, longer than listed, too slow to read), or a
    listing was longer than any folder of request files should be."""


def read_capped(remote: paramiko.SFTPFile, limit: int, deadline: float, sink: Callable[[bytes], object]) -> int:
    """Read an open remote file into sink, at most limit + 1 bytes (one more than limit says the file goes
    on), each chunk before deadline (time.monotonic()). Return the bytes read; raise DownloadCut(ETIMEDOUT)
    when the deadline passes first."""
    got = 0
    while got <= limit:
        if time.monotonic() > deadline:  # one read waits at most timeout_seconds (the channel's timeout)
            raise DownloadCut(
                errno.ETIMEDOUT, f"reading it ran past its deadline ({got} of {limit} bytes read); tried again later"
            )
        chunk = remote.read(min(COPY_CHUNK, limit + 1 - got))
        if not chunk:
            break
        got += len(chunk)
        sink(chunk)
    return got


def _read_secret(path: Path | None) -> str | None:
    return path.read_text(encoding="utf-8").strip() if path else None


def list_folder(sftp: paramiko.SFTPClient, folder: str, limit: int = MAX_LISTED) -> list[paramiko.SFTPAttributes]:
    """Every entry of a remote folder (not . and ..), whatever bytes its name is made of; raise DownloadCut
    if the server lists more than limit entries (a listing that never ends is not read for ever).

    The same SFTP requests as paramiko's listdir_attr (OPENDIR, READDIR until EOF,
    CLOSE), but names are read as bytes and held in surrogate-escape form
    (attributes.filename), where paramiko would raise UnicodeDecodeError on the first
    name that is not UTF-8 and lose the whole listing (paramiko issue #546).
    """
    # _request and _from_msg are how paramiko's own listdir_attr does it; they are not in its type stubs
    kind, message = sftp._request(CMD_OPENDIR, to_bytes(folder))  # type: ignore[attr-defined]
    if kind != CMD_HANDLE:
        raise SFTPError("expected a handle")
    handle = message.get_binary()
    entries = []
    try:
        while True:
            try:
                kind, message = sftp._request(CMD_READDIR, handle)  # type: ignore[attr-defined]
            except EOFError:  # the end of the folder
                break
            if kind != CMD_NAME:
                raise SFTPError("expected a name response")
            for _ in range(message.get_int()):
                name = from_bytes(message.get_string())
                longname = message.get_string().decode("utf-8", "replace")
                attributes = paramiko.SFTPAttributes._from_msg(message, name, longname)  # type: ignore[attr-defined]
                if name not in (".", ".."):
                    entries.append(attributes)
            if len(entries) > limit:
                raise DownloadCut(
                    errno.EFBIG,
                    f"the server lists more than {limit} entries in it; move files "
                    "elsewhere on the server, or split the folder",
                )
    finally:
        sftp._request(CMD_CLOSE, handle)  # type: ignore[attr-defined]
    return entries


class SftpSource:
    keeps_originals = True
    trust_mtime = False  # the server's clock, not ours
    mode = "sftp"

    def __init__(
        self,
        settings: SftpSourceSettings,
        clock: Callable[[], float] = time.monotonic,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_listed: int = MAX_LISTED,
    ):
        parts = urlsplit(settings.url)
        self.settings = settings
        self.max_file_bytes = max_file_bytes
        self.max_listed = max_listed
        self.name = settings.name
        self.host = parts.hostname or ""  # config_rules made sure the URL has both
        self.port = parts.port or 22
        self.user = unquote(parts.username or "")
        # %XX in the URL's path is a byte: sftp://u@h/caf%E9 is the Latin-1 folder "caf\xe9"
        self.folder = from_bytes(unquote_to_bytes(parts.path)).rstrip("/") or "/"
        self.location = f"sftp://{self.user}@{self.host}:{self.port}{printable(self.folder)}"
        self.scan_interval = settings.poll_seconds
        self.marker = markers.Marker(settings.ready_marker) if settings.ready_marker else None
        self._listed: set[str] = set()  # every name of the last listing (markers included)
        self._lock = threading.RLock()
        self.clock = clock
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._backoff = Backoff(RECONNECT_INITIAL_SECONDS, RECONNECT_MAX_SECONDS)

    # -- connection -------------------------------------------------------------

    def start(self, wake: Callable[[], None]) -> None:
        """Nothing to watch: the collector polls. The connection is made on first use."""

    def stop(self) -> None:
        self._disconnect()

    def healthy(self) -> bool:
        return True  # a lost server is a reported problem that heals itself, not a dead watcher

    def hints(self) -> set[str]:
        return set()

    def writers(self, entry: Entry) -> writers.Writers:
        return writers.Writers(writers.UNKNOWN, "a writer on the SFTP server is invisible from here")

    def _disconnect(self) -> None:
        sftp, client, self._sftp, self._client = self._sftp, self._client, None, None
        for closable in (sftp, client):
            if closable is not None:
                # closing a broken connection may fail in many ways; it is gone either way
                with contextlib.suppress(Exception):
                    closable.close()

    def _connection(self) -> paramiko.SFTPClient:
        transport = self._client.get_transport() if self._client is not None else None
        if self._sftp is not None and transport is not None and transport.is_active():
            return self._sftp
        self._disconnect()
        now = self.clock()
        if now < self._retry_at:
            raise SourceUnavailable(f"{self._last_error}; trying again in {self._retry_at - now:.0f}s")
        try:
            self._sftp = self._connect()
        except SourceUnavailable as error:
            self._failures += 1
            self._last_error = str(error)
            self._retry_at = self.clock() + self._backoff.delay(self._failures)
            log.error(
                "sftp.connect_failed",
                source=self.name,
                server=f"{self.host}:{self.port}",
                reason=str(error),
                attempt=self._failures,
                retry_in=round(self._retry_at - self.clock(), 1),
            )
            raise
        if self._failures:
            log.info(
                "sftp.reconnected", source=self.name, server=f"{self.host}:{self.port}", after_attempts=self._failures
            )
        else:
            log.info("sftp.connected", source=self.name, server=f"{self.host}:{self.port}")
        self._failures = 0
        return self._sftp

    def _connect(self) -> paramiko.SFTPClient:
        """Connect, check the host key, log in, open SFTP. Raise SourceUnavailable saying what failed."""
        settings = self.settings
        timeout = settings.timeout_seconds
        server = f"{self.host}:{self.port}"
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(settings.known_hosts_file))
        except (OSError, paramiko.SSHException) as error:
            raise SourceUnavailable(f"cannot read known_hosts_file {settings.known_hosts_file}: {error}") from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        passphrase = _read_secret(settings.private_key_passphrase_file) or (
            os.environ.get(settings.private_key_passphrase_env) if settings.private_key_passphrase_env else None
        )
        try:
            client.connect(
                self.host,
                self.port,
                username=self.user,
                key_filename=str(settings.private_key_file) if settings.private_key_file else None,
                passphrase=passphrase,
                password=_read_secret(settings.password_file),
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
            )
            transport = client.get_transport()
            if transport is None:
                raise paramiko.SSHException("no transport after connecting")
            transport.set_keepalive(KEEPALIVE_SECONDS)
            sftp = client.open_sftp()
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(timeout)
        except paramiko.BadHostKeyException:
            client.close()
            raise SourceUnavailable(
                f"{server} presented a host key that does not match "
                f"{settings.known_hosts_file}: refused (the key changed, or someone is in "
                "between)"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise SourceUnavailable(
                f"{server} refused the login as {self.user} (check the key or password, "
                "and authorized_keys on the server)"
            ) from None
        except paramiko.SSHException as error:
            client.close()
            if "known_hosts" in str(error):
                raise SourceUnavailable(
                    f"the host key of {server} is not in {settings.known_hosts_file}: refused. "
                    f"Add it after checking its fingerprint (ssh-keyscan -p {self.port} "
                    f"{self.host})"
                ) from None
            raise SourceUnavailable(f"SSH with {server} failed: {error}") from None
        except (OSError, EOFError) as error:
            client.close()
            reason = getattr(error, "strerror", None) or error
            raise SourceUnavailable(f"cannot connect to {server}: {reason}") from None
        self._client = client
        return sftp

    def _call(self, action: Callable[[paramiko.SFTPClient], T], what: str) -> T:
        """Run one SFTP step. File errors pass through; connection errors drop the connection.

        One step at a time: upload workers check originals over the collector's connection.
        """
        with self._lock:
            return self._step(action, what)

    def _step(self, action: Callable[[paramiko.SFTPClient], T], what: str) -> T:
        sftp = self._connection()
        cause: BaseException
        try:
            return action(sftp)
        except OSError as error:
            if error.errno in _FILE_ERRORS or isinstance(error, DownloadCut):
                raise
            cause = error
        except (TimeoutError, paramiko.SSHException, EOFError) as error:
            cause = error
        self._disconnect()
        self._failures = 1
        self._last_error = f"connection to {self.host}:{self.port} lost while {what}: {describe(cause)}"
        self._retry_at = self.clock() + self._backoff.delay(1)
        raise SourceUnavailable(self._last_error)

    # -- the source protocol ------------------------------------------------------

    def _remote(self, name: str) -> str:
        return posixpath.join(self.folder, name)

    def scan(self) -> list[Entry]:
        try:
            listing = self._call(lambda sftp: list_folder(sftp, self.folder, self.max_listed), "listing the folder")
        except OSError as error:
            if isinstance(error, SourceUnavailable):
                raise
            raise SourceUnavailable(
                f"cannot list {printable(self.folder)} on {self.host}: {error.strerror or error}"
            ) from None
        entries = []
        self._listed = {attributes.filename for attributes in listing}
        for attributes in listing:
            name = attributes.filename
            if "/" in name or "\0" in name or not stat.S_ISREG(attributes.st_mode or 0):
                continue  # symlinks, folders and impossible names are never taken
            if self.marker and self.marker.is_marker(name):
                continue  # markers are never taken themselves
            if wanted(name, self.settings.include):
                entries.append(
                    Entry(
                        name=name,
                        origin=self._remote(name),
                        size=attributes.st_size or 0,
                        mtime=float(attributes.st_mtime or 0),
                    )
                )
        return entries

    def look(self, names: set[str]) -> list[Entry]:
        return [entry for entry in self.scan() if entry.name in names]

    def deadline(self, size: int) -> float:
        """When reading size bytes of a remote file, started now, is cut (time.monotonic())."""
        return time.monotonic() + self.settings.timeout_seconds + size / DOWNLOAD_BYTES_PER_SECOND

    def _read_capped(self, remote: paramiko.SFTPFile, size: int, sink: Callable[[bytes], object]) -> int:
        """read_capped() within this size's deadline; a download cut for its deadline drops the connection,
        since closing the file would wait for the read-ahead still on its way, at the same slow pace."""
        try:
            return read_capped(remote, size, self.deadline(size), sink)
        except DownloadCut as cut:
            if cut.errno == errno.ETIMEDOUT:
                self._disconnect()
            raise

    def fetch(self, entry: Entry, destination: Path) -> bool:
        """Download to a .partial file, check the size and that the remote file did not change, commit.

        At most the listed size is read (and max_file_bytes: a file listed larger is not downloaded),
        within a deadline; raise DownloadCut (an OSError naming the file) if it was not taken for that.
        """
        if entry.size > self.max_file_bytes:
            raise DownloadCut(
                errno.EFBIG,
                f"it is {entry.size} bytes, above max_file_bytes ({self.max_file_bytes}); "
                "not downloaded, it stays on the server",
                printable(entry.origin),
            )
        partial = partial_path(destination)

        def download(sftp: paramiko.SFTPClient) -> tuple[int, paramiko.SFTPAttributes]:
            with sftp.open(to_bytes(entry.origin), "rb") as remote, open(partial, "wb") as local:
                remote.prefetch(entry.size)
                got = self._read_capped(remote, entry.size, local.write)
                local.flush()
                os.fsync(local.fileno())
            return got, sftp.stat(to_bytes(entry.origin))

        try:
            got, after = self._call(download, f"downloading {printable(entry.name)}")
        except DownloadCut as cut:
            partial.unlink(missing_ok=True)
            raise DownloadCut(cut.errno, cut.strerror, printable(entry.origin)) from None
        except FileNotFoundError:
            partial.unlink(missing_ok=True)
            raise SourceGone(f"{printable(entry.origin)} disappeared before it could be taken") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        unchanged = after.st_size == entry.size and float(after.st_mtime or 0) == entry.mtime
        if got > entry.size and unchanged:  # listed as it was, yet it goes on: the server never ends it
            partial.unlink()
            raise DownloadCut(
                errno.EFBIG,
                f"the server sent more than the {entry.size} bytes it lists for it (the file does not end); not taken",
                printable(entry.origin),
            )
        if got != entry.size or not unchanged:
            partial.unlink()
            raise SourceGone(
                f"{printable(entry.origin)} changed while being downloaded "
                f"({got} of {entry.size} bytes); "
                "it is taken again once it settles"
            )
        os.rename(partial, destination)
        return True

    def fetch_many(self, jobs: list[tuple[Entry, Path]]) -> list[bool | Exception]:
        return fetch_each(self, jobs)

    def complete_take(self, origin: str, destination: Path) -> bool:
        return False  # a download: the original stays until its outcome is known (release())

    def peek(self, entry: Entry, limit: int) -> bytes:
        def read(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(to_bytes(entry.origin), "rb") as remote:
                remote.seek(max((remote.stat().st_size or 0) - limit, 0))
                tail = bytearray()
                self._read_capped(remote, limit, tail.extend)  # the same deadline as a download of that size
                return bytes(tail[:limit])

        try:
            return self._call(read, f"reading {printable(entry.name)}")
        except FileNotFoundError:
            raise SourceGone(f"{printable(entry.origin)} disappeared") from None

    def has_marker(self, entry: Entry) -> bool:
        return self.marker is not None and self.marker.of(entry.name) in self._listed

    def drop_marker(self, entry: Entry) -> None:
        if self.marker is None:
            return
        marker = self._remote(self.marker.of(entry.name))
        with contextlib.suppress(FileNotFoundError):
            self._call(lambda sftp: sftp.remove(to_bytes(marker)), f"removing the marker {printable(marker)}")

    def changed(self, taken: Taken) -> int | None:
        try:
            now = self._call(lambda sftp: sftp.stat(to_bytes(taken.origin)), f"looking at {printable(taken.origin)}")
        except FileNotFoundError:
            return None
        return _changed_size(now, taken)

    def release(self, taken: Taken) -> Released:
        """Delete or move the remote original after its outcome is known, if it is still what was taken.

        Its size and mtime, then its content (sha256), are compared with what was
        taken; an original that changed is left where it is, to be taken again whole.
        """

        def unchanged(sftp: paramiko.SFTPClient) -> int | None:
            now = sftp.stat(to_bytes(taken.origin))
            if (size := _changed_size(now, taken)) is not None:
                return size
            digest = hashlib.sha256()
            with sftp.open(to_bytes(taken.origin), "rb") as remote:
                remote.prefetch(taken.size)
                got = self._read_capped(remote, taken.size, digest.update)
            return None if got == taken.size and digest.hexdigest() == taken.sha256 else max(got, now.st_size or 0)

        try:
            size = self._call(unchanged, f"comparing {printable(taken.origin)} with what was taken")
        except DownloadCut as cut:
            raise DownloadCut(cut.errno, cut.strerror, printable(taken.origin)) from None
        except FileNotFoundError:
            return Released("already gone")
        if size is not None:
            return Released("left in place: it changed after it was taken", size)
        return Released(self._remove(taken.origin))

    def _remove(self, origin: str) -> str:
        """Delete or move the remote original (remote_after); return what was done."""
        after = self.settings.remote_after
        remote = to_bytes(origin)
        target: str | None = None
        if after == "delete":
            action, done = (lambda sftp: sftp.remove(remote)), "deleted"
        else:
            target = posixpath.join(after.split(":", 1)[1], posixpath.basename(origin))
            moved_to = to_bytes(target)
            action, done = (lambda sftp: sftp.posix_rename(remote, moved_to)), f"moved to {printable(target)}"
        try:
            self._call(action, f"cleaning up {printable(origin)}")
        except FileNotFoundError:
            if not self._exists(origin):
                return "already gone"
            if target is None:  # listed as there, yet the server says it is not: say what it said
                raise
            folder = printable(posixpath.dirname(target))
            raise OSError(
                errno.ENOENT, f"cannot move {printable(origin)}: the folder {folder} does not exist on {self.host}"
            ) from None
        return done

    def _exists(self, path: str) -> bool:
        try:
            self._call(lambda sftp: sftp.stat(to_bytes(path)), f"looking for {printable(path)}")
        except FileNotFoundError:
            return False
        return True

    def describe_folder(self) -> str:
        """For `check`: connect (host key checked), list the folder, report its permissions."""

        def look_around(sftp: paramiko.SFTPClient) -> str:
            folder = sftp.stat(to_bytes(self.folder))
            count = len(list_folder(sftp, self.folder, self.max_listed))
            return (
                f"host key verified, logged in as {self.user}; {printable(self.folder)} is "
                f"{stat.filemode(folder.st_mode or 0)} uid {folder.st_uid} gid {folder.st_gid}, {count} entries "
                "(the gateway needs write permission on it to "
                f"{'delete' if self.settings.remote_after == 'delete' else 'move'} files)"
            )

        try:
            return self._call(look_around, "checking the folder")
        except OSError as error:
            if isinstance(error, SourceUnavailable):
                raise
            raise SourceUnavailable(
                f"cannot use {printable(self.folder)} on {self.host}: {error.strerror or error}"
            ) from None


def _changed_size(now: paramiko.SFTPAttributes, taken: Taken) -> int | None:
    """The remote file's size if its size or mtime differ from what was taken; None if both are the same."""
    size = now.st_size or 0
    return size if (size, float(now.st_mtime or 0)) != (taken.size, taken.mtime) else None
