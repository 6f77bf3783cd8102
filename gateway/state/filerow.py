"""A file's row in the ledger, as the ledger hands it out, and the name its file has in work/."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config.settings import DEFAULT_CONNECTION
from gateway.core.names import loaded, safe_name
from gateway.core.states import FileState, Verdict


class Seen(Protocol):
    """A file seen in a source, as the ledger records a claim of it (sources.base.Entry is one)."""

    @property
    def name(self) -> str: ...
    @property
    def origin(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime(self) -> float: ...


@dataclass(frozen=True)
class FileRow:
    """One row of the files table: its columns, with state and verdict as gateway.core.states' StrEnums."""

    id: int
    source: str
    name: str
    origin: str
    state: FileState
    size: int | None
    mtime: float | None
    sha256: str | None
    kind: str | None
    details: str | None
    seen_at: float
    claimed_at: float | None
    uploaded_at: float | None
    finished_at: float | None
    attempts: int
    next_attempt_at: float
    http_status: int | None
    answer: str | None
    reason: str | None
    final_path: str | None
    released_at: float | None
    verdict: Verdict | None = None
    problem: str | None = None
    place_failures: int = 0
    connection: str = DEFAULT_CONNECTION  # the CaiaSoft connection it is for, recorded when it was taken

    def __post_init__(self) -> None:
        # name and origin are TEXT, or the exact bytes (BLOB) of a name that is not UTF-8: see gateway.core.names
        object.__setattr__(self, "name", loaded(self.name))
        object.__setattr__(self, "origin", loaded(self.origin))
        # the words the ledger stores as text come back as the StrEnums they were written from
        object.__setattr__(self, "state", FileState(self.state))
        if self.verdict is not None:
            object.__setattr__(self, "verdict", Verdict(self.verdict))

    @property
    def work_name(self) -> str:
        return work_name(self.id, self.name)

    @property
    def accepted(self) -> bool:
        """Whether the file goes (or went) to the archive: CaiaSoft accepted it. A row from before verdicts
        were kept says so by its state."""
        if self.verdict:
            return self.verdict == Verdict.ACCEPTED
        return self.state in (FileState.ARCHIVING, FileState.ARCHIVED)

    @property
    def answer_json(self) -> Any:
        return json.loads(self.answer) if self.answer else None


def work_name(row_id: int, name: str) -> str:
    """Return the name a file has in state_dir/work/: its row id, a dot, its name made safe."""
    return f"{row_id:08d}." + safe_name(name)


def iso(moment: float | None) -> str | None:
    """A row's time as sidecars, `status` and `find` show it: local, with its offset, to the second."""
    return dt.datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds") if moment else None
