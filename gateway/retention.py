"""Retention: archive days older than archive.retention_days are removed, on a day the ledger agrees with.

The wall clock is not trusted on its own. At start, Retention reads the newest time
the ledger recorded (gateway/prunestore.py); from then on the ledger's time is that
plus the monotonic time since. Days are counted from the earlier of the two clocks,
so a clock set far ahead (40 days, with retention_days = 30) removes nothing the
ledger's time would keep: those days are held, and, when the clock is more than
CLOCK_AHEAD_SECONDS ahead, `problem` says why (the log, `status`). The gateway cannot
tell a clock that is wrong from one that is right after a long stop: either way
nothing is removed on the clock's word during this run; each pass marks the time it
saw in the ledger, so if the clock is right retention catches up at the next start.

What retention removes it records (Ledger.pruned), so `find` says "removed by
retention" instead of listing a path that is gone. Files in error_dir are never
removed by retention.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gateway import logs
from gateway.archive import Folder

if TYPE_CHECKING:
    from gateway.ledger import Ledger

log = logs.get("gateway.retention")

CLOCK_AHEAD_SECONDS = 86400.0  # the clock this far ahead of the ledger's time, with days held: said why


class Retention:
    """Prunes the archive on the earlier of the wall clock and the ledger's time (see the module's docstring)."""

    def __init__(self, ledger: Ledger, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.ledger = ledger
        self.wall = wall
        self.monotonic = monotonic
        self.newest = ledger.newest_time()  # the ledger's time at start (None: it has recorded nothing)
        self.started = monotonic()
        self.problem: str | None = None  # why days are held back, while they are

    def ledger_now(self) -> float | None:
        """The newest time the ledger had recorded at start, plus the time this process has run since."""
        return None if self.newest is None else self.newest + self.monotonic() - self.started

    def prune(self, archive: Folder, retention_days: int) -> list[Path]:
        """Remove the archive's day folders older than retention_days (0: none) by the trusted day; return them."""
        wall = self.wall()
        ledger_now = self.ledger_now()
        trusted = wall if ledger_now is None else min(wall, ledger_now)
        removed = archive.old_days(retention_days, dt.date.fromtimestamp(trusted))
        held = [day for day in archive.old_days(retention_days, dt.date.fromtimestamp(wall)) if day not in removed]
        for day in removed:
            archive.remove_day(day)
            self.ledger.pruned(str(day), trusted)
        self.ledger.mark_clock(wall)
        if removed:
            log.info("archive.pruned", days=len(removed), retention_days=retention_days,
                     first=str(removed[0]), last=str(removed[-1]))
        problem = None
        if held and ledger_now is not None and wall - ledger_now > CLOCK_AHEAD_SECONDS:
            problem = (f"retention held {len(held)} day folder(s) back: the clock says {_day(wall)}, "
                       f"{_span(wall - ledger_now)} ahead of the ledger's time ({_day(ledger_now)}: the newest "
                       f"time it recorded, plus the time since start); nothing is removed on that clock's word "
                       f"while this run lasts. Fix the clock; if it is right (the gateway was stopped that long), "
                       f"retention catches up at the next start")
        if problem != self.problem:
            if problem:
                log.warning("archive.prune_held", reason=problem, held=[str(day) for day in held],
                            clock=_day(wall), ledger_time=_day(ledger_now or wall))
            else:
                log.info("archive.prune_resumed", detail="the clock agrees with the ledger's time again")
            self.problem = problem
        return removed


def _day(moment: float) -> str:
    return dt.date.fromtimestamp(moment).isoformat()


def _span(seconds: float) -> str:
    """A long time in days and hours, to the nearest hour."""
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days} day(s) {hours} h" if days else f"{hours} h"
