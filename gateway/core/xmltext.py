"""What a value in an NCIP message may hold: text that XML 1.0 carries and that arrives as it was written.

A journal value (a barcode, a user id, a request id) becomes the text of an
element. XML 1.0 cannot carry NUL, the C0 controls other than tab, LF and CR,
lone surrogates, U+FFFE or U+FFFF at all: a message holding one is not XML, and a
server refuses it, or (a lone surrogate) it cannot even be encoded. Tab, LF and CR
it carries, but a parser turns CR into LF and servers trim an identifier's white
space, so they would not arrive as written either. So every control character
(Unicode category Cc: C0, DEL and C1), every surrogate and the non-characters
U+FFFE and U+FFFF are refused in any value, with the value and the character named.
"""

from __future__ import annotations

import unicodedata

NOT_CARRIED = frozenset({0xFFFE, 0xFFFF})
SHOWN_CHARACTERS = 60  # of a value quoted in a reason


def problem(name: str, value: str) -> str | None:
    """Why value (the field name) cannot go into an NCIP message, naming the character; None if it can."""
    if value.isprintable():  # the usual barcode: no control, surrogate or unassigned code point (U+FFFE is one)
        return None
    for index, char in enumerate(value):
        category = unicodedata.category(char)
        if category in ("Cc", "Cs") or ord(char) in NOT_CARRIED:
            kind = {"Cc": "a control character", "Cs": "a lone surrogate (not a character)"}.get(
                category, "a non-character"
            )
            return (
                f"{name} {shown(value)} holds U+{ord(char):04X}, {kind}, at position {index + 1}: "
                "an NCIP message cannot carry it"
            )
    return None


def shown(value: str) -> str:
    """The value quoted, every character that is not printable escaped (\\x01, \\ud800), and shortened."""
    text = value if len(value) <= SHOWN_CHARACTERS else value[:SHOWN_CHARACTERS] + "..."
    return repr(text)
