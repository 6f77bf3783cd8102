"""Reading and checking the CaiaSoft API key: it must be able to travel in an HTTP header.

A key file is opened without blocking and must be a small regular file: a FIFO
or a device (/dev/zero) named by mistake is refused at once instead of hanging
`check` or `run`. The key must be printable ASCII without spaces: a byte-order
mark or a zero-width space pasted with it is named (never the key itself).
"""

from __future__ import annotations

import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

MAX_KEY_FILE_BYTES = 4096
BOM = "\ufeff"


class KeyProblem(ValueError):
    """The key (or its file) cannot be used; the message names what is wrong, never the key."""


@dataclass(frozen=True)
class KeyFile:
    value: str
    mode: int  # st_mode of the file, for the permission warnings


def read_key_file(path: Path) -> KeyFile:
    """Return the key in path (stripped of surrounding whitespace) and the file's mode.

    Raise FileNotFoundError or PermissionError as open() does; KeyProblem for a file
    that is not a small regular text file or a key that cannot go into a header.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyProblem(f"{path} is not a regular file (it is {_kind(info.st_mode)}): put the key in a plain file")
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise KeyProblem(f"{path} is {info.st_size} bytes: an API key file holds the key alone on one line")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyProblem(
            f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes: an API key file holds the key alone on one line"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise KeyProblem(f"{path} is not UTF-8 text (byte {error.start}): save the key as plain ASCII") from None
    if text.startswith(BOM):
        raise KeyProblem(
            f"{path} starts with a byte-order mark (BOM, U+FEFF): save it as plain ASCII "
            'without one (e.g. in Notepad: "UTF-8", not "UTF-8 with BOM")'
        )
    value = text.strip()
    problem = header_problem(value)
    if problem:
        raise KeyProblem(f"{path} {problem}")
    return KeyFile(value, info.st_mode)


def header_problem(value: str) -> str | None:
    """Why value cannot be an API key sent in an HTTP header, in words (never the value); None if it can."""
    if not value:
        return "is empty"
    if any(ch.isspace() for ch in value if ch.isascii()):
        return "must hold the key alone on one line (it has spaces or several lines)"
    for position, ch in enumerate(value, 1):
        if not 0x21 <= ord(ch) <= 0x7E:
            name = unicodedata.name(ch, "a control character") if ord(ch) >= 0x20 else "a control character"
            return (
                f"holds a character that cannot be sent in an HTTP header: U+{ord(ch):04X} ({name}) "
                f"at character {position}; the key must be printable ASCII"
            )
    return None


def _kind(mode: int) -> str:
    for test, words in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return words
    return "not a regular file"
