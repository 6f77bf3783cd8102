"""Reading NCIP answers as real servers write them, in version 1 or 2, and judging what they mean.

A server's answer is read leniently on the outside and strictly inside:
  tolerated   a byte order mark, leading whitespace or blank lines, whatever comes
              before the XML (a status line and headers written on a raw socket, a
              server's banner: dropped, as ALEPH's clients keep only the part from
              <NCIPMessage to </NCIPMessage>), bytes after the root element (a
              trailing NUL or newline), a DOCTYPE (never resolved: defusedxml
              refuses entities and external references), a
              version attribute bare (version="...") or prefixed (ncip:version="...")
  refused     anything whose root is not NCIPMessage, or that is not XML
One Problem element is one problem, whatever it nests: version 2 writes
ProblemType / ProblemDetail / ProblemElement / ProblemValue; version 1 nests
ProcessingError (or MessagingError) > ProcessingErrorType > Scheme/Value, beside
ProcessingErrorElement > ElementName (recursive) and ProcessingErrorValue. A bare
ProcessingError outside any Problem (written by some version 1 servers) counts as one.
"""

from __future__ import annotations

import codecs
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import defusedxml.ElementTree as SafeET

from gateway.config.loader import Ncip
from gateway.core.states import NcipVerdict

NS = "http://www.niso.org/2008/ncip"
EXCERPT_BYTES = 500

_ROOT_START = re.compile(rb"<\?xml|<!DOCTYPE|<([A-Za-z_][\w.-]*:)?NCIPMessage\b")
_ROOT_END = re.compile(rb"</([A-Za-z_][\w.-]*:)?NCIPMessage\s*>")
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


@dataclass(frozen=True)
class Problem:
    type: str
    detail: str = ""
    element: str = ""
    value: str = ""

    def __str__(self) -> str:
        text = self.type or "Problem without a type"
        if self.detail:
            text += f": {self.detail}"
        if self.element or self.value:
            text += " (" + " ".join(part for part in (self.element, self.value) if part) + ")"
        return text

    def words(self) -> tuple[str, ...]:
        """What done/temporary patterns are matched against: type, detail and value."""
        return tuple(part.lower() for part in (self.type, self.detail, self.value) if part)


@dataclass(frozen=True)
class NcipReply:
    """An NCIP answer as read: the version it was written in (None if it cannot tell) and its Problems."""

    version: str | None
    problems: list[Problem]
    root: ET.Element = field(repr=False)
    service: str = ""  # the response element's name, e.g. CheckInItemResponse

    def find(self, name: str) -> str:
        """Text of the first element called name below the root (v1 Scheme/Value: the Value), or ''."""
        return _text(self.root, name)


class UnreadableAnswer(ValueError):
    """An answer that is not an NCIP message; excerpt holds its first bytes, as received."""

    def __init__(self, reason: str, body: bytes):
        super().__init__(reason)
        self.excerpt = body[:EXCERPT_BYTES].decode("utf-8", "replace")


def complete(data: bytes | bytearray) -> bool:
    """True once data holds a whole NCIP message (its root element closed): the raw-socket reader stops there."""
    return _ROOT_END.search(data) is not None


def _unwrap(body: bytes) -> bytes:
    """The XML document inside what a server sent: BOM, preamble and trailing bytes taken away."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            if encoding != "utf-8":  # re-encoded, so expat sees UTF-8 without a contradicting declaration
                text = body[len(bom) :].decode(encoding, "replace")
                body = re.sub(r"\A\s*<\?xml[^>]*\?>", "", text).encode("utf-8")
            else:
                body = body[len(bom) :]
            break
    start = _ROOT_START.search(body)
    if start is None:
        return body
    body = body[start.start() :]  # whatever came before (HTTP or not) is dropped, as ALEPH's clients drop it
    end = _ROOT_END.search(body)
    return body[: end.end()] if end else body


def read(body: bytes) -> NcipReply:
    """The NcipReply in an NCIP answer. Raise UnreadableAnswer if it is not an NCIP message."""
    document = _unwrap(body)
    try:
        root = _parse(document)
    except (ET.ParseError, ValueError) as error:
        latin = _latin1_undeclared(document)
        if latin is None:
            raise UnreadableAnswer(f"answer is not readable XML: {error}", body) from None
        try:  # a server writing its own wording in Latin-1 without saying so: read it as it was meant
            root = _parse(latin)
        except (ET.ParseError, ValueError):
            raise UnreadableAnswer(f"answer is not readable XML: {error}", body) from None
        document = latin
    if _local(root.tag) != "NCIPMessage":
        raise UnreadableAnswer(f"answer is not an NCIP message (root element {_local(root.tag)!r})", body)
    service = next((_local(child.tag) for child in root if _local(child.tag) not in ("Problem", "")), "")
    return NcipReply(_version(root, document), _problems(root), root, service)


RESPONSES = {"checkout": "CheckOutItemResponse", "checkin": "CheckInItemResponse", "lookup": "LookupItemResponse"}


def answer_to(action: str, body: bytes) -> NcipReply:
    """The NcipReply to one request of this action. An answer without a Problem must hold the action's response
    (an empty NCIPMessage, or the response to another service, is no proof the entry was done): otherwise
    raise UnreadableAnswer, so it is retried and then dead-lettered with its excerpt."""
    reply = read(body)
    expected = RESPONSES[action]
    if not reply.problems and reply.service.lower() != expected.lower():
        held = f"a {reply.service}" if reply.service else "no response element"
        raise UnreadableAnswer(f"answer is not a {expected} (it holds {held} and no Problem)", body)
    return reply


def _parse(document: bytes) -> ET.Element:
    root: ET.Element = SafeET.fromstring(document, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    return root


def _latin1_undeclared(document: bytes) -> bytes | None:
    """The document re-encoded as UTF-8 if it is not UTF-8 though it declares no other encoding (read as
    Windows-1252, Latin-1's superset); else None."""
    declared = re.match(rb"""\s*<\?xml[^>]*encoding\s*=\s*["']([\w.-]+)""", document)
    if declared and declared.group(1).lower().replace(b"-", b"") not in (b"utf8",):
        return None
    try:
        document.decode("utf-8")
        return None
    except UnicodeDecodeError:
        return document.decode("cp1252", "replace").encode("utf-8")


def read_answer(body: bytes) -> list[Problem]:
    """The Problems in an NCIP answer (empty = done). Raise UnreadableAnswer (a ValueError) if unreadable."""
    return read(body).problems


def _version(root: ET.Element, document: bytes) -> str | None:
    if root.tag.startswith(f"{{{NS}}}"):
        return "2"
    for name, value in root.attrib.items():
        if _local(name) == "version":
            if re.search(r"v2|ncip_v2|/2008/", value):
                return "2"
            if re.search(r"v1|1_0|1\.0", value):
                return "1"
    if re.search(rb"<!DOCTYPE[^>]*NCIP DTD Version 1", document[:1000]):
        return "1"
    return None


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def _text(element: ET.Element, name: str) -> str:
    """Text of the first descendant called name; for a v1 Scheme/Value pair, the Value."""
    for child in element.iter():
        if _local(child.tag) == name:
            values = [c for c in child if _local(c.tag) == "Value" and _clean(c.text)]
            return _clean(values[0].text) if values else _clean(child.text)
    return ""


def _problems(root: ET.Element) -> list[Problem]:
    found: list[Problem] = []

    def visit(element: ET.Element) -> None:
        name = _local(element.tag)
        if name == "Problem" or name in ("ProcessingError", "MessagingError"):
            found.append(_problem(element))
            return  # one Problem is one problem, whatever it nests
        for child in element:
            visit(child)

    visit(root)
    return found


def _problem(element: ET.Element) -> Problem:
    if any(_local(child.tag) == "ProblemType" for child in element.iter()):  # version 2
        return Problem(
            _text(element, "ProblemType"),
            _text(element, "ProblemDetail"),
            _text(element, "ProblemElement"),
            _text(element, "ProblemValue"),
        )
    error_type = next((child for child in element.iter() if _local(child.tag).endswith("ErrorType")), None)
    type_text = _text(error_type, _local(error_type.tag)) if error_type is not None else ""
    names = [_clean(child.text) for child in element.iter() if _local(child.tag) == "ElementName" and child.text]
    values = [
        _clean(child.text)
        for child in element.iter()
        if _local(child.tag).endswith("ErrorValue") and _clean(child.text)
    ]
    detail = _text(element, "ProblemDetail") or _text(element, "ErrorDetail")
    return Problem(type_text, detail, "/".join(names), "; ".join(values))


# -- judging ------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    verdict: NcipVerdict
    reason: str


def matches(problem: Problem, patterns: tuple[str, ...]) -> bool:
    """True if any pattern is part of the problem's type, detail or value (ignoring case)."""
    words = problem.words()
    return any(pattern.lower() in word for pattern in patterns if pattern for word in words)


def judge(settings: Ncip, action: str, problems: list[Problem]) -> Judgement:
    """What the Problems in an answer mean for one checkout/checkin entry."""
    if not problems:
        return Judgement(NcipVerdict.DONE, "done")
    words = "; ".join(str(problem) for problem in problems)
    if any(matches(problem, settings.temporary_problems) for problem in problems):
        return Judgement(NcipVerdict.TEMPORARY, words)
    done = settings.done_problems_checkin if action == "checkin" else settings.done_problems_checkout
    if all(matches(problem, done) for problem in problems):
        return Judgement(NcipVerdict.ALREADY, words)
    return Judgement(NcipVerdict.REFUSED, words)
