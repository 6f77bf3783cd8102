"""File names are bytes from the outside world; this module is how the gateway carries them.

A name (or a path) is held as a ``str`` in Python's surrogate-escape form: what
``os.listdir`` gives for a name that is not valid UTF-8, each byte that cannot be
decoded (0xE9 in a Latin-1 ``caf\\xe9.xml``) kept as the lone surrogate U+DCE9.
``to_bytes`` gives back the exact bytes, so the original can always be found,
moved or removed, locally or on an SFTP server. At each edge the name changes form:

- the ledger: ``stored()`` is the name as TEXT when it is valid UTF-8, otherwise
  its exact bytes as a BLOB; ``loaded()`` turns either back into the name;
- a terminal, a log line, ``status``, a sidecar: ``printable()`` escapes what must
  not reach a terminal raw (backslash escapes, reversible with ``unprintable()``);
- a file the gateway writes, or the upload's ``filename``: ``safe_name()``, a short
  printable name that stays inside its folder (not reversible: the sidecar and the
  ledger keep the original).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata

MAX_NAME_BYTES = 200  # leaves room for a numbered suffix, ".json", a work-file id and a partial-file prefix
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[\\nrt])")
_LONG_EXTENSION = 10  # bytes of an extension that is kept when a long name is shortened


def to_bytes(name: str) -> bytes:
    """The exact bytes of a name held in surrogate-escape form."""
    return os.fsencode(name)


def from_bytes(raw: bytes) -> str:
    """A name as received (a directory listing, an SFTP server), in surrogate-escape form."""
    return os.fsdecode(raw)


def is_text(name: str) -> bool:
    """True if the name is valid UTF-8 text (it holds no escaped bytes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def stored(name: str) -> str | bytes:
    """The ledger's form of a name or path: TEXT when it is valid UTF-8, else its exact bytes (BLOB)."""
    return name if is_text(name) else to_bytes(name)


def loaded(value: str | bytes) -> str:
    """The name the ledger holds, from either of its stored forms."""
    return from_bytes(value) if isinstance(value, bytes) else value


def _hidden(char: str) -> bool:
    return unicodedata.category(char) in _ESCAPED_CATEGORIES


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """Return text safe to show on a terminal or write as UTF-8: nothing raw that a terminal acts on.

    Bytes that are not UTF-8 become \\xNN; control and invisible format characters
    (escape, newline, bidi overrides, zero-width spaces) become \\n, \\t, \\r, \\x1b,
    \\u202e ...; a backslash becomes \\\\. Everything else is kept, so plain names
    read as they are. unprintable() reverses it exactly. keep_newlines keeps line
    breaks and tabs (for tracebacks).
    """
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for char in text:
        if keep_newlines and char in "\n\t":
            out.append(char)
        elif char in _NAMED:
            out.append(_NAMED[char])
        elif _hidden(char):
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)


def _unescape(match: re.Match[str]) -> str:
    token = match.group(1)
    if token in ("\\", "n", "r", "t"):
        return {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}[token]
    code = int(token[1:], 16)
    if token[0] == "x" and code >= 0x80:
        return chr(0xDC00 + code)  # an escaped byte
    return chr(code)


def unprintable(text: str) -> str:
    """The name printable() showed: printable(name) -> name, exactly."""
    return _ESCAPE.sub(_unescape, text)


def _raw(text: str) -> bytes:
    """Bytes of any str: escaped bytes as themselves, other lone surrogates as UTF-8 would spell them."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return b"".join(_raw(char) if len(text) > 1 else char.encode("utf-8", "surrogatepass") for char in text)


def _percent(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in _raw(char))


def safe_name(name: str) -> str:
    """Return a file name the gateway can write: printable, inside its folder, not an option, short.

    Bytes that are not UTF-8, control and invisible characters, '/' and '\\' are
    percent-encoded (caf\\xe9.xml -> caf%E9.xml); a leading '.' or '-' too (no hidden
    files, nothing a command takes for an option); a name above MAX_NAME_BYTES keeps
    its start and its extension, with a digest of the whole name between them.
    safe_name(safe_name(x)) == safe_name(x). Two names can give the same safe name:
    the archive numbers clashes, and the sidecar keeps the original.
    """
    out = []
    for index, char in enumerate(name):
        if char in "/\\" or _hidden(char) or (index == 0 and char in ".-"):
            out.append(_percent(char))
        else:
            out.append(char)
    safe = "".join(out) or "unnamed"
    encoded = safe.encode("utf-8")
    if len(encoded) <= MAX_NAME_BYTES:
        return safe
    stem, dot, extension = safe.rpartition(".")
    kept_extension = f".{extension}" if dot and stem and len(extension.encode("utf-8")) <= _LONG_EXTENSION else ""
    digest = "~" + hashlib.sha256(_raw(name)).hexdigest()[:12]
    room = MAX_NAME_BYTES - len(kept_extension.encode("utf-8")) - len(digest)
    start = encoded[:room].decode("utf-8", "ignore")
    start = re.sub(r"%[0-9A-F]?$", "", start)  # never cut a %XX in half
    return start + digest + kept_extension
