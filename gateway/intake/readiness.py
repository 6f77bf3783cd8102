"""Is a file finished? Size and mtime settling (Settler), and the signals the collector weighs besides.

- Open writers (local disks): sources.writers, asked through the source.
- Content that stops mid-way: XML whose document is not closed at the end of the
  file, a text file whose last line has no newline, an empty file. Such a file
  waits (incomplete_grace_seconds) instead of being refused at once.
- A marker file (ready_marker = "{name}.done"): the writer says when it is done.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from gateway.core import logs
from gateway.core.errors import SourceGone, SourceUnavailable
from gateway.sources.writers import UNKNOWN, WRITING
from gateway.state.snapshot import Waiting

if TYPE_CHECKING:
    from gateway.sources.base import Entry, Source

log = logs.get("gateway.readiness")

TAIL_BYTES = 1024 * 1024  # how much of a file's end is read to judge whether it looks finished


# -- settling: size and mtime unchanged for settle_seconds ------------------------------------


@dataclass
class _Seen:
    size: int
    mtime: float
    since: float


@dataclass
class Settler:
    """Decides when a file has settled: size and mtime unchanged for settle_seconds.

    A file is ready when the same (size, mtime) has been observed for settle_seconds
    of our own clock, or, where mtime can be trusted (a local disk, same clock),
    when its mtime is already settle_seconds old.
    """

    settle_seconds: float
    trust_mtime: bool = True
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def observe(self, key: str, size: int, mtime: float) -> bool:
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None or seen.size != size or seen.mtime != mtime:
            self._seen[key] = seen = _Seen(size, mtime, now)
        if now - seen.since >= self.settle_seconds:
            return True
        return self.trust_mtime and self.wall_clock() - mtime >= self.settle_seconds

    def wait_hint(self, key: str) -> float:
        """Seconds until this file could be ready if nothing changes."""
        seen = self._seen.get(key)
        if seen is None:
            return self.settle_seconds
        by_clock = seen.since + self.settle_seconds - self.clock()
        if self.trust_mtime:
            by_clock = min(by_clock, seen.mtime + self.settle_seconds - self.wall_clock())
        return max(by_clock, 0.0)

    def unchanged_for(self, key: str) -> float:
        """Seconds this file is known to have kept its size and mtime (by our clock, or its mtime's age)."""
        seen = self._seen.get(key)
        if seen is None:
            return 0.0
        unchanged = self.clock() - seen.since
        if self.trust_mtime:
            unchanged = max(unchanged, self.wall_clock() - seen.mtime)
        return unchanged

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def keep_only(self, keys: set[str]) -> None:
        for key in list(self._seen):
            if key not in keys:
                del self._seen[key]

    def pending(self) -> list[str]:
        return list(self._seen)


# -- content that stops mid-way ---------------------------------------------------------


def cut_off(data: bytes, whole: bool = True) -> str | None:
    """If this content looks unfinished at its end, say how; None if its end looks complete.

    Only the end is judged: XML that is malformed before its end is not "unfinished"
    (the validator refuses it); XML whose last document is not closed yet is. data may
    be only the file's last TAIL_BYTES (whole=False): then the last record is judged if
    the window holds its start, and otherwise only whether the file ends a line or a tag.
    """
    if whole and not data.strip():
        return "the file is empty" if not data else "the file holds only blank space so far"
    if b"\x00" in data:
        return None  # binary: refused whatever its end looks like
    if not whole:
        data = data[data.find(b"\n") + 1 :]  # from the first whole line in the window
        if not re.search(rb"(?m)^##", data):  # one document larger than the window
            ending = data.rstrip(b" \t\r\n")
            return None if ending.endswith(b">") or data.endswith(b"\n") else "the last line has no newline yet"
    body = _last_record(data)
    if body is None:
        return "the file ends with a routing line (## ...) and no record after it"
    if body.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return _xml_cut_off(body)
    if not data.endswith(b"\n"):
        return "the last line has no newline yet"
    return None


def _last_record(data: bytes) -> bytes | None:
    """The XML or text after the last ALEPH routing line ('## - XML_XSL'); None if nothing follows it."""
    text = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    last = None
    for match in re.finditer(rb"(?m)^##[^\n]*(\n|$)", text):
        last = match
    if last is None:
        return text
    rest = text[last.end() :]
    return rest if rest.strip() else None


class _NoTree:
    """A parser target that keeps nothing: only whether the document ends is wanted, so expat parses
    without calling back into Python for each element (the DTD and entity guards stay)."""

    def close(self) -> None:
        return None


def _xml_cut_off(body: bytes) -> str | None:
    parser = DefusedXMLParser(target=_NoTree(), forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        parser.feed(body)
    except (ParseError, DefusedXmlException):
        return None  # broken before its end: not a matter of waiting
    try:
        parser.close()
    except ParseError as error:
        return f"the XML stops before its document is closed ({error})"
    except DefusedXmlException:
        return None
    return None


# -- the collector's judgement ---------------------------------------------------------------


class ReadyCheck:
    """Decides, for one source, whether a file whose size and mtime have settled may be taken.

    In order: the marker (marker mode), open writers (where they can be seen), and an
    end that looks unfinished (held for grace_seconds unchanged, then taken as it is).
    What is held, and why, is in `waiting` (for `status`); an open-writer check that
    cannot answer is said once in the log and kept in `writers_unknown`.
    """

    def __init__(
        self,
        source: Source,
        settler: Settler,
        grace_seconds: float,
        peek_limit: int = TAIL_BYTES,
        marker_mode: bool = False,
    ):
        self.source = source
        self.settler = settler
        self.grace_seconds = grace_seconds
        self.peek_limit = peek_limit
        self.marker_mode = marker_mode
        self.waiting: dict[str, Waiting] = {}
        self.writers_unknown: str | None = None
        self._verdicts: dict[str, tuple[int, float, str | None]] = {}

    def hold(self, entry: Entry) -> float | None:
        """None if the settled file may be taken now; else seconds until it is worth asking again (0: not soon)."""
        if self.marker_mode and not self.source.has_marker(entry):
            self._wait(entry, "waiting for its marker", None)
            return 0.0
        writers = self.source.writers(entry)
        if writers.state == WRITING:
            self._wait(entry, "open for writing", None)
            return self.settler.settle_seconds or 0.5
        if writers.state == UNKNOWN and not writers.file_problem and writers.reason != self.writers_unknown:
            self.writers_unknown = writers.reason
            log.warning(
                "source.writers_unknown",
                source=self.source.name,
                reason=writers.reason,
                detail="a file is taken once it settled; if it changes after that, it is taken again whole",
            )
        if self.marker_mode:  # the writer said it is done: its content is what it is
            self.waiting.pop(entry.name, None)
            return None
        return self._unfinished(entry)

    def _unfinished(self, entry: Entry) -> float | None:
        verdict = self._verdicts.get(entry.name)
        if verdict is None or verdict[:2] != (entry.size, entry.mtime):
            reason = None
            try:
                reason = cut_off(self.source.peek(entry, self.peek_limit), whole=entry.size <= self.peek_limit)
            except SourceGone:
                return 0.0  # gone since it was listed: the next look drops it
            except OSError as error:  # unreadable: taking it will say what is wrong
                if entry.name in self.waiting or isinstance(error, SourceUnavailable):
                    return 0.0
            verdict = self._verdicts[entry.name] = (entry.size, entry.mtime, reason)
        reason = verdict[2]
        if reason is None:
            self.waiting.pop(entry.name, None)
            return None
        unchanged = self.settler.unchanged_for(entry.name)
        if unchanged < self.grace_seconds:
            held = self.waiting.get(entry.name)
            if held is None or held["reason"] != reason:
                log.info(
                    "file.incomplete_waiting",
                    source=self.source.name,
                    file=entry.name,
                    size=entry.size,
                    reason=reason,
                    grace_seconds=self.grace_seconds,
                )
            self._wait(entry, reason, unchanged)
            return self.grace_seconds - unchanged
        log.warning(
            "file.incomplete_taken",
            source=self.source.name,
            file=entry.name,
            size=entry.size,
            reason=reason,
            unchanged_seconds=round(unchanged, 1),
            detail="unchanged for the whole grace period: taken as it is",
        )
        self.waiting.pop(entry.name, None)
        return None

    def _wait(self, entry: Entry, reason: str, unchanged: float | None) -> None:
        self.waiting[entry.name] = {
            "file": entry.name,
            "size": entry.size,
            "reason": reason,  # snapshot.Waiting
            "unchanged_seconds": None if unchanged is None else round(unchanged, 1),
            "grace_seconds": None if unchanged is None else self.grace_seconds,
        }

    def changed(self, name: str) -> None:
        """The file changed (or was taken): what was decided about it no longer holds."""
        self.waiting.pop(name, None)
        self._verdicts.pop(name, None)

    def keep_only(self, names: set[str]) -> None:
        for known in (self.waiting, self._verdicts):
            for name in [name for name in known if name not in names]:
                del known[name]
