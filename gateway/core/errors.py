"""The gateway's exceptions. Each one renders its own context for an admin."""

from __future__ import annotations

from dataclasses import dataclass


class GatewayError(Exception):
    """Base class: a failure the gateway reports in words and keeps running after."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration: where (file and key) and what."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


class ConfigError(GatewayError):
    """The configuration cannot be used. Carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class ApiError(GatewayError):
    """A CaiaSoft API call (other than an upload) failed; http_status is set when CaiaSoft answered."""

    def __init__(self, reason: str, http_status: int | None = None):
        self.http_status = http_status
        super().__init__(reason)


class AlreadyRunning(GatewayError):
    """Another gateway holds the lock on this state_dir."""


class FileRefused(GatewayError):
    """The gateway refuses a file before sending it (binary, too large, bad XML...).

    at_end is True when the only fault is that the data stops inside the file's last
    record (its XML document never closes): the file may be cut short, or still be written.
    """

    def __init__(self, reason: str, at_end: bool = False):
        self.reason = reason
        self.at_end = at_end
        super().__init__(reason)


class SourceGone(GatewayError):
    """A file disappeared from its source between being seen and being claimed."""


class SourceUnavailable(OSError):
    """A source cannot be reached now (SFTP server down, login refused...); it is retried alone."""


class LedgerDamaged(GatewayError):
    """gateway.db cannot be read as a database. Not fixed by a restart: an admin moves it aside."""

    def __init__(self, path: object, detail: str):
        self.path = path
        self.detail = detail
        super().__init__(
            f"the ledger {path} is damaged ({detail}). Stop the service, move the file aside "
            f"(mv {path} {path}.damaged, and its -wal and -shm files if present), then start the service: "
            "the archive and error folders stay as they are, files left in state_dir/work/ are taken again, and "
            "so is every file in the source folders, including originals kept there after they were sent (where "
            "open writers cannot be seen, for keep_original_seconds): those are sent to CaiaSoft a second time "
            "unless you remove the ones already in the archive first"
        )


def describe(error: BaseException) -> str:
    """Render an exception for an admin: never empty (an EOFError has no text, so its type name stands in)."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename is not None else ""
        return f"{error.strerror}{where}"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# What a worker does with an exception that escaped the item boundary (see worker.Worker).
ENVIRONMENT, DAMAGED, BUG = "environment", "damaged", "bug"


def fault_kind(error: BaseException) -> str:
    """ENVIRONMENT (a folder, the disk, a locked ledger: pause and try again), DAMAGED (the ledger
    cannot be read as a database: needs an admin), or BUG (anything else: logged with its traceback)."""
    import sqlite3

    if isinstance(error, sqlite3.OperationalError):  # locked, disk full, I/O error, cannot open
        return ENVIRONMENT
    if isinstance(error, sqlite3.DatabaseError):  # malformed image, not a database
        return DAMAGED
    if isinstance(error, OSError):
        return ENVIRONMENT
    return BUG
