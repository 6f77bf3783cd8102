"""`prune [--dry-run]`: what retention would remove now (archive and error days), or remove it now.

The dry run only reads (no lock, no write): it opens the ledger as `status` does and
asks gateway.archive.retention for the same plan the service's next pass would make, counting
on the same day (the clock, unless it is far ahead of the ledger's time). `prune` itself
runs that pass to the end, and only while the service is stopped (it holds state_dir's
lock, as the service does): a running service prunes at start and every hour by itself.
--trust-clock counts from the clock however far ahead it is: the admin's word, after a
long stop, that the clock is right.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from gateway.archive.folders import SIDECAR_SUFFIX, Folder
from gateway.archive.retention import Retention
from gateway.config.settings import Settings
from gateway.core import logs
from gateway.core.errors import AlreadyRunning
from gateway.core.names import printable
from gateway.runtime.service import StateLock
from gateway.state.ledger import Ledger


def prune(settings: Settings, dry_run: bool, trust_clock: bool = False) -> tuple[list[str], int]:
    """Given the config, return the lines to print and the exit code (1: the service runs, nothing done; or a day
    could not be removed, or days were held back: the reason is the last line)."""
    lock = None
    if not dry_run:
        try:
            lock = StateLock(settings.paths.lock_file).acquire()
        except AlreadyRunning as error:
            return [
                f"caiasoft-gateway prune: {error}: it prunes by itself at start and every hour. "
                "Stop it to prune now, or see what would go with --dry-run."
            ], 1
    try:
        ledger = Ledger(settings.paths.database)
        try:
            return _run(settings, ledger, dry_run, trust_clock)
        finally:
            ledger.close()
    finally:
        if lock is not None:
            lock.release()


def _run(settings: Settings, ledger: Ledger, dry_run: bool, trust_clock: bool) -> tuple[list[str], int]:
    archive, errors = Folder(settings.paths.archive_dir), Folder(settings.paths.error_dir)
    days, error_days = settings.archive.retention_days, settings.archive.error_retention_days
    retention = Retention(ledger, trust_clock=trust_clock)
    plan = retention.plan([(archive, days), (errors, error_days)])
    lines = [
        f"archive_dir {_shown(archive.root)}: "
        + (f"days older than {days} day(s) go" if days else "kept whole (retention_days = 0)"),
        f"error_dir {_shown(errors.root)}: "
        + (
            f"days older than {error_days} day(s) go"
            if error_days
            else "refused files are kept (error_retention_days = 0)"
        ),
        f"counting from {_counted(plan.trusted, plan.wall)}",
    ]
    if not dry_run:
        logs.setup(settings.paths.log_dir, console=False)
        removed = retention.prune(archive, days, errors, error_days)
        lines += [f"removed {_shown(day)}" for day in removed] or ["nothing to remove"]
        if retention.problem:  # a day that could not go, or days the clock alone calls old: not done, said why
            return [*lines, f"not done: {retention.problem}"], 1
        return lines, 0
    verb = "would"
    lines += [f"{verb} finish {_shown(day)} (a pass cut short): {_what(ledger, day)}" for day in plan.resumed]
    lines += [f"{verb} remove {_shown(day)}: {_what(ledger, day)}" for day in plan.removed]
    lines += [f"held back, the clock being ahead of the ledger's time: {_shown(day)}" for day in plan.held]
    if not plan.resumed and not plan.removed:
        lines.append("nothing would be removed")
    return lines, 0


def _counted(trusted: float, wall: float) -> str:
    """The day retention counts from, and why when it is not the clock's."""
    counted, clock = dt.date.fromtimestamp(trusted), dt.date.fromtimestamp(wall)
    if counted == clock:
        return counted.isoformat()
    return (
        f"{counted.isoformat()}, the ledger's time: the clock says {clock.isoformat()}, further ahead of it "
        "than retention counts from unasked (see --trust-clock)"
    )


def _what(ledger: Ledger, day: Path) -> str:
    """What goes with a day folder: its files, and the ledger rows compacted to a row per item."""
    files = f"{_files_in(day)} file(s)" if os.path.lexists(day) else "the folder is gone already"
    return (
        f"{files}, {ledger.retired.rows_in(str(day))} ledger row(s) compacted "
        "(find keeps, per item: file, day, outcome, request number, CaiaSoft's status)"
    )


def _files_in(day: Path) -> int:
    """The files in a day folder, their sidecars not counted (0 if it is gone)."""
    try:
        with os.scandir(day) as entries:
            return sum(1 for entry in entries if not entry.name.endswith(SIDECAR_SUFFIX))
    except OSError:
        return 0


def _shown(path: Path) -> str:
    return printable(str(path))
