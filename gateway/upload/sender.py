"""Sending one request file to CaiaSoft and making its answer durable.

The Sender is the upload stage: send() posts the file and reads the answer,
record() makes the answer durable in the ledger and tells the upload gate. It never
places a file: the answered row it returns goes to archive.placing (through the
finisher), so there is one way to place a file.
"""

from __future__ import annotations

from pathlib import Path

from gateway.archive import aftertake
from gateway.config.settings import CaiaSoft
from gateway.core import logs
from gateway.core.backoff import Gate
from gateway.core.errors import describe
from gateway.core.names import safe_name
from gateway.core.states import Verdict
from gateway.monitor.events import NO_EVENTS, Events
from gateway.sources.base import Source
from gateway.state.ledger import FileRow, Ledger
from gateway.upload.caiasoft import CaiaSoftClient, Outcome, counts_unreadable, settle_unreadable

log = logs.get("gateway.pipeline")  # its lines were always the pipeline's: scripts filter on the logger


class Sender:
    """Sends 'uploading' rows with client and records CaiaSoft's answers.

    gate is the one retry policy for uploads (core.backoff), shared by every upload
    worker; sources are where originals that stay after the take are checked for
    changes before a file is sent.
    """

    def __init__(
        self,
        settings: CaiaSoft,
        client: CaiaSoftClient | None,
        ledger: Ledger,
        gate: Gate,
        work_dir: Path,
        sources: dict[str, Source],
        events: Events = NO_EVENTS,
    ):
        self.settings = settings
        self.client = client
        self.ledger = ledger
        self.gate = gate
        self.work_dir = work_dir
        self.sources = sources
        self.events = events

    def send(self, row: FileRow) -> Outcome:
        """POST the file and read the answer; never raises (an unexpected error refuses this file).

        An original that changed since it was taken is not sent: it is taken again, whole.
        """
        if self.client is None:
            raise RuntimeError("this pipeline was made without a CaiaSoft client; it cannot upload")
        work = self.work_dir / row.work_name
        try:
            size_now = aftertake.changed_since_take(row, self.sources, "before upload")
            if size_now is not None:
                return Outcome(Verdict.REFUSED, aftertake.reason(row, size_now))
            outcome = settle_unreadable(
                self.client.upload(work, safe_name(row.name), row.kind or "text"),
                row.answer_json,
                self.settings.unreadable_answer_retries,
            )
            self.events.upload_timed(outcome.elapsed_ms / 1000)
            return outcome
        except Exception as error:
            log.error(
                "upload.failed",
                id=row.id,
                file=row.name,
                error=describe(error),
                exc_info=(type(error), error, error.__traceback__),
            )
            if isinstance(error, OSError) and error.filename == str(work):
                return Outcome(
                    Verdict.REFUSED,
                    f"the gateway could not open it in work/ ({describe(error)}); it "
                    "was not sent: fix the cause, then `retry`",
                )
            return Outcome(
                Verdict.REFUSED,
                f"the gateway failed while sending it ({describe(error)}); it may "
                "have reached CaiaSoft: check there before `retry`",
            )

    def record(self, row: FileRow, outcome: Outcome) -> FileRow | None:
        """Make the answer durable and tell the gate; return the answered row, to be placed, if any."""
        fields = dict(
            id=row.id,
            source=row.source,
            file=row.name,
            sha256=row.sha256,
            attempt=row.attempts,
            status=outcome.http_status,
            ms=outcome.elapsed_ms,
        )
        if outcome.verdict == Verdict.TRANSIENT:
            delay = self.gate.failed(outcome.retry_after, row.attempts, outcome.reason)
            log.warning("upload.retry", **fields, reason=outcome.reason, retry_in=round(delay, 2))
            self.ledger.requeue(
                row.id,
                outcome.reason,
                self.ledger.schedule() + delay,
                outcome.http_status,
                answer=outcome.answer if counts_unreadable(outcome) else None,
            )
            return None
        if outcome.verdict == Verdict.PAUSED:  # the key or URL is wrong; the file waits, unharmed
            self.gate.pause(outcome.reason)
            self.ledger.requeue_paused(row.id, outcome.reason, outcome.http_status)
            return None
        if outcome.http_status is not None:
            self.gate.succeeded()
        if outcome.verdict == Verdict.ACCEPTED:
            log.info("upload.ok", **fields, denied=len(outcome.denials))
            for item in outcome.denials:
                log.warning(
                    "upload.item_denied", id=row.id, file=row.name, item=item.get("item"), istatus=item.get("istatus")
                )
            verdict = Verdict.ACCEPTED
        else:
            log.warning("upload.refused", **fields, reason=outcome.reason)
            verdict = Verdict.REFUSED
        return self.ledger.answered(
            row.id,
            verdict,
            outcome.reason,
            http_status=outcome.http_status,
            answer=outcome.answer,
            uploaded=outcome.http_status is not None,
        )
