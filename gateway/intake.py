"""Intake: when is a file ready, which names are taken, and is the file acceptable.

Validation reads the file and describes it; it never changes a byte. The file
is uploaded exactly as ALEPH wrote it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import defusedxml.ElementTree as SafeET
from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from xml.etree.ElementTree import ParseError

from gateway.errors import FileRefused

IGNORED_PATTERNS = (".*", "*.tmp", "*.part", "*~")
HASH_CHUNK = 1024 * 1024


def wanted(name: str, include: tuple[str, ...]) -> bool:
    """Return True if a file of this name is one to take: matches include, not hidden or temporary."""
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED_PATTERNS):
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in include)


@dataclass
class _Seen:
    size: int
    mtime: float
    since: float


@dataclass
class Settler:
    """Decides when a file has settled: size and mtime unchanged for settle_seconds.

    A file is ready when the same (size, mtime) has been observed for settle_seconds
    of our own clock, or, where mtime can be trusted (a local disk, same clock),
    when its mtime is already settle_seconds old.
    """

    settle_seconds: float
    trust_mtime: bool = True
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def observe(self, key: str, size: int, mtime: float) -> bool:
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None or seen.size != size or seen.mtime != mtime:
            self._seen[key] = seen = _Seen(size, mtime, now)
        if now - seen.since >= self.settle_seconds:
            return True
        return self.trust_mtime and self.wall_clock() - mtime >= self.settle_seconds

    def wait_hint(self, key: str) -> float:
        """Seconds until this file could be ready if nothing changes."""
        seen = self._seen.get(key)
        if seen is None:
            return self.settle_seconds
        by_clock = seen.since + self.settle_seconds - self.clock()
        if self.trust_mtime:
            by_clock = min(by_clock, seen.mtime + self.settle_seconds - self.wall_clock())
        return max(by_clock, 0.0)

    def unchanged_for(self, key: str) -> float:
        """Seconds this file is known to have kept its size and mtime (by our clock, or its mtime's age)."""
        seen = self._seen.get(key)
        if seen is None:
            return 0.0
        unchanged = self.clock() - seen.since
        if self.trust_mtime:
            unchanged = max(unchanged, self.wall_clock() - seen.mtime)
        return unchanged

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def keep_only(self, keys: set[str]) -> None:
        for key in list(self._seen):
            if key not in keys:
                del self._seen[key]

    def pending(self) -> list[str]:
        return list(self._seen)


@dataclass(frozen=True)
class Inspection:
    """What a valid file is: its kind (xml or text), digest, size and a few details for the sidecar."""

    kind: str
    sha256: str
    size: int
    details: dict[str, Any]


def file_digest(path: Path) -> tuple[str, int]:
    """Return (sha256 hex, size) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def inspect(path: Path, name: str, max_bytes: int, fallback_encoding: str = "") -> Inspection:
    """Given a claimed file, return its Inspection. Raise FileRefused saying why it cannot be sent."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise FileRefused(f"file is {size} bytes, above max_file_bytes ({max_bytes})")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileRefused(f"file grew above max_file_bytes ({max_bytes}) while being read")
    sha256 = hashlib.sha256(data).hexdigest()
    if not data.strip():
        raise FileRefused("file is empty" if not data else "file holds only blank space")
    if b"\x00" in data:
        raise FileRefused("file is binary (it contains NUL bytes), not an ALEPH request file")
    text, encoding = _decode(data, fallback_encoding)
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f")
    if controls > max(2, len(text) // 100):
        raise FileRefused(f"file looks binary ({controls} control characters), not an ALEPH request file")

    body_offset = _routing_line_length(data)
    body = data[body_offset:]
    looks_xml = body.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")
    if looks_xml:
        details = _check_xml(body)
        details["routing_line"] = data[:body_offset].decode(encoding, "replace").strip() or None
        kind = "xml"
    else:
        if name.lower().endswith(".xml"):
            raise FileRefused("file is named .xml but its content is not XML")
        lines = [line for line in text.splitlines() if line.strip()]
        details = {"lines": len(lines)}
        kind = "text"
    details["encoding"] = encoding
    return Inspection(kind=kind, sha256=sha256, size=len(data), details=details)


def _decode(data: bytes, fallback_encoding: str) -> tuple[str, str]:
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as error:
        if fallback_encoding:
            try:
                return data.decode(fallback_encoding), fallback_encoding
            except UnicodeDecodeError:
                pass
        tried = "UTF-8" + (f" or {fallback_encoding}" if fallback_encoding else "")
        raise FileRefused(f"text is not {tried}: byte 0x{data[error.start]:02x} at offset {error.start} "
                          "cannot be decoded") from None


def _routing_line_length(data: bytes) -> int:
    """ALEPH print files may start with a routing line such as '## - XML_XSL'; return its length."""
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    if data[start:start + 2] != b"##":
        return 0
    newline = data.find(b"\n", start)
    return len(data) if newline < 0 else newline + 1


def _check_xml(body: bytes) -> dict[str, Any]:
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DTDForbidden:
        raise FileRefused("XML has a DOCTYPE declaration; DTDs are refused for safety") from None
    except EntitiesForbidden:
        raise FileRefused("XML declares entities; entities are refused for safety") from None
    except ExternalReferenceForbidden:
        raise FileRefused("XML refers to an external resource; refused for safety") from None
    except ParseError as error:
        raise FileRefused(f"XML is not well-formed: {error}") from None
    barcodes = [element.text.strip() for element in root.iter("z30-barcode") if element.text]
    form_name = root.findtext("form-name")
    return {"root": root.tag, "form_name": form_name.strip() if form_name else None, "items": len(barcodes)}
