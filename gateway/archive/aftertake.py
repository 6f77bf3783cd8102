"""After the take: did the original change since? For files whose original stays in its source.

An SFTP original always stays until its outcome is known; a local one stays when
open writers cannot be seen there (it was copied, not moved). Before the upload
and again before the original is removed, the original is compared with what
was taken. If it changed, a writer was only pausing: the copy in hand is not sent
(or, if it was sent already, its sidecar says so), the original is never
removed, and it is taken again, whole, as a new file once it settles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.archive.folders import SIDECAR_SUFFIX, Folder
from gateway.core import logs
from gateway.core.states import CHANGED_AFTER_TAKE
from gateway.sources.base import Source, Taken
from gateway.state.ledger import FileRow

log = logs.get("gateway.aftertake")


def taken(row: FileRow) -> Taken:
    """What was taken of this row's file (size and sha256 of the copy in work/, the original's mtime)."""
    return Taken(origin=row.origin, size=row.size or 0, mtime=row.mtime or 0.0, sha256=row.sha256)


def keeps_original(row: FileRow, sources: dict[str, Source]) -> Source | None:
    """The source still holding this row's original, if there is one to compare with."""
    if row.released_at is not None or row.mtime is None:
        return None
    return sources.get(row.source)


def changed_since_take(row: FileRow, sources: dict[str, Source], step: str) -> int | None:
    """The original's size now if it changed since it was taken (then logged); None if not, or unknowable."""
    source = keeps_original(row, sources)
    if source is None:
        return None
    try:
        size_now = source.changed(taken(row))
    except OSError as error:  # the source cannot be asked now: the check before removal still comes
        log.warning(
            "file.change_check_failed",
            id=row.id,
            source=row.source,
            file=row.name,
            step=step,
            error=getattr(error, "strerror", None) or str(error),
        )
        return None
    if size_now is not None:
        log_changed(row, size_now, step)
    return size_now


def log_changed(row: FileRow, size_now: int, step: str) -> None:
    log.warning(
        "file.changed_after_take",
        id=row.id,
        source=row.source,
        file=row.name,
        origin=row.origin,
        taken_size=row.size,
        size_now=size_now,
        step=step,
        detail="the original is left in place and taken again, whole, once it settles",
    )


def reason(row: FileRow, size_now: int) -> str:
    return f"{CHANGED_AFTER_TAKE} ({row.size} bytes were taken, it has {size_now} now; not sent)"


def note(row: FileRow, size_now: int, now_sidecar: dict[str, Any]) -> dict[str, Any]:
    """The sidecar of a file that was sent or refused before its original changed, saying so."""
    return {
        **now_sidecar,
        "changed_after_take": {
            "taken_size": row.size,
            "taken_sha256": row.sha256,
            "original_size_now": size_now,
            "detail": "the original changed after this version was taken: this file is exactly what was "
            "taken (and, if outcome is accepted, sent); the later version is taken again whole "
            "as a new file",
        },
    }


def add_note(folder: Folder, row: FileRow, size_now: int, fallback: dict[str, Any]) -> None:
    """Rewrite the sidecar beside row.final_path with the note (fallback: the sidecar as it would be)."""
    final = Path(row.final_path or "")
    try:
        current = json.loads(final.with_name(final.name + SIDECAR_SUFFIX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = fallback
    folder.write_sidecar(final, note(row, size_now, current))
