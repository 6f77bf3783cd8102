"""The relay: journal entries, in order, to ALEPH's NCIP server.

For each complete line: build the message, POST it, read the answer, act,
and only then move the checkpoint past the line. Outcomes:
  no Problem, or a Problem that means "already done"   done
  a temporary Problem, HTTP error, timeout, unreadable  the same entry again, after a backoff
  any other Problem, or an invalid line                 a dead letter in error_dir/ncip/, then the next
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from gateway import __version__, logs
from gateway.caiasoft import Backoff
from gateway.config import Ncip
from gateway.ledger import Ledger
from gateway.ncip import messages
from gateway.ncip.journal import JournalEntry, Line, Tailer

CHECKPOINT = "ncip-journal"
POLL_SECONDS = 0.2
CHECK_IN_SECONDS = 1.0

log = logs.get("gateway.ncip.relay")


@dataclass(frozen=True)
class Answer:
    verdict: str  # done | already | temporary | refused
    reason: str
    problems: tuple[messages.Problem, ...] = ()
    http_status: int | None = None


def _matches(problem: messages.Problem, patterns: tuple[str, ...]) -> bool:
    return any(pattern.lower() in problem.type.lower() for pattern in patterns)


def judge(settings: Ncip, action: str, problems: list[messages.Problem]) -> Answer:
    """What the Problems in an answer mean for this entry."""
    if not problems:
        return Answer("done", "done")
    words = "; ".join(str(problem) for problem in problems)
    if any(_matches(problem, settings.temporary_problems) for problem in problems):
        return Answer("temporary", words, tuple(problems))
    done = settings.done_problems_checkin if action == "checkin" else settings.done_problems_checkout
    if all(_matches(problem, done) for problem in problems):
        return Answer("already", words, tuple(problems))
    return Answer("refused", words, tuple(problems))


class NcipClient:
    def __init__(self, settings: Ncip):
        self.settings = settings
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"aleph-caiasoft-gateway/{__version__}"

    def close(self) -> None:
        self.session.close()

    def send(self, entry: JournalEntry) -> Answer:
        body = messages.build(self.settings, entry)
        try:
            response = self.session.post(self.settings.url, data=body, timeout=self.settings.timeout_seconds,
                                         headers={"Content-Type": "application/xml; charset=utf-8"})
        except requests.RequestException as error:
            return Answer("temporary", f"cannot reach the NCIP server: {error.__class__.__name__}: {str(error)[:300]}")
        if not 200 <= response.status_code < 300:
            return Answer("temporary", f"NCIP server answered HTTP {response.status_code}",
                          http_status=response.status_code)
        try:
            problems = messages.read_answer(response.content)
        except ValueError as error:
            return Answer("temporary", str(error), http_status=response.status_code)
        answer = judge(self.settings, entry.action, problems)
        return Answer(answer.verdict, answer.reason, answer.problems, response.status_code)


class DeadLetters:
    """error_dir/ncip/YYYY-MM-DD.jsonl: journal entries NCIP refused (or that were not valid), one line each."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._count = sum(path.read_bytes().count(b"\n") for path in folder.glob("*.jsonl")) \
            if folder.is_dir() else 0  # counted once; status asks every few seconds

    def add(self, record: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{dt.date.today():%Y-%m-%d}.jsonl"
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._count += 1
        return path

    def count(self) -> int:
        return self._count


class Relay(threading.Thread):
    def __init__(self, settings: Ncip, ledger: Ledger, error_dir: Path):
        super().__init__(name="ncip-relay", daemon=True)
        self.settings = settings
        self.ledger = ledger
        self.client = NcipClient(settings)
        self.dead_letters = DeadLetters(error_dir / "ncip")
        self.backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)
        self.stop_event = threading.Event()
        self.heartbeat = time.monotonic()
        self.last_success: float | None = None
        self.last_problem: str | None = None
        self.tailer: Tailer | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def _rest(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set():
            self.heartbeat = now = time.monotonic()
            if now >= deadline or self.stop_event.wait(min(deadline - now, CHECK_IN_SECONDS)):
                return

    def lag(self) -> tuple[int, int]:
        tailer = self.tailer
        try:
            return tailer.lag() if tailer else (0, 0)
        except OSError:
            return 0, 0

    def run(self) -> None:
        self.tailer = Tailer(self.settings.journal, self.ledger.checkpoint(CHECKPOINT), self.settings.max_line_bytes)
        failures = 0
        log.info("ncip.started", journal=str(self.settings.journal), server=self.settings.url,
                 version=self.settings.version)
        try:
            while not self.stop_event.is_set():
                self.heartbeat = time.monotonic()
                line = self.tailer.next()
                if line is None:
                    self._rest(POLL_SECONDS)
                    continue
                if line.entry is None:
                    self._dead_letter(line, line.problem, None)
                    self._commit(line)
                    continue
                answer = self.client.send(line.entry)
                fields = dict(item=line.entry.item, action=line.entry.action, entry_id=line.entry.id,
                              offset=line.start, status=answer.http_status)
                if answer.verdict == "temporary":
                    failures += 1
                    delay = self.backoff.delay(failures)
                    self.last_problem = answer.reason
                    log.warning("ncip.retry", **fields, reason=answer.reason, attempt=failures,
                                retry_in=round(delay, 2))
                    self._rest(delay)
                    continue
                failures = 0
                self.last_problem = None
                if answer.verdict == "refused":
                    log.warning("ncip.refused", **fields, reason=answer.reason)
                    self._dead_letter(line, answer.reason, answer)
                else:
                    self.last_success = time.time()
                    log.info("ncip.ok" if answer.verdict == "done" else "ncip.already_done", **fields,
                             **({"problem": answer.reason} if answer.verdict == "already" else {}))
                self._commit(line)
        finally:
            self.tailer.close()
            self.client.close()

    def _commit(self, line: Line) -> None:
        self.ledger.set_checkpoint(CHECKPOINT, **self.tailer.commit(line))

    def _dead_letter(self, line: Line, reason: str, answer: Answer | None) -> None:
        record: dict[str, Any] = {
            "at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "journal": str(self.settings.journal), "offset": line.start, "reason": reason,
        }
        if line.entry is not None:
            record["entry"] = line.entry.as_dict()
        else:
            record["line"] = line.raw.decode("utf-8", "replace")
        if answer is not None:
            record["problems"] = [problem.__dict__ for problem in answer.problems]
            record["http_status"] = answer.http_status
        path = self.dead_letters.add(record)
        if line.entry is None:
            log.warning("ncip.invalid_line", offset=line.start, reason=reason, dead_letters=str(path))
