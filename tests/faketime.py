"""A wall clock the tests can step, for the real daemon and the real CLI: libfaketime (Debian's faketime).

The process's CLOCK_REALTIME (time.time, datetime.now, date.today) reads the offset
written in a control file at every call; its monotonic clock stays the real one,
as it does when NTP or an admin steps a real host's clock. Python's own time.sleep
fails under that mode of libfaketime (EINVAL from an absolute monotonic sleep): the
daemon never calls it, and tests do not run anything else under it.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

LIBRARY = "/usr/lib/*/faketime/libfaketimeMT.so.1"


class SteppedClock:
    """The offset of a wall clock from the real one, in a control file: step() moves it."""

    def __init__(self, folder: Path, offset: str = "+0"):
        found = sorted(glob.glob(LIBRARY))
        if not found:
            pytest.fail("libfaketime is not installed: run tools/install-test-deps (Debian package faketime)")
        self.library = found[0]
        self.control = folder / "faketime-offset"
        self.step(offset)

    def step(self, offset: str) -> None:
        """Set the offset from the real clock: '+0', '-1h', '+40d' (libfaketime's relative offsets)."""
        partial = self.control.with_name(self.control.name + ".new")
        partial.write_text(offset + "\n")
        partial.replace(self.control)  # a reader sees the old offset or the new one, never half of it

    def env(self) -> dict[str, str]:
        """The environment a child process runs under this clock with."""
        return {
            "LD_PRELOAD": self.library,
            "FAKETIME_TIMESTAMP_FILE": str(self.control),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
