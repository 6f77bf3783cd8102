"""`check`: everything an admin needs to be true before starting the service, checked and named."""

from __future__ import annotations

import getpass
import os
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway.cli import asservice
from gateway.config.credentials import secret_file_warnings
from gateway.config.loader import Config
from gateway.config.settings import (
    DEFAULT_CONNECTION,
    CaiaSoft,
    LocalSourceSettings,
    Ncip,
    SftpSourceSettings,
    SourceSettings,
    Web,
)
from gateway.core.errors import SourceUnavailable
from gateway.core.states import Verdict
from gateway.sources import writers
from gateway.sources.folder import FolderReplaced, HeldFolder, own_folders
from gateway.sources.local import NETWORK_FILESYSTEMS, choose_mode, filesystem_type
from gateway.upload.caiasoft import CaiaSoftClient

WEB_UNIT_NAME = "caiasoft-gateway-web.service"  # the staff page's unit, beside the service's
WEB_COUNTER = "caiasoft_gateway_web_requests_total"  # what the staff page's /metrics serves, and nothing else
WEB_REALM = 'realm="caiasoft-gateway"'  # its basic auth challenge
WEB_PROBE_SECONDS = 2.0


@dataclass(frozen=True)
class Result:
    mark: str  # ok | WARN | FAIL
    what: str
    detail: str = ""


def run_checks(
    config: Config, offline: bool = False, ncip_item: str | None = None, ncip_server: str | None = None
) -> Iterator[Result]:
    """Every check in order; with ncip_item, also a read-only NCIP LookupItem for that barcode, on every NCIP
    server or only on the one named ncip_server (a barcode of one library is unknown to another's ALEPH)."""
    yield Result("ok", f"configuration {config.file}")
    for warning in config.warnings:
        yield Result("WARN", "secret file permissions", warning)
    for key in ("state_dir", "archive_dir", "error_dir", "log_dir"):
        yield _writable_folder(f"paths.{key}", getattr(config.paths, key))
    for index, source in enumerate(config.sources):
        yield from _source(index, source, config.paths.state_dir, own_folders(config), config.several)
    yield from _optional_local(config)
    if offline:
        yield Result("ok", "CaiaSoft and NCIP not contacted (--offline)")
        return
    for connection in config.connections:
        yield _caiasoft(config, connection)
    for server in config.ncip_servers:
        asked = ncip_item if ncip_server in (None, server.name) else None
        yield from _ncip_server(server, asked, config.several)


def _ncip_server(server: Ncip, ncip_item: str | None, several: bool) -> Iterator[Result]:
    """One NCIP server reached (named, with several), then probed with ncip_item if given."""
    reached = _ncip(server.url, server.timeout_seconds, server.name if several else None)
    yield reached
    if ncip_item and reached.mark == "ok":
        from gateway.ncip import probe

        for finding in probe.lookup(server, ncip_item, named=several):
            yield Result(finding.mark, finding.what, finding.detail)
    elif not ncip_item and reached.mark == "ok":
        yield Result(
            "ok",
            f"NCIP {server.name}: version and agencies not checked"
            if several
            else "NCIP version and agencies not checked",
            "caiasoft-gateway check --ncip-item BARCODE asks ALEPH about one item (read-only) "
            "and tells which version it answers in",
        )


def _optional_local(config: Config) -> Iterator[Result]:
    """What the optional tables need on this host: the NCIP journal, the staff page's address and users."""
    for server in config.ncip_servers:
        yield from _ncip_local(server)
    if config.web:
        yield from _web(config, config.web)


def service_folders(config: Config) -> list[tuple[str, Path]]:
    """Every folder the service writes in, by the setting that names it."""
    folders = [
        (f"paths.{key}", Path(getattr(config.paths, key)))
        for key in ("state_dir", "archive_dir", "error_dir", "log_dir")
    ]
    folders += [(f"{server.table}.journal (its folder)", server.journal.parent) for server in config.ncip_servers]
    if config.metrics and config.metrics.textfile is not None:
        folders.append(("metrics.textfile (its folder)", config.metrics.textfile.parent))
    folders += [
        (f"sources[{index}].path", source.path)
        for index, source in enumerate(config.sources)
        if isinstance(source, LocalSourceSettings)
    ]
    return folders


def _installed_unit(unit: Path) -> Iterator[Result | asservice.ServiceIdentity]:
    """The installed unit as read (nothing if it is not installed), or a FAIL saying why it cannot be read."""
    if not unit.is_file():
        return
    try:
        yield asservice.read_unit(unit)
    except asservice.AsServiceError as error:
        yield Result("FAIL", f"the unit {unit}", str(error))


def unit_sandbox(config: Config, unit: Path, root: Path = Path("/")) -> Iterator[Result]:
    """The installed unit's sandbox against the folders the service writes: a FAIL for each it cannot write."""
    for identity in _installed_unit(unit):
        if isinstance(identity, Result):
            yield identity
            continue
        yield from _unit_folders(config, unit, identity, root)
    if config.web:
        yield from _web_unit_sandbox(config, unit.with_name(WEB_UNIT_NAME), root)


def _unit_folders(config: Config, unit: Path, identity: asservice.ServiceIdentity, root: Path) -> Iterator[Result]:
    problems = asservice.sandbox_problems(identity, service_folders(config), root)
    for problem in problems:
        yield Result("FAIL", "the unit's sandbox", problem)
    if not problems:
        yield Result("ok", f"the unit's sandbox ({unit})", "every folder the gateway writes is writable under it")


def _web_unit_sandbox(config: Config, unit: Path, root: Path) -> Iterator[Result]:
    """The staff page's unit is read-only but for the state folder: SQLite's readers of a WAL ledger write its
    shared-memory index there (gateway.db-shm). A state_dir moved out of it needs a line of the admin's."""
    for identity in _installed_unit(unit):
        if isinstance(identity, Result):
            yield identity
            continue
        yield from _web_state_dir(config, unit, identity, root)


def _web_state_dir(config: Config, unit: Path, identity: asservice.ServiceIdentity, root: Path) -> Iterator[Result]:
    state_dir = Path(config.paths.state_dir)
    what = f"the staff page's sandbox ({unit})"
    if asservice.sandbox_problems(identity, [("paths.state_dir", state_dir)], root):
        yield Result(
            "FAIL",
            what,
            f"paths.state_dir {state_dir} is read-only for the staff page, which reads the ledger there (a reader "
            f"writes gateway.db-shm beside it): systemctl edit {unit.stem}, add [Service] and "
            f"ReadWritePaths={state_dir}, then systemctl restart {unit.stem}",
        )
    else:
        yield Result("ok", what, f"it can read the ledger in {state_dir}")


def _ncip_local(ncip: Ncip) -> Iterator[Result]:
    """An NCIP server's journal (ncip.journal, or ncip.NAME.journal) and its feed's users."""
    yield _writable_folder(f"{ncip.table}.journal (its folder)", ncip.journal.parent)
    yield _journal(ncip.journal, f"{ncip.table}.journal")
    if ncip.feed:
        yield _feed_users(ncip)


def _journal(path: Path, key: str = "ncip.journal") -> Result:
    """The journal as the relay opens it: a regular file, never through a link, never blocking."""
    from gateway.ncip.journal import JournalRefused, open_journal

    try:
        fd = open_journal(path)
    except JournalRefused as error:
        return Result("FAIL", key, str(error))
    if fd is None:
        return Result("ok", f"{key} {path}", "not there yet: the first `journal` command (or the feed) makes it")
    os.close(fd)
    return Result("ok", f"{key} {path}", "a regular file")


def _feed_users(ncip: Ncip) -> Result:
    """The status feed cannot choose a stop's user: no CaiaSoft endpoint it reads gives the stop."""
    of = f" of [{ncip.table}]" if ncip.name != DEFAULT_CONNECTION else ""
    what = f"status feed{of} (collection {ncip.feed.collection if ncip.feed else ''})"
    detail = (
        f"CaiaSoft's retrieval lists give no circulation stop: every feed check-out goes to {ncip.table}.user_id "
        f"({ncip.user_id})"
    )
    if ncip.stop_users:
        return Result(
            "WARN", what, f"{detail}; [{ncip.table}.stop_users] applies only to journal entries that carry a stop"
        )
    return Result("ok", what, detail)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _writable_folder(key: str, path: Path) -> Result:
    if path.exists():
        if not path.is_dir():
            return Result("FAIL", f"{key} {path}", "exists but is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            return Result("FAIL", f"{key} {path}", f"not writable by {_user()}")
        return Result("ok", f"{key} {path}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return Result("ok", f"{key} {path}", "does not exist yet; will be created")
    return Result("FAIL", f"{key} {path}", f"does not exist, and {_user()} cannot create it in {parent}")


def _never_read(source: LocalSourceSettings, own: tuple[tuple[Path, ...], tuple[Path, ...]]) -> str | None:
    """Why the service would pause this folder at once (a symlink, one of the gateway's folders), or None."""
    held = HeldFolder(source.path, *own)
    try:
        held.fd()
    except FolderReplaced as error:
        return str(error)
    except OSError:
        return None  # missing or unreadable: said by the checks that follow
    finally:
        held.close()
    return None


def _source(
    index: int,
    source: SourceSettings,
    state_dir: Path,
    own: tuple[tuple[Path, ...], tuple[Path, ...]] = ((), ()),
    several: bool = False,
) -> Iterator[Result]:
    """A source as the service would read it; with several connections its label names the one it sends to."""
    label = f"sources[{index}] {source.name}: {source.location}" + (
        f" (to CaiaSoft {source.caiasoft})" if several else ""
    )
    if isinstance(source, SftpSourceSettings):
        yield _sftp(label, source)
        yield _writers(
            label,
            source,
            False,
            "SFTP: a writer on the server cannot be seen from here; "
            f"rely on settle_seconds (now {source.settle_seconds:g}; set it above the longest pause of "
            "ALEPH's writer, e.g. 30) or ready_marker",
        )
        return
    if (paused := _never_read(source, own)) is not None:
        yield Result("FAIL", label, paused)
        return
    if not source.path.is_dir():
        yield Result("FAIL", label, "folder does not exist (or is not a folder)")
        return
    if not os.access(source.path, os.R_OK | os.X_OK):
        yield Result("FAIL", label, f"{_user()} cannot list this folder")
        return
    if not os.access(source.path, os.W_OK):
        yield Result(
            "FAIL",
            label,
            f"{_user()} cannot move files out of this folder (needs write permission "
            "on the folder, e.g. through ALEPH's group)",
        )
        return
    mode = choose_mode(source)
    filesystem = filesystem_type(source.path)
    yield Result("ok", label, f"watched by {mode} (filesystem {filesystem or 'unknown'})")
    yield _writers(
        label,
        source,
        *writers.writer_detection(source.path, filesystem in NETWORK_FILESYSTEMS, filesystem, source.settle_seconds),
    )
    if state_dir.exists() and os.stat(state_dir).st_dev != os.stat(source.path).st_dev:
        yield Result(
            "ok",
            label,
            f"on another filesystem than {state_dir}: every file is copied into work/ (a file the service user "
            "owns is otherwise linked, which needs one filesystem); nothing else differs",
        )


def _writers(label: str, source: SourceSettings, detectable: bool, why: str) -> Result:
    """Whether a file still open for writing can be told from a finished one in this source."""
    what = f"{label}: open writers"
    if source.ready_marker:
        return Result(
            "ok",
            what,
            f"marker mode: a file is taken once {source.ready_marker} exists "
            f"({'and nobody has it open' if detectable else why.split(';')[0]})",
        )
    if detectable:
        return Result(
            "ok", what, f"{why} (checked as {_user()}; a file that changes after it is taken is taken again whole)"
        )
    return Result(
        "WARN",
        what,
        f"cannot be detected: {why}. A file that changes after it is taken is "
        "taken again whole, but waiting long enough avoids sending partial versions",
    )


def _sftp(label: str, settings: SftpSourceSettings) -> Result:
    from gateway.sources.sftp import SftpSource

    remote = SftpSource(settings)
    try:
        return Result("ok", label, remote.describe_folder())
    except SourceUnavailable as error:
        return Result("FAIL", label, str(error))
    finally:
        remote.stop()


def _ncip(url: str, timeout: float, name: str | None = None) -> Result:
    """A TCP connect to the NCIP server: proves address, port and firewall without sending a message.
    name: the server's, said when the config has several."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    what = f"NCIP server {url}" if name is None else f"NCIP server {name} {url}"
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as error:
        return Result(
            "FAIL",
            what,
            f"cannot connect to {parts.hostname}:{port}: "
            f"{error.strerror or error} (a firewall between this host and ALEPH's NCIP port?)",
        )
    return Result("ok", what, f"{parts.hostname}:{port} accepts connections")


def _caiasoft(config: Config, connection: CaiaSoft) -> Result:
    """One CaiaSoft connection reached with its own key (named, when the config has several)."""
    client = CaiaSoftClient(connection, config.key_of(connection.name))
    try:
        outcome = client.check()
    finally:
        client.close()
    where = f"CaiaSoft {connection.name} {connection.base_url}" if config.several else f"CaiaSoft {connection.base_url}"
    if outcome.verdict == Verdict.ACCEPTED:
        stops = outcome.answer.get("count") if isinstance(outcome.answer, dict) else None
        return Result(
            "ok",
            where,
            f"reached in {outcome.elapsed_ms} ms, API key accepted"
            + (f", {stops} active circulation stop(s)" if stops is not None else ""),
        )
    return Result("FAIL", where, outcome.reason)


def _web(config: Config, web: Web) -> Iterator[Result]:
    """[web]: the staff page's address can be listened on now, and its users file is there, private and usable."""
    yield _web_listen(config, web)
    if web.users_file is None:
        yield Result("ok", "web.users_file", "not set: the page asks for no login (so it listens on loopback only)")
    else:
        yield from _web_users(web.users_file)


def _web_listen(config: Config, web: Web) -> Result:
    what = f"web.listen {web.listen}"
    host, port = web.address
    metrics = config.metrics.address if config.metrics else None
    if metrics and metrics[1] == port and (metrics[0] == host or {metrics[0], host} & {"0.0.0.0", "::"}):
        return Result("FAIL", what, f"the address of metrics.listen ({metrics[0]}:{port}): give each its own port")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as error:
        return Result("FAIL", what, f"{host} is not an address of this host ({error.strerror or error})")
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the page's listener does
        try:
            probe.bind(address)
        except OSError as error:
            return _web_address_taken(what, host, port, error)
    if port < 1024:
        return Result(
            "WARN",
            what,
            "free, but a port below 1024 needs a capability the staff page's unit does not have: "
            "use one above 1023 (the default is 9465) and let the site's web server listen on 443",
        )
    return Result("ok", what, "free: the staff page can listen there")


def _web_address_taken(what: str, host: str, port: int, error: OSError) -> Result:
    import errno

    if error.errno == errno.EADDRNOTAVAIL:
        return Result("FAIL", what, f"{host} is not an address of this host")
    if error.errno == errno.EACCES:
        return Result("FAIL", what, f"{_user()} may not listen on port {port} (below 1024): use one above 1023")
    if error.errno != errno.EADDRINUSE:
        return Result("FAIL", what, f"cannot listen there: {error.strerror or error}")
    holder = _listening_process(port)
    if _answers_as_staff_page(host, port):
        return Result("ok", what, "the staff page is running there" + (f" ({holder})" if holder else ""))
    return Result(
        "FAIL",
        what,
        f"{host}:{port} is in use by "
        + (holder or f"another program (as root, `ss -ltnp 'sport = :{port}'` names it)")
        + ": stop it or choose another port",
    )


def _answers_as_staff_page(host: str, port: int) -> bool:
    """Whether what listens on host:port is a staff page already (its /metrics, or its login's realm)."""
    connect = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://{f'[{connect}]' if ':' in connect else connect}:{port}/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    try:
        with opener.open(url, timeout=WEB_PROBE_SECONDS) as answer:
            return WEB_COUNTER in answer.read(65536).decode("utf-8", "replace")
    except urllib.error.HTTPError as refused:
        return refused.code == 401 and WEB_REALM in (refused.headers.get("WWW-Authenticate") or "")
    except (OSError, ValueError):
        return False


def _listening_sockets(port: int) -> set[str]:
    """The sockets listening on port (TCP, IPv4 and IPv6), as a process's fd links name them: socket:[INODE]."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    return sockets


def _listening_process(port: int) -> str | None:
    """'pid N (NAME)' of the process listening on port, if this user may see it (/proc); else None."""
    sockets = _listening_sockets(port)
    if not sockets:
        return None
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            for fd in (process / "fd").iterdir():
                if os.readlink(fd) in sockets:
                    return f"pid {process.name} ({(process / 'comm').read_text().strip()})"
        except OSError:  # another user's process, or gone meanwhile
            continue
    return None


def _web_users(path: Path) -> Iterator[Result]:
    """The users file: a regular file, private, readable here, naming at least one user who can log in."""
    from gateway.web.users import load_users

    what = f"web.users_file {path}"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        yield Result("FAIL", what, "does not exist: `caiasoft-gateway web-user NAME` makes it with a first user")
        return
    except OSError as error:
        yield Result("FAIL", what, f"cannot be looked at: {error.strerror or error}")
        return
    if not stat.S_ISREG(info.st_mode):
        yield Result("FAIL", what, "is not a regular file")
        return
    for warning in secret_file_warnings("web.users_file", path):
        yield Result("WARN", "secret file permissions", warning)
    try:
        users = load_users(path)
    except PermissionError:
        yield Result(
            "FAIL",
            what,
            f"cannot be read by {_user()}: the staff page runs as the service's user; chown it to that user "
            "(mode 0600)",
        )
        return
    except OSError as error:
        yield Result("FAIL", what, f"cannot be read: {error.strerror or error}")
        return
    unusable = sorted(name for name, stored in users.items() if not _stored_hash(stored))
    if unusable:
        yield Result(
            "WARN",
            what,
            f"cannot log in: {', '.join(unusable)} (not a password hash `caiasoft-gateway web-user NAME` writes; "
            "run it again for each)",
        )
    if len(users) == len(unusable):
        yield Result("FAIL", what, "holds no user who can log in (`caiasoft-gateway web-user NAME` adds one)")
        return
    yield Result("ok", what, f"{len(users) - len(unusable)} user(s)")


def _stored_hash(stored: str) -> bool:
    """Whether stored has the form `web-user` writes: scrypt$N$R$P$SALT$HASH (numbers, then base64)."""
    import base64
    import binascii

    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(part.isdigit() for part in parts[1:4]):
        return False
    try:
        return all(base64.b64decode(part, validate=True) for part in parts[4:])
    except (binascii.Error, ValueError):
        return False
