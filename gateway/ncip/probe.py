"""`check --ncip-item BARCODE`: a read-only LookupItem that proves URL, port, registration, agencies and version.

LookupItem changes nothing in ALEPH. The answer is told in words: the version
the server answered in (and a warning when it is not ncip.version), the item's
title and circulation status, or the Problem ALEPH sent and what it usually means.

One call probes one NCIP server, with its own settings ([ncip] or an [ncip.NAME]): `check` calls it once
per server. Hints name the server's own table (ncip.version, ncip.law.version); with named=True (a
config with several servers) what is probed names it too, so each line of `check` says which server.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.loader import Ncip
from gateway.core import xmltext
from gateway.ncip import answers, messages, transport

HINTS = {  # what a Problem from a probe usually means at an ALEPH site ({table}: ncip, or ncip.NAME)
    "unknown item": "the barcode is not in the ADM library this NCIP port serves (or a typo)",
    "unknown agency": "{table}.from_agency / {table}.to_agency do not match ALEPH's tab_ncip configuration",
    "not authorized": "this host's address is not registered with the NCIP server (z65 client address)",
    "invalid message": "the server does not understand this version's messages: try the other {table}.version",
    "syntax": "the server does not understand this version's messages: try the other {table}.version",
}


@dataclass(frozen=True)
class Finding:
    mark: str  # ok | WARN | FAIL
    what: str
    detail: str


def lookup(settings: Ncip, barcode: str, named: bool = False) -> list[Finding]:
    """Send one LookupItem for barcode to the server of these settings; return what it proved, in words.

    named: say which server ([ncip] or [ncip.NAME]) in each finding, as a config with several does."""
    server = f"NCIP [{settings.table}]" if named else "NCIP"
    what = f"{server} LookupItem {barcode} at {settings.url} (version {settings.version}{_framing(settings)})"
    uncarried = xmltext.problem("the barcode", barcode)
    if uncarried is not None:
        return [Finding("FAIL", what, f"{uncarried}: nothing sent")]
    client = transport.for_settings(settings)
    try:
        reply = answers.answer_to("lookup", client.exchange(messages.lookup(settings, barcode)))
    except transport.NcipUnavailable as error:
        return [Finding("FAIL", what, str(error))]
    except answers.UnreadableAnswer as error:
        return [Finding("FAIL", what, f"{error}; the answer began: {error.excerpt[:200]!r}")]
    finally:
        client.close()
    findings = [_version(settings, reply, named)]
    if reply.problems:
        words = "; ".join(str(problem) for problem in reply.problems)
        hints = {
            hint.format(table=settings.table)
            for problem in reply.problems
            for key, hint in HINTS.items()
            if any(key in word for word in problem.words())
        }
        findings.append(
            Finding(
                "FAIL",
                what,
                f"ALEPH answered with a Problem: {words}" + (f" ({'; '.join(sorted(hints))})" if hints else ""),
            )
        )
    else:
        facts = [f"title {title!r}" for title in [reply.find("Title")] if title]
        facts += [f"circulation status {status!r}" for status in [reply.find("CirculationStatus")] if status]
        findings.append(
            Finding(
                "ok",
                what,
                "ALEPH knows the item"
                + (": " + ", ".join(facts) if facts else "")
                + "; URL, port, registration and agencies work",
            )
        )
    return findings


def _framing(settings: Ncip) -> str:
    """How the message travels on a raw socket, in words ('' for http(s)://)."""
    if not settings.url.startswith("tcp:"):
        return ""
    return ", the message alone" if settings.framing == "bare" else ", framed as HTTP/1.0"


def _version(settings: Ncip, reply: answers.NcipReply, named: bool = False) -> Finding:
    what = f"NCIP [{settings.table}] version" if named else "NCIP version"
    if reply.version is None:
        return Finding("WARN", what, "the answer does not say which NCIP version it is in")
    if reply.version != settings.version:
        return Finding(
            "WARN",
            what,
            f"the server answered in version {reply.version}, but {settings.table}.version = "
            f'"{settings.version}": set {settings.table}.version = "{reply.version}"',
        )
    return Finding("ok", what, f"the server answered in version {reply.version}, as configured")
