"""Read gateway.toml once, validate all of it, and return frozen dataclasses.

Every key the gateway knows is declared in gateway.schema, with its type,
default and meaning. Nothing else in the program reads raw TOML: parts receive the
dataclasses built here. All problems are collected and reported together, each
with its key path and the file name, so an admin fixes them in one go.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError, Problem
from gateway.schema import REQUIRED, SCHEMA, Key

DEFAULT_CONFIG = Path("/etc/caiasoft-gateway/gateway.toml")
CONFIG_ENV = "CAIASOFT_GATEWAY_CONFIG"
CREDENTIAL_NAME = "caiasoft-api-key"  # systemd LoadCredential= name

@dataclass(frozen=True)
class Secret:
    """A value that never shows itself in repr, str or logs."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return "[redacted]"

    def __repr__(self) -> str:
        return "Secret([redacted])"


@dataclass(frozen=True)
class Paths:
    state_dir: Path
    archive_dir: Path
    error_dir: Path
    log_dir: Path

    @property
    def database(self) -> Path:
        return self.state_dir / "gateway.db"

    @property
    def work_dir(self) -> Path:
        return self.state_dir / "work"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "gateway.lock"


@dataclass(frozen=True)
class CaiaSoft:
    base_url: str
    requestfile_path: str
    upload_field: str
    extra_fields: dict[str, str]
    timeout_seconds: float
    verify_tls: bool
    ca_file: Path | None
    backoff_initial_seconds: float
    backoff_max_seconds: float
    auth_pause_seconds: float
    upload_workers: int
    api_key_file: Path | None
    api_key_env: str | None

    @property
    def requestfile_url(self) -> str:
        return self.base_url.rstrip("/") + self.requestfile_path


@dataclass(frozen=True)
class Intake:
    max_file_bytes: int
    text_fallback_encoding: str


@dataclass(frozen=True)
class Archive:
    retention_days: int


@dataclass(frozen=True)
class Source:
    name: str
    path: Path | None
    url: str | None
    include: tuple[str, ...]
    settle_seconds: float
    watch: str
    rescan_seconds: float
    poll_seconds: float
    known_hosts_file: Path | None
    private_key_file: Path | None
    private_key_passphrase_file: Path | None
    private_key_passphrase_env: str | None
    password_file: Path | None
    remote_after: str
    timeout_seconds: float

    @property
    def is_sftp(self) -> bool:
        return self.url is not None

    @property
    def location(self) -> str:
        """Where the files are, for messages: the folder, or the URL."""
        return self.url if self.url is not None else str(self.path)


@dataclass(frozen=True)
class Feed:
    collection: str
    interval_seconds: float
    lookback_days: int


@dataclass(frozen=True)
class Ncip:
    url: str
    version: str
    from_agency: str
    to_agency: str
    application_profile: str
    user_id: str
    stop_users: dict[str, str]
    journal: Path
    timeout_seconds: float
    backoff_initial_seconds: float
    backoff_max_seconds: float
    done_problems_checkin: tuple[str, ...]
    done_problems_checkout: tuple[str, ...]
    temporary_problems: tuple[str, ...]
    agency_scheme: str
    max_line_bytes: int
    feed: Feed | None

    def user_for(self, stop: str | None) -> str:
        """The CaiaSoft user id to check an item out to: the stop's own, else user_id."""
        return self.stop_users.get(stop or "", self.user_id)


@dataclass(frozen=True)
class Config:
    file: Path
    paths: Paths
    caiasoft: CaiaSoft
    intake: Intake
    archive: Archive
    sources: tuple[Source, ...]
    api_key: Secret = field(repr=False)
    warnings: tuple[str, ...] = ()
    ncip: Ncip | None = None


def config_path(explicit: str | os.PathLike | None) -> Path:
    """Given -c FILE (or None), return the file to read: -c, then $CAIASOFT_GATEWAY_CONFIG, then /etc."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return DEFAULT_CONFIG


def load(path: str | os.PathLike, environ: dict[str, str] | None = None) -> Config:
    """Given a TOML file, return a validated Config. Raise ConfigError listing every problem."""
    path = Path(path)
    environ = dict(os.environ if environ is None else environ)
    name = str(path)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([Problem(name, "", "file not found")]) from None
    except PermissionError:
        raise ConfigError([Problem(name, "", "cannot be read (permission denied)")]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([Problem(name, "", f"not valid TOML: {error}")]) from None
    return _build(raw, name, environ)


def _build(raw: dict[str, Any], name: str, environ: dict[str, str]) -> Config:
    problems: list[Problem] = []

    def problem(key: str, message: str) -> None:
        problems.append(Problem(name, key, message))

    for table in raw:
        if table not in SCHEMA or "." in table:
            problem(table, f"unknown section (known: {', '.join(t for t in SCHEMA if '.' not in t)})")

    values: dict[str, dict[str, Any]] = {}
    for table in ("paths", "caiasoft", "intake", "archive"):
        section = raw.get(table, {})
        if not isinstance(section, dict):
            problem(table, "must be a table, e.g. [" + table + "]")
            section = {}
        values[table] = _read_table(section, SCHEMA[table], table, problem)

    raw_sources = raw.get("sources", [])
    source_values: list[dict[str, Any]] = []
    if not isinstance(raw_sources, list) or not all(isinstance(s, dict) for s in raw_sources):
        problem("sources", "must be written as [[sources]] tables")
    else:
        if not raw_sources:
            problem("sources", "no [[sources]] configured: the gateway would watch nothing")
        for index, section in enumerate(raw_sources):
            source_values.append(_read_table(section, SCHEMA["sources"], f"sources[{index}]", problem))

    caiasoft = values["caiasoft"]
    base_url = caiasoft.get("base_url")
    if isinstance(base_url, str):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problem("caiasoft.base_url", f"must be an http(s) URL such as https://SITE.caiasoft.com, got {base_url!r}")
        elif parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
            problem("caiasoft.base_url", "must use https (plain http is only allowed for loopback simulators)")
    path_value = caiasoft.get("requestfile_path")
    if isinstance(path_value, str) and not path_value.startswith("/"):
        problem("caiasoft.requestfile_path", "must start with /")
    for key, value in (caiasoft.get("extra_fields") or {}).items():
        if not isinstance(value, str):
            problem(f"caiasoft.extra_fields.{key}", "must be a string")
    if caiasoft.get("backoff_max_seconds", 0) < caiasoft.get("backoff_initial_seconds", 0):
        problem("caiasoft.backoff_max_seconds", "must not be smaller than backoff_initial_seconds")

    encoding = values["intake"].get("text_fallback_encoding")
    if encoding:
        try:
            "".encode(encoding)
        except LookupError:
            problem("intake.text_fallback_encoding", f"unknown encoding {encoding!r}")

    _check_sources(source_values, values["paths"], problem)
    api_key, warnings = _resolve_api_key(caiasoft, environ, problem)
    ncip = _read_ncip(raw["ncip"], problem) if "ncip" in raw else None

    if problems:
        raise ConfigError(problems)
    return Config(
        file=Path(name),
        paths=Paths(**values["paths"]),
        caiasoft=CaiaSoft(**caiasoft),
        intake=Intake(**values["intake"]),
        archive=Archive(**values["archive"]),
        sources=tuple(Source(**{**s, "include": tuple(s["include"])}) for s in source_values),
        api_key=Secret(api_key),
        warnings=tuple(warnings),
        ncip=ncip,
    )


def _read_ncip(section: Any, problem) -> Ncip | None:
    if not isinstance(section, dict):
        problem("ncip", "must be a table, e.g. [ncip]")
        return None
    values = _read_table(section, SCHEMA["ncip"], "ncip", problem)
    url = values.get("url")
    if isinstance(url, str):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problem("ncip.url", f"must be an http(s) URL such as http://aleph.example.edu:5991/, got {url!r}")
    for stop, user in (values.get("stop_users") or {}).items():
        if not isinstance(user, str) or not user:
            problem(f"ncip.stop_users.{stop}", "must be a user id string")
    for key in ("from_agency", "to_agency", "user_id"):
        if values.get(key) == "":
            problem(f"ncip.{key}", "must not be empty")
    feed = None
    if values.get("feed") is not None:
        feed_values = _read_table(values["feed"], SCHEMA["ncip.feed"], "ncip.feed", problem)
        feed = Feed(**feed_values) if feed_values.get("collection") else None
    values["feed"] = feed
    for key in ("done_problems_checkin", "done_problems_checkout", "temporary_problems"):
        values[key] = tuple(values.get(key) or ())
    if any(value is None for key, value in values.items() if key != "feed"):
        return None
    return Ncip(**values)


def _read_table(section: dict[str, Any], keys: tuple[Key, ...], where: str, problem) -> dict[str, Any]:
    """Given one raw table, return its typed values with defaults; report problems by key path."""
    known = {key.name: key for key in keys}
    for name in section:
        if name not in known:
            problem(f"{where}.{name}", f"unknown key (known: {', '.join(known)})")
    result: dict[str, Any] = {}
    for key in keys:
        path = f"{where}.{key.name}"
        if key.name not in section:
            if key.default is REQUIRED:
                problem(path, "required key is missing")
            result[key.name] = None if key.default is REQUIRED else key.default
            continue
        value, message = _convert(key, section[key.name])
        if message:
            problem(path, message)
        result[key.name] = value if message is None else key.default if key.default is not REQUIRED else None
    return result


def _convert(key: Key, value: Any) -> tuple[Any, str | None]:
    """Given a raw TOML value, return (typed value, None) or (None, what is wrong)."""
    kind = key.kind
    if kind == "bool":
        return (value, None) if isinstance(value, bool) else (None, f"must be true or false, got {value!r}")
    if kind in ("int", "number"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            return None, f"must be {'a whole number' if kind == 'int' else 'a number'}, got {value!r}"
        if key.minimum is not None and value < key.minimum:
            return None, f"must be at least {key.minimum:g}, got {value!r}"
        return (float(value) if kind == "number" else value), None
    if kind == "str":
        if not isinstance(value, str):
            return None, f"must be a string, got {value!r}"
        if key.choices and value not in key.choices:
            return None, f"must be one of {', '.join(key.choices)}, got {value!r}"
        return value, None
    if kind == "path":
        if not isinstance(value, str) or not value:
            return None, f"must be a path string, got {value!r}"
        if not os.path.isabs(value):
            return None, f"must be an absolute path, got {value!r}"
        return Path(value), None
    if kind == "strings":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            return None, f"must be a non-empty list of strings, got {value!r}"
        return list(value), None
    if kind in ("table", "section"):
        if not isinstance(value, dict):
            return None, f"must be a table, got {value!r}"
        return dict(value), None
    raise AssertionError(f"unknown kind {kind}")


def _check_sources(sources: list[dict[str, Any]], paths: dict[str, Any], problem) -> None:
    names: dict[str, int] = {}
    owned = [p for p in (paths.get("state_dir"), paths.get("archive_dir"), paths.get("error_dir")) if p]
    for index, source in enumerate(sources):
        name = source.get("name")
        if isinstance(name, str):
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                problem(f"sources[{index}].name", "use letters, digits, '-', '_' or '.' only")
            elif name in names:
                problem(f"sources[{index}].name", f"{name!r} is already the name of sources[{names[name]}]")
            names.setdefault(name, index)
        folder, url = source.get("path"), source.get("url")
        where = f"sources[{index}]"
        if (folder is None) == (url is None):
            problem(f"{where}.path", "set either path (a local or mounted folder) or url (sftp://...), not both")
        if isinstance(folder, Path):
            for own in owned:
                if _overlaps(folder, own):
                    problem(f"{where}.path", f"overlaps the gateway's own folder {own}")
            for key in SFTP_ONLY:
                if source.get(key) not in (None, _DEFAULTS[key]):
                    problem(f"{where}.{key}", "only applies to SFTP sources (url = \"sftp://...\")")
        if isinstance(url, str):
            _check_sftp(source, where, problem)


SFTP_ONLY = ("known_hosts_file", "private_key_file", "private_key_passphrase_file", "private_key_passphrase_env",
             "password_file", "remote_after")
_DEFAULTS = {key.name: key.default for key in SCHEMA["sources"]}


def _check_sftp(source: dict[str, Any], where: str, problem) -> None:
    url = source["url"]
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "sftp" or not parts.hostname or not parts.username or not parts.path.startswith("/") \
            or port == -1 or parts.password or parts.query or parts.fragment:
        problem(f"{where}.url", f"must look like sftp://user@host:22/remote/folder (no password), got {url!r}")
    if source.get("known_hosts_file") is None:
        problem(f"{where}.known_hosts_file", "required for SFTP: host keys are checked, never accepted blindly")
    elif not source["known_hosts_file"].is_file():
        problem(f"{where}.known_hosts_file", f"{source['known_hosts_file']} does not exist")
    if source.get("private_key_file") is None and source.get("password_file") is None:
        problem(f"{where}.private_key_file", "SFTP needs a private_key_file (or, explicitly, a password_file)")
    for key in ("private_key_file", "private_key_passphrase_file", "password_file"):
        if source.get(key) is not None and not source[key].is_file():
            problem(f"{where}.{key}", f"{source[key]} does not exist")
    if source.get("private_key_passphrase_file") and source.get("private_key_passphrase_env"):
        problem(f"{where}.private_key_passphrase_file", "set a passphrase file or a passphrase variable, not both")
    after = source.get("remote_after")
    if isinstance(after, str) and after != "delete" and not (after.startswith("move:/") and len(after) > 6):
        problem(f"{where}.remote_after", f'must be "delete" or "move:/remote/folder", got {after!r}')


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _resolve_api_key(caiasoft: dict[str, Any], environ: dict[str, str], problem) -> tuple[str, list[str]]:
    """Return the API key from api_key_file, api_key_env or $CREDENTIALS_DIRECTORY, plus warnings."""
    key_file, key_env = caiasoft.get("api_key_file"), caiasoft.get("api_key_env")
    warnings: list[str] = []
    if key_file and key_env:
        problem("caiasoft.api_key_file", "set either api_key_file or api_key_env, not both")
        return "", warnings
    credential = Path(environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME if environ.get("CREDENTIALS_DIRECTORY") else None
    if key_env:
        value = environ.get(key_env, "").strip()
        if not value:
            problem("caiasoft.api_key_env", f"environment variable {key_env} is not set or empty")
        return value, warnings
    if key_file is None and credential is not None and credential.exists():
        key_file = credential
    if key_file is None:
        problem("caiasoft.api_key_file",
                "no API key: set api_key_file or api_key_env, or pass a systemd credential named "
                f"{CREDENTIAL_NAME}")
        return "", warnings
    try:
        info = os.stat(key_file)
        with open(key_file, encoding="utf-8") as handle:
            value = handle.read().strip()
    except FileNotFoundError:
        problem("caiasoft.api_key_file", f"{key_file} does not exist")
        return "", warnings
    except PermissionError:
        problem("caiasoft.api_key_file", f"{key_file} cannot be read by this user (permission denied)")
        return "", warnings
    except (OSError, UnicodeDecodeError) as error:
        problem("caiasoft.api_key_file", f"{key_file} cannot be read: {error.__class__.__name__}")
        return "", warnings
    if not value:
        problem("caiasoft.api_key_file", f"{key_file} is empty")
    elif any(ch.isspace() for ch in value):
        problem("caiasoft.api_key_file", f"{key_file} must hold the key alone on one line")
    if info.st_mode & stat.S_IROTH:
        warnings.append(f"API key file {key_file} is readable by every user: chmod 0600 (or 0640) it")
    elif info.st_mode & stat.S_IRGRP and key_file != credential:
        warnings.append(f"API key file {key_file} is readable by its group: make sure only the gateway's group")
    return value, warnings
