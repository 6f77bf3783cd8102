"""What the running service publishes for `status`: one typed snapshot, kept in the ledger.

The service writes it on every housekeeping tick (service.Service._publish) and
clears it when it stops; `status` reads it (status.collect), from another process.
Both sides use these types, so a field added on one side is known to the other
(and to mypy). In the ledger it is JSON under the meta key "service".
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

if TYPE_CHECKING:
    from gateway.state.ledger import Ledger

META_KEY = "service"


class Waiting(TypedDict):
    """A settled file a source holds back, and why (readiness.ReadyCheck.waiting)."""

    file: str
    size: int
    reason: str
    unchanged_seconds: float | None
    grace_seconds: float | None


class SourceState(TypedDict):
    mode: str  # inotify, polling, sftp
    problem: str | None  # why the source cannot be read now
    healthy: bool  # its watcher is alive
    writers_unknown: str | None  # why open writers cannot be seen, if they cannot
    waiting: list[Waiting]
    not_taken: dict[str, str]  # files that cannot be taken from the source now, and why
    originals_kept: int  # files taken whose original stays in the source until it is removed


class NcipState(TypedDict):
    lag_bytes: int
    lag_entries: int
    last_success: float | None
    last_problem: str | None
    dead_letters: int
    feed_problem: str | None
    journal_problem: str | None  # why the journal is not read now (a link, a directory ... at its path)


class ConnectionState(TypedDict):
    """One CaiaSoft connection's upload gate, as its workers see it."""

    paused: str | None  # why its uploads are paused (its API key refused)
    problem: str | None  # why its calls fail, while they keep failing
    sources: list[str]  # the sources whose files go to it


class Snapshot(TypedDict):
    pid: int
    updated: float  # time.time() of this snapshot; an old one means the service is gone
    sources: dict[str, SourceState]
    paused: str | None  # why uploads are paused (API key refused)
    ncip: NcipState | None
    faults: dict[str, str]  # workers pausing after an environment fault or a bug, and why
    retention: NotRequired[str | None]  # why retention holds archive days back (the clock disagrees with the ledger)
    connections: NotRequired[dict[str, ConnectionState]]  # every CaiaSoft connection of the config, by name
    ncip_servers: NotRequired[dict[str, NcipState]]  # every NCIP server, by name (ncip is the default one's)


def publish(ledger: Ledger, snapshot: Snapshot) -> None:
    ledger.db.set_meta(META_KEY, json.dumps(snapshot))


def clear(ledger: Ledger) -> None:
    """The service stopped: there is nothing running to report."""
    ledger.db.set_meta(META_KEY, "null")


def read(ledger: Ledger) -> Snapshot | None:
    """The last snapshot published, or None if the service has not run or has stopped."""
    value: Any = json.loads(ledger.db.get_meta(META_KEY) or "null")
    return cast(Snapshot, value) if isinstance(value, dict) else None  # publish() wrote it from a Snapshot
