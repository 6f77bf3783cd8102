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
in the facility or out now, so the entry that matches it comes last. Statuses are
CaiaSoft's phrases ("Item In at Rest", "Out on Physical Retrieval on 08-02-2018"),
matched ignoring case, spacing and a trailing date. A status in neither list is
unknown and never guessed: nothing is journaled for that item and day, it is
named in the log, in status and in an unknown_status alert, and it is asked again
at the next read.

A barcode is remembered in the ledger after its entry is appended, so a crash in
between journals it twice at most (and a repeated check-out or check-in counts as
already done). Any failed call, any HTTP 200 with success false (a wrong
collection code) and any answer without the documented fields is an error in the
log and in status; it is never read as an empty list.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gateway import logs
from gateway.caiasoft import CaiaSoftClient
from gateway.config import Feed as FeedSettings
from gateway.config import Ncip
from gateway.errors import ApiError, GatewayError
from gateway.events import NO_EVENTS, Events
from gateway.ledger import Ledger
from gateway.ncip import journal
from gateway.ncip.journal import JournalEntry
from gateway.worker import Worker

# retrievalinfo's item fields, as CaiaSoft's API guide names them
BARCODE = "barcode"
REQUEST_ID = "request_id"
RETRIEVED_ON = "retrieval date"   # MM-DD-YYYY (a time may follow)
RETRIEVAL_TYPE = "retrieval type"  # PYR, ERT, DEA, SHP, ...
DATE_FORMATS = ("%m-%d-%Y %H:%M:%S", "%m-%d-%Y %H:%M", "%m-%d-%Y", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y",
                "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")
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


def classify(status: str, settings: FeedSettings) -> str | None:
    """'in' (in the facility), 'out' (out of it), or None: a status the settings do not know."""
    said = phrase(status)
    if said and said in {phrase(known) for known in settings.in_statuses}:
        return "in"
    if said and said in {phrase(known) for known in settings.out_statuses}:
        return "out"
    return None


class Feed(Worker):
    def __init__(self, settings: Ncip, client: CaiaSoftClient, ledger: Ledger, events: Events = NO_EVENTS):
        super().__init__(name="ncip-feed")
        assert settings.feed is not None, "the feed runs only with [ncip.feed]"
        self.settings = settings
        self.feed: FeedSettings = settings.feed
        self.client = client
        self.ledger = ledger
        self.events = events
        self.problem: str | None = None
        self.unknown: dict[tuple[str, str], str] = {}  # (day, barcode) -> its unknown status, at the last read
        self._alerted: set[tuple[str, str, str]] = set()  # (day, barcode, status) alerted in this run
        self._without_retrievalinfo = False

    def step(self) -> None:
        try:
            added = self.poll(dt.date.today())
            self.problem = self.unknown_problem()
            if added:
                log.info("feed.journaled", entries=added, collection=self.feed.collection)
        except GatewayError as error:
            self.problem = str(error)
            log.error("feed.failed", reason=str(error), retry_in=self.feed.interval_seconds)
        self.rest(self.feed.interval_seconds)

    def unknown_problem(self) -> str | None:
        if not self.unknown:
            return None
        named = ", ".join(f"{barcode} {status!r} ({day})" for (day, barcode), status in
                          sorted(self.unknown.items())[:UNKNOWN_LISTED])
        more = len(self.unknown) - UNKNOWN_LISTED
        return (f"CaiaSoft status not known for {len(self.unknown)} item(s) retrieved and refiled the same day: "
                f"{named}{f' and {more} more' if more > 0 else ''}; they are not journaled: add each status to "
                "[ncip.feed] in_statuses or out_statuses")

    # -- reading CaiaSoft -------------------------------------------------------------

    def _path(self, endpoint: str, day: str) -> str:
        return f"/api/{endpoint}/v1/{day}/{day}/{quote(self.feed.collection, safe='')}"

    def _barcodes(self, kind: str, day: str) -> list[str]:
        what = f"CaiaSoft's {kind} list for {day} (collection {self.feed.collection})"
        barcodes = self.client.read(self._path(f"{kind}list", day), what).get("barcodes")
        if not isinstance(barcodes, list) or not all(isinstance(b, (str, int)) for b in barcodes):
            raise ApiError(f"{what} has no list of barcodes")
        return [str(barcode).strip() for barcode in barcodes if str(barcode).strip()]

    def _retrievals(self, day: str) -> dict[str, Retrieval]:
        """retrievalinfo's items by barcode, in the order of their time; empty without that endpoint."""
        if self._without_retrievalinfo:
            return {}
        what = f"CaiaSoft's retrieval info for {day} (collection {self.feed.collection})"
        try:
            items = self.client.read(self._path("retrievalinfo", day), what).get("items")
        except ApiError as error:
            if error.http_status not in (404, 405, 501):
                raise
            self._without_retrievalinfo = True
            log.warning("feed.no_retrievalinfo", reason=str(error),
                        detail="check-outs are journaled in the order of the retrieved list, without request ids")
            return {}
        if not isinstance(items, list):
            raise ApiError(f"{what} has no list of items")
        found = [retrieval(item, what) for item in items]
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
        unknown: dict[tuple[str, str], str] = {}
        for back in range(self.feed.lookback_days, -1, -1):
            day = (today - dt.timedelta(days=back)).strftime("%Y%m%d")
            added += self._day(day, unknown)
        self.unknown = unknown
        return added

    def _day(self, day: str, unknown: dict[tuple[str, str], str]) -> int:
        facts = self._retrievals(day)
        retrieved = self._barcodes("retrieved", day)
        refiled = self._barcodes("refiled", day)
        order = {barcode: index for index, barcode in enumerate(facts)}  # by time where CaiaSoft gave one
        out = sorted((b for b in dict.fromkeys([*facts, *retrieved]) if not self.ledger.feed_seen("retrieved", b, day)),
                     key=lambda barcode: order.get(barcode, len(order)))
        not_lent = {b for b in out if b in facts and (facts[b].type or "").upper() in
                    {kind.upper() for kind in self.feed.no_checkout_types}}
        back_in = [b for b in dict.fromkeys(refiled) if not self.ledger.feed_seen("refiled", b, day)]
        both = (set(out) - not_lent) & set(back_in)
        planned: list[tuple[str, str]] = []
        for barcode in out:
            if barcode in not_lent:
                planned.append(("not lent", barcode))
            elif barcode in both:
                planned += self._in_order(barcode, day, unknown)
            else:
                planned.append(("retrieved", barcode))
        planned += [("refiled", barcode) for barcode in back_in if barcode not in both]
        for kind, barcode in planned:
            self._append(kind, barcode, day, facts.get(barcode))
        return sum(kind != "not lent" for kind, _ in planned)

    def _in_order(self, barcode: str, day: str, unknown: dict[tuple[str, str], str]) -> list[tuple[str, str]]:
        """An item retrieved and refiled on day: the two entries, the one matching its status now last."""
        status = self._status_now(barcode)
        where = classify(status, self.feed)
        if where == "out":
            return [("refiled", barcode), ("retrieved", barcode)]  # refiled first, then retrieved again
        if where == "in":
            return [("retrieved", barcode), ("refiled", barcode)]
        unknown[(day, barcode)] = status
        if (day, barcode, status) not in self._alerted:
            self._alerted.add((day, barcode, status))
            log.error("feed.unknown_status", item=barcode, status=status, day=day, collection=self.feed.collection,
                      detail="neither its retrieval nor its refile is journaled: add the status to [ncip.feed] "
                             "in_statuses or out_statuses")
            self.events.status_unknown(barcode, status, day, self.feed.collection)
        return []

    def _append(self, kind: str, barcode: str, day: str, fact: Retrieval | None) -> None:
        if kind == "not lent":  # seen: an electronic retrieval does not lend the item
            log.info("feed.not_checked_out", item=barcode, day=day, retrieval_type=fact.type if fact else None)
            self.ledger.remember_feed("retrieved", barcode, day)
            return
        if kind == "retrieved":
            entry = JournalEntry("checkout", barcode, request_id=fact.request_id if fact else None,
                                 id=f"feed-{kind}-{day}-{barcode}")
        else:
            entry = JournalEntry("checkin", barcode, id=f"feed-{kind}-{day}-{barcode}")
        try:
            journal.append(self.settings.journal, entry)
        except ValueError as error:  # a barcode no NCIP message can carry: said once, never journaled
            log.error("feed.entry_refused", item=barcode, day=day, kind=kind, reason=str(error),
                      detail="CaiaSoft listed a barcode that cannot be relayed; the other items go on")
        self.ledger.remember_feed(kind, barcode, day)
