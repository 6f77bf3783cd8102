"""NCIP: messages against the official schema, answers, the journal and its tailer."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from conftest import REPO, ncip_settings

from gateway.config.loader import Ncip
from gateway.ncip import answers, journal, messages
from gateway.ncip.answers import judge
from gateway.ncip.journal import JournalEntry, Tailer, parse_entry
from gateway.simulators.ncip import SCHEMA_FILE, schema_errors


def settings(**overrides: object) -> Ncip:
    """[ncip] settings for these tests: the schema's defaults, the required keys, a few test values."""
    values: dict[str, object] = dict(
        url="http://127.0.0.1:9/",
        version="2",
        max_answer_bytes=65536,
        unreadable_attempts=3,
        from_agency="CAIA",
        to_agency="ALEPH",
        application_profile="CAIAPROFILE",
        user_id="CAIASOFT",
        stop_users={"MAIN": "CAIA-MAIN", "LAW": "CAIA-LAW"},
        journal=Path("/tmp/j"),
        timeout_seconds=5.0,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
        agency_scheme="http://scheme/agency.scm",
        max_line_bytes=1024,
    )
    return ncip_settings(**{**values, **overrides})


EVERY_KIND = [
    JournalEntry("checkout", "31234001234567"),
    JournalEntry("checkout", "31234001234567", stop="LAW"),
    JournalEntry("checkout", "31234001234567", stop="MAIN", request_id="000004521", id="r-1"),
    JournalEntry("checkout", "31234001234567", user="SOMEONE"),
    JournalEntry("checkin", "31234001234567"),
    JournalEntry("checkin", "31234001234567", stop="LAW", request_id="ignored-on-checkin"),
]


def test_the_packaged_schema_is_the_official_one():
    official = REPO.parent / "shared" / "reference" / "ncip_v2_02.xsd"
    if official.exists():  # beside the checkout in development and CI
        assert SCHEMA_FILE.read_bytes() == official.read_bytes()
    assert b'targetNamespace="http://www.niso.org/2008/ncip"' in SCHEMA_FILE.read_bytes()


@pytest.mark.parametrize("entry", EVERY_KIND, ids=lambda e: f"{e.action}-{e.stop}-{e.request_id}-{e.user}")
@pytest.mark.parametrize("profile", ["CAIAPROFILE", ""])
def test_every_version_2_message_validates_against_the_schema(entry, profile):
    body = messages.build(settings(application_profile=profile), entry)
    assert schema_errors(body) == []
    assert b'ncip:version="http://www.niso.org/schemas/ncip/v2_02/ncip_v2_02.xsd"' in body


def test_a_message_missing_a_required_part_does_not_validate():
    body = (
        messages.build(settings(), JournalEntry("checkin", "1"))
        .replace(b"<ncip:ItemId>", b"<ncip:ItemIdX>")
        .replace(b"</ncip:ItemId>", b"</ncip:ItemIdX>")
    )
    assert schema_errors(body), "the schema check must be able to fail"


def _parse(body: bytes) -> dict:
    from gateway.simulators.ncip import NcipSimulator

    sim = NcipSimulator.__new__(NcipSimulator)
    sim.validate = False
    received = NcipSimulator.parse(sim, body)
    return {
        key: getattr(received, key)
        for key in ("action", "item", "user", "request_id", "profile", "from_agency", "to_agency", "version")
    }


def test_stop_chooses_the_user_and_the_default_covers_other_stops():
    config = settings()
    assert _parse(messages.build(config, JournalEntry("checkout", "1", stop="LAW")))["user"] == "CAIA-LAW"
    assert _parse(messages.build(config, JournalEntry("checkout", "1", stop="ANNEX")))["user"] == "CAIASOFT"
    assert _parse(messages.build(config, JournalEntry("checkout", "1")))["user"] == "CAIASOFT"
    assert _parse(messages.build(config, JournalEntry("checkout", "1", stop="LAW", user="X")))["user"] == "X"


def test_profile_goes_on_check_in_only_and_the_user_on_check_out_only():
    checkin = _parse(messages.build(settings(), JournalEntry("checkin", "7")))
    checkout = _parse(messages.build(settings(), JournalEntry("checkout", "7", request_id="R9")))
    assert (checkin["profile"], checkin["user"]) == ("CAIAPROFILE", None)
    assert (checkout["profile"], checkout["user"], checkout["request_id"]) == (None, "CAIASOFT", "R9")
    assert checkout["from_agency"] == "CAIA" and checkout["to_agency"] == "ALEPH"


def test_version_1_uses_the_unique_forms():
    body = messages.build(settings(version="1"), JournalEntry("checkout", "31234001234567", stop="MAIN"))
    text = body.decode()
    assert '<!DOCTYPE NCIPMessage PUBLIC "-//NISO//NCIP DTD Version 1//EN"' in text
    for element in (
        "<UniqueAgencyId><Scheme>http://scheme/agency.scm</Scheme><Value>CAIA</Value>",
        "<UniqueUserId>",
        "<UserIdentifierValue>CAIA-MAIN</UserIdentifierValue>",
        "<UniqueItemId>",
        "<ItemIdentifierValue>31234001234567</ItemIdentifierValue>",
    ):
        assert element in text
    assert "niso.org/2008/ncip" not in text
    parsed = _parse(body)
    assert (parsed["version"], parsed["user"], parsed["from_agency"]) == ("1", "CAIA-MAIN", "CAIA")


def test_user_data_cannot_break_the_xml():
    body = messages.build(settings(), JournalEntry("checkout", "</ncip:ItemIdentifierValue><evil/>&"))
    assert schema_errors(body) == []
    assert _parse(body)["item"] == "</ncip:ItemIdentifierValue><evil/>&"


# -- answers -----------------------------------------------------------------

PREFIXED = b"""<?xml version="1.0"?><ns1:NCIPMessage xmlns:ns1="http://www.niso.org/2008/ncip" ns1:version="x">
<ns1:CheckOutItemResponse><ns1:Problem><ns1:ProblemType>Unknown Item</ns1:ProblemType>
<ns1:ProblemDetail>No such barcode</ns1:ProblemDetail><ns1:ProblemValue>123</ns1:ProblemValue></ns1:Problem>
</ns1:CheckOutItemResponse></ns1:NCIPMessage>"""
DEFAULT_NS = b"""<NCIPMessage xmlns="http://www.niso.org/2008/ncip" version="x"><CheckInItemResponse>
<Problem><ProblemType Scheme="http://x">Item Not Checked Out</ProblemType></Problem></CheckInItemResponse></NCIPMessage>"""
MESSAGE_LEVEL = b"""<NCIPMessage xmlns="http://www.niso.org/2008/ncip"><Problem><ProblemType>Temporary Processing
 Failure</ProblemType></Problem></NCIPMessage>"""
V1 = b"""<?xml version="1.0"?><!DOCTYPE NCIPMessage PUBLIC "-//NISO//NCIP DTD Version 1//EN" "ncip_v1_0.dtd">
<NCIPMessage version="x"><CheckOutItemResponse><ProcessingError><ProcessingErrorType><Scheme>s</Scheme>
<Value>User Blocked</Value></ProcessingErrorType></ProcessingError></CheckOutItemResponse></NCIPMessage>"""
OK = b"""<NCIPMessage xmlns="http://www.niso.org/2008/ncip"><CheckInItemResponse><ItemId>
<ItemIdentifierValue>1</ItemIdentifierValue></ItemId></CheckInItemResponse></NCIPMessage>"""


def test_problems_are_read_in_every_namespace_form():
    assert [str(p) for p in answers.read_answer(PREFIXED)] == ["Unknown Item: No such barcode (123)"]
    assert [p.type for p in answers.read_answer(DEFAULT_NS)] == ["Item Not Checked Out"]
    assert answers.read_answer(MESSAGE_LEVEL)[0].type.split() == ["Temporary", "Processing", "Failure"]
    assert [p.type for p in answers.read_answer(V1)] == ["User Blocked"]
    assert answers.read_answer(OK) == []


@pytest.mark.parametrize(
    "body",
    [
        b"<html>proxy error</html>",
        b"not xml at all",
        b'<!DOCTYPE x [<!ENTITY e "boom">]><NCIPMessage>&e;</NCIPMessage>',
    ],
)
def test_anything_else_is_not_an_answer(body):
    with pytest.raises(ValueError):
        answers.read_answer(body)


def test_judging_problems():
    config = settings()
    problem = answers.Problem
    assert judge(config, "checkin", []).verdict == "done"
    assert judge(config, "checkin", [problem("Item Not Checked Out")]).verdict == "already"
    assert judge(config, "checkout", [problem("Item Already Checked Out")]).verdict == "already"
    assert judge(config, "checkout", [problem("Duplicate Request")]).verdict == "already"
    assert judge(config, "checkout", [problem("Item Not Checked Out")]).verdict == "refused"
    assert judge(config, "checkin", [problem("Temporary Processing Failure")]).verdict == "temporary"
    assert judge(config, "checkout", [problem("Unknown User")]).verdict == "refused"


# -- the journal ----------------------------------------------------------------


@pytest.mark.parametrize(
    "line,reason",
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"action": "renew", "item": "1"}', "action must be checkout or checkin"),
        (b'{"action": "checkin"}', "item (the barcode) is missing"),
        (b'{"action": "checkin", "item": "1", "colour": "red"}', "unknown field(s): colour"),
        (b'{"action": "checkin", "item": 12}', "item must be a non-empty string"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_invalid_lines_say_why(line, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_entry(line)


def test_spaces_and_a_carriage_return_around_values_are_not_sent(tmp_path):
    """A cron script reading a CRLF list writes "31234001234567\\r": ALEPH would answer Unknown Item."""
    entry = parse_entry(b'{"action": "checkout", "item": "31234001234567\\r", "stop": " LAW ", "user": "U\\r"}')
    assert (entry.item, entry.stop, entry.user) == ("31234001234567", "LAW", "U")


def _append_many(path: str, worker: int) -> None:
    for number in range(200):
        journal.append(Path(path), JournalEntry("checkin", f"{worker:02d}-{number:04d}-" + "x" * 300))


def test_concurrent_appends_from_several_processes_stay_whole_lines(tmp_path):
    path = tmp_path / "ncip.jsonl"
    workers = [multiprocessing.Process(target=_append_many, args=(str(path), n)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 801
    assert len({parse_entry(line).item for line in lines[:-1]}) == 800


def tail_all(tailer: Tailer, ledger_checkpoint: dict | None = None) -> tuple[list[str], dict | None]:
    items, checkpoint = [], ledger_checkpoint
    while (line := tailer.next()) is not None:
        items.append(line.entry.item if line.entry else f"BAD:{line.problem}")
        checkpoint = tailer.commit(line)
    return items, checkpoint


def write(path: Path, *items: str, partial: str = "") -> None:
    with open(path, "ab") as handle:
        for item in items:
            handle.write(b'{"action": "checkin", "item": "%s"}\n' % item.encode())
        handle.write(partial.encode())


def test_a_line_without_its_newline_is_not_read_yet(tmp_path):
    path = tmp_path / "j"
    write(path, "1", partial='{"action": "checkin", "item": "2"')
    tailer = Tailer(path, None, 1024)
    assert tail_all(tailer)[0] == ["1"]
    with open(path, "ab") as handle:
        handle.write(b"}\n")
    assert tail_all(tailer)[0] == ["2"]


def test_resume_from_the_checkpoint(tmp_path):
    path = tmp_path / "j"
    write(path, "1", "2")
    items, checkpoint = tail_all(Tailer(path, None, 1024))
    write(path, "3")
    assert tail_all(Tailer(path, checkpoint, 1024))[0] == ["3"]


def test_an_uncommitted_line_is_read_again(tmp_path):
    path = tmp_path / "j"
    write(path, "1", "2")
    tailer = Tailer(path, None, 1024)
    assert tailer.next().entry.item == "1"
    assert tailer.next().entry.item == "1"  # not committed: the relay retries the same entry


def test_rotation_reads_the_old_file_to_its_end_first(tmp_path):
    path = tmp_path / "ncip.jsonl"
    write(path, "1")
    tailer = Tailer(path, None, 1024)
    assert tail_all(tailer)[0] == ["1"]
    write(path, "2")
    path.rename(tmp_path / "ncip.jsonl.1")
    write(path, "3")
    write(tmp_path / "ncip.jsonl.1", "2b")  # the writer still had the old file open
    assert tail_all(tailer)[0] == ["2", "2b", "3"]


def test_rotation_while_stopped_is_followed_from_the_checkpoint(tmp_path):
    path = tmp_path / "ncip.jsonl"
    write(path, "1", "2")
    tailer = Tailer(path, None, 1024)
    line = tailer.next()
    checkpoint = tailer.commit(line)  # "1" done, then the gateway stops
    path.rename(tmp_path / "ncip.jsonl.1")
    write(path, "3")
    assert tail_all(Tailer(path, checkpoint, 1024))[0] == ["2", "3"]


def _rotate(path: Path, day: int) -> None:
    """logrotate (create): NAME.N -> NAME.N+1, NAME -> NAME.1, a new NAME; each file last written on its day."""
    os.utime(path, ns=(day * 86_400 * 10**9,) * 2)
    for number in sorted(
        (int(p.name.rsplit(".", 1)[1]) for p in path.parent.glob(path.name + ".[0-9]*")), reverse=True
    ):
        (path.parent / f"{path.name}.{number}").rename(path.parent / f"{path.name}.{number + 1}")
    path.rename(path.parent / f"{path.name}.1")
    path.touch()


def test_rotated_twice_before_the_old_file_was_finished_reads_every_file_in_order(tmp_path):
    """NCIP down over a long weekend with daily rotation: the tailer still holds the oldest file."""
    path = tmp_path / "ncip.jsonl"
    write(path, "1", "2")
    tailer = Tailer(path, None, 1024)
    checkpoint = tailer.commit(tailer.next())  # "1" done; "2" in flight while the server is down
    _rotate(path, 1)
    write(path, "3")
    _rotate(path, 2)
    write(path, "4")
    (tmp_path / "ncip.jsonl.bak").write_bytes(b'{"action": "checkin", "item": "copy"}\n')  # not a rotation
    (tmp_path / "ncip.jsonl.9.gz").write_bytes(b"\x1f\x8b compressed")
    assert tailer.lag()[1] == 3  # status counts the copy in between too: "2", "3", "4" are behind
    assert tail_all(tailer)[0] == ["2", "3", "4"]
    assert tail_all(Tailer(path, checkpoint, 1024))[0] == ["2", "3", "4"]  # the same after a restart


def test_rotated_twice_with_dateext_while_stopped(tmp_path):
    path = tmp_path / "ncip.jsonl"
    write(path, "1", "2")
    tailer = Tailer(path, None, 1024)
    checkpoint = tailer.commit(tailer.next())
    for day, item in ((20261127, "3"), (20261128, "4")):
        os.utime(path, ns=((day - 20261100) * 86_400 * 10**9,) * 2)
        path.rename(tmp_path / f"ncip.jsonl-{day}")
        write(path, item)
    assert tail_all(Tailer(path, checkpoint, 1024))[0] == ["2", "3", "4"]


def test_truncation_reads_again_from_the_start(tmp_path):
    path = tmp_path / "j"
    write(path, "1", "2")
    tailer = Tailer(path, None, 1024)
    tail_all(tailer)
    os.truncate(path, 0)
    write(path, "9")
    assert tail_all(tailer)[0] == ["9"]


def test_a_replaced_journal_is_read_from_its_start(tmp_path):
    path = tmp_path / "j"
    write(path, "1")
    _, checkpoint = tail_all(Tailer(path, None, 1024))
    path.unlink()
    write(path, "fresh-1", "fresh-2")
    assert tail_all(Tailer(path, checkpoint, 1024))[0] == ["fresh-1", "fresh-2"]


def test_over_long_and_invalid_lines_are_reported_and_the_tail_goes_on(tmp_path):
    path = tmp_path / "j"
    write(path, "1")
    with open(path, "ab") as handle:
        handle.write(b'{"action": "checkin", "item": "' + b"9" * 3000 + b'"}\n')
        handle.write(b"garbage\n")
    write(path, "2")
    items, _ = tail_all(Tailer(path, None, 1024))
    assert items[0] == "1" and items[-1] == "2"
    assert items[1] == "BAD:line longer than max_line_bytes (1024)"
    assert items[2].startswith("BAD:line is not JSON")


def test_lag_counts_bytes_and_entries(tmp_path):
    path = tmp_path / "j"
    write(path, "1", "2", "3")
    tailer = Tailer(path, None, 1024)
    tailer.commit(tailer.next())
    size = path.stat().st_size
    assert tailer.lag() == (size - tailer.next().start, 2)


def test_dead_letters_are_counted_once_then_kept_up_to_date(tmp_path):
    from gateway.ncip.relay import DeadLetters

    folder = tmp_path / "ncip"
    folder.mkdir()
    (folder / "2026-11-27.jsonl").write_text('{"reason": "a"}\n{"reason": "b"}\n')
    letters = DeadLetters(folder)
    assert letters.count() == 2
    path = letters.add({"reason": "c"})
    assert letters.count() == 3 and path.read_text().count("\n") == 1
    assert DeadLetters(folder).count() == 3


# -- truncation and replacement, noticed at every read ------------------------------------


def test_truncated_and_refilled_between_two_reads_is_read_from_its_start(tmp_path):
    """The reported loss: 3 relayed, the journal truncated and 12 appended: all 12 are read, none skipped."""
    path = tmp_path / "ncip.jsonl"
    write(path, "old-1", "old-2", "old-3")
    tailer = Tailer(path, None, 1024)
    assert tail_all(tailer)[0] == ["old-1", "old-2", "old-3"]
    os.truncate(path, 0)
    write(path, *[f"new-{number:02d}" for number in range(1, 13)])
    assert tail_all(tailer)[0] == [f"new-{number:02d}" for number in range(1, 13)]


def test_a_rewrite_of_the_same_size_is_noticed(tmp_path):
    path = tmp_path / "ncip.jsonl"
    write(path, "AAAA-1", "AAAA-2")
    tailer = Tailer(path, None, 1024)
    tail_all(tailer)
    path.write_bytes(b"")
    write(path, "BBBB-1", "BBBB-2", "BBBB-3")
    assert tail_all(tailer)[0] == ["BBBB-1", "BBBB-2", "BBBB-3"]


def test_the_entry_in_flight_when_the_journal_is_truncated_is_not_skipped_over(tmp_path):
    path = tmp_path / "ncip.jsonl"
    write(path, "1", "2", "3", "4")
    tailer = Tailer(path, None, 1024)
    for _ in range(3):
        tailer.commit(tailer.next())
    assert tailer.next().entry.item == "4"  # in flight, NCIP down: not committed
    os.truncate(path, 0)
    write(path, *[f"n{number}" for number in range(12)])
    assert tail_all(tailer)[0] == [f"n{number}" for number in range(12)]


def test_copytruncate_reads_the_rest_of_the_copy_first(tmp_path):
    """logrotate copytruncate: the copy holds what was not relayed yet; it is read before the emptied journal."""
    path = tmp_path / "ncip.jsonl"
    write(path, "1", "2", "3", "4", "5")
    tailer = Tailer(path, None, 1024)
    for _ in range(3):
        tailer.commit(tailer.next())
    (tmp_path / "ncip.jsonl.1").write_bytes(path.read_bytes())
    os.truncate(path, 0)
    write(path, "6", "7")
    assert tail_all(tailer)[0] == ["4", "5", "6", "7"]


def test_copytruncate_while_stopped_is_followed_from_the_checkpoint(tmp_path):
    path = tmp_path / "ncip.jsonl"
    write(path, "1", "2", "3")
    tailer = Tailer(path, None, 1024)
    checkpoint = tailer.commit(tailer.next())
    tailer.close()
    (tmp_path / "ncip.jsonl.1").write_bytes(path.read_bytes())
    os.truncate(path, 0)
    write(path, "4")
    assert tail_all(Tailer(path, checkpoint, 1024))[0] == ["2", "3", "4"]


def test_truncated_and_refilled_while_stopped_is_read_from_its_start(tmp_path):
    path = tmp_path / "ncip.jsonl"
    write(path, "1", "2", "3")
    _, checkpoint = tail_all(Tailer(path, None, 1024))
    os.truncate(path, 0)
    write(path, *[f"n{number}" for number in range(12)])
    assert tail_all(Tailer(path, checkpoint, 1024))[0] == [f"n{number}" for number in range(12)]


def test_a_journal_replaced_while_running_is_read_from_its_start(tmp_path):
    path = tmp_path / "ncip.jsonl"
    write(path, "1", "2")
    tailer = Tailer(path, None, 1024)
    assert tail_all(tailer)[0] == ["1", "2"]
    fresh = tmp_path / "fresh.jsonl"
    write(fresh, "f1", "f2", "f3")
    fresh.replace(path)
    assert tail_all(tailer)[0] == ["f1", "f2", "f3"]


def test_a_checkpoint_from_the_previous_release_is_still_honoured(tmp_path):
    """Checkpoints stored before the fingerprint covered the bytes before the offset: head only."""
    import hashlib

    path = tmp_path / "ncip.jsonl"
    write(path, "1", "2", "3")
    info = path.stat()
    first = len(b'{"action": "checkin", "item": "1"}\n')
    length = min(128, info.st_size)
    legacy = {
        "device": info.st_dev,
        "inode": info.st_ino,
        "offset": first,
        "fingerprint_length": length,
        "fingerprint": hashlib.sha256(path.read_bytes()[:length]).hexdigest(),
    }
    assert tail_all(Tailer(path, legacy, 1024))[0] == ["2", "3"]
