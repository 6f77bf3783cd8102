"""Logging: structlog events, one JSON object a line in log_dir/gateway.log.

On a terminal the same events are shown readable. Every text field is made
printable first (names.printable: a file name with an escape sequence, a newline
or bytes that are not UTF-8 is shown escaped, never raw), and every rendered line
passes through redact() last, so a registered secret (the API key) cannot reach a
log line, whatever field, message or traceback carried it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

from gateway.names import printable

LOG_FILE_NAME = "gateway.log"
REDACTED = "[redacted]"

_secrets: tuple[str, ...] = ()  # replaced whole, never changed in place: readers need no lock
_secrets_lock = threading.Lock()


def add_secret(value: str) -> None:
    """Never let this value appear in a log line (or any text passed to redact()) from now on.

    Its JSON-escaped spelling is registered too, for texts that are JSON.
    """
    global _secrets
    if value and len(value) >= 4:
        with _secrets_lock:
            known = set(_secrets) | {value, json.dumps(value)[1:-1]}
            _secrets = tuple(sorted(known, key=len, reverse=True))


def redact(text: str) -> str:
    """Return text with every registered secret replaced by [redacted]."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


_MULTILINE_FIELDS = frozenset({"exception", "stack"})


def _printable(value: object, keep_newlines: bool = False) -> object:
    if isinstance(value, str):
        return printable(redact(value), keep_newlines=keep_newlines)
    if isinstance(value, dict):
        return {_printable(key): _printable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_printable(item) for item in value]
    return value


def _printable_fields(logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """Escape every text field (tracebacks keep their line breaks); redact secrets before escaping."""
    return {key: value if key == "exc_info" else _printable(value, keep_newlines=key in _MULTILINE_FIELDS)
            for key, value in event_dict.items()}


class _RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def setup(log_dir: Path | None, *, console: bool = True, level: int = logging.INFO) -> None:
    """Send events to log_dir/gateway.log (JSON lines) and, if console, to stderr.

    The file handler notices when logrotate has moved the file and reopens it.
    Calling setup() again replaces the handlers (used on SIGHUP and in tests).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)

    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.WatchedFileHandler(log_dir / LOG_FILE_NAME, encoding="utf-8")
        file_handler.setFormatter(_RedactingFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _printable_fields,
                        structlog.processors.JSONRenderer(ensure_ascii=False)],
            foreign_pre_chain=_SHARED,
        ))
        root.addHandler(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        renderer = (structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
                    if sys.stderr.isatty() else structlog.processors.LogfmtRenderer(
                        key_order=["timestamp", "level", "event"], drop_missing=True))
        stream.setFormatter(_RedactingFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _printable_fields, renderer],
            foreign_pre_chain=_SHARED,
        ))
        root.addHandler(stream)

    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
