"""`retry`: files an admin puts back from error_dir into the queue."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gateway.archive.folders import SIDECAR_SUFFIX, safe_name
from gateway.config.settings import DEFAULT_CONNECTION
from gateway.core import logs
from gateway.core.files import move_no_clobber
from gateway.runtime.pipeline import Pipeline
from gateway.state.ledger import FileRow, work_name

log = logs.get("gateway.retry")


def _error_files(error_dir: Path) -> list[Path]:
    return sorted(
        path
        for path in error_dir.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]/*")
        if path.is_file()
        and not path.is_symlink()
        and not path.name.startswith(".")
        and not path.name.endswith(SIDECAR_SUFFIX)
    )


def find_in_error_dir(error_dir: Path, names: list[str], every: bool) -> tuple[list[Path], list[str]]:
    """Return (files to retry, names not found).

    A name is a path in error_dir, or a bare file name: as it is in error_dir (its
    safe name, caf%E9.xml) or as the file was first called (caf\xe9.xml, raw bytes).
    """
    candidates = _error_files(error_dir) if error_dir.is_dir() else []
    if every:
        return candidates, []
    found, missing = [], []
    for name in names:
        path = Path(name).resolve() if os.sep in name else None
        matches = [c for c in candidates if (c.resolve() == path if path else c.name in (name, safe_name(name)))]
        if matches:
            found.append(matches[-1])  # the newest day wins
        else:
            missing.append(name)
    return found, missing


def put_back(pipeline: Pipeline, path: Path) -> FileRow:
    """Move one file from error_dir back into work/, validate it again, and return its row."""
    ledger = pipeline.ledger
    row = ledger.files.find_refused(path)
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if row is None:  # not in this ledger (e.g. put there by hand): take it like a new file
        connection = _sidecar_connection(sidecar, pipeline)
        info = path.stat()
        row_id = ledger.files.begin_claim("retry", path.name, str(path), info.st_size, info.st_mtime, connection)
        try:
            move_no_clobber(path, pipeline.work_dir / work_name(row_id, path.name))
        except OSError:
            ledger.files.forget(row_id)
            raise
        ledger.files.claimed(row_id)
    else:
        row_id = row.id
        move_no_clobber(path, pipeline.work_dir / work_name(row.id, row.name))
        ledger.files.reopen(row.id, row.name)
    sidecar.unlink(missing_ok=True)
    log.info(
        "retry.requeued",
        id=row_id,
        file=path.name,
        connection=ledger.files.row(row_id).connection,
        previous_reason=row.reason if row else None,
    )
    pipeline.admission.admit(row_id)
    return ledger.files.row(row_id)


class ConnectionGone(LookupError):
    """A refused file's sidecar names a CaiaSoft connection the config no longer has."""


def _sidecar_connection(sidecar: Path, pipeline: Pipeline) -> str:
    """The CaiaSoft connection a refused file's sidecar names (the default one if it names none). Raise
    ConnectionGone if the config lacks it: a library's request is never sent to another library's account."""
    try:
        named = json.loads(sidecar.read_text(encoding="utf-8")).get("connection")
    except (OSError, ValueError, AttributeError):
        named = None
    if not isinstance(named, str):
        return DEFAULT_CONNECTION
    if pipeline.config.connection(named) is None:
        raise ConnectionGone(
            f"its sidecar says it was for CaiaSoft connection {named!r}, which the config does not have: add "
            f"[caiasoft.{named}] back first (it is never sent to another connection)"
        )
    return named
