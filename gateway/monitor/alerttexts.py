"""The words of each alert: what happened, which files or barcodes, where they are, what to do.

Written for the ALEPH librarian or admin who gets the mail, not for a developer. Each
function returns a message (a plain dict, stored in the ledger until it is sent):
    {"title": one line, for the subject, "text": the body, "items": [...] (optional)}
File names and reasons are made printable (names.printable) and registered secrets
are redacted (logs.redact) before a message is stored.

When the config has several CaiaSoft connections or NCIP servers, the monitor passes
connection= (the CaiaSoft connection, or the NCIP server, the alert is about): the title
and the text then name it, and each item carries it. Without it, every word is as it
always was.
"""

from __future__ import annotations

from typing import Any

from gateway.config.settings import DEFAULT_CONNECTION
from gateway.core.logs import redact
from gateway.core.names import printable

Message = dict[str, Any]


def _clean(message: Message) -> Message:
    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, dict):
            return {key: scrub(item) for key, item in value.items()}
        if isinstance(value, list):
            return [scrub(item) for item in value]
        return value

    cleaned: Message = scrub(message)
    return cleaned


def _on(connection: str | None, what: str = "connection") -> str:
    """(connection NAME) after a title, or nothing with one connection."""
    return f" ({what} {connection})" if connection else ""


def _tagged(items: list[dict[str, Any]], connection: str | None) -> list[dict[str, Any]]:
    """The items, each with its connection when there are several."""
    return [{**item, "connection": connection} for item in items] if connection else items


def _minutes(seconds: float) -> str:
    minutes = max(round(seconds / 60), 1)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def refused(name: str, source: str, reason: str | None, path: str, *, connection: str | None = None) -> Message:
    name = printable(name)
    by_gateway = (reason or "").startswith("refused by the gateway")
    return _clean(
        {
            "title": f"request file refused: {name}{_on(connection)}",
            "text": (
                f"The request file {name} from source {source}{_on(connection, 'CaiaSoft connection')} was refused "
                f"{'by the gateway before it was sent' if by_gateway else 'by CaiaSoft'}. "
                "The requests in it have NOT reached CaiaSoft.\n\n"
                f"Reason: {printable(reason or 'not given')}\n\n"
                f"The file, as ALEPH wrote it, and its details ({printable(path.rsplit('/', 1)[-1])}.json) are in:\n"
                f"  {printable(path)}\n\n"
                "What to do: read the reason. If the file itself is wrong, correct the request in ALEPH and "
                "print it again. If the cause was on CaiaSoft's side or in the gateway's settings and is fixed "
                f"now, send the same file again with:\n  caiasoft-gateway retry {name}"
            ),
            "items": _tagged(
                [{"file": name, "source": source, "reason": printable(reason or ""), "path": printable(path)}],
                connection,
            ),
        }
    )


def denied(
    name: str, source: str, denials: list[dict[str, Any]], path: str, *, connection: str | None = None
) -> Message:
    name = printable(name)
    items = [
        {
            "barcode": printable(str(item.get("item") or "?")),
            "status": printable(str(item.get("istatus") or item.get("message") or "denied")),
        }
        for item in denials
    ]
    width = max(len(item["barcode"]) for item in items) if items else 0
    listing = "\n".join(f"  {item['barcode']:<{width}}  {item['status']}" for item in items)
    return _clean(
        {
            "title": f"{len(items)} item{'s' if len(items) != 1 else ''} denied by CaiaSoft in {name}{_on(connection)}",
            "text": (
                f"CaiaSoft{_on(connection)} accepted the request file {name} from source {source}, but denied "
                f"{'this item' if len(items) == 1 else 'these items'}; "
                f"{'its request' if len(items) == 1 else 'their requests'} will not be filled from storage:\n\n"
                f"  barcode{' ' * max(width - 7, 0)}  CaiaSoft's status\n{listing}\n\n"
                f"The file and CaiaSoft's full answer are in:\n  {printable(path)}  (and .json beside it)\n\n"
                "What to do: look up each barcode in CaiaSoft (already retrieved, not in storage, wrong stop "
                "...), then tell the reader whose request it was. Once the item can be had, place the request "
                "again in ALEPH."
            ),
            "items": _tagged(items, connection),
        }
    )


def paused(
    reason: str,
    pending: int,
    pause_seconds: float,
    *,
    connection: str | None = None,
    key_from: str = "",
    sources: tuple[str, ...] = (),
) -> Message:
    """Uploads paused; with connection, those of that connection only: key_from says where its key is read
    from, sources which sources' files wait for it."""
    if connection:
        return _paused_connection(reason, pending, pause_seconds, connection, key_from, sources)
    return _clean(
        {
            "title": "uploads to CaiaSoft paused: the API key was refused",
            "text": (
                f"CaiaSoft refused the gateway's API key ({printable(reason)}), so uploads are paused. "
                f"No request file is lost or moved to the error folder: {pending} file(s) wait in the queue "
                "and go out once the key works.\n\n"
                "What to do: check the API key with CaiaSoft (it may have been changed or revoked), put the "
                "right one in the key file named in gateway.toml, then run:\n"
                "  caiasoft-gateway check\n  systemctl reload caiasoft-gateway\n"
                f"(The gateway also tries again by itself every {_minutes(pause_seconds)}.)"
            ),
        }
    )


def _paused_connection(
    reason: str, pending: int, pause_seconds: float, connection: str, key_from: str, sources: tuple[str, ...]
) -> Message:
    waiting = f"from source{'s' if len(sources) != 1 else ''} {', '.join(sources)}" if sources else "from no source now"
    return _clean(
        {
            "title": f"uploads to CaiaSoft paused on connection {connection}: the API key was refused",
            "text": (
                f"CaiaSoft refused the API key of connection {connection} ({printable(reason)}), so the uploads "
                f"of connection {connection} are paused; other connections go on. No request file is lost or moved "
                f"to the error folder: {pending} file(s) of connection {connection} ({waiting}) wait in the "
                "queue and go out once the key works.\n\n"
                f"What to do: check the API key of connection {connection} with CaiaSoft (it may have been changed "
                f"or revoked), put the right one in {key_from or 'the place gateway.toml names for it'}, then run:\n"
                "  caiasoft-gateway check\n  systemctl reload caiasoft-gateway\n"
                f"(The gateway also tries again by itself every {_minutes(pause_seconds)}.)"
            ),
            "items": [{"connection": connection, "sources": list(sources), "problem": printable(reason)}],
        }
    )


def resumed(*, connection: str | None = None) -> Message:
    if connection:
        return {
            "title": f"uploads resumed on connection {connection}: CaiaSoft accepts its API key again",
            "text": f"Uploads on connection {connection} resumed: CaiaSoft accepts its API key again. The request "
            f"files of connection {connection} that waited are being sent now, oldest first. Nothing else needs to "
            "be done.",
            "items": [{"connection": connection}],
        }
    return {
        "title": "uploads resumed: CaiaSoft accepts the API key again",
        "text": "Uploads resumed: CaiaSoft accepts the gateway's API key again. The request files that "
        "waited are being sent now, oldest first. Nothing else needs to be done.",
    }


def _peer(system: str, connection: str | None) -> str:
    """How an alert calls the system: CaiaSoft or ALEPH's NCIP server, with its connection's name if given."""
    if system == "NCIP":
        return f"ALEPH's NCIP server {connection}" if connection else "ALEPH's NCIP server"
    return f"CaiaSoft connection {connection}" if connection else "CaiaSoft"


def unreachable(
    system: str, where: str, problem: str, seconds: float, waiting: str, *, connection: str | None = None
) -> Message:
    advice = (
        "check that ALEPH's NCIP server is running (the www_server / NCIP port on the ALEPH host) "
        "and reachable from this host"
        if system == "NCIP"
        else "check the network and any proxy between this host and CaiaSoft, and whether CaiaSoft "
        "reports an outage; nothing needs to be done in ALEPH"
    )
    name = _peer(system, connection)
    return _clean(
        {
            "title": f"{name} unreachable for {_minutes(seconds)}",
            "text": (
                f"{name} ({printable(where)}) has not answered properly for {_minutes(seconds)}.\n"
                f"Last problem: {printable(problem)}\n\n"
                f"Nothing is lost: {waiting}, and are sent as soon as it answers again.\n\n"
                f"What to do: {advice}. Run `caiasoft-gateway status` for the details."
            ),
            "items": _tagged([{"system": system, "problem": printable(problem)}], connection),
        }
    )


def reachable(system: str, where: str, *, connection: str | None = None) -> Message:
    name = _peer(system, connection)
    return {
        "title": f"{name} reachable again",
        "text": f"{name} ({printable(where)}) is reachable again; what waited is being sent now.",
        "items": _tagged([{"system": system}], connection),
    }


def dead_letter(
    entry: dict[str, Any] | None, reason: str, path: str, *, connection: str | None = None, where: str = ""
) -> Message:
    """A journal entry ALEPH refused (or a line that is no entry); with connection, of that NCIP server (at where)."""
    action = str((entry or {}).get("action") or "entry")
    item = printable(str((entry or {}).get("item") or "?"))
    undo = "check-in" if action == "checkin" else "check-out"
    server = f"ALEPH's NCIP server {connection} ({printable(where)})" if connection else "ALEPH's NCIP server"
    journal = "the NCIP journal" if not connection else f"the NCIP journal of server {connection}"
    command = f"journal --ncip {connection}" if connection and connection != DEFAULT_CONNECTION else "journal"
    return _clean(
        {
            "title": (f"NCIP {action} of item {item} refused" if entry else "NCIP journal line not valid")
            + _on(connection, "NCIP server"),
            "text": (
                (
                    f"{server} refused the {undo} of item {item}; ALEPH's loan record was NOT updated for it.\n"
                    if entry
                    else f"A line of {journal} is not a valid entry; it was not sent to ALEPH.\n"
                )
                + f"Reason: {printable(reason)}\n\n"
                f"The entry is kept, with ALEPH's answer, in:\n  {printable(path)}\n\n"
                f"What to do: do the {undo} of item {item} by hand in ALEPH's circulation client, or fix "
                "the cause (the item, the user id, the stop) and journal it again with\n"
                f"  caiasoft-gateway {command} {action if entry else 'checkout|checkin'} {item}"
            ),
            "items": _tagged(
                [{"barcode": item, "action": action, "reason": printable(reason), "path": printable(path)}], connection
            ),
        }
    )


def unknown_status(barcode: str, status: str, day: str, collection: str, *, connection: str | None = None) -> Message:
    """With connection: the status feed of that NCIP server met the status."""
    barcode, status = printable(barcode), printable(status)
    when = f"{day[:4]}-{day[4:6]}-{day[6:]}" if len(day) == 8 else printable(day)
    return _clean(
        {
            "title": f"CaiaSoft status not known: {status!r} (item {barcode}){_on(connection, 'NCIP server')}",
            "text": (
                f"Item {barcode} of collection {printable(collection)}{_on(connection, 'NCIP server')} was both "
                f"retrieved and refiled on {when}, "
                f'and CaiaSoft now gives its status as {status!r}, which the gateway does not know as "in the '
                'facility" or "out of it". So that it never guesses, neither the check-out nor the check-in '
                f"of {when} was sent to ALEPH for this item; ALEPH's loan record for it is unchanged.\n\n"
                "What to do: if the status means the item is in the facility, add it to "
                f"[{_feed_table(connection)}] in_statuses "
                "in gateway.toml; if it means the item is out, to out_statuses; then reload the service "
                "(systemctl reload caiasoft-gateway). The item is journaled at the next read, as long as "
                f"{when} is within lookback_days. Otherwise check the item in or out by hand in ALEPH."
            ),
            "items": _tagged(
                [{"barcode": barcode, "status": status, "day": when, "collection": printable(collection)}], connection
            ),
        }
    )


def _feed_table(connection: str | None) -> str:
    """The status feed's table of the server: ncip.feed, or ncip.NAME.feed."""
    return "ncip.feed" if connection in (None, DEFAULT_CONNECTION) else f"ncip.{connection}.feed"


def _ncip_table(connection: str | None) -> str:
    """The NCIP server's table: ncip, or ncip.NAME."""
    return "ncip" if connection in (None, DEFAULT_CONNECTION) else f"ncip.{connection}"


def source_problem(source: str, location: str, problem: str) -> Message:
    return _clean(
        {
            "title": f"source {source} cannot be read",
            "text": (
                f"The gateway cannot read the folder of source {source} ({printable(location)}):\n"
                f"  {printable(problem)}\n\n"
                "New request files that ALEPH writes there are NOT picked up until this is fixed (files "
                "already taken are not affected).\n\n"
                "What to do: check that the folder exists, is mounted, and that the gateway's user may read "
                "and write it (for SFTP: that the server is up and the login works). `caiasoft-gateway check` "
                "names the problem."
            ),
            "items": [{"source": source, "location": printable(location), "problem": printable(problem)}],
        }
    )


def source_ok(source: str, location: str) -> Message:
    return {
        "title": f"source {source} readable again",
        "text": f"Source {source} ({printable(location)}) can be read again; new files are picked up.",
        "items": [{"source": source}],
    }


def journal_problem(journal: str, problem: str, *, connection: str | None = None) -> Message:
    return _clean(
        {
            "title": f"the NCIP journal{_of_server(connection)} cannot be read",
            "text": (
                f"The gateway does not read the NCIP journal {printable(journal)}:\n  {printable(problem)}\n\n"
                "No checkout or checkin is relayed to ALEPH until a regular file is there again; nothing is lost "
                "(the relay goes on from where it stopped).\n\n"
                "What to do: put the journal back as a regular file (not a symbolic link, a directory or a FIFO), "
                f"or set {_ncip_table(connection)}.journal to the real file. `caiasoft-gateway status` shows the "
                "reason."
            ),
            "items": _tagged(
                [{"source": "ncip-journal", "location": printable(journal), "problem": printable(problem)}], connection
            ),
        }
    )


def journal_ok(journal: str, *, connection: str | None = None) -> Message:
    return {
        "title": f"the NCIP journal{_of_server(connection)} is read again",
        "text": f"The NCIP journal {printable(journal)} is a regular file again; entries are relayed.",
        "items": _tagged([{"source": "ncip-journal"}], connection),
    }


def _of_server(connection: str | None) -> str:
    return f" of server {connection}" if connection else ""


def stuck(files: list[dict[str, Any]], seconds: float, *, connection: str | None = None) -> Message:
    lines = [
        f"  {printable(f['file'])} from {f['source']}: {f['state']}, {f['attempts']} attempt(s)"
        + (f"; last problem: {printable(f['problem'])}" if f.get("problem") else "")
        for f in files
    ]
    return _clean(
        {
            "title": f"{len(files)} request file(s){_of(connection)} waiting more than {_minutes(seconds)}",
            "text": (
                f"These request files{_of(connection)} have waited more than {_minutes(seconds)} without reaching "
                f"CaiaSoft, while {'it' if connection else 'CaiaSoft itself'} answers:\n" + "\n".join(lines) + "\n\n"
                "What to do: run `caiasoft-gateway status` to see why each waits; the gateway's log "
                "(gateway.log) has every attempt."
            ),
            "items": _tagged(
                [{key: printable(str(f.get(key) or "")) for key in ("file", "source", "state")} for f in files],
                connection,
            ),
        }
    )


def stuck_cleared(*, connection: str | None = None) -> Message:
    if connection:
        return {
            "title": f"no request file of connection {connection} is waiting too long any more",
            "text": f"The request files of connection {connection} that were waiting too long have been sent or "
            "settled.",
            "items": [{"connection": connection}],
        }
    return {
        "title": "no request file is waiting too long any more",
        "text": "The request files that were waiting too long have been sent or settled.",
    }


def _of(connection: str | None) -> str:
    return f" of connection {connection}" if connection else ""


def test_message(host: str) -> Message:
    return {
        "title": "test alert",
        "text": f"This is a test alert from the CaiaSoft gateway on {host} (caiasoft-gateway check "
        "--send-test-alert). If you read this, alert mail works. Nothing needs to be done.",
    }
