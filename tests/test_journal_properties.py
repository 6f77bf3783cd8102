"""Property test over what journal writers send: entries whose values come from all of Unicode.

The relay's own code (gateway.ncip.relay.Relay: tailer, checkpoint in a real ledger,
dead letters in a real folder, the real transport) reads a real journal file and
sends to the NCIP simulator on loopback, which parses every message with a real
XML parser (expat, through defusedxml) and validates version 2 against the
official schema. For every example:
  * every entry ends in exactly one place: received by the server as well-formed
    XML carrying its values as written (schema-valid in version 2), or a dead letter
    whose reason is the gateway's own (never a server's refusal of a malformed message);
  * the entry written after them (the tail) is relayed: nothing stops the relay;
  * nothing escapes a step (no worker fault).
Examples: JOURNAL_EXAMPLES (default 100, a few seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

import pytest
from conftest import ncip_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ncip.relay import Relay
from gateway.simulators.ncip import NcipSimulator
from gateway.state.ledger import Ledger

JOURNAL_PROFILE = settings(
    max_examples=int(os.environ.get("JOURNAL_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MAX_STEPS_PER_LINE = 6  # a line takes one step; a few more allow retries (client_error_tries = 2 below)

# all of Unicode: any code point (surrogates included), with the characters that matter drawn more often
HARD = [
    "\x00",
    "\x01",
    "\x08",
    "\t",
    "\n",
    "\x0b",
    "\x0c",
    "\r",
    "\x1f",
    " ",
    "\x7f",
    "\x85",
    "\xa0",
    "\u2028",
    "\u200b",
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "\ufeff",
    "\ufffd",
    "\ufffe",
    "\uffff",
    "\U0001fffe",
    "\U0010ffff",
    "<",
    "&",
    ">",
    "]",
    '"',
    "\\",
]
characters = st.one_of(st.characters(exclude_categories=()), st.characters(categories=["Cs"]), st.sampled_from(HARD))
values = st.text(alphabet=characters, min_size=0, max_size=12)
entries = st.fixed_dictionaries(
    {"action": st.sampled_from(["checkout", "checkin"]), "item": values},
    optional={"user": values, "stop": values, "request_id": values, "id": values},
)
# a line as json.dumps writes it (\uXXXX escapes, a lone surrogate included), or as UTF-8 text where a lone
# surrogate becomes bytes that are not UTF-8
lines = st.tuples(entries, st.booleans()).map(
    lambda drawn: json.dumps(drawn[0], ensure_ascii=drawn[1]).encode("utf-8", "surrogatepass")
)


@pytest.fixture(scope="module")
def server():
    sim = NcipSimulator(validate=True).start()
    yield sim
    sim.stop()


def _stripped(value: str | None) -> str | None:
    """A value as the rule trims it: spaces of any kind and CR around it, no other control character."""
    if value is None:
        return None
    padding = [char == "\r" or (char.isspace() and unicodedata.category(char) != "Cc") for char in value]
    start = next((index for index, pad in enumerate(padding) if not pad), len(value))
    end = len(value) - next((index for index, pad in enumerate(reversed(padding)) if not pad), len(value))
    return value[start : max(start, end)]


@JOURNAL_PROFILE
@given(written=st.lists(lines, min_size=1, max_size=5), version=st.sampled_from(["1", "2"]))
def test_every_journal_entry_ends_sent_as_well_formed_xml_or_as_a_dead_letter(server, written, version):
    server.received.clear()
    root = Path(tempfile.mkdtemp(prefix="gateway-journal-property-"))
    journal_path = root / "ncip.jsonl"
    tail = b'{"action": "checkin", "item": "TAIL"}'
    journal_path.write_bytes(b"".join(line + b"\n" for line in [*written, tail]))
    settings_ = ncip_settings(
        url=server.url,
        version=version,
        from_agency="CAIA",
        to_agency="ALEPH",
        user_id="CAIASOFT",
        journal=journal_path,
        timeout_seconds=5.0,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.02,
        client_error_tries=2,
        unreadable_attempts=2,
    )
    ledger = Ledger(root / "gateway.db")
    relay = Relay(settings_, ledger, root / "error")
    try:
        relay.begin()
        for _ in range(MAX_STEPS_PER_LINE * (len(written) + 1)):
            if any(received.item == "TAIL" for received in server.received):
                break
            relay.step()  # anything escaping a step fails the example
        else:
            pytest.fail(f"the tail was not relayed; last problem: {relay.last_problem}")
        relay.end()
        folder = root / "error" / "ncip"
        texts = (
            [path.read_bytes().decode("utf-8") for path in sorted(folder.glob("*.jsonl"))] if folder.exists() else []
        )
        raw = [
            char
            for text in texts
            for char in text
            if char not in "\n" and unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")
        ]
        assert not raw, f"dead letters hold characters a terminal acts on: {raw!r}"
        letters = [json.loads(line) for text in texts for line in text.splitlines()]
    finally:
        ledger.close()
        shutil.rmtree(root, ignore_errors=True)
    received = list(server.received)
    assert received[-1].item == "TAIL" and all(message.valid for message in received), [
        message.errors for message in received
    ]
    assert all(letter.get("http_status") is None and not letter.get("problems") for letter in letters), (
        f"the server refused a message the gateway built: {letters}"
    )
    starts = [sum(len(line) + 1 for line in written[:index]) for index in range(len(written))]
    lettered = {letter["offset"] for letter in letters}
    assert len(letters) == len(lettered) and lettered <= set(starts), "one dead letter per line, at most"
    relayed = [json.loads(line) for line, start in zip(written, starts, strict=True) if start not in lettered]
    assert [(message.action, message.item) for message in received[:-1]] == [
        (entry["action"], _stripped(entry["item"])) for entry in relayed
    ], "each entry sent once, in order, as written"
    for entry, message in zip(relayed, received, strict=False):
        if entry["action"] == "checkout":
            assert message.user == (_stripped(entry.get("user")) or "CAIASOFT"), (entry, message)
    for line, start in zip(written, starts, strict=True):
        assert (start in lettered) == (not _carriable(line)), f"dead letter if and only if not carriable: {line!r}"


def _carriable(line: bytes) -> bool:
    """The rule, as the README states it: UTF-8 JSON whose values are non-empty once spaces and carriage returns
    around them are dropped, and hold no control character, surrogate, U+FFFE or U+FFFF."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return all(
        _stripped(value)
        and not any(unicodedata.category(char) in ("Cc", "Cs") or char in "\ufffe\uffff" for char in _stripped(value))
        for key, value in entry.items()
        if key != "action"
    )


@settings(max_examples=int(os.environ.get("JOURNAL_EXAMPLES", "100")) * 3, deadline=None)
@given(drawn=entries, version=st.sampled_from(["1", "2"]))
def test_the_builders_give_well_formed_xml_holding_the_values_or_refuse_by_name(drawn, version):
    """messages.build itself, for any entry (even one the journal would refuse): a well-formed message carrying
    the values as written, or a ValueError naming the field; never malformed bytes or another error."""
    import defusedxml.ElementTree as SafeET

    from gateway.ncip import messages
    from gateway.ncip.journal import JournalEntry

    entry = JournalEntry(**drawn)
    chosen = ncip_settings(
        url="http://127.0.0.1:9/",
        version=version,
        from_agency="CAIA",
        to_agency="ALEPH",
        user_id="CAIASOFT",
        journal=Path("/nonexistent/ncip.jsonl"),
    )
    try:
        message = messages.build(chosen, entry)
    except ValueError as error:
        assert not all(_carriable_value(value) for value in drawn.values()), error
        assert str(error).split(" ", 1)[0] in drawn, f"the field is named first: {error}"
        return
    assert all(_carriable_value(value) for value in drawn.values())
    root = SafeET.fromstring(message, forbid_dtd=False)
    texts = [element.text or "" for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "ItemIdentifierValue"]
    assert texts == [entry.item], "the item as written"


def _carriable_value(value: str) -> bool:
    return not any(unicodedata.category(char) in ("Cc", "Cs") or char in "\ufffe\uffff" for char in value)
