"""NCIP answers in the shapes real servers send, version 1 and 2, each read and judged.

Version 1 shapes follow the NCIP 1 DTD (Problem > ProcessingError > ProcessingErrorType >
Scheme/Value, ProcessingErrorElement > ElementName, recursive, > ProcessingErrorValue) as
ALEPH-era servers write them, with a DOCTYPE, a ResponseHeader and ALEPH's own wording.
"""

from __future__ import annotations

import codecs

import pytest
from test_ncip import settings

from gateway.config.schema import SCHEMA
from gateway.ncip import answers
from gateway.ncip.answers import Problem, UnreadableAnswer, judge
from gateway.simulators.ncip import schema_errors
from gateway.simulators.ncip_answers import Outcome, write

V1_HEAD = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<!DOCTYPE NCIPMessage PUBLIC "-//NISO//NCIP DTD Version 1//EN" '
    b'"http://www.niso.org/ncip/v1_0/imp1/dtd/ncip_v1_0.dtd">\n'
)
V1_ROOT = b'<NCIPMessage version="http://www.niso.org/ncip/v1_0/imp1/dtd/ncip_v1_0.dtd">'
RESPONSE_HEADER = (
    b"<ResponseHeader><FromAgencyId><UniqueAgencyId><Scheme>http://aleph/agency.scm</Scheme>"
    b"<Value>ALEPH</Value></UniqueAgencyId></FromAgencyId></ResponseHeader>"
)


def v1_problem(service: bytes, error_type: bytes, element: bytes, value: bytes, root: bytes = V1_ROOT) -> bytes:
    return (
        V1_HEAD
        + root
        + b"<"
        + service
        + b"Response>"
        + RESPONSE_HEADER
        + b"<Problem><ProcessingError><ProcessingErrorType>"
        b"<Scheme>http://www.niso.org/ncip/v1_0/schemes/processingerrortype/checkinitemprocessingerror.scm"
        b"</Scheme><Value>" + error_type + b"</Value></ProcessingErrorType>"
        b"<ProcessingErrorElement><ElementName>" + element + b"</ElementName>"
        b"<ProcessingErrorValue>" + value + b"</ProcessingErrorValue></ProcessingErrorElement>"
        b"</ProcessingError></Problem></" + service + b"Response></NCIPMessage>"
    )


V1_CHECKIN_NOT_ON_LOAN = v1_problem(b"CheckInItem", b"Item Not Checked Out", b"UniqueItemId", b"Item not on loan.")
V1_CHECKOUT_NO_CHANGE = v1_problem(
    b"CheckOutItem",
    b"User Ineligible To Check Out This Item",
    b"UniqueItemId",
    b"Apply to circulation desk - Loan cannot be renewed (no change in due date)",
)
V1_CHECKOUT_NO_CHANGE_IN_TYPE = v1_problem(
    b"CheckOutItem",
    b"Apply to circulation desk - Loan cannot be renewed (no change in due date)",
    b"UniqueItemId",
    b"31234001234567",
)
V1_UNKNOWN_ITEM_NESTED = (
    V1_HEAD
    + V1_ROOT
    + b"<CheckOutItemResponse>"
    + RESPONSE_HEADER
    + b"<Problem><ProcessingError><ProcessingErrorType><Scheme>s</Scheme><Value>Unknown Item</Value>"
    b"</ProcessingErrorType><ProcessingErrorElement><ElementName>UniqueItemId</ElementName>"
    b"<ProcessingErrorElement><ElementName>ItemIdentifierValue</ElementName>"
    b"<ProcessingErrorValue>31234009999990</ProcessingErrorValue></ProcessingErrorElement>"
    b"</ProcessingErrorElement></ProcessingError></Problem></CheckOutItemResponse></NCIPMessage>"
)
V1_USER_UNKNOWN_PREFIXED_VERSION = v1_problem(
    b"CheckOutItem",
    b"User Unknown",
    b"UniqueUserId",
    b"CAIA-LAW",
    root=b'<NCIPMessage xmlns:ncip="http://www.niso.org/ncip/v1_0" '
    b'ncip:version="http://www.niso.org/ncip/v1_0/imp1/dtd/ncip_v1_0.dtd">',
)
V1_MESSAGING_ERROR = (
    V1_HEAD + V1_ROOT + b"<Problem><MessagingError><MessagingErrorType><Scheme>s</Scheme>"
    b"<Value>Invalid Message Syntax Error</Value></MessagingErrorType></MessagingError></Problem></NCIPMessage>"
)
V1_OK = (
    V1_HEAD
    + V1_ROOT
    + b"<CheckInItemResponse>"
    + RESPONSE_HEADER
    + b"<UniqueItemId><UniqueAgencyId><Scheme>s</Scheme><Value>ALEPH</Value></UniqueAgencyId>"
    b"<ItemIdentifierValue>31234001234567</ItemIdentifierValue></UniqueItemId></CheckInItemResponse>"
    b"</NCIPMessage>"
)
V1_TEMPORARY = v1_problem(b"CheckInItem", b"Temporary Processing Failure", b"UniqueItemId", b"database locked")

V2_PREFIXED_UNKNOWN_USER = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<ns1:NCIPMessage xmlns:ns1="http://www.niso.org/2008/ncip" '
    b'ns1:version="http://www.niso.org/schemas/ncip/v2_02/ncip_v2_02.xsd"><ns1:CheckOutItemResponse>'
    b'<ns1:Problem><ns1:ProblemType ns1:Scheme="http://www.niso.org/ncip/v1_0/schemes/processingerrortype/'
    b'checkoutitemprocessingerror.scm">Unknown User</ns1:ProblemType><ns1:ProblemDetail>No patron with this id'
    b"</ns1:ProblemDetail><ns1:ProblemElement>UserIdentifierValue</ns1:ProblemElement>"
    b"<ns1:ProblemValue>CAIA-LAW</ns1:ProblemValue></ns1:Problem></ns1:CheckOutItemResponse></ns1:NCIPMessage>"
)
V2_BARE_VERSION_NOT_CHECKED_OUT = (
    b'<NCIPMessage xmlns="http://www.niso.org/2008/ncip" version="http://www.niso.org/schemas/ncip/v2_02/'
    b'ncip_v2_02.xsd"><CheckInItemResponse><Problem><ProblemType>Item Not Checked Out</ProblemType>'
    b"<ProblemDetail>Item not on loan.</ProblemDetail></Problem></CheckInItemResponse></NCIPMessage>"
)
V2_DETAIL_ONLY_ALREADY = (
    b'<NCIPMessage xmlns="http://www.niso.org/2008/ncip"><CheckOutItemResponse><Problem>'
    b"<ProblemType>Processing Error</ProblemType><ProblemDetail>Apply to circulation desk - Loan cannot be renewed "
    b"(no change in due date)</ProblemDetail></Problem></CheckOutItemResponse></NCIPMessage>"
)
V2_MESSAGE_LEVEL_TEMPORARY = (
    b'<NCIPMessage xmlns="http://www.niso.org/2008/ncip"><Problem><ProblemType>Temporary Processing\n'
    b" Failure</ProblemType></Problem></NCIPMessage>"
)
V2_TWO_PROBLEMS_ONE_REAL = (
    b'<NCIPMessage xmlns="http://www.niso.org/2008/ncip"><CheckInItemResponse>'
    b"<Problem><ProblemType>Item Not Checked Out</ProblemType></Problem>"
    b"<Problem><ProblemType>Unknown Agency</ProblemType></Problem></CheckInItemResponse></NCIPMessage>"
)


def wrapped(body: bytes) -> dict[str, bytes]:
    """The wrappings servers put around an answer, each of which must still be read."""
    return {
        "bom": codecs.BOM_UTF8 + body,
        "blank-lines": b"\r\n\r\n  \n" + body,
        "http-preamble": b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 999\r\n\r\n" + body,
        "blank-then-http": b"\r\nHTTP/1.1 200 OK\nServer: ALEPH\n\n" + body,
        "banner": b"ALEPH NCIP server\r\n" + body,  # kept from <NCIPMessage on, as ALEPH's clients keep it
        "trailing-nul": body + b"\n\x00",
        "utf-16": codecs.BOM_UTF16_LE
        + body.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16-le"),
    }


CASES = [
    # (fixture, action, verdict, version, problems as (type, detail, element, value))
    (
        "v1 check-in of an item not on loan (ALEPH)",
        V1_CHECKIN_NOT_ON_LOAN,
        "checkin",
        "already",
        "1",
        [("Item Not Checked Out", "", "UniqueItemId", "Item not on loan.")],
    ),
    (
        "v1 repeated check-out, ALEPH wording in the value",
        V1_CHECKOUT_NO_CHANGE,
        "checkout",
        "already",
        "1",
        [
            (
                "User Ineligible To Check Out This Item",
                "",
                "UniqueItemId",
                "Apply to circulation desk - Loan cannot be renewed (no change in due date)",
            )
        ],
    ),
    (
        "v1 repeated check-out, ALEPH wording in the type",
        V1_CHECKOUT_NO_CHANGE_IN_TYPE,
        "checkout",
        "already",
        "1",
        [
            (
                "Apply to circulation desk - Loan cannot be renewed (no change in due date)",
                "",
                "UniqueItemId",
                "31234001234567",
            )
        ],
    ),
    (
        "v1 unknown item, recursive element",
        V1_UNKNOWN_ITEM_NESTED,
        "checkout",
        "refused",
        "1",
        [("Unknown Item", "", "UniqueItemId/ItemIdentifierValue", "31234009999990")],
    ),
    (
        "v1 prefixed version attribute",
        V1_USER_UNKNOWN_PREFIXED_VERSION,
        "checkout",
        "refused",
        "1",
        [("User Unknown", "", "UniqueUserId", "CAIA-LAW")],
    ),
    (
        "v1 messaging error at message level",
        V1_MESSAGING_ERROR,
        "checkin",
        "refused",
        "1",
        [("Invalid Message Syntax Error", "", "", "")],
    ),
    (
        "v1 temporary failure",
        V1_TEMPORARY,
        "checkin",
        "temporary",
        "1",
        [("Temporary Processing Failure", "", "UniqueItemId", "database locked")],
    ),
    ("v1 done", V1_OK, "checkin", "done", "1", []),
    (
        "v2 prefixed, unknown user",
        V2_PREFIXED_UNKNOWN_USER,
        "checkout",
        "refused",
        "2",
        [("Unknown User", "No patron with this id", "UserIdentifierValue", "CAIA-LAW")],
    ),
    (
        "v2 bare version, item not checked out",
        V2_BARE_VERSION_NOT_CHECKED_OUT,
        "checkin",
        "already",
        "2",
        [("Item Not Checked Out", "Item not on loan.", "", "")],
    ),
    (
        "v2 ALEPH wording in the detail only",
        V2_DETAIL_ONLY_ALREADY,
        "checkout",
        "already",
        "2",
        [("Processing Error", "Apply to circulation desk - Loan cannot be renewed (no change in due date)", "", "")],
    ),
    (
        "v2 message-level temporary problem",
        V2_MESSAGE_LEVEL_TEMPORARY,
        "checkin",
        "temporary",
        "2",
        [("Temporary Processing Failure", "", "", "")],
    ),
    (
        "v2 one harmless and one real problem",
        V2_TWO_PROBLEMS_ONE_REAL,
        "checkin",
        "refused",
        "2",
        [("Item Not Checked Out", "", "", ""), ("Unknown Agency", "", "", "")],
    ),
]


def default_settings():
    """The shipped defaults for the problem lists, not the test helper's."""
    defaults = {
        key.name: tuple(key.default)
        for key in SCHEMA["ncip"]
        if key.name in ("done_problems_checkin", "done_problems_checkout", "temporary_problems")
    }
    return settings(**defaults)


@pytest.mark.parametrize("name,body,action,verdict,version,expected", CASES, ids=[case[0] for case in CASES])
def test_each_real_shape_is_read_and_judged_right(name, body, action, verdict, version, expected):
    for wrapping, variant in {"as sent": body, **wrapped(body)}.items():
        reply = answers.read(variant)
        assert [(p.type, p.detail, p.element, p.value) for p in reply.problems] == expected, wrapping
        assert reply.version == version, wrapping
        assert judge(default_settings(), action, reply.problems).verdict == verdict, wrapping


def test_one_problem_is_one_problem_whatever_it_nests():
    """The verified bug: Problem and its ProcessingError were counted as two, the first with an empty type."""
    problems = answers.read_answer(V1_CHECKIN_NOT_ON_LOAN)
    assert len(problems) == 1 and problems[0].type == "Item Not Checked Out"


def test_the_same_answer_for_the_other_action_is_not_already_done():
    assert judge(default_settings(), "checkout", answers.read_answer(V1_CHECKIN_NOT_ON_LOAN)).verdict == "refused"
    assert judge(default_settings(), "checkin", answers.read_answer(V1_CHECKOUT_NO_CHANGE)).verdict == "refused"


def test_patterns_match_type_detail_and_value_ignoring_case():
    config = settings(done_problems_checkin=("item NOT ON LOAN",))
    assert judge(config, "checkin", [Problem("Whatever", value="Item not on loan.")]).verdict == "already"
    assert judge(config, "checkin", [Problem("Whatever", detail="item not on loan")]).verdict == "already"
    assert judge(config, "checkin", [Problem("Whatever", element="Item not on loan")]).verdict == "refused"


@pytest.mark.parametrize(
    "head",
    [V1_HEAD, V1_HEAD.replace(b' encoding="UTF-8"', b""), b""],
    ids=["declared-utf8", "no-encoding-declared", "no-declaration"],
)
def test_a_latin1_answer_that_does_not_say_so_is_read(head):
    """ALEPH's own wording in the site's language, written in Latin-1 while the answer claims UTF-8 or nothing."""
    body = v1_problem(
        b"CheckInItem", b"Item Not Checked Out", b"UniqueItemId", "Exemplaire non pr\u00eat\u00e9.".encode("latin-1")
    ).replace(V1_HEAD, head)
    reply = answers.read(body)
    assert [(p.type, p.value) for p in reply.problems] == [("Item Not Checked Out", "Exemplaire non pr\u00eat\u00e9.")]
    assert judge(default_settings(), "checkin", reply.problems).verdict == "already"


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Proxy Error</body></html>",
        b"not xml at all",
        b'<!DOCTYPE x [<!ENTITY e "boom">]><NCIPMessage>&e;</NCIPMessage>',
        b'<!DOCTYPE NCIPMessage SYSTEM "http://attacker.example/x.dtd" [<!ENTITY % p SYSTEM "http://x">%p;]>'
        b"<NCIPMessage/>",
        b"",
    ],
    ids=["html", "text", "internal-entity", "external-parameter-entity", "empty"],
)
def test_anything_else_is_unreadable_with_an_excerpt(body):
    with pytest.raises(UnreadableAnswer) as raised:
        answers.read(body)
    assert raised.value.excerpt == body[:500].decode("utf-8", "replace")


def test_a_doctype_is_never_resolved(tmp_path):
    secret = tmp_path / "secret.dtd"
    secret.write_text('<!ENTITY leak "LEAKED">')
    body = (
        f'<!DOCTYPE NCIPMessage SYSTEM "file://{secret}"><NCIPMessage><Problem><ProblemType>x'
        "</ProblemType></Problem></NCIPMessage>"
    ).encode()
    assert answers.read_answer(body)[0].type == "x"


def test_completeness_of_a_message_on_a_raw_socket():
    assert not answers.complete(V1_OK[:-5])
    assert answers.complete(V1_OK)
    assert answers.complete(V2_PREFIXED_UNKNOWN_USER)


@pytest.mark.parametrize("service", ["CheckOutItem", "CheckInItem", "LookupItem"])
@pytest.mark.parametrize(
    "outcome",
    [Outcome("Unknown Item"), Outcome(user="U", title="T", circulation_status="On Loan")],
    ids=["problem", "ok"],
)
def test_the_simulator_answers_validate_in_version_2_and_read_back_in_both(service, outcome):
    v2 = write("2", service, "31234001234567", outcome)
    assert schema_errors(v2) == []
    for version, body in (("2", v2), ("1", write("1", service, "31234001234567", outcome))):
        reply = answers.read(body)
        assert reply.version == version
        assert [p.type for p in reply.problems] == ([outcome.problem] if outcome.problem else [])
