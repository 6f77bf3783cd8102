"""Read one raw TOML table against its declared keys: types, defaults, bounds, unknown keys.

Generic: it knows Key kinds, not what any key means. Problems go to a report callback with
their key path (e.g. "sources[0].watch"), so every problem of a file is collected at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config.schema import REQUIRED, Key

Report = Callable[[str, str], None]  # (key path, what is wrong)


def read_table(section: dict[str, Any], keys: tuple[Key, ...], where: str, problem: Report) -> dict[str, Any]:
    """Given one raw table, return its typed values with defaults; report problems by key path.

    A missing required key or a bad value reads as None (or the key's default), so that
    reading goes on and every other problem is reported too.
    """
    known = {key.name: key for key in keys}
    for name in section:
        if name not in known:
            problem(f"{where}.{name}", f"unknown key (known: {', '.join(known)})")
    result: dict[str, Any] = {}
    for key in keys:
        path = f"{where}.{key.name}"
        fallback = None if key.default is REQUIRED else key.default
        if key.name not in section:
            if key.default is REQUIRED:
                problem(path, "required key is missing")
            result[key.name] = fallback
            continue
        value, message = convert(key, section[key.name])
        if message is not None:
            problem(path, message)
            value = fallback
        result[key.name] = value
    return result


def convert(key: Key, value: Any) -> tuple[Any, str | None]:
    """Given a raw TOML value, return (typed value, None) or (None, what is wrong)."""
    converter = _CONVERTERS.get(key.kind)
    if converter is None:
        raise AssertionError(f"unknown kind {key.kind}")
    return converter(key, value)


def _bool(key: Key, value: Any) -> tuple[Any, str | None]:
    return (value, None) if isinstance(value, bool) else (None, f"must be true or false, got {value!r}")


def _int(key: Key, value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool) or not isinstance(value, int):
        return None, f"must be a whole number, got {value!r}"
    return _at_least(key, value)


def _number(key: Key, value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"must be a number, got {value!r}"
    checked, message = _at_least(key, value)
    return (None, message) if message else (float(checked), None)


def _at_least(key: Key, value: int | float) -> tuple[Any, str | None]:
    if key.minimum is not None and value < key.minimum:
        return None, f"must be at least {key.minimum:g}, got {value!r}"
    return value, None


def _str(key: Key, value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return None, f"must be a string, got {value!r}"
    if key.choices and value not in key.choices:
        return None, f"must be one of {', '.join(key.choices)}, got {value!r}"
    return value, None


def _path(key: Key, value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str) or not value:
        return None, f"must be a path string, got {value!r}"
    if not os.path.isabs(value):
        return None, f"must be an absolute path, got {value!r}"
    return Path(value), None


def _strings(key: Key, value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        return None, f"must be a non-empty list of strings, got {value!r}"
    return list(value), None


def _table(key: Key, value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, dict):
        return None, f"must be a table, got {value!r}"
    return dict(value), None


_CONVERTERS: dict[str, Callable[[Key, Any], tuple[Any, str | None]]] = {
    "bool": _bool,
    "int": _int,
    "number": _number,
    "str": _str,
    "path": _path,
    "strings": _strings,
    "table": _table,
    "section": _table,
}
