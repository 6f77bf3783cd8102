"""The status feed: what CaiaSoft retrieved and refiled, turned into journal entries, in order.

For sites where CaiaSoft cannot reach ALEPH's NCIP port: every interval the
gateway reads, for the configured collection, today and lookback_days before:
  retrievalinfo   per retrieved item: its request id, retrieval date and type
                  (where the account has the endpoint; without it, only the lists)
  retrievedlist   barcodes retrieved (each is a checkout to ncip.user_id)
  refiledlist     barcodes refiled (each is a checkin)
and appends an entry for each barcode not journaled before for that day, days
oldest first, retrievals in the order of their time. No endpoint gives the stop
a retrieval goes to, so every feed checkout goes to ncip.user_id. A retrieval of a
type in no_checkout_types (ERT: scanned, the item stays) checks nothing out.

An item both retrieved and refiled on the same day is journaled in the order that
leaves ALEPH right: its current CaiaSoft status (itemstatus) says whether it is
in the facility or out now, so the entry that matches it comes last. The same holds
when the two movements are seen at different reads of the day (refiled, read,
then retrieved and refiled again): whenever a new entry meets the other list's
entry for the same item and day, the status is asked and the entry that matches
it is journaled last, again if need be. Statuses are CaiaSoft's phrases ("Item In
at Rest", "Out on Physical Retrieval on 08-02-2018"), matched ignoring case,
spacing and a trailing date. A status in neither list is unknown and never
guessed: nothing is journaled for that item and day, it is named in the log, in
status and in an unknown_status alert, and it is asked again at the next read.
What fails for one item alone (its itemstatus answered with a failure, its
retrievalinfo item unreadable) holds back that item the same way, named in the
log and status; the other items go on.

Each NCIP server with a feed ([ncip.feed], [ncip.NAME.feed]) has a feed of its own (worker ncip-feed,
ncip-feed-NAME), reading its own CaiaSoft connection (feed.caiasoft) and appending to its own server's
journal; what it has journaled is remembered per server (gateway/state/checkpoints.py), because two
libraries may share a barcode. Its log lines carry connection=NAME (gateway.ncip.servers).

A barcode is remembered in the ledger after its entry is appended, so a crash in
between journals it twice at most (and a repeated check-out or check-in counts as
already done). Any failed call, any HTTP 200 with success false (a wrong
collection code) and any answer without the documented fields is an error in the
log and in status; it is never read as an empty list.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gateway.config.loader import Feed as FeedSettings
from gateway.config.loader import Ncip
from gateway.core import logs
from gateway.core.errors import ApiError, GatewayError
from gateway.core.worker import Worker
from gateway.monitor.events import NO_EVENTS, Events
from gateway.ncip import journal
from gateway.ncip.journal import JournalEntry
from gateway.ncip.servers import told, worker_name
from gateway.state.ledger import Ledger
from gateway.upload.caiasoft import CaiaSoftClient, about_every_call

# retrievalinfo's item fields, as CaiaSoft's API guide names them
BARCODE = "barcode"
REQUEST_ID = "request_id"
RETRIEVED_ON = "retrieval date"  # MM-DD-YYYY (a time may follow)
RETRIEVAL_TYPE = "retrieval type"  # PYR, ERT, DEA, SHP, ...
DATE_FORMATS = (
    "%m-%d-%Y %H:%M:%S",
    "%m-%d-%Y %H:%M",
    "%m-%d-%Y",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)
EXCERPT_CHARS = 200
UNKNOWN_LISTED = 5  # unknown statuses named in the feed's problem (all are counted)
_TRAILING_DATE = re.compile(r"\s+on\s+\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}(\s+\d{1,2}:\d{2}(:\d{2})?)?\s*$", re.IGNORECASE)

log = logs.get("gateway.ncip.feed")


@dataclass(frozen=True)
class Retrieval:
    """One retrieved item, as retrievalinfo gives it."""

    barcode: str
    at: dt.datetime
    request_id: str | None = None
    type: str | None = None


def _excerpt(item: Any) -> str:
    text = json.dumps(item, ensure_ascii=False, default=str)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def _text(item: dict[str, Any], key: str) -> str | None:
    value = item.get(key)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    return None


def _date(value: str) -> dt.datetime | None:
    for form in DATE_FORMATS:
        try:
            return dt.datetime.strptime(value, form)
        except ValueError:
            continue
    return None


def retrieval(item: Any, what: str) -> Retrieval:
    """A retrievalinfo item as a Retrieval; raise ApiError, with an excerpt, if it lacks the documented fields."""
    if not isinstance(item, dict):
        raise ApiError(f"{what}: an item is not an object: {_excerpt(item)}")
    barcode = _text(item, BARCODE)
    if barcode is None:
        raise ApiError(f"{what}: an item has no {BARCODE!r}: {_excerpt(item)}")
    on = _text(item, RETRIEVED_ON)
    at = _date(on) if on else None
    if at is None:
        said = f"an unreadable {RETRIEVED_ON!r} ({on})" if on else f"no {RETRIEVED_ON!r}"
        raise ApiError(f"{what}: item {barcode} has {said}, expected MM-DD-YYYY: {_excerpt(item)}")
    return Retrieval(barcode, at, _text(item, REQUEST_ID), _text(item, RETRIEVAL_TYPE))


def phrase(status: str) -> str:
    """A status as compared: spacing collapsed, case folded, a trailing " on DATE" taken away."""
    return _TRAILING_DATE.sub("", " ".join(status.split())).casefold()


@functools.cache
def _phrases(statuses: tuple[str, ...]) -> frozenset[str]:
    """The configured statuses as compared (settings are immutable: worked out once per list)."""
    return frozenset(phrase(status) for status in statuses)


def classify(status: str, settings: FeedSettings) -> str | None:
    """'in' (in the facility), 'out' (out of it), or None: a status the settings do not know."""
    said = phrase(status)
    if said and said in _phrases(settings.in_statuses):
        return "in"
    if said and said in _phrases(settings.out_statuses):
        return "out"
    return None


class Feed(Worker):
    def __init__(self, settings: Ncip, client: CaiaSoftClient, ledger: Ledger, events: Events = NO_EVENTS):
        super().__init__(name=worker_name("ncip-feed", settings.name))
        assert settings.feed is not None, "the feed runs only with [ncip.feed]"
        self.settings = settings
        self.connection = settings.name  # the NCIP server it journals for
        self.table = f"[{settings.table}.feed]"  # its settings' table, for messages: [ncip.feed], [ncip.NAME.feed]
        self.log = log.bound(connection=settings.name)
        self.feed: FeedSettings = settings.feed
        self.client = client
        self.ledger = ledger
        self.events = events
        self.problem: str | None = None
        self.held: dict[tuple[str, str], str] = {}  # (day, barcode) -> why it is not journaled, at the last read
        self.unreadable: list[str] = []  # retrievalinfo items without even a barcode, at the last read
        self.uncarried: dict[tuple[str, str], str] = {}  # (day, barcode) listed, no NCIP message can carry it
        self._alerted: set[tuple[str, str, str]] = set()  # (day, barcode, status) alerted in this run
        self._without_retrievalinfo = False

    def step(self) -> None:
        try:
            added = self.poll(dt.date.today())
            self.problem = self.held_problem()
            if added:
                self.log.info("feed.journaled", entries=added, collection=self.feed.collection)
        except GatewayError as error:
            self.problem = str(error)
            self.log.error("feed.failed", reason=str(error), retry_in=self.feed.interval_seconds)
        self.rest(self.feed.interval_seconds)

    def held_problem(self) -> str | None:
        """What status shows while items are held back (or retrievalinfo items could not be read), else None."""
        parts = []
        if self.held:
            named = "; ".join(
                f"{barcode} ({day}): {reason}" for (day, barcode), reason in sorted(self.held.items())[:UNKNOWN_LISTED]
            )
            more = len(self.held) - UNKNOWN_LISTED
            parts.append(f"{len(self.held)} item(s) not journaled: {named}{f'; and {more} more' if more > 0 else ''}")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} retrievalinfo item(s) unreadable: {self.unreadable[0]}")
        if self.uncarried:
            (day, _), reason = next(iter(sorted(self.uncarried.items())))
            parts.append(
                f"{len(self.uncarried)} barcode(s) CaiaSoft listed that no NCIP message can carry, never "
                f"journaled (check the item in ALEPH by hand): {reason} ({day})"
            )
        return " | ".join(parts) or None

    # -- reading CaiaSoft -------------------------------------------------------------

    def _path(self, endpoint: str, day: str) -> str:
        return f"/api/{endpoint}/v1/{day}/{day}/{quote(self.feed.collection, safe='')}"

    def _barcodes(self, kind: str, day: str) -> list[str]:
        what = f"CaiaSoft's {kind} list for {day} (collection {self.feed.collection})"
        answer = self.client.read(self._path(f"{kind}list", day), what)
        barcodes = answer.get("barcodes")
        if not isinstance(barcodes, list) or not all(isinstance(b, (str, int)) for b in barcodes):
            raise ApiError(f"{what} has no list of barcodes: {_excerpt(answer)}")
        return [str(barcode).strip() for barcode in barcodes if str(barcode).strip()]

    def _retrievals(self, day: str, held: dict[tuple[str, str], str]) -> dict[str, Retrieval]:
        """retrievalinfo's items by barcode, in the order of their time; empty without that endpoint (or with
        retrievalinfo_path empty). An item without the documented fields holds back its barcode (held), or is
        named unreadable if it has none."""
        if self._without_retrievalinfo or not self.feed.retrievalinfo_path:
            return {}
        what = f"CaiaSoft's retrieval info for {day} (collection {self.feed.collection})"
        path = self.feed.retrievalinfo_path.format_map(
            {"from": day, "to": day, "collection": quote(self.feed.collection, safe="")}
        )
        try:
            answer = self.client.read(path, what)
            items = answer.get("items")
        except ApiError as error:
            if about_every_call(error):
                raise  # CaiaSoft unreachable, overloaded or refusing the key: the whole read is tried again
            # not there, or not taking this path (404, 400, success false): the lists are read without it
            self._without_retrievalinfo = True
            self.log.warning(
                "feed.no_retrievalinfo",
                reason=str(error),
                path=self.feed.retrievalinfo_path,
                detail="check-outs are journaled in the order of the retrieved list, without request ids "
                f"or retrieval types, until the service is reloaded; check {self.table} "
                "retrievalinfo_path",
            )
            return {}
        if not isinstance(items, list):
            raise ApiError(f"{what} has no list of items: {_excerpt(answer)}")
        found = []
        for item in items:
            try:
                found.append(retrieval(item, what))
            except ApiError as error:
                barcode = _text(item, BARCODE) if isinstance(item, dict) else None
                self.log.error(
                    "feed.item_unreadable",
                    reason=str(error),
                    item=barcode,
                    detail="this item is not journaled; the others go on",
                )
                if barcode is None:
                    self.unreadable.append(str(error))
                else:
                    held[(day, barcode)] = str(error)
        return {fact.barcode: fact for fact in sorted(found, key=lambda fact: fact.at)}  # stable: ties keep order

    def _status_now(self, barcode: str) -> str:
        answer = self.client.read(f"/api/itemstatus/v1/{quote(barcode, safe='')}", f"CaiaSoft's status of {barcode}")
        status = answer.get("status")
        if not isinstance(status, str):
            raise ApiError(f"CaiaSoft's status of {barcode} has no 'status': {_excerpt(answer)}")
        return status

    # -- journaling ---------------------------------------------------------------------

    def poll(self, today: dt.date) -> int:
        """Read CaiaSoft once; append the new entries in order; return how many."""
        added = 0
        held: dict[tuple[str, str], str] = {}
        self.unreadable = []
        days = [(today - dt.timedelta(days=back)).strftime("%Y%m%d") for back in range(self.feed.lookback_days, -1, -1)]
        for day in days:
            added += self._day(day, held)
        self.held = held
        self.ledger.ncip.forget_feed_before(days[0], self.connection)  # days no read covers any more: it stays small
        self.uncarried = {key: reason for key, reason in self.uncarried.items() if key[0] >= days[0]}
        return added

    def _day(self, day: str, held: dict[tuple[str, str], str]) -> int:
        facts = self._retrievals(day, held)
        retrieved = self._barcodes("retrieved", day)
        refiled = self._barcodes("refiled", day)
        order = {barcode: index for index, barcode in enumerate(facts)}  # by time where CaiaSoft gave one
        out = sorted(dict.fromkeys([*facts, *retrieved]), key=lambda barcode: order.get(barcode, len(order)))
        lending_not = {kind.upper() for kind in self.feed.no_checkout_types}
        not_lent = {b for b in out if b in facts and (facts[b].type or "").upper() in lending_not}
        back_in = list(dict.fromkeys(refiled))
        both = (set(out) - not_lent) & set(back_in)  # both movements this day, journaled before or not
        planned: list[tuple[str, str, bool]] = []  # (kind, barcode, journaled again so that it ends right)
        for barcode in dict.fromkeys([*out, *back_in]):
            new = {
                kind
                for kind, listed in (("retrieved", out), ("refiled", back_in))
                if barcode in listed and not self.ledger.ncip.feed_seen(kind, barcode, day, self.connection)
            }
            if not new or (day, barcode) in held:
                continue
            if barcode in not_lent:
                planned += [("not lent", barcode, False)] + ([("refiled", barcode, False)] if "refiled" in new else [])
            elif barcode in both:
                planned += self._in_order(barcode, day, new, held)
            else:
                planned += [(kind, barcode, False) for kind in ("retrieved", "refiled") if kind in new]
        for kind, barcode, again in planned:
            self._append(kind, barcode, day, facts.get(barcode), again)
        return sum(kind != "not lent" for kind, _, _ in planned)

    def _in_order(
        self, barcode: str, day: str, new: set[str], held: dict[tuple[str, str], str]
    ) -> list[tuple[str, str, bool]]:
        """An item retrieved and refiled on day, with new entries: those, and the one matching its status now
        last (journaled again if it was journaled at an earlier read). Nothing if its status is not known."""
        status = self._status_of(barcode, day, held)
        where = classify(status, self.feed) if status is not None else None
        if where is None:
            if status is not None:
                self._unknown(barcode, status, day, held)
            return []
        first, last = ("refiled", "retrieved") if where == "out" else ("retrieved", "refiled")
        return [*([(first, barcode, False)] if first in new else []), (last, barcode, last not in new)]

    def _status_of(self, barcode: str, day: str, held: dict[tuple[str, str], str]) -> str | None:
        """The item's status now, or None (held, with the reason) if CaiaSoft answered for it alone with a failure."""
        try:
            return self._status_now(barcode)
        except ApiError as error:
            if about_every_call(error):
                raise  # CaiaSoft unreachable, overloaded or refusing the key: the whole read is tried again
            held[(day, barcode)] = str(error)
            self.log.error(
                "feed.status_failed",
                item=barcode,
                day=day,
                reason=str(error),
                detail="this item is not journaled until CaiaSoft answers for it; the others go on",
            )
            return None

    def _unknown(self, barcode: str, status: str, day: str, held: dict[tuple[str, str], str]) -> None:
        held[(day, barcode)] = (
            f"CaiaSoft status {status!r} not known: add it to {self.table} in_statuses or out_statuses"
        )
        if (day, barcode, status) not in self._alerted:
            self._alerted.add((day, barcode, status))
            self.log.error(
                "feed.unknown_status",
                item=barcode,
                status=status,
                day=day,
                collection=self.feed.collection,
                detail=f"neither its retrieval nor its refile is journaled: add the status to {self.table} "
                "in_statuses or out_statuses",
            )
            self.events.status_unknown(barcode, status, day, self.feed.collection, **told(self.connection))

    def _append(self, kind: str, barcode: str, day: str, fact: Retrieval | None, again: bool = False) -> None:
        if kind == "not lent":  # seen: an electronic retrieval does not lend the item
            self.log.info("feed.not_checked_out", item=barcode, day=day, retrieval_type=fact.type if fact else None)
            self.ledger.ncip.remember_feed("retrieved", barcode, day, self.connection)
            return
        entry_id = f"feed-{kind}-{day}-{barcode}" + ("-again" if again else "")
        if kind == "retrieved":
            entry = JournalEntry("checkout", barcode, request_id=fact.request_id if fact else None, id=entry_id)
        else:
            entry = JournalEntry("checkin", barcode, id=entry_id)
        try:
            journal.append(self.settings.journal, entry)
        except ValueError as error:  # a barcode no NCIP message can carry: never journaled, named in status
            self.uncarried[(day, barcode)] = str(error)
            self.log.error(
                "feed.entry_refused",
                item=barcode,
                day=day,
                kind=kind,
                reason=str(error),
                detail="CaiaSoft listed a barcode that cannot be relayed; the other items go on",
            )
        self.ledger.ncip.remember_feed(kind, barcode, day, self.connection)
