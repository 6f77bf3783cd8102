"""What the "Today" page shows: the `status` report (gateway.report.status.collect, the service's snapshot)
plus what it lacks there: the items CaiaSoft denied today, the refused files with their ledger ids, and the
figures of each of the last 14 days.

Every figure of a day is read from the files finished that day only, through the ledger's files_done index
(gateway/state/filequeries.py finished_figures): the page costs the same at thirty files or a million.
Nothing here writes to the ledger. Every text is printable (gateway.core.names.printable) before a template
escapes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.settings import DEFAULT_CONNECTION, Settings
from gateway.core.names import printable
from gateway.core.states import FileState
from gateway.report import status
from gateway.state.filerow import FileRow
from gateway.state.itemindex import answers_by_item, is_denied
from gateway.state.ledger import Ledger

DAYS = 14
REFUSED_SHOWN = 20
DENIED_FILES_READ = 100  # today's files with a denied item, newest first
DENIED_SHOWN = 200
PROBLEMS_NAMED = 5


@dataclass(frozen=True)
class Day:
    """One day's figures: files CaiaSoft accepted (sent) and files refused; items in the files sent, and
    items CaiaSoft denied in them."""

    date: dt.date
    sent: int
    refused: int
    items_sent: int
    items_denied: int


@dataclass(frozen=True)
class RefusedFile:
    id: int
    name: str
    reason: str
    when: str


@dataclass(frozen=True)
class DeniedItem:
    barcode: str
    reason: str
    file_id: int
    file_name: str


@dataclass(frozen=True)
class NcipView:
    """The NCIP relay as the service last said (known: False while the service is not running)."""

    known: bool
    behind: int
    dead_letters: int
    last_success: str | None
    problem: str | None
    name: str = DEFAULT_CONNECTION  # the NCIP server's ([ncip] is "default")


@dataclass(frozen=True)
class ConnectionView:
    """One CaiaSoft connection (shown only when the config has several): its files waiting, its pause."""

    name: str
    sources: str
    waiting: int
    paused: str | None  # why its uploads are paused; None also while the service is not running
    problem: str | None


@dataclass(frozen=True)
class Today:
    day: dt.date
    attention: list[str]
    sent: int
    refused: int
    waiting: int
    denied: int
    refused_files: list[RefusedFile]
    denied_items: list[DeniedItem]
    ncip: NcipView | None  # None: no [ncip] table
    days: list[Day]
    connections: list[ConnectionView] = field(default_factory=list)  # only when the config has several
    ncip_servers: list[NcipView] = field(default_factory=list)  # only when the config has several


def midnight(day: dt.date) -> float:
    """The instant the local day begins."""
    return dt.datetime.combine(day, dt.time()).timestamp()


def when(moment: float | None) -> str:
    """A time as the page shows it: local, to the minute."""
    return dt.datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M") if moment else ""


def file_name(row: FileRow) -> str:
    """The name a file has where it is now (the archive may have added a suffix), printable. A name that holds
    a '/' (no file's can; a row written by hand) is shown whole."""
    return printable(Path(row.final_path).name if row.final_path and "/" not in row.name else row.name)


def days(ledger: Ledger, now: float, count: int = DAYS) -> list[Day]:
    """The figures of the last count days, oldest first, today last."""
    today = dt.date.fromtimestamp(now)
    found = []
    for back in range(count - 1, -1, -1):
        day = today - dt.timedelta(days=back)
        figures = ledger.files.finished_figures(midnight(day), midnight(day + dt.timedelta(days=1)))
        sent, items_sent, items_denied = figures.get(FileState.ARCHIVED, (0, 0, 0))
        found.append(Day(day, sent, figures.get(FileState.REFUSED, (0, 0, 0))[0], items_sent, items_denied))
    return found


def today(ledger: Ledger, config: Settings, now: float) -> Today:
    """Everything the Today page shows."""
    report = status.collect(ledger, now, settings=config)
    report["state_dir_problem"] = status.state_dir_problem(config.paths.state_dir)
    history = days(ledger, now)
    day = history[-1]
    named = status.several(report)
    return Today(
        day=day.date,
        attention=attention(report),
        sent=day.sent,
        refused=day.refused,
        waiting=int(report["pending"]),
        denied=day.items_denied,
        refused_files=[
            RefusedFile(row.id, file_name(row), printable(row.reason or ""), when(row.finished_at))
            for row in ledger.files.recent(FileState.REFUSED, REFUSED_SHOWN)
        ],
        denied_items=denied_items(ledger, day.date),
        ncip=_ncip(report) if config.ncip is not None else None,
        days=history,
        connections=_connections(report) if named else [],
        ncip_servers=[_ncip_view(name, ncip) for name, ncip in report["ncip_servers"].items()] if named else [],
    )


def nothing_yet(config: Settings, now: float) -> Today:
    """The Today page before the gateway has ever run with this config (there is no ledger to read)."""
    today = dt.date.fromtimestamp(now)
    return Today(
        day=today,
        attention=[
            "The gateway service is not running, and has never run with this configuration: there is no "
            f"ledger at {printable(str(config.paths.database))} yet."
        ],
        sent=0,
        refused=0,
        waiting=0,
        denied=0,
        refused_files=[],
        denied_items=[],
        ncip=NcipView(False, 0, 0, None, None) if config.ncip is not None else None,
        days=[Day(today - dt.timedelta(days=back), 0, 0, 0, 0) for back in range(DAYS - 1, -1, -1)],
        connections=[ConnectionView(c.name, _sources_of(config, c.name), 0, None, None) for c in config.connections]
        if config.several
        else [],
        ncip_servers=[NcipView(False, 0, 0, None, None, server.name) for server in config.ncip_servers]
        if config.several
        else [],
    )


def _sources_of(config: Settings, connection: str) -> str:
    return ", ".join(source.name for source in config.sources if source.caiasoft == connection)


def _connections(report: dict[str, Any]) -> list[ConnectionView]:
    """Each CaiaSoft connection of the config, from the status report."""
    return [
        ConnectionView(
            name=name,
            sources=", ".join(connection["sources"]),
            waiting=int(connection["pending"]),
            paused=connection["paused"],
            problem=connection["problem"],
        )
        for name, connection in report["connections"].items()
        if connection["in_config"]
    ]


def denied_items(ledger: Ledger, day: dt.date) -> list[DeniedItem]:
    """The items CaiaSoft denied in the files it accepted that day, newest file first, with its reason."""
    found = []
    for row in ledger.files.denied_between(midnight(day), midnight(day + dt.timedelta(days=1)), DENIED_FILES_READ):
        try:
            answers = answers_by_item(row.answer_json)
        except ValueError:  # the query read it as JSON; a row changed since is skipped, not an error page
            continue
        found += [
            DeniedItem(
                printable(barcode), printable(str(item.get("istatus") or "no reason given")), row.id, file_name(row)
            )
            for barcode, item in answers.items()
            if is_denied(item)
        ]
    return found[:DENIED_SHOWN]


def attention(report: dict[str, Any]) -> list[str]:
    """What needs a person, in plain words, most pressing first (from the status report)."""
    said = _service(report)
    named = status.several(report)
    if report.get("state_dir_problem"):
        said.append(f"The state folder cannot be written: {report['state_dir_problem']}.")
    said += _stranded(report)
    said += _paused_connections(report) if named else _paused(report)
    oldest = report.get("oldest_pending")
    if oldest and oldest.get("attempts") and oldest.get("last_problem") and oldest.get("state") == FileState.QUEUED:
        said.append(
            f"Sending to CaiaSoft is failing: {oldest['last_problem']} ({report['pending']} file(s) waiting, "
            f"the oldest for {age(oldest['age_seconds'])})."
        )
    said += _source_attention(report["service"].get("sources") or {})
    said += _ncip_servers_attention(report) if named else _ncip_attention(report.get("ncip"))
    said += [f"{worker} is paused after a fault: {fault}" for worker, fault in (report.get("faults") or {}).items()]
    if report.get("retention_held"):
        said.append(f"Retention holds archive days back: {report['retention_held']}")
    problems = report.get("problems") or []
    for problem in problems[:PROBLEMS_NAMED]:
        what = "is stuck" if problem["state"] == FileState.STUCK else "waits to be placed"
        said.append(f"{problem['file']} {what}: {problem['problem']}")
    if len(problems) > PROBLEMS_NAMED:
        said.append(f"... and {len(problems) - PROBLEMS_NAMED} more file(s) waiting to be placed or stuck.")
    alerts = report.get("alerts") or {}
    if alerts.get("problem"):
        said.append(f"Alerts are not delivered: {alerts['problem']} ({alerts.get('waiting', 0)} waiting).")
    return said


def _stranded(report: dict[str, Any]) -> list[str]:
    """Files that wait for a CaiaSoft connection the configuration no longer has (as `status`)."""
    return [
        f"{connection['pending']} file(s) wait for the CaiaSoft connection {name}, which is no longer in the "
        f"configuration: they are kept, and sent once [caiasoft.{name}] is added back and the gateway reloaded."
        for name, connection in (report.get("connections") or {}).items()
        if not connection["in_config"] and connection["pending"]
    ]


def _paused(report: dict[str, Any]) -> list[str]:
    if not report.get("uploads_paused"):
        return []
    return [f"Uploads are paused: {report['uploads_paused']}. Files wait in the queue until the API key is fixed."]


def _paused_connections(report: dict[str, Any]) -> list[str]:
    """Each CaiaSoft connection whose uploads are paused, by name, with the sources whose files wait."""
    return [
        f"Uploads to the CaiaSoft connection {name} are paused: {connection['paused']}. Files of "
        f"{', '.join(connection['sources']) or 'its sources'} wait in the queue until its API key is fixed; "
        "the other connections send as usual."
        for name, connection in (report.get("connections") or {}).items()
        if connection["in_config"] and connection["paused"]
    ]


def _source_attention(sources: dict[str, Any]) -> list[str]:
    """ALEPH's folders the service cannot read now, a watcher that stopped, files it cannot take (as `status`)."""
    said = []
    for name, source in sources.items():
        if source.get("problem"):
            said.append(f"Source {name}: {source['problem']}. Its new files are not taken until it is readable again.")
        elif not source.get("healthy", True):
            said.append(f"Source {name}: its watcher has stopped; the service restarts it (its log says why).")
        not_taken = source.get("not_taken") or {}
        for file, why in list(not_taken.items())[:PROBLEMS_NAMED]:
            said.append(f"Source {name}: {file} {why}")
        if len(not_taken) > PROBLEMS_NAMED:
            said.append(f"Source {name}: ... and {len(not_taken) - PROBLEMS_NAMED} more file(s) that cannot be taken.")
    return said


def _service(report: dict[str, Any]) -> list[str]:
    service = report["service"]
    if service.get("silent_seconds") is not None:
        return [
            f"The gateway service (pid {service['pid']}) has not reported for {age(service['silent_seconds'])}: "
            "it cannot write its state into the ledger (state_dir full or read-only, or the ledger locked?). "
            "Its log says why; what follows is the ledger as last written."
        ]
    if not service["running"]:
        return [
            "The gateway service is not running: no file is taken from ALEPH or sent to CaiaSoft until it is "
            "started again (systemctl start caiasoft-gateway). What follows is the ledger as it was left."
        ]
    return []


def _ncip_servers_attention(report: dict[str, Any]) -> list[str]:
    """What needs a person at each NCIP server, each named."""
    return [line for name, ncip in (report.get("ncip_servers") or {}).items() for line in _ncip_attention(ncip, name)]


def _ncip_attention(ncip: dict[str, Any] | None, name: str | None = None) -> list[str]:
    """What needs a person at the NCIP server (name: the server's, when the config has several)."""
    if not ncip:
        return []
    server = f" {name}" if name else ""
    said = []
    if ncip.get("last_problem"):
        said.append(
            f"ALEPH's NCIP server{server}: {ncip['last_problem']} ({ncip.get('lag_entries', 0)} journal entries "
            "waiting)."
        )
    if ncip.get("journal_problem"):
        said.append(f"The NCIP journal{server and f' of server{server}'} is not read: {ncip['journal_problem']}")
    if ncip.get("feed_problem"):
        said.append(f"CaiaSoft's status feed{server and f' for NCIP server{server}'}: {ncip['feed_problem']}")
    if ncip.get("dead_letters"):
        folder = f"error_dir/ncip/{name}" if name and name != DEFAULT_CONNECTION else "error_dir/ncip"
        said.append(
            f"{ncip['dead_letters']} NCIP journal entries could not be relayed to ALEPH"
            f"{server and f' (server{server})'} (dead letters, kept in {folder}): ALEPH's loans for those items "
            "need a hand."
        )
    return said


def _ncip(report: dict[str, Any]) -> NcipView:
    return _ncip_view(DEFAULT_CONNECTION, report.get("ncip"))


def _ncip_view(name: str, ncip: dict[str, Any] | None) -> NcipView:
    """One NCIP server's relay as the service last said (None: not known, the service does not run)."""
    if not ncip:
        return NcipView(False, 0, 0, None, None, name)
    return NcipView(
        known=True,
        behind=int(ncip.get("lag_entries") or 0),
        dead_letters=int(ncip.get("dead_letters") or 0),
        last_success=when(ncip.get("last_success")) or None,
        problem=ncip.get("last_problem") or ncip.get("journal_problem") or ncip.get("feed_problem"),
        name=name,
    )


def age(seconds: float) -> str:
    """A duration in words a person reads at a glance."""
    minutes = max(int(seconds), 0) // 60
    if minutes < 1:
        return "less than a minute"
    if minutes < 120:
        return f"{minutes} minute(s)"
    hours = minutes // 60
    return f"{hours} hours" if hours < 48 else f"{hours // 24} days"
