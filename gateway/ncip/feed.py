"""The status feed: CaiaSoft's retrieved and refiled lists, turned into journal entries.

For sites where CaiaSoft cannot reach ALEPH's NCIP port: every interval the
gateway reads the lists for the configured collection (today and lookback_days
before) and appends a checkout (retrieved) or checkin (refiled) entry for each
barcode not journaled before for that day. A barcode is remembered in the
ledger after its entry is appended, so a crash in between journals it twice at
most (and a repeated check-out or check-in counts as already done).
"""

from __future__ import annotations

import datetime as dt
import threading
import time

from gateway import logs
from gateway.caiasoft import CaiaSoftClient
from gateway.config import Ncip
from gateway.errors import GatewayError
from gateway.ledger import Ledger
from gateway.ncip import journal
from gateway.ncip.journal import JournalEntry

LISTS = (("retrieved", "checkout"), ("refiled", "checkin"))
CHECK_IN_SECONDS = 1.0

log = logs.get("gateway.ncip.feed")


class Feed(threading.Thread):
    def __init__(self, settings: Ncip, client: CaiaSoftClient, ledger: Ledger):
        super().__init__(name="ncip-feed", daemon=True)
        if settings.feed is None:
            raise ValueError("the status feed needs an [ncip.feed] section")
        self.settings = settings
        self.feed = settings.feed
        self.client = client
        self.ledger = ledger
        self.stop_event = threading.Event()
        self.heartbeat = time.monotonic()
        self.problem: str | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.heartbeat = time.monotonic()
            try:
                added = self.poll(dt.date.today())
                self.problem = None
                if added:
                    log.info("feed.journaled", entries=added, collection=self.feed.collection)
            except GatewayError as error:
                self.problem = str(error)
                log.error("feed.failed", reason=str(error), retry_in=self.feed.interval_seconds)
            deadline = time.monotonic() + self.feed.interval_seconds
            while not self.stop_event.wait(min(CHECK_IN_SECONDS, max(deadline - time.monotonic(), 0))):
                self.heartbeat = time.monotonic()
                if time.monotonic() >= deadline:
                    break

    def poll(self, today: dt.date) -> int:
        """Read the lists once; append an entry for every new barcode; return how many."""
        added = 0
        for back in range(self.feed.lookback_days, -1, -1):
            day = (today - dt.timedelta(days=back)).strftime("%Y%m%d")
            for kind, action in LISTS:
                for barcode in self.client.status_list(kind, day, self.feed.collection):
                    if self.ledger.feed_seen(kind, barcode, day):
                        continue
                    journal.append(self.settings.journal,
                                   JournalEntry(action, barcode, id=f"feed-{kind}-{day}-{barcode}"))
                    self.ledger.remember_feed(kind, barcode, day)
                    added += 1
        return added
