"""What the gateway requires of config values beyond their type: the domain checks.

Each function gets the values gateway.config.tables read for one table (a value that was
missing or of the wrong type reads as None and has been reported already) and reports
what is wrong by key path. Nothing here touches the filesystem beyond comparing paths
(resolved, so a symlink or a ".." cannot hide an overlap): files that are read when
used (API key, SFTP keys) are checked by gateway.config.credentials.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config import markers
from gateway.config.schema import SCHEMA
from gateway.config.settings import ALERT_EVENTS, DEFAULT_CONNECTION
from gateway.config.tables import Report
from gateway.core import xmltext

LOOPBACK = ("localhost", "127.0.0.1", "::1")
SFTP_ONLY = (
    "known_hosts_file",
    "private_key_file",
    "private_key_passphrase_file",
    "private_key_passphrase_env",
    "password_file",
    "remote_after",
)
_SOURCE_DEFAULTS = {key.name: key.default for key in SCHEMA["sources"]}


def check_caiasoft(values: dict[str, Any], problem: Report, table: str = "caiasoft") -> None:
    """One CaiaSoft connection: [caiasoft], or [caiasoft.NAME] (table)."""
    base_url = values.get("base_url")
    if isinstance(base_url, str):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problem(f"{table}.base_url", f"must be an http(s) URL such as https://SITE.caiasoft.com, got {base_url!r}")
        elif parts.scheme == "http" and parts.hostname not in LOOPBACK:
            problem(f"{table}.base_url", "must use https (plain http is only allowed for loopback simulators)")
    path_value = values.get("requestfile_path")
    if isinstance(path_value, str) and not path_value.startswith("/"):
        problem(f"{table}.requestfile_path", "must start with /")
    for key, value in (values.get("extra_fields") or {}).items():
        if not isinstance(value, str):
            problem(f"{table}.extra_fields.{key}", "must be a string")
    if (values.get("backoff_max_seconds") or 0) < (values.get("backoff_initial_seconds") or 0):
        problem(f"{table}.backoff_max_seconds", "must not be smaller than backoff_initial_seconds")
    if values.get("api_key_file") and values.get("api_key_env"):
        problem(f"{table}.api_key_file", "set either api_key_file or api_key_env, not both")


def check_connection_names(table: str, named: dict[str, Any], problem: Report) -> None:
    """[caiasoft.NAME] and [ncip.NAME]: NAME is a short word (it names metrics, files and credentials)."""
    for name in named:
        if name == DEFAULT_CONNECTION:
            problem(f"{table}.{name}", f'"{DEFAULT_CONNECTION}" is the name of [{table}] itself: choose another')
        elif not CONNECTION_NAME.fullmatch(name):
            problem(f"{table}.{name}", "a connection's name is letters, digits, '-' or '_' (at most 32)")


CONNECTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


def check_source_connections(sources: list[dict[str, Any]], known: list[str], problem: Report) -> None:
    """Each source names a CaiaSoft connection the config has."""
    for index, source in enumerate(sources):
        name = source.get("caiasoft")
        if isinstance(name, str) and name not in known:
            problem(f"sources[{index}].caiasoft", f"no CaiaSoft connection {name!r} (there are: {', '.join(known)})")


def check_journals(journals: dict[str, Path], problem: Report) -> None:
    """Each NCIP server has a journal of its own: two tailers of one file would each send every entry."""
    seen: dict[Path, str] = {}
    for key, journal in journals.items():
        real = _resolved(journal)
        if real in seen:
            problem(key, f"is also {seen[real]} ({journal}): each NCIP server needs a journal of its own")
        seen.setdefault(real, key)


def check_intake(values: dict[str, Any], problem: Report) -> None:
    encoding = values.get("text_fallback_encoding")
    if encoding:
        try:
            "".encode(encoding)
        except LookupError:
            problem("intake.text_fallback_encoding", f"unknown encoding {encoding!r}")


OWN_FOLDERS = ("state_dir", "archive_dir", "error_dir", "log_dir")


def check_folders(
    paths: dict[str, Any],
    sources: list[dict[str, Any]],
    journals: dict[str, Path],
    problem: Report,
    holders: dict[str, Path] | None = None,
) -> None:
    """The gateway's own folders, the source folders and the journal must stay apart.

    A source folder that is, holds or lies in one of the gateway's folders would feed
    its own files back in (the rotated gateway.log.1 uploaded to CaiaSoft); so would a
    journal inside a source folder, and a source that is the folder of the config file
    or of a key or password file (holders: key path -> file) would send them to
    CaiaSoft. archive_dir and error_dir must differ: `retry --all` takes back every file
    in error_dir, and retention would delete refused files.

    The gateway's folders are compared resolved (symlinks and ".." seen through); a source
    path only as written, with ".." taken out: what its symlinks point to is in the hands of
    whoever owns the folders on the way (ALEPH's user), who must not be able to keep the
    service (or `status`) from starting by pointing them elsewhere. Where a source leads in
    fact is checked each time it is opened and looked at (gateway.sources.folder): a source
    that is a symlink, or leads into the gateway's folders, is paused and never read.
    """
    own = {key: _resolved(paths[key]) for key in OWN_FOLDERS if isinstance(paths.get(key), Path)}
    if "archive_dir" in own and own.get("archive_dir") == own.get("error_dir"):
        problem(
            "paths.error_dir",
            f"is the same folder as archive_dir ({own['error_dir']}): `retry --all` would "
            "send accepted files again, and retention would delete refused ones; use two folders",
        )
    for index, source in enumerate(sources):
        folder = source.get("path")
        if not isinstance(folder, Path):
            continue
        real = _written(folder)
        for key, place in own.items():
            if _overlaps(real, place) or _overlaps(real, _written(paths[key])):
                problem(
                    f"sources[{index}].path",
                    f"overlaps the gateway's own folder {key} = {paths[key]}"
                    + (f" (both are {place})" if real == place and folder != paths[key] else ""),
                )
        for key, file in (holders or {}).items():
            if real in (_resolved(file).parent, _written(file).parent):
                problem(
                    f"sources[{index}].path",
                    f"is the folder of {key} ({file}): it would be taken and sent "
                    "to CaiaSoft; keep request files in a folder of their own",
                )
        for key, journal in journals.items():
            if real in (_resolved(journal).parent, _written(journal).parent):
                problem(
                    key,
                    f"is inside the folder of sources[{index}] ({folder}): it would be taken "
                    "and sent to CaiaSoft as a request file",
                )


def _resolved(path: Path) -> Path:
    """The path with symlinks and '..' resolved as far as it exists (it need not exist yet)."""
    return Path(os.path.realpath(path))


def _written(path: Path) -> Path:
    """The path as written, absolute, with '.' and '..' taken out (no symlink followed)."""
    return Path(os.path.normpath(os.path.abspath(path)))


def check_sources(sources: list[dict[str, Any]], problem: Report) -> None:
    names: dict[str, int] = {}
    for index, source in enumerate(sources):
        where = f"sources[{index}]"
        name = source.get("name")
        if isinstance(name, str):
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                problem(f"{where}.name", "use letters, digits, '-', '_' or '.' only")
            elif name in names:
                problem(f"{where}.name", f"{name!r} is already the name of sources[{names[name]}]")
            names.setdefault(name, index)
        folder, url = source.get("path"), source.get("url")
        if (folder is None) == (url is None):
            problem(f"{where}.path", "set either path (a local or mounted folder) or url (sftp://...), not both")
        if isinstance(folder, Path):
            _check_local(source, where, problem)
        if isinstance(url, str):
            _check_sftp(source, url, where, problem)
        marker = source.get("ready_marker")
        if isinstance(marker, str) and marker and (why := markers.marker_problem(marker)):
            problem(f"{where}.ready_marker", why)


def _check_local(source: dict[str, Any], where: str, problem: Report) -> None:
    for key in SFTP_ONLY:
        if source.get(key) not in (None, _SOURCE_DEFAULTS[key]):
            problem(f"{where}.{key}", 'only applies to SFTP sources (url = "sftp://...")')


def _check_sftp(source: dict[str, Any], url: str, where: str, problem: Report) -> None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme != "sftp"
        or not parts.hostname
        or not parts.username
        or not parts.path.startswith("/")
        or port == -1
        or parts.password
        or parts.query
        or parts.fragment
    ):
        problem(f"{where}.url", f"must look like sftp://user@host:22/remote/folder (no password), got {url!r}")
    if source.get("known_hosts_file") is None:
        problem(f"{where}.known_hosts_file", "required for SFTP: host keys are checked, never accepted blindly")
    if source.get("private_key_file") is None and source.get("password_file") is None:
        problem(f"{where}.private_key_file", "SFTP needs a private_key_file (or, explicitly, a password_file)")
    if source.get("private_key_passphrase_file") and source.get("private_key_passphrase_env"):
        problem(f"{where}.private_key_passphrase_file", "set a passphrase file or a passphrase variable, not both")
    after = source.get("remote_after")
    if isinstance(after, str) and after != "delete" and not (after.startswith("move:/") and len(after) > 6):
        problem(f"{where}.remote_after", f'must be "delete" or "move:/remote/folder", got {after!r}')


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_ncip(values: dict[str, Any], problem: Report, table: str = "ncip") -> None:
    """One NCIP server: [ncip], or [ncip.NAME] (table)."""
    _check_ncip_url(values, lambda key, message: problem(key.replace("ncip", table, 1), message))
    _check_ncip_values(values, lambda key, message: problem(key.replace("ncip", table, 1), message))


def _check_ncip_values(values: dict[str, Any], problem: Report) -> None:
    for stop, user in (values.get("stop_users") or {}).items():
        if not isinstance(user, str) or not user:
            problem(f"ncip.stop_users.{stop}", "must be a user id string")
    for key in ("from_agency", "to_agency", "user_id"):
        if values.get(key) == "":
            problem(f"ncip.{key}", "must not be empty")
    sent = {
        key: values.get(key) for key in ("from_agency", "to_agency", "user_id", "application_profile", "agency_scheme")
    }
    sent |= {f"stop_users.{stop}": user for stop, user in (values.get("stop_users") or {}).items()}
    for key, value in sent.items():  # these go into every NCIP message: one no XML can carry would spoil them all
        why = xmltext.problem("the value", value) if isinstance(value, str) else None
        if why:
            problem(f"ncip.{key}", why)
    for key in ("content_type", "form_content_type"):
        label = values.get(key)
        if isinstance(label, str) and (not label.strip() or any(not 32 <= ord(c) < 127 for c in label)):
            problem(
                f"ncip.{key}",
                f'must be a Content-Type such as "text/xml; charset=UTF-8", in ASCII on one line, got {label!r}',
            )


def _check_ncip_url(values: dict[str, Any], problem: Report) -> None:
    url = values.get("url")
    if isinstance(url, str):
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https", "tcp") or not parts.hostname or port == -1:
            problem(
                "ncip.url",
                "must be an http(s) URL such as http://aleph.example.edu:8991/ncip, or "
                f"tcp://HOST:PORT for a raw socket to ALEPH's NCIP port, got {url!r}",
            )
        elif parts.scheme == "tcp" and (port is None or parts.query or parts.fragment or parts.username):
            problem("ncip.url", f"a raw-socket URL is tcp://HOST:PORT or tcp://HOST:PORT/PATH, got {url!r}")
        elif parts.scheme == "tcp" and parts.path.strip("/") and values.get("framing") == "bare":
            problem(
                "ncip.url",
                f'with framing = "bare" nothing but the message is sent, so a PATH has no use: '
                f"tcp://HOST:PORT, got {url!r}",
            )
        elif parts.scheme == "tcp" and any(ord(character) < 33 or ord(character) > 126 for character in parts.path):
            problem(
                "ncip.url",
                f"the PATH of a raw-socket URL goes into the request line: no spaces or control "
                f"characters, got {url!r}",
            )


def check_alerts(values: dict[str, Any], problem: Report) -> None:
    """[alerts]: known event names, addresses that look like addresses, a login only with a password."""
    for event in values.get("events") or []:
        if event not in ALERT_EVENTS:
            problem("alerts.events", f"unknown event {event!r} (known: {', '.join(ALERT_EVENTS)})")
    for key, addresses in (("from", [values.get("from")]), ("to", values.get("to") or [])):
        for address in addresses:
            if isinstance(address, str) and ("@" not in address or any(c in address for c in " \r\n,<>")):
                problem(f"alerts.{key}", f"must be a mail address such as ils-team@example.edu, got {address!r}")
    if values.get("username") and values.get("password_file") is None:
        problem("alerts.password_file", "a username needs a password_file (the relay's password)")
    url = values.get("webhook_url")
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        problem("alerts.webhook_url", f"must be an http(s) URL, got {url!r}")


def check_web(values: dict[str, Any], problem: Report) -> None:
    """[web]: listen is HOST:PORT; off loopback, a users_file is required (the page names readers' items)."""
    listen = values.get("listen") or ""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        problem("web.listen", f"must be HOST:PORT such as 127.0.0.1:9465, got {listen!r}")
        return
    if values.get("users_file") is None and not _loopback(host.strip("[]")):
        problem(
            "web.users_file",
            f"listen = {listen!r} is not a loopback address: set users_file (caiasoft-gateway web-user NAME adds "
            "one), and put a web server with TLS in front of the page",
        )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_metrics(values: dict[str, Any], problem: Report) -> None:
    """[metrics]: listen is HOST:PORT (or empty); the textfile's folder exists."""
    listen = values.get("listen")
    if listen:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problem("metrics.listen", f"must be HOST:PORT such as 127.0.0.1:9464 (or empty = off), got {listen!r}")
    textfile = values.get("textfile")
    if isinstance(textfile, Path) and (not textfile.name.endswith(".prom") or not textfile.parent.is_dir()):
        problem(
            "metrics.textfile",
            f"must be a NAME.prom file in an existing folder (node_exporter's textfile directory), got {textfile}",
        )
