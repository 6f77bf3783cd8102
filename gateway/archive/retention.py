"""Retention: archive days older than archive.retention_days are removed, on a day the ledger agrees with.

The wall clock is not trusted on its own. Each pass marks in the ledger the time it
counted from (gateway/state/prunestore.py); at start the ledger's time is that mark (or, in
a ledger no pass has marked yet, the newest time it recorded), and from then on that
plus the monotonic time since. A pass counts from the clock when it is at most
CLOCK_AHEAD_SECONDS ahead of the ledger's time (a restart, a stop of a day) or
behind it, and from the ledger's time otherwise: a clock set far ahead (40 days, with
retention_days = 30) removes nothing the ledger's time would keep, at this start or
any later one, since the mark is never the far clock's time, nor are the times of
files taken under it counted. Those days are held and `problem` says why (the log,
`status`). The gateway cannot tell a clock that is wrong from one that is right after
a long stop, so it never guesses: after a stop longer than CLOCK_AHEAD_SECONDS the
admin who knows the clock is right says so with `caiasoft-gateway prune
--trust-clock` (trust_clock), and retention counts from the clock from then on.

What retention removes it records (the pruned table, as it marks a day: RetiredStore.begin_pruning),
so `find` says "removed by retention" instead of listing a path that is gone. Files in error_dir are removed
only if the admin asks (archive.error_retention_days, 0 by default: kept).

A day is removed whole or resumed (gateway/state/retiredstore.py): it is marked in the ledger
before anything goes, its folder removed, the rows of its files compacted to one row per
item (what `find` needs), and the mark dropped. A pass cut short by a kill -9 leaves the
mark, and the next pass (at start first) finishes that day before anything else. A pass
gives up the thread after `budget` seconds between days (the service goes on at its next
tick), so a first pass over years of history never holds the service's main loop for long.
Days whose folder is gone already (removed by hand before retention was set) while the
ledger holds their rows are compacted the same way, found by the files' path index; an
archive_dir that is missing or empty (an unmounted share) is never taken for one.
After a pass that compacted rows, the pages they freed are given back at a quiet moment
(nothing in the queue), VACUUM_PAGES at a time, each step its own short transaction.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.archive.folders import Folder, day_date
from gateway.core import logs
from gateway.core.errors import describe
from gateway.core.states import OPEN_STATES

if TYPE_CHECKING:
    from gateway.state.ledger import Ledger

log = logs.get("gateway.retention")

# how far ahead of the ledger's time the clock may be and still be counted from: a stop of a day and a night
# catches up by itself; a clock further ahead (or a longer stop) holds days back until the admin vouches for it
CLOCK_AHEAD_SECONDS = 36 * 3600.0


@dataclass
class Plan:
    """What a pass would remove, on which day it counts from, and what the clock alone would remove too."""

    wall: float
    ledger_now: float | None
    trusted: float  # the earlier of the two: days are counted from it
    resumed: list[Path] = field(default_factory=list)  # days a crash or a stop left half-removed: finished first
    removed: list[Path] = field(default_factory=list)  # day folders older than their retention, oldest first
    held: list[Path] = field(default_factory=list)  # older than that by the wall clock only: kept
    strays: list[Path] = field(default_factory=list)  # marks that are no day folder of these folders: dropped


class Retention:
    """Prunes the archive on the earlier of the wall clock and the ledger's time (see the module's docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        trust_clock: bool = False,
    ):
        self.ledger = ledger
        self.wall = wall
        self.monotonic = monotonic
        self.trust_clock = trust_clock  # the admin said the clock is right (prune --trust-clock)
        mark = ledger.prunes.clock_mark()  # the ledger's time at start (None: it has recorded nothing)
        self.newest = mark if mark is not None else ledger.prunes.newest_time()
        self.started = monotonic()
        self.problem: str | None = None  # why days are held back, while they are
        self.unfinished = False  # the last pass ran out of its budget: days (or free pages) are left

    def ledger_now(self) -> float | None:
        """The newest time the ledger had recorded at start, plus the time this process has run since."""
        return None if self.newest is None else self.newest + self.monotonic() - self.started

    def plan(self, folders: list[tuple[Folder, int]]) -> Plan:
        """What a pass would do now over these (folder, its retention days; 0: none) pairs. Writes nothing."""
        wall = self.wall()
        ledger_now = self.ledger_now()
        if ledger_now is None or self.trust_clock or wall - ledger_now <= CLOCK_AHEAD_SECONDS:
            trusted = wall  # it agrees with the ledger's time, is behind it, or the admin vouched for it
        else:
            trusted = ledger_now
        plan = Plan(wall, ledger_now, trusted)
        for marked, _ in self.ledger.retired.pruning():
            (plan.resumed if _day_of(Path(marked), [folder for folder, _ in folders]) else plan.strays).append(
                Path(marked)
            )
        for folder, days in folders:
            removed = [day for day in folder.old_days(days, dt.date.fromtimestamp(trusted)) if day not in plan.resumed]
            if days:
                oldest_kept = dt.date.fromtimestamp(trusted) - dt.timedelta(days=days)
                removed = sorted(removed + self._gone_days(folder, oldest_kept, removed + plan.resumed))
            plan.removed += removed
            if dt.date.fromtimestamp(wall) > dt.date.fromtimestamp(trusted):  # else the clock calls no other day old
                plan.held += [
                    day
                    for day in folder.old_days(days, dt.date.fromtimestamp(wall))
                    if day not in removed and day not in plan.resumed
                ]
        return plan

    def _gone_days(self, folder: Folder, before: dt.date, known: list[Path]) -> list[Path]:
        """Days before `before` whose folder is gone already (removed by hand, say) while the ledger still holds
        their files' rows in full: those rows are compacted too. One index seek a day (next_row_path).
        A folder that is missing or empty (an unmounted share) is not taken for one whose days are gone."""
        root = folder.root
        if not root.is_dir() or root.is_symlink() or not any(root.iterdir()):
            return []
        found: list[Path] = []
        after, end = f"{root}/", f"{root}0"
        while (path := self.ledger.retired.next_row_path(after, end)) is not None:
            parts = Path(path).relative_to(root).parts
            date = day_date(parts[:3]) if len(parts) == 4 else None
            if date is None:  # not a file of a day folder: step past it
                after = path
                continue
            if date >= before:
                break
            day = root.joinpath(*parts[:3])
            if day not in known and not os.path.lexists(day):
                found.append(day)
            after = f"{day}0"  # past every path in that day folder ('0' follows '/')
        return found

    def prune(
        self,
        archive: Folder,
        retention_days: int,
        errors: Folder | None = None,
        error_days: int = 0,
        budget: float | None = None,
    ) -> list[Path]:
        """Remove the day folders older than retention_days in archive (and error_days in errors; 0: none)
        by the trusted day, after finishing any a crash left half-removed; return the days removed.

        With budget (seconds), the pass stops between two days once it is spent, and sets unfinished.
        """
        began = self.monotonic()
        plan = self.plan([(archive, retention_days), *([(errors, error_days)] if errors is not None else [])])
        removed: list[Path] = []
        self.unfinished = False
        for stray in plan.strays:  # the config changed since, or the ledger was edited: nothing is removed
            log.warning(
                "archive.prune_mark_dropped",
                folder=str(stray),
                detail="not a day folder of archive_dir or error_dir (or a link): nothing of it is removed",
            )
            self.ledger.retired.end_pruning(str(stray))
        failed: dict[Path, str] = {}
        for day in (*plan.resumed, *plan.removed):
            if budget is not None and (removed or failed) and self.monotonic() - began > budget:
                self.unfinished = True
                break
            try:
                self._remove(day, plan.trusted)
            except OSError as error:  # a file in it that cannot go (owned by root, immutable, an NFS .nfsXXXX)
                failed[day] = describe(error)
                log.error(
                    "archive.prune_failed",
                    folder=str(day),
                    error=failed[day],
                    detail="this day stays marked and is tried again at the next pass; the others go on",
                )
                continue
            removed.append(day)
        if plan.resumed:
            log.info(
                "archive.prune_resumed_day",
                days=[str(day) for day in plan.resumed],
                detail="a pass cut short (stop or crash) is finished",
            )
        self.ledger.prunes.mark_clock(plan.trusted)  # never a clock it did not count from: see the docstring
        if removed:
            log.info(
                "archive.pruned",
                days=len(removed),
                retention_days=retention_days,
                error_retention_days=error_days,
                first=str(removed[0]),
                last=str(removed[-1]),
            )
        if not self.unfinished:  # also what an earlier pass left free (its budget ran out, or files were queued)
            self._give_back(began, budget)
        self._say_held(plan, failed)
        return removed

    def _remove(self, day: Path, at: float) -> None:
        """One day, whole: marked, its folder removed, its rows compacted, the mark dropped (see the docstring)."""
        folder = str(day)
        self.ledger.retired.begin_pruning(folder, at)
        if day.is_dir():  # a day of old_days, or a mark checked by _day_of: a real folder, not a link
            Folder(day.parent.parent.parent).remove_day(day)
        compacted = 0
        while count := self.ledger.retired.compact(folder, at):
            compacted += count
        self.ledger.retired.end_pruning(folder)
        log.info("archive.day_pruned", folder=folder, rows_compacted=compacted)

    def _give_back(self, began: float, budget: float | None) -> None:
        """Give back the pages compaction freed, in short steps, while nothing waits in the queue."""
        free = self.ledger.retired.free_pages()
        while free and not any(self.ledger.files.counts().get(state) for state in OPEN_STATES):
            if budget is not None and self.monotonic() - began > budget:
                self.unfinished = True
                return
            free = self.ledger.retired.vacuum_step()

    def _say_held(self, plan: Plan, failed: dict[Path, str]) -> None:
        """Log and keep (problem) why days are held back: the clock far ahead, or a day that could not be removed."""
        wall, ledger_now, held = plan.wall, plan.ledger_now, plan.held
        problem = None
        if failed:
            day, error = next(iter(failed.items()))
            problem = (
                f"retention could not remove {len(failed)} day folder(s), first {day}: {error}; they are "
                "tried again every pass (the other days went): remove what blocks them, as the service user"
            )
        elif held and ledger_now is not None and wall - ledger_now > CLOCK_AHEAD_SECONDS:
            problem = (
                f"retention held {len(held)} day folder(s) back: the clock says {_day(wall)}, "
                f"{_span(wall - ledger_now)} ahead of the ledger's time ({_day(ledger_now)}: the time its "
                f"last pass counted from, plus the time since start); nothing is removed on that clock's "
                f"word. Fix the clock; if it is right (the gateway was stopped that long), say so with "
                f"caiasoft-gateway prune --trust-clock (with the service stopped)"
            )
        if problem != self.problem:
            if failed:
                pass  # each day that could not go was logged as archive.prune_failed
            elif problem:
                log.warning(
                    "archive.prune_held",
                    reason=problem,
                    held=[str(day) for day in held],
                    clock=_day(wall),
                    ledger_time=_day(ledger_now or wall),
                )
            else:
                log.info("archive.prune_resumed", detail="nothing is held back any more")
            self.problem = problem


def _day_of(day: Path, folders: list[Folder]) -> bool:
    """Whether day is a day folder (ROOT/YYYY/MM/DD, not a link) of one of these folders."""
    return not day.is_symlink() and any(
        day.parent.parent.parent == folder.root and day_date(day.parts[-3:]) is not None for folder in folders
    )


def _day(moment: float) -> str:
    return dt.date.fromtimestamp(moment).isoformat()


def _span(seconds: float) -> str:
    """A long time in days and hours, to the nearest hour."""
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days} day(s) {hours} h" if days else f"{hours} h"
