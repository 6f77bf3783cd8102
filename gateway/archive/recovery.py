"""After a crash: finish or resume what was interrupted, from the ledger's rows and the files in work/.

Run once at start, before any worker (runtime.service), through runtime.pipeline.Pipeline.recover(),
which then validates the files a crash left claimed:
  * a half-written copy in work/ whose writer is gone is deleted (its claim is redone);
  * a claim cut short is completed if the file reached work/, else forgotten
    (the file is still in its source);
  * a file that was being uploaded is queued again (sent at most a second time);
  * no file waits longer than backoff_max_seconds from now (an earlier run's retry instants were on
    its own clock; see gateway/core/backoff.py);
  * a file answered, or being placed, is placed (under its own name: the empty sidecar a crash
    left as its name's reservation before the place was recorded is removed first, and so are
    the partial copies of the file or its sidecar a crash left beside its recorded place);
  * a file in work/ without a row (the ledger was lost) is adopted and sent.
Each row and each stray file is its own boundary: one that cannot be finished now
(an OSError) is logged and left for the next start, and the rest are finished.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path

from gateway.archive.folders import SIDECAR_SUFFIX
from gateway.archive.placing import Placing
from gateway.core import files, logs
from gateway.core.errors import describe
from gateway.core.files import PARTIAL_GLOB
from gateway.core.states import PLACING_STATES, FileState
from gateway.sources.base import Source
from gateway.state.ledger import FileRow, Ledger, work_name

log = logs.get("gateway.pipeline")  # its lines were always the pipeline's: scripts filter on the logger


def recover(
    ledger: Ledger,
    placing: Placing,
    sources: dict[str, Source],
    local_sources: list[str],
    backoff_max_seconds: float,
) -> dict[str, int]:
    """Finish or resume everything a crash interrupted; return what was done, by kind.

    Each row and each stray file is its own boundary: one that cannot be finished
    now (an OSError) is logged and left for later, and the rest are finished.
    Unfinished placements are handed back to placing; local_sources names the
    sources on this host (their takes cut short are completed from work/).
    """
    done = {
        "claims_completed": 0,
        "claims_dropped": 0,
        "requeued": 0,
        "finished": 0,
        "adopted": 0,
        "postponed": 0,
        "waits_capped": 0,
    }
    for leftover in placing.work_dir.glob(PARTIAL_GLOB):  # half-written copies: the claim is redone
        if files.writer_gone(leftover):  # not the copy a running `send` is making
            _contained("recovery.partial_left", leftover.name, done, leftover.unlink)
    _recover_claims(ledger, placing, sources, local_sources, done)
    for row in ledger.files.in_state(FileState.UPLOADING):
        ledger.files.interrupted(row.id)
        done["requeued"] += 1
    ledger.files.unstick()
    done["waits_capped"] = ledger.files.cap_waits(backoff_max_seconds)
    answered = ledger.files.in_state(*PLACING_STATES)
    kept = {row.final_path for row in answered if row.final_path}
    for final in (Path(path) for path in kept):
        sidecar = final.with_name(final.name + SIDECAR_SUFFIX)
        for partial in (*files.partials_left(final), *files.partials_left(sidecar)):
            _contained("recovery.partial_left", str(partial), done, functools.partial(_remove_partial, partial))
    for row in answered:
        if row.state == FileState.ANSWERED:
            _contained(
                "recovery.reservation_left",
                row.name,
                done,
                functools.partial(_release_reservations, placing, row, kept),
            )
        if placing.place(row) is not None:
            done["finished"] += 1
    _adopt_strays(ledger, placing.work_dir, done)
    if any(done.values()):
        log.info("recovery.done", **done)
    return done


def _remove_partial(partial: Path) -> None:
    """A copy into the archive or error folder (another filesystem), or a sidecar, a crash cut short:
    placing writes it again under its own partial name."""
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
        log.info("recovery.partial_removed", file=str(partial))


RESERVATION_DAYS = 62  # day folders looked at for a crash's reservation, back from today (a stop that long is rare)


def _release_reservations(placing: Placing, row: FileRow, kept: set[str]) -> None:
    """The name a crash reserved for an answered file before its place was recorded is free again: in
    every day folder from the day it was answered (a reservation made before midnight) to today."""
    today = dt.date.fromtimestamp(placing.clock())
    since = dt.date.fromtimestamp(row.uploaded_at or row.claimed_at or row.seen_at)
    day = max(since, today - dt.timedelta(days=RESERVATION_DAYS))
    while day <= today:
        placing.folder_for(row).release_stale_reservations(row.name, dt.datetime.combine(day, dt.time()), kept)
        day += dt.timedelta(days=1)


def _contained(event: str, name: str, done: dict[str, int], action: Callable[[], object]) -> None:
    """Run one recovery action; an OSError on this file is logged and left for the next start."""
    try:
        action()
    except OSError as error:
        done["postponed"] += 1
        log.error(event, file=name, error=describe(error), detail="left as it is; tried again at the next start")


def _recover_claims(
    ledger: Ledger, placing: Placing, sources: dict[str, Source], local_sources: list[str], done: dict[str, int]
) -> None:
    """A claim cut short: complete it if the file reached work/, else forget it (it is still in the source)."""
    ledger.files.release_rows_from_before_kept_originals(local_sources)
    for row in ledger.files.in_state(FileState.CLAIMING):
        work = placing.work_path(row)
        if work.exists():
            ledger.files.claimed(row.id)
            done["claims_completed"] += 1
            complete = functools.partial(_complete_take, ledger, sources.get(row.source), row, work)
            _contained("recovery.take_not_completed", row.name, done, complete)
        else:
            ledger.files.forget(row.id)
            done["claims_dropped"] += 1


def _complete_take(ledger: Ledger, source: Source | None, row: FileRow, work: Path) -> None:
    """Remove the original of a move cut short (a batch's originals go after one sync of work/);
    one that cannot be is removed once sent, if unchanged, like an original kept on purpose."""
    if source is not None and row.origin and source.complete_take(row.origin, work):
        ledger.files.moved_when_taken(row.id)


def _adopt_strays(ledger: Ledger, work_dir: Path, done: dict[str, int]) -> None:
    """Files in work/ without a row (the ledger was lost): give each a row and its work name (claimed: the
    caller validates them)."""
    known = ledger.files.known_work_names()
    for path in sorted(work_dir.iterdir()):
        if path.name not in known and not path.name.startswith(".") and path.is_file() and not path.is_symlink():
            _contained("recovery.adopt_failed", path.name, done, functools.partial(_adopt, ledger, path, done))


def _adopt(ledger: Ledger, path: Path, done: dict[str, int]) -> None:
    name = path.name.split(".", 1)[1] if "." in path.name else path.name
    row_id = ledger.files.adopt(name, path.stat().st_size, str(path))
    path.rename(path.parent / work_name(row_id, name))
    done["adopted"] += 1
