"""Read gateway.toml once, validate all of it, and return frozen settings.

The work is split by role:
  gateway.config.schema       every key: its table, TOML type, default and meaning
  gateway.config.tables  reads one raw table against its keys (types, defaults, bounds)
  gateway.config.rules what values must be beyond their type (URLs, names, folders)
  gateway.config.credentials  the API key and SFTP secret files, for commands that use them
  gateway.config.settings     the frozen dataclasses parts receive
This module puts them together. All problems are collected and reported together, each
with its key path and the file name, so an admin fixes them in one go.

load() is for commands that talk to CaiaSoft (run, daemon, check, send, demo): it also
reads the API key. load_settings() is for those that do not (journal, status, retry).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gateway.config import credentials, rules
from gateway.config.credentials import CREDENTIAL_NAME
from gateway.config.schema import SCHEMA, Key
from gateway.config.settings import (
    DEFAULT_CONNECTION,
    Alerts,
    Archive,
    CaiaSoft,
    Config,
    Feed,
    Intake,
    LocalSourceSettings,
    Metrics,
    Ncip,
    Paths,
    Secret,
    Settings,
    SftpSourceSettings,
    SourceSettings,
    Web,
)
from gateway.config.tables import read_table
from gateway.core.errors import ConfigError, ConfigProblem

__all__ = [
    "CONFIG_ENV",
    "CREDENTIAL_NAME",
    "DEFAULT_CONFIG",
    "SCHEMA",
    "Alerts",
    "Archive",
    "CaiaSoft",
    "Config",
    "Feed",
    "Intake",
    "LocalSourceSettings",
    "Metrics",
    "Ncip",
    "Paths",
    "Secret",
    "Settings",
    "SftpSourceSettings",
    "SourceSettings",
    "alerts_settings",
    "config_path",
    "load",
    "load_settings",
    "ncip_settings",
    "source_settings",
]

DEFAULT_CONFIG = Path("/etc/caiasoft-gateway/gateway.toml")
CONFIG_ENV = "CAIASOFT_GATEWAY_CONFIG"
TABLES = ("paths", "caiasoft", "intake", "archive")  # plain tables; [[sources]] and [ncip] are read apart
OPTIONAL_TABLES = ("alerts", "metrics", "web")  # absent = that feature is off
OPTIONAL_RULES = {"alerts": rules.check_alerts, "metrics": rules.check_metrics, "web": rules.check_web}


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """Given -c FILE (or None), return the file to read: -c, then $CAIASOFT_GATEWAY_CONFIG, then /etc."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return DEFAULT_CONFIG


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Given a TOML file, return validated settings and the API key. Raise ConfigError listing every problem."""
    environ = dict(os.environ if environ is None else environ)
    values = _Values.read(Path(path))
    key, warnings = credentials.api_key(
        values.tables["caiasoft"].get("api_key_file"),
        values.tables["caiasoft"].get("api_key_env"),
        environ,
        values.problem,
    )
    named_keys = {}
    for name, table in values.caiasoft_named.items():
        named_keys[name], more = credentials.api_key(
            table.get("api_key_file"),
            table.get("api_key_env"),
            environ,
            values.problem,
            f"caiasoft.{name}",
            f"{CREDENTIAL_NAME}-{name}",
        )
        warnings += more
    for index, source in enumerate(values.sources):
        if source.get("url") is not None:
            credentials.check_sftp_files(source, f"sources[{index}]", values.problem)
            for name in ("private_key_file", "private_key_passphrase_file", "password_file"):
                secret = source.get(name)
                if isinstance(secret, Path):  # the SFTP login: as private as the API key
                    warnings += credentials.secret_file_warnings(f"sources[{index}].{name}", secret)
    alerts_password = values.optional.get("alerts", {}).get("password_file")
    if isinstance(alerts_password, Path) and not alerts_password.is_file():
        values.problem("alerts.password_file", f"{alerts_password} does not exist")
    elif isinstance(alerts_password, Path):  # the SMTP relay's password: as private as the API key
        warnings += credentials.secret_file_warnings("alerts.password_file", alerts_password)
    values.raise_problems()
    return Config(**values.sections(), api_key=key, warnings=tuple(warnings), named_keys=named_keys)


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Given a TOML file, return validated settings without reading any secret. Raise ConfigError."""
    values = _Values.read(Path(path))
    values.raise_problems()
    return Settings(**values.sections())


@dataclass
class _Values:
    """The typed values of one file, table by table, and the problems found so far."""

    file: Path
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    ncip: dict[str, Any] | None = None
    feed: dict[str, Any] | None = None
    caiasoft_named: dict[str, dict[str, Any]] = field(default_factory=dict)  # [caiasoft.NAME] tables
    ncip_named: dict[str, dict[str, Any]] = field(default_factory=dict)  # [ncip.NAME] tables
    feeds_named: dict[str, dict[str, Any]] = field(default_factory=dict)  # [ncip.NAME.feed] tables
    optional: dict[str, dict[str, Any]] = field(default_factory=dict)  # [alerts], [metrics] if present
    problems: list[ConfigProblem] = field(default_factory=list)

    def problem(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(str(self.file), key, message))

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)

    def secret_files(self) -> dict[str, Path]:
        """The config file and every key or password file it names, by key path: no source may be their folder."""
        found = {"the config file": self.file}
        connections = {"caiasoft": self.tables.get("caiasoft", {})}
        connections |= {f"caiasoft.{name}": table for name, table in self.caiasoft_named.items()}
        for table, values in connections.items():
            for key in ("api_key_file", "ca_file"):
                if isinstance(values.get(key), Path):
                    found[f"{table}.{key}"] = values[key]
        password = self.optional.get("alerts", {}).get("password_file")
        if isinstance(password, Path):
            found["alerts.password_file"] = password
        for index, source in enumerate(self.sources):
            for key in ("known_hosts_file", "private_key_file", "private_key_passphrase_file", "password_file"):
                if isinstance(source.get(key), Path):
                    found[f"sources[{index}].{key}"] = source[key]
        return found

    @classmethod
    def read(cls, path: Path) -> _Values:
        """Read and check everything but secrets; problems are collected, not raised."""
        values = cls(path)
        raw = values._parse()
        for table in raw:
            if table not in SCHEMA or "." in table:
                values.problem(table, f"unknown section (known: {', '.join(t for t in SCHEMA if '.' not in t)})")
        for table in TABLES:
            section = values._table(raw, table)
            if table == "caiasoft":
                section = values._read_named_connections(section)
            values.tables[table] = read_table(section, SCHEMA[table], table, values.problem)
        for table in OPTIONAL_TABLES:
            if table in raw:
                values.optional[table] = read_table(values._table(raw, table), SCHEMA[table], table, values.problem)
        values._read_sources(raw.get("sources", []))
        if "ncip" in raw:
            values._read_ncip(raw["ncip"])
        values._check_connections()
        rules.check_intake(values.tables["intake"], values.problem)
        rules.check_sources(values.sources, values.problem)
        rules.check_source_connections(values.sources, values.connection_names(), values.problem)
        rules.check_folders(
            values.tables["paths"], values.sources, values.journals(), values.problem, holders=values.secret_files()
        )
        for table, check in OPTIONAL_RULES.items():
            if table in values.optional:
                check(values.optional[table], values.problem)
        return values

    def _read_named_connections(self, section: dict[str, Any]) -> dict[str, Any]:
        """Read each [caiasoft.NAME] of [caiasoft]; return [caiasoft]'s own keys."""
        section, named = _named_tables(section, SCHEMA["caiasoft"])
        for name, sub in named.items():
            self.caiasoft_named[name] = read_table(sub, SCHEMA["caiasoft"], f"caiasoft.{name}", self.problem)
        return section

    def connection_names(self) -> list[str]:
        """The names of the CaiaSoft connections: default, then each [caiasoft.NAME]."""
        return list(dict.fromkeys([DEFAULT_CONNECTION, *self.caiasoft_named]))

    def _check_connections(self) -> None:
        """Every CaiaSoft connection and NCIP server, their names, journals and feeds."""
        rules.check_caiasoft(self.tables["caiasoft"], self.problem)
        for name, table in self.caiasoft_named.items():
            rules.check_caiasoft(table, self.problem, f"caiasoft.{name}")
        rules.check_connection_names("caiasoft", self.caiasoft_named, self.problem)
        if self.ncip is None:
            return
        rules.check_ncip(self.ncip, self.problem)
        for name, table in self.ncip_named.items():
            rules.check_ncip(table, self.problem, f"ncip.{name}")
        rules.check_connection_names("ncip", self.ncip_named, self.problem)
        rules.check_journals(self.journals(), self.problem)
        self._check_feed_connections()

    def _parse(self) -> dict[str, Any]:
        name = str(self.file)
        try:
            with open(self.file, "rb") as handle:
                return tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError([ConfigProblem(name, "", "file not found")]) from None
        except PermissionError:
            raise ConfigError([ConfigProblem(name, "", "cannot be read (permission denied)")]) from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError([ConfigProblem(name, "", f"not valid TOML: {error}")]) from None

    def _table(self, raw: dict[str, Any], table: str) -> dict[str, Any]:
        section = raw.get(table, {})
        if isinstance(section, dict):
            return section
        self.problem(table, "must be a table, e.g. [" + table + "]")
        return {}

    def _read_sources(self, raw_sources: Any) -> None:
        if not isinstance(raw_sources, list) or not all(isinstance(s, dict) for s in raw_sources):
            self.problem("sources", "must be written as [[sources]] tables")
            return
        if not raw_sources:
            self.problem("sources", "no [[sources]] configured: the gateway would watch nothing")
        for index, section in enumerate(raw_sources):
            self.sources.append(read_table(section, SCHEMA["sources"], f"sources[{index}]", self.problem))

    def _read_ncip(self, section: Any) -> None:
        if not isinstance(section, dict):
            self.problem("ncip", "must be a table, e.g. [ncip]")
            return
        section, named = _named_tables(section, SCHEMA["ncip"])
        if named and not section:
            first = next(iter(named))
            self.problem(
                "ncip",
                f"[ncip.{first}] adds an NCIP server beside [ncip], the default one, which must be there too "
                "(its url, from_agency, to_agency, user_id)",
            )
            return
        self.ncip = read_table(section, SCHEMA["ncip"], "ncip", self.problem)
        self.feed = self._read_feed(self.ncip, "ncip")
        default_journal = self.ncip.get("journal")
        for name, sub in named.items():
            table = read_table(sub, SCHEMA["ncip"], f"ncip.{name}", self.problem)
            if "journal" not in sub and isinstance(default_journal, Path):  # beside [ncip]'s, named after it
                table["journal"] = default_journal.with_name(f"ncip-{name}.jsonl")
            self.ncip_named[name] = table
            feed = self._read_feed(table, f"ncip.{name}")
            if feed is not None:
                self.feeds_named[name] = feed

    def _read_feed(self, ncip: dict[str, Any], where: str) -> dict[str, Any] | None:
        if ncip.get("feed") is None:
            return None
        feed = read_table(ncip["feed"], SCHEMA["ncip.feed"], f"{where}.feed", self.problem)
        path = feed.get("retrievalinfo_path")
        if isinstance(path, str) and path and not RETRIEVALINFO_PATH.fullmatch(path):
            self.problem(
                f"{where}.feed.retrievalinfo_path",
                f"{path!r} must be a path starting with '/', holding "
                "no placeholder but {from}, {to} and {collection}, and no space or '?'",
            )
        return feed

    def journals(self) -> dict[str, Path]:
        """Each NCIP server's journal, by its key path."""
        tables = {"ncip": self.ncip} if self.ncip is not None else {}
        tables |= {f"ncip.{name}": table for name, table in self.ncip_named.items()}
        return {f"{where}.journal": t["journal"] for where, t in tables.items() if isinstance(t.get("journal"), Path)}

    def _check_feed_connections(self) -> None:
        """Each feed reads a CaiaSoft connection there is: its own caiasoft, else the one of its server's name."""
        known = self.connection_names()
        feeds = {DEFAULT_CONNECTION: self.feed} if self.feed is not None else {}
        for server, feed in {**feeds, **self.feeds_named}.items():
            chosen = feed.get("caiasoft") or (server if server in self.caiasoft_named else DEFAULT_CONNECTION)
            if chosen not in known:
                self.problem(
                    f"{'ncip' if feed is self.feed else f'ncip.{server}'}.feed.caiasoft",
                    f"no CaiaSoft connection {chosen!r} (there are: {', '.join(known)})",
                )
            feed["caiasoft"] = chosen

    def sections(self) -> dict[str, Any]:
        """The Settings fields, once there are no problems."""
        return {
            "file": self.file,
            "paths": Paths(**self.tables["paths"]),
            "caiasoft": CaiaSoft(**self.tables["caiasoft"]),
            "caiasoft_named": tuple(CaiaSoft(**table, named=name) for name, table in self.caiasoft_named.items()),
            "ncip_named": tuple(
                ncip_settings(table, self.feeds_named.get(name), name) for name, table in self.ncip_named.items()
            ),
            "intake": Intake(**self.tables["intake"]),
            "archive": Archive(**self.tables["archive"]),
            "sources": tuple(source_settings(values) for values in self.sources),
            "ncip": self._ncip(),
            "alerts": alerts_settings(self.optional["alerts"]) if "alerts" in self.optional else None,
            "metrics": Metrics(**self.optional["metrics"]) if "metrics" in self.optional else None,
            "web": Web(**self.optional["web"]) if "web" in self.optional else None,
        }

    def _ncip(self) -> Ncip | None:
        return ncip_settings(self.ncip, self.feed) if self.ncip is not None else None


RETRIEVALINFO_PATH = re.compile(r"/(?:[A-Za-z0-9._~/-]|\{(?:from|to|collection)\})*")


def _named_tables(section: dict[str, Any], keys: tuple[Key, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a table into its own keys and its named sub-tables ([caiasoft.NAME], [ncip.NAME]): a table-valued
    entry that is not one of its keys (extra_fields, stop_users, feed are)."""
    known = {key.name for key in keys}
    named = {name: value for name, value in section.items() if isinstance(value, dict) and name not in known}
    return {name: value for name, value in section.items() if name not in named}, named


def ncip_settings(
    values: Mapping[str, Any], feed: Mapping[str, Any] | None = None, name: str = DEFAULT_CONNECTION
) -> Ncip:
    """[ncip] (or [ncip.NAME]) settings from its typed values (and its feed's, if any)."""
    lists = ("done_problems_checkin", "done_problems_checkout", "temporary_problems")
    converted = {**values, **{key: tuple(values[key]) for key in lists}}
    feed_lists = ("in_statuses", "out_statuses", "no_checkout_types")
    converted["feed"] = None
    if feed is not None:
        chosen = feed.get("caiasoft") or DEFAULT_CONNECTION  # the loader has chosen it already
        converted["feed"] = Feed(**{**feed, **{key: tuple(feed[key]) for key in feed_lists}, "caiasoft": chosen})
    return Ncip(**converted, named=name)


def alerts_settings(values: Mapping[str, Any]) -> Alerts:
    """[alerts] settings from its typed values (the key "from" is the field from_)."""
    converted = {key: value for key, value in values.items() if key not in ("from", "to", "events")}
    return Alerts(**converted, from_=values["from"], to=tuple(values["to"]), events=tuple(values["events"]))


def source_settings(values: Mapping[str, Any]) -> SourceSettings:
    """A [[sources]] entry's settings: SFTP with url, local with path (keys of the other kind are dropped)."""
    kind: type[SourceSettings] = SftpSourceSettings if values.get("url") is not None else LocalSourceSettings
    chosen = {spec.name: values[spec.name] for spec in fields(kind) if spec.init}
    return kind(**{**chosen, "include": tuple(values["include"])})
