"""`status`: what the gateway holds, read from the ledger (works while the service runs)."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from gateway.config.settings import DEFAULT_CONNECTION, Settings, table_of
from gateway.core import files
from gateway.core.errors import describe
from gateway.core.names import printable
from gateway.core.states import OPEN_STATES, FileState
from gateway.monitor import alerts
from gateway.state import snapshot
from gateway.state.filerow import iso
from gateway.state.ledger import Ledger

RECENT_ERRORS = 5
SERVICE_STALE_SECONDS = 30.0
LOW_SPACE_BYTES = 1024 * 1024  # less free space in state_dir than this: the ledger and work/ may not grow


def collect(ledger: Ledger, now: float | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Return the status as a plain dict (what `status --json` prints).

    settings (the config file's) name the CaiaSoft connections, their sources and the NCIP
    servers; without them those are what the running service last said (the default alone
    when it does not run). Each connection's last upload is one index entry (files_connection_archived).
    Every text in it is printable (names.printable): a file name or a reason that holds an
    escape sequence, a newline or bytes that are not UTF-8 is escaped.
    """
    report: dict[str, Any] = _printable(_collect(ledger, now, settings))
    return report


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(key)): _printable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_printable(item) for item in value]
    return value


def _collect(ledger: Ledger, now: float | None, settings: Settings | None) -> dict[str, Any]:
    now = time.time() if now is None else now
    counts = ledger.files.counts()
    oldest = ledger.files.oldest_open()
    last = ledger.files.recent(FileState.ARCHIVED, 1)
    midnight = dt.datetime.combine(dt.date.today(), dt.time()).timestamp()
    service = snapshot.read(ledger)
    running = service is not None and now - service["updated"] < SERVICE_STALE_SECONDS
    silent = service is not None and not running and files.running(service["pid"])  # cannot write its ledger?
    return {
        "service": {
            "running": running or silent,
            **({"pid": service["pid"], "sources": service["sources"]} if service is not None and running else {}),
            **(
                {"pid": service["pid"], "silent_seconds": round(now - service["updated"])}
                if service is not None and silent
                else {}
            ),
        },
        "ncip": service["ncip"] if service is not None and running else None,
        "counts": {
            state.value: counts.get(state, 0)
            for state in (*OPEN_STATES, FileState.STUCK, FileState.ARCHIVED, FileState.REFUSED)
        },
        "pending": sum(counts.get(state, 0) for state in OPEN_STATES),
        "oldest_pending": None
        if oldest is None
        else {
            "file": oldest.name,
            "source": oldest.source,
            "state": oldest.state,
            "age_seconds": round(max(now - oldest.seen_at, 0.0), 1),
            "attempts": oldest.attempts,
            "last_problem": oldest.problem or (oldest.reason if not oldest.verdict else None),
        },
        "uploads_paused": service["paused"] if service is not None and running else None,
        "faults": (service.get("faults") or {}) if service is not None and running else {},
        "retention_held": service.get("retention") if service is not None and running else None,
        "problems": [
            {
                "file": row.name,
                "state": row.state,
                "problem": row.problem,
                "work_file": row.work_name,
                "source": row.source,
            }
            for row in ledger.files.problems()
        ],
        "archived_today": ledger.files.count_finished_since(FileState.ARCHIVED, midnight),
        "refused_today": ledger.files.count_finished_since(FileState.REFUSED, midnight),
        "last_upload": None
        if not last
        else {"file": last[0].name, "at": iso(last[0].uploaded_at), "path": last[0].final_path},
        "alerts": alerts.delivery_state(ledger),
        "recent_errors": [
            {"file": row.name, "at": iso(row.finished_at), "reason": row.reason, "path": row.final_path}
            for row in ledger.files.recent(FileState.REFUSED, RECENT_ERRORS)
        ],
        "connections": _connections(ledger, service if running else None, settings, now),
        "ncip_servers": _ncip_servers(service if running else None, settings),
    }


def _connections(
    ledger: Ledger, service: snapshot.Snapshot | None, settings: Settings | None, now: float
) -> dict[str, Any]:
    """Each CaiaSoft connection: its files waiting to be sent, its pause and problem (while the service runs),
    its last upload and its sources; then each connection the config no longer has that still has files
    queued (in_config false: they wait for it, never dropped)."""
    states = (service.get("connections") if service is not None else None) or {}
    if settings is not None:
        configured = {c.name: [s.name for s in settings.sources if s.caiasoft == c.name] for c in settings.connections}
    else:
        configured = {name: list(state["sources"]) for name, state in states.items()} or {DEFAULT_CONNECTION: []}
    queued = ledger.files.by_connection(FileState.QUEUED, FileState.UPLOADING)
    found: dict[str, Any] = {}
    for name in [*configured, *sorted(set(queued) - set(configured))]:
        count, oldest = queued.get(name, (0, None))
        state = states.get(name)
        last = ledger.files.last_archived(name)
        found[name] = {
            "in_config": name in configured,
            "sources": configured.get(name, []),
            "pending": count,
            "oldest_pending_seconds": None if oldest is None else round(max(now - oldest, 0.0), 1),
            "paused": state["paused"] if state else None,
            "problem": state["problem"] if state else None,
            "last_upload": None
            if last is None
            else {"file": last.name, "at": iso(last.uploaded_at), "path": last.final_path},
        }
    return found


def _ncip_servers(service: snapshot.Snapshot | None, settings: Settings | None) -> dict[str, Any]:
    """Each NCIP server's relay as the running service last said (None: not known, the service does not run)."""
    servers = (service.get("ncip_servers") if service is not None else None) or {}
    names = [server.name for server in settings.ncip_servers] if settings is not None else list(servers)
    return {name: servers.get(name) for name in names}


def several(status: dict[str, Any]) -> bool:
    """Whether the config has several CaiaSoft connections or NCIP servers: then each line names its own."""
    configured = [c for c in (status.get("connections") or {}).values() if c.get("in_config")]
    return len(configured) > 1 or len(status.get("ncip_servers") or {}) > 1


def state_dir_problem(state_dir: Path) -> str | None:
    """Why the service cannot record anything or take files (state_dir full or read-only), seen from outside.

    The service cannot tell `status` itself then: what it publishes goes into the ledger, in state_dir.
    """
    try:
        info = os.statvfs(state_dir)
    except OSError as error:
        return f"cannot look at state_dir: {describe(error)}"
    if info.f_flag & os.ST_RDONLY:
        return f"{state_dir} is on a read-only filesystem: no file can be taken or recorded until it is writable"
    free = info.f_bavail * info.f_frsize
    if free < LOW_SPACE_BYTES:
        return (
            f"{state_dir} is full ({free} bytes free): no file can be taken or recorded; free space there, "
            "the gateway resumes by itself"
        )
    return None


def _age(seconds: float) -> str:
    """A duration for a terminal; never negative (a time recorded 'after now' is a clock stepped back since)."""
    days, rest = divmod(max(int(seconds), 0), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


def _source_lines(name: str, source: dict[str, Any]) -> list[str]:
    """A source's state, whether open writers can be seen there, and the files it holds back and why."""
    state = source["problem"] or ("ok" if source["healthy"] else "watcher stopped")
    lines = [f"  source {name}: {source['mode']}, {state}"]
    if source.get("writers_unknown"):
        lines.append(
            f"    open writers: not detectable ({source['writers_unknown']}); a file that changes "
            "after it is taken is taken again whole"
        )
    for waiting in source.get("waiting") or []:
        if waiting.get("grace_seconds") is not None:
            lines.append(
                f"    incomplete, waiting: {waiting['file']}: {waiting['reason']} (unchanged "
                f"{_age(waiting['unchanged_seconds'])} of {_age(waiting['grace_seconds'])})"
            )
        else:
            lines.append(f"    waiting: {waiting['file']}: {waiting['reason']}")
    if source.get("originals_kept"):
        lines.append(
            f"    originals kept: {source['originals_kept']} (taken; each is removed once sent and "
            "unchanged for keep_original_seconds, or taken again whole if it changed)"
        )
    for file, why in (source.get("not_taken") or {}).items():
        lines.append(f"    not taken: {file}: {why}")
    return lines


def _problem_lines(status: dict[str, Any]) -> list[str]:
    """Workers pausing on a fault, and files waiting to be placed or stuck, each with its reason."""
    lines = [f"PAUSED {worker}: {fault}" for worker, fault in (status.get("faults") or {}).items()]
    if status.get("retention_held"):
        lines.append(f"RETENTION HELD: {status['retention_held']}")
    for problem in status.get("problems") or []:
        label = "STUCK" if problem["state"] == FileState.STUCK else "WAITING TO BE PLACED"
        lines.append(f"{label}: {problem['file']} (state_dir/work/{problem['work_file']}): {problem['problem']}")
    return lines


def _service_lines(status: dict[str, Any]) -> list[str]:
    """Whether the service runs and reports, what state_dir allows, and each source's state."""
    service = status["service"]
    state = f"running (pid {service['pid']})" if service["running"] else "not running"
    lines = [f"service:        {state}"]
    if service.get("silent_seconds") is not None:
        lines.append(
            f"  NOT REPORTING for {_age(service['silent_seconds'])}: it cannot write its state into the "
            "ledger (state_dir full or read-only, or the ledger locked by another program?); what follows "
            "is the ledger as last written; the log says why"
        )
    if status.get("state_dir_problem"):
        lines.append(f"STATE_DIR: {status['state_dir_problem']}")
    for name, source in (service.get("sources") or {}).items():
        lines.extend(_source_lines(name, source))
    return lines


def render(status: dict[str, Any]) -> str:
    """The status as lines for a terminal (with several connections, each connection's own lines too)."""
    named = several(status)
    lines = _service_lines(status)
    lines.extend(_stranded_lines(status))
    if named:
        lines.extend(
            f"UPLOADS TO {name} PAUSED: {connection['paused']}"
            for name, connection in status["connections"].items()
            if connection["paused"]
        )
    elif status["uploads_paused"]:
        lines.append(f"UPLOADS PAUSED: {status['uploads_paused']}")
    lines.extend(_problem_lines(status))
    lines.extend(_file_lines(status))
    lines.extend(_connection_lines(status) if named else _ncip_lines(status.get("ncip")))
    sent = status.get("alerts") or {}
    if sent.get("last_sent") or sent.get("waiting") or sent.get("problem"):
        lines.append(
            f"alerts:         last sent {sent['last_sent'] or 'never'}, {sent['waiting']} waiting"
            + (f"; DELIVERY PROBLEM: {sent['problem']}" if sent["problem"] else "")
        )
    if status["recent_errors"]:
        lines.append("recent errors:")
        for error in status["recent_errors"]:
            lines.append(f"  {error['at']}  {error['file']}: {error['reason']}")
            lines.append(f"      {error['path']}")
    return "\n".join(lines)


def _stranded_lines(status: dict[str, Any]) -> list[str]:
    """Files queued for a connection the config no longer has: they wait for it, and only a person can act."""
    return [
        f"CONNECTION REMOVED: {connection['pending']} file(s) queued for connection {name}, which is not in the "
        f"config: they wait; add [{table_of('caiasoft', name)}] back and reload"
        for name, connection in (status.get("connections") or {}).items()
        if not connection["in_config"] and connection["pending"]
    ]


def _file_lines(status: dict[str, Any]) -> list[str]:
    """Files pending, the oldest of them, today's and all time's, and the last upload (all connections')."""
    counts = status["counts"]
    queued, uploading, stuck = (counts[state] for state in (FileState.QUEUED, FileState.UPLOADING, FileState.STUCK))
    lines = [
        f"pending:        {status['pending']} (queued {queued}, uploading {uploading}, "
        f"other steps {status['pending'] - queued - uploading})" + (f", stuck {stuck}" if stuck else "")
    ]
    oldest = status["oldest_pending"]
    if oldest:
        problem = f"; last problem: {oldest['last_problem']}" if oldest["last_problem"] else ""
        lines.append(
            f"oldest pending: {oldest['file']} from {oldest['source']}, "
            f"waiting {_age(oldest['age_seconds'])}, "
            f"{oldest['attempts']} attempt(s){problem}"
        )
    lines.append(f"today:          {status['archived_today']} archived, {status['refused_today']} refused")
    lines.append(f"all time:       {counts[FileState.ARCHIVED]} archived, {counts[FileState.REFUSED]} refused")
    last = status["last_upload"]
    lines.append(
        f"last upload:    {last['file']} at {last['at']}"
        if last
        else "last upload:    none yet"
        if not counts[FileState.ARCHIVED]
        else "last upload:    none in the days kept (the older ones were removed by retention)"
    )
    return lines


def _ncip_lines(ncip: dict[str, Any] | None, name: str | None = None) -> list[str]:
    """An NCIP relay (the one, or with several the server named): how far behind, its last success, dead letters
    and problems."""
    if not ncip:
        return []
    lines = []
    journal_problem = ncip.get("journal_problem")
    if journal_problem and name is None:
        lines.append(f"NCIP JOURNAL NOT READ: {journal_problem}")
    last = iso(ncip["last_success"]) or "none yet"
    lines.append(
        ("NCIP relay:    " if name is None else f"NCIP {name}:")
        + f" {ncip['lag_entries']} entries ({ncip['lag_bytes']} bytes) behind, "
        f"last success {last}, {ncip['dead_letters']} dead letter(s)"
        + (" (the journal is not read: what is behind is not known)" if journal_problem else "")
    )
    problems = [("last problem", ncip["last_problem"]), ("feed problem", ncip["feed_problem"])]
    if name is not None:
        problems.insert(0, ("NCIP JOURNAL NOT READ", journal_problem))
    lines.extend(f"  {label}: {problem}" for label, problem in problems if problem)
    return lines


def _connection_lines(status: dict[str, Any]) -> list[str]:
    """Each CaiaSoft connection and each NCIP server of the config, named: what waits, what fails, what was last
    done (the service's part is not known while it does not run)."""
    lines = []
    for name, connection in status["connections"].items():
        if not connection["in_config"]:
            continue  # said at the top (CONNECTION REMOVED)
        oldest = connection["oldest_pending_seconds"]
        last = connection["last_upload"]
        lines.append(
            f"CaiaSoft {name}: "
            + ("PAUSED, " if connection["paused"] else "")
            + f"{connection['pending']} waiting to be sent"
            + (f" (oldest {_age(oldest)})" if oldest is not None else "")
            + (f", last upload {last['file']} at {last['at']}" if last else ", no upload (in the days kept)")
            + f"; sources: {', '.join(connection['sources']) or 'none'}"
        )
        if connection["problem"] and connection["problem"] != connection["paused"]:  # the pause is said above
            lines.append(f"  problem: {connection['problem']}")
    for name, ncip in (status.get("ncip_servers") or {}).items():
        lines.extend(_ncip_lines(ncip, name) if ncip else [f"NCIP {name}: not known while the service does not run"])
    return lines
