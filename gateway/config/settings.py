"""The gateway's settings: frozen dataclasses, one per config table, built by gateway.config.loader.

Each field has the name of its key in gateway.config.schema (where its type, default and meaning
are declared). Parts receive these objects and never see raw TOML. Secrets are not here:
a settings object names where a secret is (a file, a variable); gateway.config.credentials reads
it where it is used.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Literal


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


DEFAULT_CONNECTION = "default"  # the name of the connection (and NCIP server) of the bare [caiasoft] ([ncip]) table
CREDENTIAL_NAME = "caiasoft-api-key"  # systemd LoadCredential= name of the default connection's key


def table_of(table: str, name: str) -> str:
    """The config table a connection or NCIP server is written in: table, or table.NAME."""
    return table if name == DEFAULT_CONNECTION else f"{table}.{name}"


@dataclass(frozen=True)
class CaiaSoft:
    base_url: str
    requestfile_path: str
    upload_field: str
    extra_fields: dict[str, str]
    timeout_seconds: float
    deadline_seconds: float
    max_answer_bytes: int
    unreadable_answer_retries: int
    verify_tls: bool
    ca_file: Path | None
    backoff_initial_seconds: float
    backoff_max_seconds: float
    auth_pause_seconds: float
    upload_workers: int
    api_key_file: Path | None
    api_key_env: str | None
    named: InitVar[str] = DEFAULT_CONNECTION
    name: str = field(init=False)  # [caiasoft] is "default"; [caiasoft.NAME] is NAME (not a key: the table's name)

    def __post_init__(self, named: str) -> None:
        object.__setattr__(self, "name", named)

    @property
    def requestfile_url(self) -> str:
        return self.base_url.rstrip("/") + self.requestfile_path

    @property
    def table(self) -> str:
        """Its table in the config file, for messages: caiasoft or caiasoft.NAME."""
        return table_of("caiasoft", self.name)

    @property
    def credential(self) -> str:
        """The systemd credential its key may come from: caiasoft-api-key, or caiasoft-api-key-NAME."""
        return CREDENTIAL_NAME if self.name == DEFAULT_CONNECTION else f"{CREDENTIAL_NAME}-{self.name}"


@dataclass(frozen=True)
class Intake:
    max_file_bytes: int
    text_fallback_encoding: str


@dataclass(frozen=True)
class Archive:
    retention_days: int
    error_retention_days: int


@dataclass(frozen=True)
class LocalSourceSettings:
    """A [[sources]] entry with path =: a folder on this host (local disk or a mount)."""

    name: str
    path: Path
    include: tuple[str, ...]
    settle_seconds: float
    incomplete_grace_seconds: float
    ready_marker: str
    keep_original_seconds: float
    watch: str
    rescan_seconds: float
    poll_seconds: float
    caiasoft: str = DEFAULT_CONNECTION  # the CaiaSoft connection its files go to

    @property
    def is_sftp(self) -> Literal[False]:
        return False

    @property
    def location(self) -> str:
        """Where the files are, for messages."""
        return str(self.path)


@dataclass(frozen=True)
class SftpSourceSettings:
    """A [[sources]] entry with url = "sftp://...": a folder on an SFTP server."""

    name: str
    url: str
    include: tuple[str, ...]
    settle_seconds: float
    incomplete_grace_seconds: float
    ready_marker: str
    keep_original_seconds: float
    poll_seconds: float
    known_hosts_file: Path
    private_key_file: Path | None
    private_key_passphrase_file: Path | None
    private_key_passphrase_env: str | None
    password_file: Path | None
    remote_after: str
    timeout_seconds: float
    caiasoft: str = DEFAULT_CONNECTION  # the CaiaSoft connection its files go to

    @property
    def is_sftp(self) -> Literal[True]:
        return True

    @property
    def location(self) -> str:
        """Where the files are, for messages."""
        return self.url


SourceSettings = LocalSourceSettings | SftpSourceSettings


@dataclass(frozen=True)
class Feed:
    collection: str
    interval_seconds: float
    lookback_days: int
    retrievalinfo_path: str
    in_statuses: tuple[str, ...]
    out_statuses: tuple[str, ...]
    no_checkout_types: tuple[str, ...]
    caiasoft: str = DEFAULT_CONNECTION  # the CaiaSoft connection whose lists are read


@dataclass(frozen=True)
class Ncip:
    url: str
    framing: str
    version: str
    send_as: str
    content_type: str
    form_content_type: str
    max_answer_bytes: int
    unreadable_attempts: int
    client_error_tries: int
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
    request_agency: str
    agency_scheme: str
    max_line_bytes: int
    feed: Feed | None
    named: InitVar[str] = DEFAULT_CONNECTION
    name: str = field(init=False)  # [ncip] is "default"; [ncip.NAME] is NAME (not a key: the table's name)

    def __post_init__(self, named: str) -> None:
        object.__setattr__(self, "name", named)

    @property
    def table(self) -> str:
        """Its table in the config file, for messages: ncip or ncip.NAME."""
        return table_of("ncip", self.name)

    def user_for(self, stop: str | None) -> str:
        """The CaiaSoft user id to check an item out to: the stop's own, else user_id."""
        return self.stop_users.get(stop or "", self.user_id)


# CaiaSoft's item statuses, as its API guide lists them (an answer may add " on MM-DD-YYYY")
IN_STATUSES = (
    "Item In at Rest",
    "In Queue for Refile",
    "In Queue for Physical Retrieval",
    "In Queue for E-Retrieval",
    "In Queue for SH-I-P Service",
    "In Queue for De-accession",
    "Pulled for E-Retrieval",
)
OUT_STATUSES = ("Out on Physical Retrieval", "Out on SH-I-P Service")

ALERT_EVENTS = (
    "refused",
    "denied",
    "paused",
    "unreachable",
    "dead_letter",
    "source_problem",
    "stuck",
    "unknown_status",
)


@dataclass(frozen=True)
class Alerts:
    """[alerts]: mail (and a webhook) when something needs a person. A key that is a Python word ends in _."""

    smtp_host: str
    smtp_port: int
    starttls: bool
    username: str
    password_file: Path | None
    from_: str
    to: tuple[str, ...]
    webhook_url: str
    events: tuple[str, ...]
    unreachable_after_seconds: float
    min_interval_seconds: float


@dataclass(frozen=True)
class Metrics:
    """[metrics]: Prometheus figures on HTTP (listen) and/or in a textfile."""

    listen: str
    textfile: Path | None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None if listen is empty."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class Web:
    """[web]: the read-only staff page (its own command and unit, `caiasoft-gateway web`)."""

    listen: str
    users_file: Path | None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to listen on."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The whole config file, validated, without secrets."""

    file: Path
    paths: Paths
    caiasoft: CaiaSoft
    intake: Intake
    archive: Archive
    sources: tuple[SourceSettings, ...]
    ncip: Ncip | None = None
    caiasoft_named: tuple[CaiaSoft, ...] = ()  # [caiasoft.NAME] tables, in the file's order
    ncip_named: tuple[Ncip, ...] = ()  # [ncip.NAME] tables, in the file's order
    alerts: Alerts | None = None  # [alerts] absent = no alerts
    metrics: Metrics | None = None  # [metrics] absent = no metrics
    web: Web | None = None  # [web] absent = no staff page

    @property
    def connections(self) -> tuple[CaiaSoft, ...]:
        """Every CaiaSoft connection: [caiasoft] ("default") first, then each [caiasoft.NAME]."""
        return (self.caiasoft, *self.caiasoft_named)

    def connection(self, name: str) -> CaiaSoft | None:
        """The CaiaSoft connection of that name, None if the config has none."""
        return next((connection for connection in self.connections if connection.name == name), None)

    @property
    def ncip_servers(self) -> tuple[Ncip, ...]:
        """Every NCIP server: [ncip] ("default") first, then each [ncip.NAME]; none without [ncip]."""
        return (self.ncip, *self.ncip_named) if self.ncip is not None else ()

    @property
    def several(self) -> bool:
        """Whether the config names more than one CaiaSoft connection or NCIP server (what admins read
        then names the connection of each line)."""
        return bool(self.caiasoft_named or self.ncip_named)


@dataclass(frozen=True, kw_only=True)
class Config(Settings):
    """Settings plus the CaiaSoft API key, for the commands that talk to CaiaSoft."""

    api_key: Secret = field(repr=False)  # the default connection's
    warnings: tuple[str, ...] = ()
    named_keys: dict[str, Secret] = field(default_factory=dict, repr=False)  # [caiasoft.NAME] -> its key

    @property
    def keys(self) -> tuple[Secret, ...]:
        """Every connection's API key (each is registered for redaction before anything is logged)."""
        return (self.api_key, *self.named_keys.values())

    def key_of(self, connection: str) -> Secret:
        """The API key of the named CaiaSoft connection."""
        return self.api_key if connection == DEFAULT_CONNECTION else self.named_keys[connection]
