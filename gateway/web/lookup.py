"""What the "Find an item" and "One file" pages show: `find` without its backfill (gateway/report/find.py),
and one ledger row with its records, CaiaSoft's answer per item and the file's text.

Files are found by ledger id only; a path is never taken from the request. Nothing here writes to the ledger.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway.config.settings import Settings
from gateway.core.errors import describe
from gateway.core.names import printable
from gateway.core.states import FileState, Verdict
from gateway.report import find
from gateway.state.filerow import FileRow
from gateway.state.itemindex import answers_by_item, is_denied
from gateway.state.ledger import Ledger
from gateway.web.data import file_name, when

MAX_BARCODE = 64
HITS_SHOWN = 100
RECORDS_SHOWN = 1000
TEXT_BYTES = 256 * 1024
_STATES = {
    FileState.CLAIMING: "being taken from ALEPH's folder",
    FileState.CLAIMED: "taken, being checked",
    FileState.QUEUED: "waiting to be sent",
    FileState.UPLOADING: "being sent to CaiaSoft",
    FileState.ANSWERED: "answered, being placed",
    FileState.ARCHIVING: "accepted, being archived",
    FileState.REFUSING: "refused, being placed in the error folder",
    FileState.ARCHIVED: "sent: CaiaSoft accepted it (archived)",
    FileState.REFUSED: "refused (in the error folder)",
    FileState.STUCK: "stuck: it cannot be placed",
}
_DONE = (FileState.ARCHIVED, FileState.REFUSED, FileState.ARCHIVING, FileState.REFUSING, FileState.ANSWERED)
_FEED = {"retrieved": "check-out (CaiaSoft retrieved it)", "refiled": "check-in (CaiaSoft refiled it)"}
# what the file text shows escaped: controls other than line breaks and tabs, and invisible format characters
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


@dataclass(frozen=True)
class Hit:
    """One request file that carried the item (the row of table#found)."""

    file: str
    file_id: int | None  # its ledger row, for /file/ID; None: known from a sidecar or retention's row only
    written: str  # when ALEPH wrote it (the file's mtime), if known
    taken: str
    sent: str
    answer: str  # CaiaSoft's answer for this item
    request: str
    pickup: str
    where: str  # the path, or what became of the file
    pruned: str  # "pruned by retention on DAY ..." or ""
    ncip: list[str]
    connection: str = ""  # the CaiaSoft connection that sent it ("" if not known: retention's row, a pruned day)


@dataclass(frozen=True)
class Search:
    barcode: str
    message: str | None  # why nothing was looked up (empty or overlong), else None
    hits: list[Hit]
    more: int  # hits not shown
    backfill_due: bool  # older files are not indexed yet: `caiasoft-gateway find` has to run once
    feed: bool  # the status feed runs, so NCIP updates of an item can be known
    several: bool = False  # the config has several CaiaSoft connections: each hit names its own


@dataclass(frozen=True)
class ItemLine:
    record: int | None
    line: int | None
    barcode: str
    answer: str
    request: str
    pickup: str
    problem: str


@dataclass(frozen=True)
class FileView:
    id: int
    name: str
    state: str
    source: str
    taken: str
    sent: str
    reason: str
    where: str
    gone: str | None  # why the file's text cannot be shown (removed by retention, moved)
    items: list[ItemLine]
    not_listed: int  # records not shown
    text: str | None
    text_note: str | None


def search(ledger: Ledger | None, config: Settings, typed: str) -> Search:
    """The request files that carried the barcode typed, newest first (ledger None: the gateway never ran)."""
    barcode = typed.strip()
    feed = any(server.feed is not None for server in config.ncip_servers)  # [ncip.feed] or [ncip.NAME.feed]
    if not barcode:
        return Search("", "Type or scan an item's barcode.", [], 0, False, feed)
    if len(barcode) > MAX_BARCODE:
        return Search(
            printable(barcode[:MAX_BARCODE]) + "...",
            f"That is too long for a barcode (at most {MAX_BARCODE} characters).",
            [],
            0,
            False,
            feed,
        )
    if ledger is None:
        return Search(printable(barcode), None, [], 0, False, feed)
    entries = find.find(ledger, barcode, [config.paths.archive_dir, config.paths.error_dir], backfill=False)
    shown = [_hit(ledger, entry) for entry in entries[:HITS_SHOWN]]
    if feed and entries:
        shown = _with_updates(shown, entries[:HITS_SHOWN], ledger.items.feed_updates(entries[0]["barcode"]))
    return Search(
        printable(barcode),
        None,
        shown,
        max(len(entries) - HITS_SHOWN, 0),
        find.backfill_pending(ledger, [config.paths.archive_dir, config.paths.error_dir]),
        feed,
        config.several,
    )


def _hit(ledger: Ledger, entry: dict[str, Any]) -> Hit:
    row = ledger.files.get(entry["ledger_id"]) if entry.get("ledger_id") else None
    pruned = ""
    if entry.get("pruned_at"):
        placed = "archived" if entry.get("state") == FileState.ARCHIVED else "refused"
        pruned = f"pruned by retention on {entry['pruned_at'][:10]} ({placed} {_short(entry.get('taken'))[:10]})"
        if entry.get("earlier_removed"):
            pruned += (
                f"; {entry['earlier_removed']} earlier file(s) since {(entry.get('first_taken') or '?')[:10]} "
                "also pruned"
            )
    if entry.get("path"):
        where = entry["path"] + ("" if entry.get("path_exists") or pruned else " (no longer there: moved or removed)")
    else:
        where = "still in the gateway's queue"
    return Hit(
        file=file_name(row) if row is not None else entry.get("file") or "",
        file_id=entry.get("ledger_id"),
        written=when(row.mtime) if row is not None else "",
        taken=_short(entry.get("taken")),
        sent=_short(entry.get("sent")) or "not sent",
        answer=item_answer(entry.get("caiasoft"), entry.get("outcome"), entry.get("reason")),
        request=entry.get("request_number") or "",
        pickup=entry.get("pickup_location") or "",
        where=where,
        pruned=pruned,
        ncip=[],
        connection=find.connection_of(entry) or "",
    )


def _with_updates(hits: list[Hit], entries: list[dict[str, Any]], updates: list[tuple[str, str, float]]) -> list[Hit]:
    """Each NCIP update the status feed journaled, given to the newest file taken before it."""
    taken = [_instant(entry.get("taken")) for entry in entries]
    given: list[list[str]] = [[] for _ in hits]
    for kind, _day, at in updates:
        for index, moment in enumerate(taken):
            if moment is not None and moment <= at:
                given[index].append(f"{_FEED.get(kind, printable(kind))} {when(at)}")
                break
    return [replace(hit, ncip=lines) for hit, lines in zip(hits, given, strict=True)]


def item_answer(status: Any, outcome: str | None, reason: str | None) -> str:
    """CaiaSoft's answer for one item in words: requested, denied and why, or what became of its file."""
    if isinstance(status, dict) and status:
        if is_denied(status):
            return f"denied: {printable(str(status.get('istatus') or 'no reason given'))}"
        return "requested"
    if outcome == Verdict.REFUSED:
        return "not requested: the file was refused" + (f" ({reason})" if reason else "")
    if outcome == Verdict.ACCEPTED:
        return "requested (CaiaSoft accepted the file; no answer per item)"
    return "not sent yet"


def _short(iso: str | None) -> str:
    """An ISO time from find (2026-11-28T10:03:00+01:00) as the page shows it (2026-11-28 10:03)."""
    return iso[:16].replace("T", " ") if iso else ""


def _instant(iso: str | None) -> float | None:
    try:
        return dt.datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


# -- one file ------------------------------------------------------------------------


def file_view(ledger: Ledger, config: Settings, file_id: int) -> FileView | None:
    """A ledger row in readable form, or None if there is no such row."""
    row = ledger.files.get(file_id)
    if row is None:
        return None
    try:
        answers = answers_by_item(row.answer_json)
    except ValueError:
        answers = {}
    outcome = Verdict.ACCEPTED if row.accepted else (row.verdict or (Verdict.REFUSED if row.reason else None))
    records = ledger.items.records_of(row.id, RECORDS_SHOWN)
    items = [
        ItemLine(
            record.number or None,
            record.line,
            printable(barcode),
            item_answer(answers.get(barcode), outcome if row.state in _DONE else None, None),
            printable(record.request_number or ""),
            printable(record.pickup_location or ""),
            printable(record.problem or ""),
        )
        for record in records
        for barcode in record.barcodes or ("",)
    ]
    path = _path_of(row, config)
    text, note, gone = _text(ledger, path)
    return FileView(
        id=row.id,
        name=file_name(row),
        state=_STATES.get(row.state, str(row.state)),
        source=printable(row.source),
        taken=when(row.claimed_at or row.seen_at),
        sent=when(row.uploaded_at) or "not sent",
        reason=printable(row.reason or "") if not row.accepted else "",
        where=printable(str(path)) if path else "",
        gone=gone,
        items=items,
        not_listed=max(ledger.items.record_count(row.id) - len(records), 0),
        text=text,
        text_note=note,
    )


def _path_of(row: FileRow, config: Settings) -> Path | None:
    """Where the file is: its final path once placed; state_dir/work/ while the gateway holds it. Only a path
    inside archive_dir, error_dir or work/ once links are resolved (a day folder made a link to elsewhere, a row
    changed by hand): the page shows the gateway's own files, nothing else on the host."""
    if row.final_path:
        path = Path(row.final_path)
    elif row.state in (FileState.CLAIMED, FileState.QUEUED, FileState.UPLOADING, FileState.ANSWERED, FileState.STUCK):
        path = config.paths.work_dir / row.work_name
    else:
        return None
    roots = (config.paths.archive_dir, config.paths.error_dir, config.paths.work_dir)
    real = Path(os.path.realpath(path))
    return path if any(real.is_relative_to(os.path.realpath(root)) for root in roots) else None


def _text(ledger: Ledger, path: Path | None) -> tuple[str | None, str | None, str | None]:
    """(the file's text, a note about it, why it is gone): UTF-8 with replacement, at most TEXT_BYTES."""
    if path is None:
        return None, None, "The file is not kept anywhere yet."
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        pruned = ledger.prunes.pruned_at(str(path.parent))
        if pruned is not None:
            return None, None, f"Pruned by retention on {when(pruned)[:10]}: the file and its day folder are gone."
        return None, None, "The file is no longer there (moved or removed)."
    except OSError as error:
        return None, f"The file cannot be read: {printable(describe(error))}", None
    try:
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None, "It is not a regular file: nothing is read from it.", None
            data = handle.read(TEXT_BYTES + 1)
    except OSError as error:
        return None, f"The file cannot be read: {printable(describe(error))}", None
    note = f"Only the first {TEXT_BYTES // 1024} KiB are shown." if len(data) > TEXT_BYTES else None
    return _shown(data[:TEXT_BYTES].decode("utf-8", "replace").replace("\r\n", "\n")), note, None


def _shown(text: str) -> str:
    """A file's text with its line breaks and tabs, every other control or invisible character escaped."""

    def escaped(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _HIDDEN.sub(escaped, text)
