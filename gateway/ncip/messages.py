"""NCIP messages: CheckOutItem and CheckInItem, version 2 (NCIP 2.02) or 1, and reading answers.

Messages are built with ElementTree (never by pasting strings). Version 2
validates against the official ncip_v2_02.xsd; note its attributes are
qualified, so the root carries ncip:version. Answers are parsed with
defusedxml; a Problem (v2) or ProcessingError (v1) anywhere, with or without
a namespace prefix, means the server refused.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import defusedxml.ElementTree as SafeET

from gateway.config import Ncip
from gateway.ncip.journal import JournalEntry

NS = "http://www.niso.org/2008/ncip"
SCHEMA_URL = "http://www.niso.org/schemas/ncip/v2_02/ncip_v2_02.xsd"
V1_DTD = "http://www.niso.org/ncip/v1_0/imp1/dtd/ncip_v1_0.dtd"
V1_DOCTYPE = f'<!DOCTYPE NCIPMessage PUBLIC "-//NISO//NCIP DTD Version 1//EN" "{V1_DTD}">\n'
ET.register_namespace("ncip", NS)


@dataclass(frozen=True)
class Problem:
    type: str
    detail: str = ""
    element: str = ""
    value: str = ""

    def __str__(self) -> str:
        return self.type + (f": {self.detail}" if self.detail else "") + \
            (f" ({self.element} {self.value})".rstrip() if self.element or self.value else "")


def build(settings: Ncip, entry: JournalEntry) -> bytes:
    """The NCIP request for one journal entry, as UTF-8 bytes."""
    return _v2(settings, entry) if settings.version == "2" else _v1(settings, entry)


def element(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    """Add an NCIP 2 element (in the NCIP namespace) under parent, with text if given."""
    child = ET.SubElement(parent, f"{{{NS}}}{name}")
    if text is not None:
        child.text = text
    return child


def _v2(settings: Ncip, entry: JournalEntry) -> bytes:
    sub = element
    root = ET.Element(f"{{{NS}}}NCIPMessage", {f"{{{NS}}}version": SCHEMA_URL})
    service = sub(root, "CheckOutItem" if entry.action == "checkout" else "CheckInItem")
    header = sub(service, "InitiationHeader")
    sub(sub(header, "FromAgencyId"), "AgencyId", settings.from_agency)
    sub(sub(header, "ToAgencyId"), "AgencyId", settings.to_agency)
    if entry.action == "checkin" and settings.application_profile:
        sub(header, "ApplicationProfileType", settings.application_profile)
    if entry.action == "checkout":
        sub(sub(service, "UserId"), "UserIdentifierValue", entry.user or settings.user_for(entry.stop))
    sub(sub(service, "ItemId"), "ItemIdentifierValue", entry.item)
    if entry.action == "checkout" and entry.request_id:
        sub(sub(service, "RequestId"), "RequestIdentifierValue", entry.request_id)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _v1(settings: Ncip, entry: JournalEntry) -> bytes:
    def sub(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
        child = ET.SubElement(parent, name)
        if text is not None:
            child.text = text
        return child

    def agency(parent: ET.Element, value: str) -> None:
        unique = sub(parent, "UniqueAgencyId")
        sub(unique, "Scheme", settings.agency_scheme)
        sub(unique, "Value", value)

    root = ET.Element("NCIPMessage", {"version": V1_DTD})
    service = sub(root, "CheckOutItem" if entry.action == "checkout" else "CheckInItem")
    header = sub(service, "InitiationHeader")
    agency(sub(header, "FromAgencyId"), settings.from_agency)
    agency(sub(header, "ToAgencyId"), settings.to_agency)
    if entry.action == "checkin" and settings.application_profile:
        profile = sub(header, "ApplicationProfileType")
        sub(profile, "Scheme", settings.agency_scheme)
        sub(profile, "Value", settings.application_profile)
    if entry.action == "checkout":
        user = sub(service, "UniqueUserId")
        agency(user, settings.to_agency)
        sub(user, "UserIdentifierValue", entry.user or settings.user_for(entry.stop))
    item = sub(service, "UniqueItemId")
    agency(item, settings.to_agency)
    sub(item, "ItemIdentifierValue", entry.item)
    if entry.action == "checkout" and entry.request_id:
        request = sub(service, "UniqueRequestId")
        agency(request, settings.to_agency)
        sub(request, "RequestIdentifierValue", entry.request_id)
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + V1_DOCTYPE + body).encode("utf-8")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _text(element: ET.Element, name: str) -> str:
    """Text of the first descendant called name (any namespace); for v1 Scheme/Value pairs, the Value."""
    for child in element.iter():
        if _local(child.tag) == name:
            values = [c for c in child.iter() if _local(c.tag) == "Value" and c.text]
            return (values[0].text if values else child.text or "").strip()
    return ""


def read_answer(body: bytes) -> list[Problem]:
    """The Problems in an NCIP answer (empty = done). Raise ValueError if it is not an NCIP answer."""
    try:
        root = SafeET.fromstring(body, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except (ET.ParseError, ValueError) as error:
        raise ValueError(f"answer is not readable XML: {error}") from None
    if _local(root.tag) != "NCIPMessage":
        raise ValueError(f"answer is not an NCIP message (root element {_local(root.tag)!r})")
    problems = []
    for element in root.iter():
        name = _local(element.tag)
        if name == "Problem":
            problems.append(Problem(_text(element, "ProblemType"), _text(element, "ProblemDetail"),
                                    _text(element, "ProblemElement"), _text(element, "ProblemValue")))
        elif name == "ProcessingError":
            problems.append(Problem(_text(element, "ProcessingErrorType"), "",
                                    _text(element, "ElementName"), _text(element, "ProcessingErrorValue")))
    return problems
