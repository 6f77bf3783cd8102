"""The state layer's own promises: rows hand out the StrEnums they were written from; no SQL from names."""

from __future__ import annotations

import pytest

from gateway.core.states import FileState, Verdict
from gateway.state.ledger import Ledger


@pytest.fixture
def ledger(tmp_path):
    made = Ledger(tmp_path / "gateway.db")
    yield made
    made.close()


def test_rows_carry_their_state_and_verdict_as_the_enums_they_were_written_from(ledger):
    row_id = ledger.files.begin_claim("print", "a_barcode", "/print/a_barcode", 15, 1.0)
    assert ledger.files.row(row_id).state is FileState.CLAIMING and ledger.files.row(row_id).verdict is None
    ledger.files.queued(row_id, "barcodes", "0" * 64, 15, {})
    taken = ledger.files.assign(row_id)
    assert taken is not None and taken.state is FileState.UPLOADING
    answered = ledger.files.answered(row_id, Verdict.REFUSED, "Invalid Stop Code", uploaded=True)
    assert answered.state is FileState.ANSWERED and answered.verdict is Verdict.REFUSED
    assert ledger.files.counts() == {FileState.ANSWERED: 1}
    assert all(type(state) is FileState for state in ledger.files.counts())


def test_an_update_names_only_columns_of_the_files_table(ledger):
    row_id = ledger.files.begin_claim("print", "a_barcode", "/print/a_barcode", 15, 1.0)
    with pytest.raises(ValueError, match="not columns of the files table"):
        ledger.db.update(row_id, (FileState.CLAIMING,), **{"state = 'archived', reason": "spliced"})
    assert ledger.files.row(row_id).state is FileState.CLAIMING and ledger.files.row(row_id).reason is None


def test_the_last_alert_sent_is_found_with_or_without_its_kind(ledger):
    ledger.alerts.add_alerts([("refused", {"title": "a"}, False), ("stuck", {"title": "b"}, False)], at=10.0)
    refused, stuck = ledger.alerts.pending_alerts("mail")
    ledger.alerts.alerts_sent("mail", [refused.id], 20.0)
    ledger.alerts.alerts_sent("mail", [stuck.id], 30.0)
    assert ledger.alerts.last_alert_sent("mail") == 30.0
    assert ledger.alerts.last_alert_sent("mail", "refused") == 20.0
    assert ledger.alerts.last_alert_sent("mail", "paused") is None
    assert ledger.alerts.last_alert_sent("webhook") is None
