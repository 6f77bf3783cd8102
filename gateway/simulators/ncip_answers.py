"""The NCIP simulator's answers, written the way servers write them.

Version 2: the NCIP 2.02 namespace, ncip:version, Problem > ProblemType / ProblemDetail /
ProblemElement / ProblemValue. Version 1 (ALEPH): the v1 DOCTYPE, a bare version attribute,
Problem > ProcessingError > ProcessingErrorType > Scheme/Value beside ProcessingErrorElement >
ElementName / ProcessingErrorValue, and ALEPH's own wording for the common refusals.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from gateway.ncip.messages import NS, SCHEMA_URL, V1_DOCTYPE, V1_DTD, element, v1_element, v1_scheme_value

V1_ERROR_SCHEME = "http://www.niso.org/ncip/v1_0/schemes/processingerrortype/{service}processingerror.scm"
# What ALEPH writes as the value beside a Problem type (DOMAIN.md, NCIP)
ALEPH_VALUES = {"Item Not Checked Out": "Item not on loan."}
ALREADY_ON_LOAN = "Apply to circulation desk - Loan cannot be renewed (no change in due date)"


@dataclass(frozen=True)
class Outcome:
    """What the simulated server says to one message: a Problem, or the item's facts."""

    problem: str | None = None
    value: str | None = None
    title: str = ""
    circulation_status: str = ""
    user: str = ""


def write(version: str, service: str, item: str, outcome: Outcome) -> bytes:
    """The response to service (CheckOutItem, CheckInItem, LookupItem) in the given version."""
    return _v2(service, item, outcome) if version == "2" else _v1(service, item, outcome)


def _v2(service: str, item: str, outcome: Outcome) -> bytes:
    root = ET.Element(f"{{{NS}}}NCIPMessage", {f"{{{NS}}}version": SCHEMA_URL})
    response = element(root, f"{service}Response")
    if outcome.problem:
        found = element(response, "Problem")
        element(found, "ProblemType", outcome.problem)
        element(found, "ProblemDetail", f"simulated: {outcome.problem}")
        element(found, "ProblemElement", "ItemIdentifierValue")
        element(found, "ProblemValue", outcome.value or item)
    else:
        element(element(response, "ItemId"), "ItemIdentifierValue", item)
        if service == "CheckOutItem":
            element(element(response, "UserId"), "UserIdentifierValue", outcome.user)
            element(response, "DateDue", "2099-12-31T23:59:59")
        if service == "LookupItem":
            fields = element(response, "ItemOptionalFields")
            element(element(fields, "BibliographicDescription"), "Title", outcome.title)
            element(fields, "CirculationStatus", outcome.circulation_status)
    message: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return message


def _v1(service: str, item: str, outcome: Outcome) -> bytes:
    root = ET.Element("NCIPMessage", {"version": V1_DTD})
    response = v1_element(root, f"{service}Response")
    header = v1_element(response, "ResponseHeader")
    agency = v1_element(v1_element(header, "FromAgencyId"), "UniqueAgencyId")
    v1_scheme_value(agency, "http://aleph/agency.scm", "ALEPH")
    if outcome.problem:
        error = v1_element(v1_element(response, "Problem"), "ProcessingError")
        v1_scheme_value(
            v1_element(error, "ProcessingErrorType"), V1_ERROR_SCHEME.format(service=service.lower()), outcome.problem
        )
        where = v1_element(error, "ProcessingErrorElement")
        v1_element(where, "ElementName", "UniqueItemId")
        inner = v1_element(where, "ProcessingErrorElement")
        v1_element(inner, "ElementName", "ItemIdentifierValue")
        v1_element(inner, "ProcessingErrorValue", outcome.value or ALEPH_VALUES.get(outcome.problem, item))
    else:
        unique = v1_element(response, "UniqueItemId")
        v1_scheme_value(v1_element(unique, "UniqueAgencyId"), "http://aleph/agency.scm", "ALEPH")
        v1_element(unique, "ItemIdentifierValue", item)
        if service == "CheckOutItem":
            user = v1_element(response, "UniqueUserId")
            v1_element(user, "UserIdentifierValue", outcome.user)
            v1_element(response, "DateDue", "20991231")
        if service == "LookupItem":
            fields = v1_element(response, "ItemOptionalFields")
            v1_element(v1_element(fields, "BibliographicDescription"), "Title", outcome.title)
            v1_scheme_value(
                v1_element(fields, "CirculationStatus"),
                "http://www.niso.org/ncip/v1_0/imp1/schemes/circulationstatus/circulationstatus.scm",
                outcome.circulation_status,
            )
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + V1_DOCTYPE + body).encode("utf-8")
