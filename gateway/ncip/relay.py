"""The relay: journal entries, in order, to ALEPH's NCIP server.

For each complete line: build the message, send it (gateway.ncip.transport),
read the answer (gateway.ncip.answers), act, and only then move the checkpoint
past the line: state_dir/ncip-checkpoint, which the ledger hands out
(gateway/state/checkpoints.py), durable (pwrite + fdatasync) before the next entry is
sent, so an answered entry is never sent again after kill -9.

Each NCIP server ([ncip], named "default", and each [ncip.NAME]) has a relay of its own, with its own
journal, checkpoint file (ncip-checkpoint-NAME for [ncip.NAME]), backoff and dead letters: one server
down waits on its own entries only. Its worker is ncip-relay (ncip-relay-NAME), its log lines carry
connection=NAME (gateway.ncip.servers). Dead letters of [ncip] go to error_dir/ncip/YYYY-MM-DD.jsonl as
ever, those of [ncip.NAME] to error_dir/ncip/NAME/YYYY-MM-DD.jsonl: each relay counts only its own folder's
files (status shows each server's count), and no two relays append to one file. Every record carries
"connection": NAME ("default" for [ncip]), so a record read or copied alone still says which server
refused it. Outcomes:
  no Problem, or a Problem that means "already done"    done
  a temporary Problem, no answer (unreachable, HTTP      the same entry again, after a backoff, for as
  error, timeout, too large)                             long as it takes
  an answer that is not NCIP                             the same entry again, after a backoff, at most
                                                         unreadable_attempts times; then a dead letter
                                                         with an excerpt of the answer
  an HTTP client error (4xx but 408 and 429: the server  the same entry again, after a backoff, at most
  will not take this message)                            client_error_tries times; then a dead letter
  ... that says the address refuses every message        the same entry again, for as long as it takes
  (401, 403, 404, 405, 407, 415), or the same client     (a wrong path, a login or a proxy: status says
  error again for the entry after a dead-lettered one    so; no dead letter is made of every entry)
  any other Problem, or an invalid line (not JSON, not   a dead letter in error_dir/ncip/, then the next
  an entry, or a value an NCIP message cannot carry)
The journal is read as its own writer left it, never through a link (gateway.ncip.journal):
while something else is at its path, nothing is read, and `status` says why (journal_problem).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.loader import Ncip
from gateway.config.settings import DEFAULT_CONNECTION
from gateway.core import logs
from gateway.core.backoff import Backoff
from gateway.core.states import NcipOutcome, NcipVerdict
from gateway.core.worker import Worker
from gateway.monitor.events import NO_EVENTS, Events
from gateway.ncip import answers, messages, transport
from gateway.ncip.answers import Problem
from gateway.ncip.journal import JournalEntry, Line, Tailer, refuse_uncarried
from gateway.ncip.servers import told, worker_name
from gateway.state.ledger import Ledger

POLL_SECONDS = 0.2
RETRIED_CLIENT_ERRORS = (408, 429)  # Request Timeout, Too Many Requests: the next try may be taken
# what an address answers to every message (unauthorised, forbidden, not found, method, proxy login, content
# type): not the entry's fault, so the relay waits on it as on an unreachable server instead of dead-lettering
ENDPOINT_ERRORS = (401, 403, 404, 405, 407, 415)

log = logs.get("gateway.ncip.relay")


@dataclass(frozen=True)
class Answer:
    verdict: NcipVerdict
    reason: str
    problems: tuple[Problem, ...] = ()
    http_status: int | None = None
    version: str | None = None  # the NCIP version the server answered in, when it could be told
    excerpt: str | None = None  # the first bytes of an unreadable answer


class NcipClient:
    """Sends one entry and says what the answer means."""

    def __init__(self, settings: Ncip):
        self.settings = settings
        self.transport = transport.for_settings(settings)

    def close(self) -> None:
        self.transport.close()

    def send(self, entry: JournalEntry) -> Answer:
        try:  # a value no XML can carry is never sent (the tailer refuses such lines before they come here)
            refuse_uncarried(entry)
            message = messages.build(self.settings, entry)
        except ValueError as error:
            return Answer(NcipVerdict.REFUSED, str(error))
        try:
            reply = answers.answer_to(entry.action, self.transport.exchange(message))
        except transport.NcipUnavailable as error:
            return Answer(NcipVerdict.TEMPORARY, str(error), http_status=error.http_status)
        except answers.UnreadableAnswer as error:
            return Answer(NcipVerdict.UNREADABLE, str(error), excerpt=error.excerpt)
        judgement = answers.judge(self.settings, entry.action, reply.problems)
        return Answer(judgement.verdict, judgement.reason, tuple(reply.problems), version=reply.version)


ACTED_ON = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls (0x9b starts an escape sequence), bidi overrides
# and other format characters, line and paragraph separators, surrogates (not UTF-8)


def _json_line(record: dict[str, Any]) -> str:
    """The record as one line of JSON: readable text kept as it is, every character a terminal, an editor or a
    line splitter acts on (which json.dumps leaves raw above U+007E) written as a \\uXXXX escape instead."""
    return "".join(
        _escaped(char) if char > "~" and unicodedata.category(char) in ACTED_ON else char
        for char in json.dumps(record, ensure_ascii=False)
    )


def _escaped(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"  # JSON's UTF-16 pair


class DeadLetters:
    """FOLDER/YYYY-MM-DD.jsonl: journal entries NCIP refused (or that were not valid), one line each; FOLDER is
    error_dir/ncip for [ncip], error_dir/ncip/NAME for [ncip.NAME] (dead_letter_folder)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._count = (
            sum(path.read_bytes().count(b"\n") for path in folder.glob("*.jsonl")) if folder.is_dir() else 0
        )  # counted once; status asks every few seconds

    def add(self, record: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{dt.date.today():%Y-%m-%d}.jsonl"
        line = (_json_line(record) + "\n").encode("utf-8")
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


def dead_letter_folder(error_dir: Path, connection: str) -> Path:
    """Where a server's dead letters go: error_dir/ncip for [ncip] (as ever), error_dir/ncip/NAME for
    [ncip.NAME] (a folder the default's *.jsonl never counts)."""
    folder = error_dir / "ncip"
    return folder if connection == DEFAULT_CONNECTION else folder / connection


class Relay(Worker):
    def __init__(self, settings: Ncip, ledger: Ledger, error_dir: Path, events: Events = NO_EVENTS):
        super().__init__(name=worker_name("ncip-relay", settings.name))
        self.settings = settings
        self.log = log.bound(connection=settings.name)
        # here, at start: a damaged file stops it (exit 2)
        self.checkpoint = ledger.ncip.journal_checkpoint(settings.name, settings.journal)
        self.client = NcipClient(settings)
        self.dead_letters = DeadLetters(dead_letter_folder(error_dir, settings.name))
        self.backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)
        self.last_success: float | None = None
        self.last_problem: str | None = None
        self.tailer: Tailer | None = None
        self._mismatch: str | None = None
        self.events = events  # alerts and metrics hear of each finished entry (monitor.monitor.Monitor)
        self._failures = self._strikes = 0
        self._struck: tuple[int, JournalEntry, str] | None = None  # the entry and kind of answer counted
        self._lettered_status: int | None = None  # the client error the last entry was dead-lettered for
        self._unsaved: dict[str, Any] | None = None  # the place past an answered entry, its save failed

    @property
    def journal_problem(self) -> str | None:
        """Why the journal is not read now (a link, a directory, a FIFO ... at its path), or None."""
        return self.tailer.problem if self.tailer else None

    def lag(self) -> tuple[int, int]:
        tailer = self.tailer
        try:
            return tailer.lag() if tailer else (0, 0)
        except OSError:
            return 0, 0

    def begin(self) -> None:
        self.tailer = Tailer(self.settings.journal, self.checkpoint.position(), self.settings.max_line_bytes)
        self.log.info(
            "ncip.started", journal=str(self.settings.journal), server=self.settings.url, version=self.settings.version
        )
        if self.checkpoint.started_over():
            self.log.warning(
                "ncip.checkpoint.started_over",
                file=str(self.checkpoint.path),
                reason="the checkpoint file was empty: the journal is read from its start",
            )

    def end(self) -> None:
        if self.tailer is not None:
            self.tailer.close()
        self.client.close()

    def step(self) -> None:
        assert self.tailer is not None, "begin() opened the tailer"
        if self._unsaved is not None:  # nothing is sent before the place past the last answer is durable
            self._save(self._unsaved)
        line = self.tailer.next()
        if line is None:
            self.rest(POLL_SECONDS)
            return
        if line.entry is None:
            self._dead_letter(line, line.problem or "invalid line", None)
            self._commit(line)
            return
        answer = self.client.send(line.entry)
        fields = dict(
            item=line.entry.item,
            action=line.entry.action,
            entry_id=line.entry.id,
            offset=line.start,
            status=answer.http_status,
        )
        self._note_version(answer.version)
        answer = self._bounded(line, answer, fields)
        if answer.verdict in (NcipVerdict.TEMPORARY, NcipVerdict.UNREADABLE):
            self._failures += 1
            delay = self.backoff.delay(self._failures)
            self.last_problem = answer.reason
            self.log.warning(
                "ncip.retry", **fields, reason=answer.reason, attempt=self._failures, retry_in=round(delay, 2)
            )
            self.rest(delay)
            return
        self._failures = 0
        self.last_problem = None
        if not (answer.verdict == NcipVerdict.REFUSED and answer.http_status == self._lettered_status):
            self._lettered_status = None  # the server answered this entry: the next is judged on its own
        if answer.verdict == NcipVerdict.REFUSED:
            self.log.warning("ncip.refused", **fields, reason=answer.reason)
            self._dead_letter(line, answer.reason, answer)
        else:
            self.last_success = time.time()
            self.log.info(
                "ncip.ok" if answer.verdict == NcipVerdict.DONE else "ncip.already_done",
                **fields,
                **({"problem": answer.reason} if answer.verdict == NcipVerdict.ALREADY else {}),
            )
            self.events.ncip_entry(NcipOutcome(answer.verdict), line.entry.as_dict(), **told(self.settings.name))
        self._commit(line)

    def _bounded(self, line: Line, answer: Answer, fields: dict[str, Any]) -> Answer:
        """The answer, or a refusal once the same entry has had unreadable answers unreadable_attempts times in a
        row, or HTTP client errors client_error_tries times: retried for ever, either would hold up every later
        entry, and neither comes right by waiting."""
        status = answer.http_status
        kind = (
            "unreadable"
            if answer.verdict == NcipVerdict.UNREADABLE
            else "client_error"
            if answer.verdict == NcipVerdict.TEMPORARY
            and status is not None
            and 400 <= status < 500
            and status not in RETRIED_CLIENT_ERRORS
            else None
        )
        assert line.entry is not None, "only entries are sent"
        if kind is None or (line.start, line.entry, kind) != self._struck:
            self._strikes = 0
        if kind is None:
            return answer
        if kind == "client_error" and (status in ENDPOINT_ERRORS or status == self._lettered_status):
            why = "to every message at this address" if status in ENDPOINT_ERRORS else "to the entry before too"
            return Answer(
                NcipVerdict.TEMPORARY,
                f"{answer.reason} {why}: the NCIP server refuses messages, not "
                f"this entry (check {self.settings.table}.url, a login or a proxy); the relay waits and makes no "
                "dead letter",
                http_status=status,
                excerpt=answer.excerpt,
            )
        self._strikes, self._struck = self._strikes + 1, (line.start, line.entry, kind)
        limit = self.settings.unreadable_attempts if kind == "unreadable" else self.settings.client_error_tries
        if self._strikes < limit:
            return answer
        self.log.warning(
            f"ncip.{kind}",
            **fields,
            reason=answer.reason,
            attempts=self._strikes,
            excerpt=answer.excerpt,
            policy="dead letter, next entry",
        )
        refused = Answer(
            NcipVerdict.REFUSED,
            f"{answer.reason} ({self._strikes} attempts)",
            http_status=status,
            excerpt=answer.excerpt,
        )
        self._strikes, self._struck = 0, None
        if kind == "client_error":
            self._lettered_status = status  # the same again for the next entry: the server, not the entry
        return refused

    def _note_version(self, version: str | None) -> None:
        if version and version != self.settings.version and version != self._mismatch:
            self._mismatch = version
            self.log.warning(
                "ncip.version_mismatch",
                configured=self.settings.version,
                answered=version,
                detail=f'the NCIP server answers in version {version}: set {self.settings.table}.version = "{version}"',
            )

    def _commit(self, line: Line) -> None:
        assert self.tailer is not None, "begin() opened the tailer"
        self._save(self.tailer.commit(line))

    def _save(self, position: dict[str, Any]) -> None:
        """Make position durable; if that fails (a disk fault), the worker pauses and the next step saves it
        again before it sends anything: an entry sent past a place not saved would be sent again after kill -9."""
        self._unsaved = position
        self.checkpoint.save(position)
        self._unsaved = None

    def _dead_letter(self, line: Line, reason: str, answer: Answer | None) -> None:
        record: dict[str, Any] = {
            "at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "connection": self.settings.name,
            "journal": str(self.settings.journal),
            "offset": line.start,
            "reason": reason,
        }
        if line.entry is not None:
            record["entry"] = line.entry.as_dict()
        else:
            record["line"] = line.raw.decode("utf-8", "replace")
        if answer is not None:
            record["problems"] = [problem.__dict__ for problem in answer.problems]
            record["http_status"] = answer.http_status
            if answer.excerpt is not None:
                record["answer_excerpt"] = answer.excerpt
        path = self.dead_letters.add(record)
        self.events.ncip_entry(NcipOutcome.DEAD_LETTER, record.get("entry"), reason, path, **told(self.settings.name))
        if line.entry is None:
            self.log.warning("ncip.invalid_line", offset=line.start, reason=reason, dead_letters=str(path))
