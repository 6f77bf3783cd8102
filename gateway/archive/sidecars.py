"""The NAME.json an admin reads beside each file in the archive or error folder."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.core.names import printable
from gateway.core.states import Verdict
from gateway.state.itemindex import is_denied
from gateway.state.ledger import FileRow


def _iso(moment: float | None) -> str | None:
    return dt.datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds") if moment else None


def sidecar(row: FileRow, final: Path, now: float, contents: dict[str, Any] | None = None) -> dict[str, Any]:
    """The NAME.json an admin reads beside a file in the archive or error folder.

    contents (Pipeline.contents) says what was in the file: its records, or a barcode list's barcodes.
    """
    answer = row.answer_json
    denied = [item for item in answer.get("results") or [] if is_denied(item)] if isinstance(answer, dict) else []
    return {
        "file": final.name,
        "original_name": printable(row.name),  # escaped as in status: reversible with names.unprintable
        "outcome": str(Verdict.ACCEPTED if row.accepted else Verdict.REFUSED),
        "reason": row.reason,
        "source": row.source,
        "original_path": printable(row.origin),
        "size": row.size,
        "sha256": row.sha256,
        "kind": row.kind,
        "details": json.loads(row.details) if row.details else None,
        "http_status": row.http_status,
        "caiasoft_answer": answer,
        "denied_items": denied,
        **(contents or {}),
        "attempts": row.attempts,
        "times": {
            "seen": _iso(row.seen_at),
            "claimed": _iso(row.claimed_at),
            "uploaded": _iso(row.uploaded_at),
            "finished": _iso(row.finished_at or now),
        },
        "ledger_id": row.id,
        "gateway": f"aleph-caiasoft-gateway {__version__}",
    }
