"""What alerts and metrics keep in the ledger: alerts waiting to go out, and counts that outlive a restart.

Two tables (added by ledger schema version 3):

    alerts    one row per alert: its kind, whether it announces a recovery, the message
              (JSON), when it was mailed and when it was posted to the webhook (NULL = not yet)
    counters  kept only for older ledgers: the NCIP entries by outcome, counted here before, are
              moved to the relay's checkpoint file at the first start (gateway/state/checkpoints.py)

An alert is written here before anything tries to send it, and marked sent right after the
mail server (or webhook) took it, so after a crash only the one in flight can go twice.

Ledger inherits MonitorStore, so these are ledger methods and the ledger stays the one owner
of state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.core.states import FileState

if TYPE_CHECKING:  # the database imports the tables' schemas
    from gateway.state.db import LedgerDb

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    recovery    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    message     TEXT NOT NULL,
    mailed_at   REAL,
    posted_at   REAL
);
CREATE INDEX IF NOT EXISTS alerts_unmailed ON alerts (kind, id) WHERE mailed_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_unposted ON alerts (kind, id) WHERE posted_at IS NULL;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

CHANNELS = {"mail": "mailed_at", "webhook": "posted_at"}  # channel -> the column saying it went out
KEEP_SENT_ALERTS = 1000  # alerts sent on every channel beyond this many (newest kept) are deleted


@dataclass(frozen=True)
class StoredAlert:
    id: int
    kind: str
    recovery: bool
    created_at: float
    message: dict[str, Any]


class MonitorStore:
    """The ledger's alerts queue and counters (ledger.alerts)."""

    def __init__(self, db: LedgerDb):
        self.db = db

    def _transaction(self, wait: bool = True) -> Any:
        raise NotImplementedError  # Ledger's

    # -- alerts ------------------------------------------------------------------

    def add_alerts(
        self, alerts: list[tuple[str, dict[str, Any], bool]], at: float, channels: tuple[str, ...] = tuple(CHANNELS)
    ) -> None:
        """Queue (kind, message, recovery) alerts in one commit, so the sender sees them together."""
        done = {column: (None if channel in channels else 0.0) for channel, column in CHANNELS.items()}
        with self.db.transaction() as db:
            db.executemany(
                "INSERT INTO alerts (kind, recovery, created_at, message, mailed_at, posted_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        kind,
                        int(recovery),
                        at,
                        json.dumps(message, ensure_ascii=False),
                        done["mailed_at"],
                        done["posted_at"],
                    )
                    for kind, message, recovery in alerts
                ],
            )

    def pending_alerts(self, channel: str) -> list[StoredAlert]:
        """Alerts not yet sent on this channel, oldest first."""
        column = CHANNELS[channel]
        with self.db.lock:
            rows = self.db.connection.execute(
                f"SELECT id, kind, recovery, created_at, message FROM alerts WHERE {column} IS NULL ORDER BY id"
            ).fetchall()
        return [StoredAlert(row[0], row[1], bool(row[2]), row[3], json.loads(row[4])) for row in rows]

    def alerts_sent(self, channel: str, ids: list[int], at: float) -> None:
        column = CHANNELS[channel]
        with self.db.transaction() as db:
            db.executemany(
                f"UPDATE alerts SET {column} = ? WHERE id = ? AND {column} IS NULL",
                [(at, alert_id) for alert_id in ids],
            )
            db.execute(
                "DELETE FROM alerts WHERE mailed_at IS NOT NULL AND posted_at IS NOT NULL AND id <= "
                "(SELECT MAX(id) FROM alerts) - ?",
                (KEEP_SENT_ALERTS,),
            )

    def last_alert_sent(self, channel: str, kind: str | None = None) -> float | None:
        """When the last alert (of this kind, if given) went out on this channel."""
        column = CHANNELS[channel]  # one of two fixed column names; kind is a bound parameter, if given
        with self.db.lock:
            row = self.db.connection.execute(
                f"SELECT MAX({column}) FROM alerts WHERE {column} > 0 AND (? IS NULL OR kind = ?)", (kind, kind)
            ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def alerts_waiting(self) -> int:
        """Alerts not yet sent on every channel they are meant for."""
        with self.db.lock:
            return int(
                self.db.connection.execute(
                    "SELECT COUNT(*) FROM alerts WHERE mailed_at IS NULL OR posted_at IS NULL"
                ).fetchone()[0]
            )

    # -- figures the files table answers ----------------------------------------

    def finished_by_source(self) -> dict[tuple[str, FileState], int]:
        """(source, archived or refused) -> files."""
        with self.db.lock:
            rows = self.db.connection.execute(
                "SELECT source, state, files FROM file_totals WHERE state IN ('archived', 'refused') AND files > 0"
            ).fetchall()
        return {(source, FileState(state)): count for source, state, count in rows}

    def denied_items_by_source(self) -> dict[str, int]:
        """source -> items CaiaSoft denied in files it accepted."""
        with self.db.lock:
            return {
                source: count
                for source, count in self.db.connection.execute(
                    "SELECT source, denied_items FROM file_totals WHERE state = 'archived' AND denied_items > 0"
                )
            }
