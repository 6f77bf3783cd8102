"""The status feed: what CaiaSoft retrieved and refiled, turned into journal entries, with stop and order.

For sites where CaiaSoft cannot reach ALEPH's NCIP port: every interval the
gateway reads, for the configured collection, today and lookback_days before:
  retrievalinfo   per retrieved item: its stop, request id and time (where the
                  account has the endpoint; without it, only the barcodes below)
  retrievedlist   barcodes retrieved (each is a checkout, to its stop's user)
  refiledlist     barcodes refiled (each is a checkin)
and appends an entry for each barcode not journaled before for that day, days
oldest first, retrievals in the order of their time. An item both retrieved and
refiled on the same day is journaled in the order that leaves ALEPH right: its
current CaiaSoft status (itemstatus) says whether it is in or out now, so the
entry that matches it comes last. A barcode is remembered in the ledger after its
entry is appended, so a crash in between journals it twice at most (and a
repeated check-out or check-in counts as already done).

Any failed call, and any HTTP 200 with success false (a wrong collection code),
is an error in the log and in status; it is never read as an empty list.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gateway import logs
from gateway.caiasoft import CaiaSoftClient
from gateway.config import Feed as FeedSettings
from gateway.config import Ncip
from gateway.errors import ApiError, GatewayError
from gateway.ledger import Ledger
from gateway.ncip import journal
from gateway.ncip.journal import JournalEntry
from gateway.worker import Worker

BARCODE_KEYS = ("barcode", "item", "item_barcode", "itembarcode")
STOP_KEYS = ("stop", "stop_code", "circulation_stop", "circ_stop", "circstop")
REQUEST_KEYS = ("request_id", "requestid", "request_number", "request")
TIME_KEYS = ("retrieved", "retrieval_date", "retrieved_date", "date_retrieved", "retrieval_time", "datetime",
             "date", "time")

log = logs.get("gateway.ncip.feed")


@dataclass(frozen=True)
class Retrieval:
    """One retrieved item, with what CaiaSoft said about it (None where it said nothing)."""

    barcode: str
    stop: str | None = None
    request_id: str | None = None
    at: str | None = None


def _first(item: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    lowered = {str(key).lower(): value for key, value in item.items()}
    for key in keys:
        value = lowered.get(key)
        if isinstance(value, (str, int)) and str(value).strip():
            return str(value).strip()
    return None


def retrieval(item: Any) -> Retrieval | None:
    """A retrievalinfo item as a Retrieval (field names read leniently; a stop "CODE - Name" gives CODE)."""
    if not isinstance(item, dict):
        return None
    barcode = _first(item, BARCODE_KEYS)
    if barcode is None:
        return None
    stop = _first(item, STOP_KEYS)
    if stop and " - " in stop:
        stop = stop.split(" - ", 1)[0].strip()
    return Retrieval(barcode, stop or None, _first(item, REQUEST_KEYS), _first(item, TIME_KEYS))


def _time_key(at: str | None) -> str:
    """Times compared by their digits (YYYY-MM-DD HH:MM:SS, YYYYMMDDHHMMSS... sort alike); none sorts first."""
    return re.sub(r"\D", "", at or "")


class Feed(Worker):
    def __init__(self, settings: Ncip, client: CaiaSoftClient, ledger: Ledger):
        super().__init__(name="ncip-feed")
        assert settings.feed is not None, "the feed runs only with [ncip.feed]"
        self.settings = settings
        self.feed: FeedSettings = settings.feed
        self.client = client
        self.ledger = ledger
        self.problem: str | None = None
        self._without_retrievalinfo = False

    def step(self) -> None:
        try:
            added = self.poll(dt.date.today())
            self.problem = None
            if added:
                log.info("feed.journaled", entries=added, collection=self.feed.collection)
        except GatewayError as error:
            self.problem = str(error)
            log.error("feed.failed", reason=str(error), retry_in=self.feed.interval_seconds)
        self.rest(self.feed.interval_seconds)

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
        """Per-item facts from retrievalinfo, by barcode; empty where the account has no such endpoint."""
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
                        detail="check-outs go to ncip.user_id (no stop), in the order of the retrieved list")
            return {}
        if not isinstance(items, list):
            raise ApiError(f"{what} has no list of items")
        found = [fact for fact in (retrieval(item) for item in items) if fact is not None]
        return {fact.barcode: fact for fact in sorted(found, key=lambda fact: _time_key(fact.at))}

    def _is_out_now(self, barcode: str) -> bool:
        answer = self.client.read(f"/api/itemstatus/v1/{quote(barcode, safe='')}", f"CaiaSoft's status of {barcode}")
        status = str(answer.get("status") or "").strip().lower()
        return status not in {word.lower() for word in self.feed.in_statuses}

    # -- journaling ---------------------------------------------------------------------

    def poll(self, today: dt.date) -> int:
        """Read CaiaSoft once; append the new entries in order; return how many."""
        added = 0
        for back in range(self.feed.lookback_days, -1, -1):
            day = (today - dt.timedelta(days=back)).strftime("%Y%m%d")
            added += self._day(day)
        return added

    def _day(self, day: str) -> int:
        facts = self._retrievals(day)
        retrieved = self._barcodes("retrieved", day)
        refiled = self._barcodes("refiled", day)
        order = {barcode: index for index, barcode in enumerate(facts)}  # by time where CaiaSoft gave one
        out = sorted((b for b in dict.fromkeys([*facts, *retrieved]) if not self.ledger.feed_seen("retrieved", b, day)),
                     key=lambda barcode: order.get(barcode, len(order)))
        back_in = [b for b in dict.fromkeys(refiled) if not self.ledger.feed_seen("refiled", b, day)]
        both = set(out) & set(back_in)
        planned: list[tuple[str, str]] = []
        for barcode in out:
            if barcode in both and self._is_out_now(barcode):  # refiled first, then retrieved again
                planned += [("refiled", barcode), ("retrieved", barcode)]
            elif barcode in both:
                planned += [("retrieved", barcode), ("refiled", barcode)]
            else:
                planned.append(("retrieved", barcode))
        planned += [("refiled", barcode) for barcode in back_in if barcode not in both]
        for kind, barcode in planned:
            self._append(kind, barcode, day, facts.get(barcode))
        return len(planned)

    def _append(self, kind: str, barcode: str, day: str, fact: Retrieval | None) -> None:
        if kind == "retrieved":
            entry = JournalEntry("checkout", barcode, stop=fact.stop if fact else None,
                                 request_id=fact.request_id if fact else None, id=f"feed-{kind}-{day}-{barcode}")
        else:
            entry = JournalEntry("checkin", barcode, id=f"feed-{kind}-{day}-{barcode}")
        journal.append(self.settings.journal, entry)
        self.ledger.remember_feed(kind, barcode, day)
