"""NCIP messages: CheckOutItem, CheckInItem and LookupItem, in version 1 (ALEPH's) or 2 (NCIP 2.02).

Messages are built with ElementTree (never by pasting strings). Version 2
validates against the official ncip_v2_02.xsd; note its attributes are
qualified, so the root carries ncip:version. Version 1 carries the v1 DOCTYPE
and the Unique* element names; UniqueRequestId carries the agency that made the
request (request_agency: from_agency by default, as ALEPH's clients send it).
Answers are read in gateway.ncip.answers.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gateway.config.loader import Ncip
from gateway.core import xmltext
from gateway.ncip.journal import JournalEntry

NS = "http://www.niso.org/2008/ncip"
SCHEMA_URL = "http://www.niso.org/schemas/ncip/v2_02/ncip_v2_02.xsd"
V1_DTD = "http://www.niso.org/ncip/v1_0/imp1/dtd/ncip_v1_0.dtd"
V1_DOCTYPE = f'<!DOCTYPE NCIPMessage PUBLIC "-//NISO//NCIP DTD Version 1//EN" "{V1_DTD}">\n'
V1_ITEM_ELEMENT_SCHEME = "http://www.niso.org/ncip/v1_0/schemes/itemelementtype/itemelementtype.scm"
LOOKUP_ELEMENTS = ("Bibliographic Description", "Circulation Status")
ET.register_namespace("ncip", NS)


def build(settings: Ncip, entry: JournalEntry) -> bytes:
    """The NCIP request for one journal entry, as UTF-8 bytes: always well-formed XML holding the values as
    written. Raise ValueError naming the field if a value cannot be carried (gateway.core.xmltext): never a malformed
    message, never an encoding error."""
    for name, value in entry.as_dict().items():
        _refuse_uncarried(name, value)
    return _v2(settings, entry) if settings.version == "2" else _v1(settings, entry)


def _refuse_uncarried(name: str, value: str) -> None:
    problem = xmltext.problem(name, value)
    if problem is not None:
        raise ValueError(problem)


def lookup(settings: Ncip, barcode: str) -> bytes:
    """A read-only LookupItem for one barcode (title and circulation status asked for), as UTF-8 bytes. Raise
    ValueError if the barcode cannot be carried."""
    _refuse_uncarried("barcode", barcode)
    if settings.version == "2":
        root, service = _v2_start("LookupItem", settings, with_profile=False)
        element(element(service, "ItemId"), "ItemIdentifierValue", barcode)
        for wanted in LOOKUP_ELEMENTS:
            element(service, "ItemElementType", wanted)
        message: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return message
    root, service = _v1_start("LookupItem", settings, with_profile=False)
    _v1_unique(service, "UniqueItemId", settings, "ItemIdentifierValue", barcode)
    for wanted in LOOKUP_ELEMENTS:
        v1_scheme_value(v1_element(service, "ItemElementType"), V1_ITEM_ELEMENT_SCHEME, wanted)
    return _v1_bytes(root)


def element(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    """Add an NCIP 2 element (in the NCIP namespace) under parent, with text if given."""
    child = ET.SubElement(parent, f"{{{NS}}}{name}")
    if text is not None:
        child.text = text
    return child


def _v2_start(service_name: str, settings: Ncip, with_profile: bool) -> tuple[ET.Element, ET.Element]:
    root = ET.Element(f"{{{NS}}}NCIPMessage", {f"{{{NS}}}version": SCHEMA_URL})
    service = element(root, service_name)
    header = element(service, "InitiationHeader")
    element(element(header, "FromAgencyId"), "AgencyId", settings.from_agency)
    element(element(header, "ToAgencyId"), "AgencyId", settings.to_agency)
    if with_profile and settings.application_profile:
        element(header, "ApplicationProfileType", settings.application_profile)
    return root, service


def _v2(settings: Ncip, entry: JournalEntry) -> bytes:
    checkout = entry.action == "checkout"
    root, service = _v2_start("CheckOutItem" if checkout else "CheckInItem", settings, with_profile=not checkout)
    if checkout:
        element(element(service, "UserId"), "UserIdentifierValue", entry.user or settings.user_for(entry.stop))
    element(element(service, "ItemId"), "ItemIdentifierValue", entry.item)
    if checkout and entry.request_id:
        element(element(service, "RequestId"), "RequestIdentifierValue", entry.request_id)
    message: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return message


def v1_element(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    """Add an NCIP 1 element (no namespace) under parent, with text if given."""
    child = ET.SubElement(parent, name)
    if text is not None:
        child.text = text
    return child


def v1_scheme_value(parent: ET.Element, scheme: str, value: str) -> None:
    """Add NCIP 1's Scheme and Value pair under parent."""
    v1_element(parent, "Scheme", scheme)
    v1_element(parent, "Value", value)


def _v1_unique(
    parent: ET.Element, name: str, settings: Ncip, value_name: str, value: str, agency: str | None = None
) -> None:
    unique = v1_element(parent, name)
    v1_scheme_value(v1_element(unique, "UniqueAgencyId"), settings.agency_scheme, agency or settings.to_agency)
    v1_element(unique, value_name, value)


def _v1_start(service_name: str, settings: Ncip, with_profile: bool) -> tuple[ET.Element, ET.Element]:
    root = ET.Element("NCIPMessage", {"version": V1_DTD})
    service = v1_element(root, service_name)
    header = v1_element(service, "InitiationHeader")
    v1_scheme_value(
        v1_element(v1_element(header, "FromAgencyId"), "UniqueAgencyId"), settings.agency_scheme, settings.from_agency
    )
    v1_scheme_value(
        v1_element(v1_element(header, "ToAgencyId"), "UniqueAgencyId"), settings.agency_scheme, settings.to_agency
    )
    if with_profile and settings.application_profile:
        v1_scheme_value(
            v1_element(header, "ApplicationProfileType"), settings.agency_scheme, settings.application_profile
        )
    return root, service


def _v1_bytes(root: ET.Element) -> bytes:
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + V1_DOCTYPE + body).encode("utf-8")


def _v1(settings: Ncip, entry: JournalEntry) -> bytes:
    checkout = entry.action == "checkout"
    root, service = _v1_start("CheckOutItem" if checkout else "CheckInItem", settings, with_profile=not checkout)
    if checkout:
        _v1_unique(
            service, "UniqueUserId", settings, "UserIdentifierValue", entry.user or settings.user_for(entry.stop)
        )
    _v1_unique(service, "UniqueItemId", settings, "ItemIdentifierValue", entry.item)
    if checkout and entry.request_id:
        requester = settings.from_agency if settings.request_agency == "from" else settings.to_agency
        _v1_unique(service, "UniqueRequestId", settings, "RequestIdentifierValue", entry.request_id, requester)
    return _v1_bytes(root)
