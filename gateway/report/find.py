"""`find BARCODE`: which request files carried an item ("where is my item?"), newest first.

Answers from the ledger's item index (gateway/state/itemindex.py), filled as files are
taken. Files archived before the index existed are found through their sidecars:
the first `find` after the upgrade reads every older sidecar once (a barcode list
from the sidecar's records, or CaiaSoft's per-item answer, or else the archived
file itself) and the ledger remembers that it did.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.archive.folders import SIDECAR_SUFFIX
from gateway.config.settings import DEFAULT_CONNECTION
from gateway.core.errors import FileRefused
from gateway.core.names import is_text, printable
from gateway.core.printfile import Record
from gateway.core.states import FileState, Verdict
from gateway.intake import validation
from gateway.state.filerow import iso
from gateway.state.itemindex import ItemHit, answers_by_item
from gateway.state.ledger import Ledger

BACKFILL_BATCH = 5000  # items written to the ledger at once while backfilling
BACKFILL_MAX_FILE_BYTES = 50 * 1024 * 1024
_DAY = re.compile(r"^\d{4}/\d{2}/\d{2}$")
_OUTCOMES = {
    FileState.ARCHIVED: Verdict.ACCEPTED,
    FileState.ARCHIVING: Verdict.ACCEPTED,
    FileState.REFUSED: Verdict.REFUSED,
    FileState.REFUSING: Verdict.REFUSED,
}
# an outcome ('outcome' in --json) as find prints it
_SHOWN: dict[str, str] = {
    Verdict.ACCEPTED: "accepted by CaiaSoft",
    Verdict.REFUSED: "refused",
    FileState.QUEUED: "not finished yet (queued)",
}


def find(ledger: Ledger, barcode: str, folders: list[Path], backfill: bool = True) -> list[dict[str, Any]]:
    """Given a barcode, return every request file that carried it, newest first.

    folders are archive_dir and error_dir: their sidecars from before the index are
    read once (backfill) before the first answer. Texts are printable (names escaped).
    Without backfill nothing is written to the ledger (the staff page): files from before
    the index are found only once a `find` has read their sidecars.
    """
    if backfill:
        _backfill(ledger, folders)
    found = []
    for hit in _hits(ledger, barcode):
        entry = (
            _from_ledger(ledger, hit.barcode, hit.file_id, hit.record)
            if hit.file_id
            else _from_sidecar(Path(hit.sidecar), hit.barcode, hit.record)
            or _from_pruned_sidecar(ledger, Path(hit.sidecar), hit.barcode, folders)
        )
        if entry is not None:
            found.append(entry)
    for entry in found:
        entry["path_exists"] = bool(entry["path"]) and Path(entry["path"]).is_file()
        pruned = (
            ledger.prunes.pruned_at(str(Path(entry["path"]).parent))
            if entry["path"] and not entry["path_exists"]
            else None
        )
        entry["pruned_at"] = iso(pruned)  # its day folder was removed by retention_days, then
    retired = _retired(ledger, barcode)
    if retired is not None:
        found.append(retired)
    found.sort(key=lambda entry: (entry["taken"] or "", entry.get("ledger_id") or 0), reverse=True)
    return [_printable(entry) for entry in found]


def _hits(ledger: Ledger, barcode: str) -> list[ItemHit]:
    """The index's hits for the barcode as typed; if none, for it in upper or in lower case (a barcode with
    letters typed at the desk in the other case). Leading zeros are part of a barcode: never dropped."""
    hits = ledger.items.items_for(barcode)
    for variant in dict.fromkeys((barcode.upper(), barcode.lower())):
        if not hits and variant != barcode:
            hits = ledger.items.items_for(variant)
    return hits


def _retired(ledger: Ledger, barcode: str) -> dict[str, Any] | None:
    """The compact row retention kept of the item's removed files (gateway/state/retiredstore.py), as an entry:
    the newest removed file, and how many earlier ones (earlier_removed, since first_taken)."""
    for variant in dict.fromkeys((barcode, barcode.upper(), barcode.lower())):
        kept = ledger.retired.retired_for(variant)
        if kept is not None:
            break
    else:
        return None
    accepted = kept.outcome == Verdict.ACCEPTED
    status = {key: value for key, value in (("deny", kept.deny), ("istatus", kept.istatus)) if value is not None}
    return {
        "barcode": kept.barcode,
        "file": kept.file,
        "original_name": None,
        "source": kept.source,
        "taken": iso(kept.taken),
        "sent": iso(kept.sent),
        "outcome": kept.outcome,
        "state": FileState.ARCHIVED if accepted else FileState.REFUSED,
        "reason": kept.reason,
        "caiasoft": status or None,
        "path": kept.path,
        "kind": None,
        "record": None,
        "line": None,
        "request_number": kept.request_number,
        "request_id": None,
        "pickup_location": None,
        "form_name": None,
        "ledger_id": None,
        "path_exists": False,
        "pruned_at": iso(kept.removed_at),
        "earlier_removed": kept.earlier,
        "first_taken": iso(kept.first_taken),
        "connection": None,  # retention's compact row does not keep it
    }


def _printable(entry: dict[str, Any]) -> dict[str, Any]:
    """Every text of an answer safe for a terminal and for JSON (names.printable: file names are bytes)."""

    def shown(value: Any) -> Any:
        if isinstance(value, str):
            return printable(value)
        if isinstance(value, dict):
            return {key: shown(item) for key, item in value.items()}
        return value

    return {key: shown(value) for key, value in entry.items()}


def _from_ledger(ledger: Ledger, barcode: str, file_id: int, number: int) -> dict[str, Any] | None:
    row = ledger.files.get(file_id)
    if row is None:
        return None
    record = ledger.items.record_of(file_id, number)
    # answered (the verdict is recorded, the file not yet placed): the verdict is the outcome
    outcome = _OUTCOMES.get(row.state) or row.verdict or FileState.QUEUED
    return {
        "barcode": barcode,
        "file": Path(row.final_path).name if row.final_path else row.name,
        "original_name": row.name,
        "source": row.source,
        "taken": iso(row.claimed_at or row.seen_at),
        "sent": iso(row.uploaded_at),
        "outcome": outcome,
        "state": row.state,
        "reason": None if outcome == Verdict.ACCEPTED else row.reason,
        "caiasoft": answers_by_item(row.answer_json).get(barcode),
        "path": row.final_path,
        "kind": row.kind,
        "record": number or None,
        "line": record.line if record else None,
        "request_number": record.request_number if record else None,
        "request_id": record.request_id if record else None,
        "pickup_location": record.pickup_location if record else None,
        "form_name": record.form_name if record else None,
        "ledger_id": row.id,
        "connection": row.connection,
    }


def _from_sidecar(sidecar: Path, barcode: str, number: int) -> dict[str, Any] | None:
    content = _read_sidecar(sidecar)
    if content is None:
        return None  # pruned by retention, or moved away since
    times = content.get("times")
    times = times if isinstance(times, dict) else {}
    record = _sidecar_record(content, number)
    accepted = content.get("outcome") == Verdict.ACCEPTED
    return {
        "barcode": barcode,
        "file": content.get("file") or sidecar.name.removesuffix(SIDECAR_SUFFIX),
        "original_name": content.get("original_name"),
        "source": content.get("source"),
        "taken": times.get("claimed") or times.get("seen"),
        "sent": times.get("uploaded"),
        "outcome": content.get("outcome"),
        "state": FileState.ARCHIVED if accepted else FileState.REFUSED,
        "reason": None if accepted else content.get("reason"),
        "caiasoft": answers_by_item(content.get("caiasoft_answer")).get(barcode),
        "path": str(sidecar.with_name(sidecar.name.removesuffix(SIDECAR_SUFFIX))),
        "kind": content.get("kind"),
        "record": number or None,
        "line": record.get("line"),
        "request_number": record.get("request_number"),
        "request_id": record.get("request_id"),
        "pickup_location": record.get("pickup_location"),
        "form_name": record.get("form_name"),
        "ledger_id": None,
        "sidecar": str(sidecar),
        **_sidecar_connection(content),
    }


def _from_pruned_sidecar(ledger: Ledger, sidecar: Path, barcode: str, folders: list[Path]) -> dict[str, Any] | None:
    """A file from before the index whose day retention removed: what the index and the pruned day tell."""
    if ledger.prunes.pruned_at(str(sidecar.parent)) is None:
        return None  # moved away, not removed by retention: not listed, as before
    refused = len(folders) > 1 and sidecar.is_relative_to(folders[1])  # find's folders: archive_dir, error_dir
    path = sidecar.with_name(sidecar.name.removesuffix(SIDECAR_SUFFIX))
    return {
        "barcode": barcode,
        "file": path.name,
        "original_name": None,
        "source": None,
        "taken": None,
        "sent": None,
        "outcome": Verdict.REFUSED if refused else Verdict.ACCEPTED,
        "state": FileState.REFUSED if refused else FileState.ARCHIVED,
        "reason": None,
        "caiasoft": None,
        "path": str(path),
        "kind": None,
        "record": None,
        "line": None,
        "request_number": None,
        "request_id": None,
        "pickup_location": None,
        "form_name": None,
        "ledger_id": None,
        "sidecar": str(sidecar),
        "connection": None,  # its sidecar is gone with its day
    }


def _sidecar_connection(content: dict[str, Any]) -> dict[str, str | None]:
    """The connection a sidecar names, as an entry's key; none from a sidecar written before connections were
    named (the entry is as it was then; connection_of() tells it was the default's)."""
    if "connection" not in content:
        return {}
    connection = content["connection"]
    return {"connection": connection if isinstance(connection, str) else None}  # a sidecar anyone may edit


def connection_of(entry: dict[str, Any]) -> str | None:
    """The CaiaSoft connection that sent an entry's file; None if not known (retention's row, a pruned day).
    An entry from a sidecar written before connections were named has no such key: it was the default's."""
    connection = entry.get("connection", DEFAULT_CONNECTION)
    return connection if isinstance(connection, str) else None


def as_json(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """find's answer as `find --json` prints it: every entry names its connection (null: not known)."""
    return [{**entry, "connection": connection_of(entry)} for entry in found]


def _sidecar_record(content: dict[str, Any], number: int) -> dict[str, Any]:
    for record in content.get("records") or ():
        if isinstance(record, dict) and record.get("record") == number:
            return dict(record)
    barcodes = content.get("barcodes") or []  # a barcode list's sidecar: number is the barcode's place
    if isinstance(barcodes, list) and 0 < number <= len(barcodes) and isinstance(barcodes[number - 1], dict):
        return dict(barcodes[number - 1])
    return {}


# -- backfill -------------------------------------------------------------------


def backfill(ledger: Ledger, folders: list[Path]) -> int:
    """Index the barcodes of files archived before the index existed, once; return how many were indexed."""
    since = ledger.items.backfill_due()
    if since is None:
        return 0
    last_day = dt.date.fromtimestamp(since)
    batch: list[tuple[str, int, str]] = []
    total = 0
    for sidecar in _sidecars(folders, last_day):
        for barcode, number in _sidecar_items(ledger, sidecar):
            batch.append((barcode, number, str(sidecar)))
        if len(batch) >= BACKFILL_BATCH:
            ledger.items.store_backfill(batch, done=False)
            total += len(batch)
            batch = []
    ledger.items.store_backfill(batch, done=True)
    return total + len(batch)


def backfill_pending(ledger: Ledger, folders: list[Path]) -> bool:
    """Whether a backfill is due and has anything to read: a day folder from before the index began (a new
    install's ledger starts with the backfill due, over folders with nothing older)."""
    since = ledger.items.backfill_due()
    return since is not None and next(_sidecars(folders, dt.date.fromtimestamp(since)), None) is not None


_backfill = backfill  # find()'s parameter of that name hides the function inside find()


def _sidecars(folders: list[Path], last_day: dt.date) -> Iterator[Path]:
    for folder in folders:
        for day in sorted(folder.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]")):
            relative = day.relative_to(folder).as_posix()
            try:
                date = dt.date(*map(int, relative.split("/")))
            except ValueError:
                continue
            if _DAY.match(relative) and date <= last_day and not day.is_symlink():
                yield from sorted(
                    path for path in day.glob("*" + SIDECAR_SUFFIX) if path.is_file() and not path.is_symlink()
                )


def _sidecar_items(ledger: Ledger, sidecar: Path) -> list[tuple[str, int]]:
    """(barcode, record number or 0) of the file a sidecar describes; [] if the live index has it already."""
    content = _read_sidecar(sidecar)
    if content is None:
        return []
    target = sidecar.with_name(sidecar.name.removesuffix(SIDECAR_SUFFIX))
    ledger_id = content.get("ledger_id")
    if isinstance(ledger_id, int) and ledger.items.indexed_path(ledger_id, str(target)):
        return []
    items = [
        (item["barcode"], record.get("record", 0))
        for record in content.get("records") or ()
        if isinstance(record, dict)
        for item in record.get("items") or ()
        if isinstance(item, dict) and isinstance(item.get("barcode"), str)
    ]
    items += [
        (item["barcode"], index)
        for index, item in enumerate(content.get("barcodes") or (), 1)
        if isinstance(item, dict) and isinstance(item.get("barcode"), str)
    ]
    if not items:
        items = [(barcode, 0) for barcode in answers_by_item(content.get("caiasoft_answer"))]
    if not items and target.is_file() and not target.is_symlink():
        items = _file_items(target)
    # a sidecar is a file anyone may have edited: only text barcodes and whole record numbers are indexed
    return [
        (barcode, number if isinstance(number, int) and not isinstance(number, bool) else 0)
        for barcode, number in items
        if barcode.strip() and is_text(barcode)
    ]


def _file_items(path: Path) -> list[tuple[str, int]]:
    """The barcodes of an archived file, read the way intake reads it (also from a file it refused)."""
    found: list[tuple[str, int]] = []

    def collect(record: Record) -> None:
        found.extend((barcode, record.number) for barcode in record.barcodes)

    with contextlib.suppress(FileRefused, OSError):  # what could be read is kept
        validation.inspect(path, path.name, BACKFILL_MAX_FILE_BYTES, on_record=collect)
    return found


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def _connection_words(entry: dict[str, Any], several: bool) -> str:
    """How the source line names the file's CaiaSoft connection: only with several, or when not the default;
    nothing when it is not known (retention's row, a pruned day)."""
    connection = connection_of(entry)
    if connection is None or not (several or connection != DEFAULT_CONNECTION):
        return ""
    return f" (CaiaSoft connection {connection})"


def _day_of(path: str) -> str:
    """The day of an archive path's day folder (ROOT/YYYY/MM/DD/NAME), as YYYY-MM-DD."""
    year, month, day = Path(path).parent.parts[-3:]
    return f"{year}-{month}-{day}"


# -- printing ---------------------------------------------------------------------


def render(barcode: str, found: list[dict[str, Any]], several: bool = False) -> str:
    """The answer as an admin reads it at the desk; the CaiaSoft connection that sent each file is named when the
    config has several (settings.several), or when it is not the default one."""
    if not found:
        return f"{barcode}: in no request file the gateway has taken (or kept in its archive)"
    lines = [f"{barcode}: in {len(found)} request file(s), newest first"]
    for entry in found:
        if entry.get("kind") == "text":
            about = [f"line {entry['line']}"] if entry.get("line") else []
        else:
            about = [f"record {entry['record']}"] if entry.get("record") else []
        about += [
            f"{label} {entry[key]}"
            for key, label in (("form_name", "form"), ("request_number", "request"), ("pickup_location", "pickup"))
            if entry.get(key)
        ]
        lines.append("")
        lines.append(f"{entry['file']}" + (f"  ({', '.join(about)})" if about else ""))
        lines.append(f"    source    {entry.get('source') or '?'}{_connection_words(entry, several)}")
        lines.append(f"    taken     {entry.get('taken') or '?'}")
        lines.append(f"    sent      {entry.get('sent') or 'not sent'}")
        outcome = _SHOWN.get(entry.get("outcome") or "", str(entry.get("outcome")))
        lines.append(f"    outcome   {outcome}" + (f": {entry['reason']}" if entry.get("reason") else ""))
        status = entry.get("caiasoft")
        if status:
            denied = " (DENIED)" if str(status.get("deny", "")).upper() == "Y" else ""
            lines.append(f"    CaiaSoft  {status.get('istatus') or '?'}{denied}")
        gone = (
            "  (no longer there: removed by retention_days, or moved)"
            if entry.get("path") and not entry.get("path_exists")
            else ""
        )
        if entry.get("pruned_at"):  # the path is gone: said as what happened, not shown as a place to look
            placed = "archived" if entry.get("state") == FileState.ARCHIVED else "refused"
            lines.append(
                f"    path      ({placed} {_day_of(entry['path'])}, removed by retention on {entry['pruned_at'][:10]})"
            )
        else:
            lines.append(f"    path      {entry.get('path') or '(still in the queue)'}{gone}")
        if entry.get("earlier_removed"):
            lines.append(
                f"    earlier   {entry['earlier_removed']} earlier file(s) since "
                f"{(entry.get('first_taken') or '?')[:10]}, also removed by retention"
            )
    return "\n".join(lines)
