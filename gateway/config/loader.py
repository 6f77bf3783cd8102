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
from gateway.config.schema import SCHEMA
from gateway.config.settings import (
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
    return Config(**values.sections(), api_key=key, warnings=tuple(warnings))


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
        for table, key in (("caiasoft", "api_key_file"), ("caiasoft", "ca_file")):
            value = self.tables.get(table, {}).get(key)
            if isinstance(value, Path):
                found[f"{table}.{key}"] = value
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
            values.tables[table] = read_table(values._table(raw, table), SCHEMA[table], table, values.problem)
        for table in OPTIONAL_TABLES:
            if table in raw:
                values.optional[table] = read_table(values._table(raw, table), SCHEMA[table], table, values.problem)
        values._read_sources(raw.get("sources", []))
        if "ncip" in raw:
            values._read_ncip(raw["ncip"])
        rules.check_caiasoft(values.tables["caiasoft"], values.problem)
        rules.check_intake(values.tables["intake"], values.problem)
        rules.check_sources(values.sources, values.problem)
        journal = values.ncip.get("journal") if values.ncip is not None else None
        rules.check_folders(
            values.tables["paths"],
            values.sources,
            journal if isinstance(journal, Path) else None,
            values.problem,
            holders=values.secret_files(),
        )
        if values.ncip is not None:
            rules.check_ncip(values.ncip, values.problem)
        for table, check in OPTIONAL_RULES.items():
            if table in values.optional:
                check(values.optional[table], values.problem)
        return values

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
        self.ncip = read_table(section, SCHEMA["ncip"], "ncip", self.problem)
        if self.ncip.get("feed") is not None:
            self.feed = read_table(self.ncip["feed"], SCHEMA["ncip.feed"], "ncip.feed", self.problem)
            path = self.feed.get("retrievalinfo_path")
            if isinstance(path, str) and path and not RETRIEVALINFO_PATH.fullmatch(path):
                self.problem(
                    "ncip.feed.retrievalinfo_path",
                    f"{path!r} must be a path starting with '/', holding "
                    "no placeholder but {from}, {to} and {collection}, and no space or '?'",
                )

    def sections(self) -> dict[str, Any]:
        """The Settings fields, once there are no problems."""
        return {
            "file": self.file,
            "paths": Paths(**self.tables["paths"]),
            "caiasoft": CaiaSoft(**self.tables["caiasoft"]),
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


def ncip_settings(values: Mapping[str, Any], feed: Mapping[str, Any] | None = None) -> Ncip:
    """[ncip] settings from its typed values (and [ncip.feed]'s, if any)."""
    lists = ("done_problems_checkin", "done_problems_checkout", "temporary_problems")
    converted = {**values, **{key: tuple(values[key]) for key in lists}}
    feed_lists = ("in_statuses", "out_statuses", "no_checkout_types")
    converted["feed"] = Feed(**{**feed, **{key: tuple(feed[key]) for key in feed_lists}}) if feed is not None else None
    return Ncip(**converted)


def alerts_settings(values: Mapping[str, Any]) -> Alerts:
    """[alerts] settings from its typed values (the key "from" is the field from_)."""
    converted = {key: value for key, value in values.items() if key not in ("from", "to", "events")}
    return Alerts(**converted, from_=values["from"], to=tuple(values["to"]), events=tuple(values["events"]))


def source_settings(values: Mapping[str, Any]) -> SourceSettings:
    """A [[sources]] entry's settings: SFTP with url, local with path (keys of the other kind are dropped)."""
    kind: type[SourceSettings] = SftpSourceSettings if values.get("url") is not None else LocalSourceSettings
    chosen = {spec.name: values[spec.name] for spec in fields(kind) if spec.init}
    return kind(**{**chosen, "include": tuple(values["include"])})
