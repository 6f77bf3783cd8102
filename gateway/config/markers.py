"""Marker files: ready_marker = "{name}.done" means the writer creates NAME.done when NAME is finished.

A leaf module: the config rules check a pattern with marker_problem(), the sources
find markers with Marker, and neither needs the rest of the readiness check.
"""

from __future__ import annotations

import re


class Marker:
    """ready_marker = "{name}.done": the writer creates NAME.done when NAME is finished."""

    def __init__(self, pattern: str):
        head, _, tail = pattern.partition("{name}")
        self.pattern = pattern
        self._head, self._tail = head, tail
        self._match = re.compile(re.escape(head) + "(.+)" + re.escape(tail) + r"\Z", re.DOTALL)

    def of(self, name: str) -> str:
        """The marker's name for a data file."""
        return f"{self._head}{name}{self._tail}"

    def is_marker(self, name: str) -> bool:
        return self._match.match(name) is not None

    def marks(self, name: str) -> str | None:
        """The data file a marker of this name stands for; None if it is not a marker name."""
        found = self._match.match(name)
        return found.group(1) if found else None


def marker_problem(pattern: str) -> str | None:
    """Why a ready_marker setting is unusable; None if it is fine."""
    if pattern.count("{name}") != 1:
        return 'must contain "{name}" exactly once, e.g. "{name}.done"'
    if pattern == "{name}":
        return 'must differ from the file name, e.g. "{name}.done"'
    if "/" in pattern or "\0" in pattern:
        return "must be a name in the same folder (no /)"
    return None
