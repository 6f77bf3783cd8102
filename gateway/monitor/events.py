"""What the parts report as it happens, for alerts and metrics: one small sink they call.

The pipeline, the upload gate and the NCIP relay each hold an Events and call it at the
moment something happened (a file finished, an upload took so long, an NCIP entry ended).
The base class does nothing, so a part made without a monitor (the `send` and `retry`
commands, tests) needs no checks; gateway.monitor.monitor.Monitor is the real listener.

States that last (uploads paused, CaiaSoft or NCIP failing, a source that cannot be read,
files waiting too long) are not events: the service reads them every few seconds into a
Conditions and hands it to the monitor, which notices when they start and end.

A listener must return quickly and never raise: the callers are the pipeline's threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.settings import DEFAULT_CONNECTION
from gateway.core.states import NcipOutcome

if TYPE_CHECKING:
    from gateway.state.ledger import FileRow


class Events:
    """Does nothing; gateway.monitor.monitor.Monitor overrides each method."""

    def file_finished(self, row: FileRow, path: Path) -> None:
        """A file is in its final place: row.state is 'archiving' (accepted) or 'refusing'."""

    def upload_timed(self, seconds: float, connection: str = DEFAULT_CONNECTION) -> None:
        """One call to a CaiaSoft connection's request-file endpoint ended (any answer) after this many seconds."""

    def ncip_entry(
        self,
        outcome: NcipOutcome,
        entry: dict[str, Any] | None,
        reason: str | None = None,
        dead_letters: Path | None = None,
        connection: str = DEFAULT_CONNECTION,
    ) -> None:
        """A journal entry of that NCIP server is finished: done, already, or a dead letter (with where it was
        kept)."""

    def status_unknown(
        self, barcode: str, status: str, day: str, collection: str, connection: str = DEFAULT_CONNECTION
    ) -> None:
        """The status feed of that NCIP server met an item status it does not know: the item's retrieval and
        refile of day wait."""


NO_EVENTS = Events()


@dataclass(frozen=True)
class Conditions:
    """The lasting states the service reads each tick; the monitor notes when each began."""

    paused: str | None = None  # why uploads are paused (API key refused)
    caiasoft_problem: str | None = None  # why the last call to CaiaSoft failed, while calls keep failing
    ncip_problem: str | None = None  # the same for ALEPH's NCIP server
    ncip_behind: int = 0  # journal entries not yet relayed
    ncip_journal_problem: str | None = None  # why the NCIP journal is not read (a link, a directory ...)
    sources: dict[str, str | None] = field(default_factory=dict)  # source -> why it cannot be read, or None
    locations: dict[str, str] = field(default_factory=dict)  # source -> its folder or URL
    # every CaiaSoft connection by name: (why its uploads are paused, why its calls fail); paused and
    # caiasoft_problem above are the default connection's
    connections: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    # every NCIP server by name: (why it fails, entries behind, why its journal is not read); the ncip_ fields
    # above are the default server's
    ncip_servers: dict[str, tuple[str | None, int, str | None]] = field(default_factory=dict)

    def connection_state(self, name: str) -> tuple[str | None, str | None]:
        """(why uploads are paused, why calls fail) of a CaiaSoft connection; a reading without the per-connection
        states (a test's, the metrics' before the first tick) has the default's in paused and caiasoft_problem."""
        if name in self.connections:
            return self.connections[name]
        return (self.paused, self.caiasoft_problem) if name == DEFAULT_CONNECTION else (None, None)

    def ncip_state(self, name: str) -> tuple[str | None, int, str | None]:
        """(why calls fail, entries behind, why the journal is not read) of an NCIP server, read as
        connection_state is."""
        if name in self.ncip_servers:
            return self.ncip_servers[name]
        if name == DEFAULT_CONNECTION:
            return (self.ncip_problem, self.ncip_behind, self.ncip_journal_problem)
        return (None, 0, None)
