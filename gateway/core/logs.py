"""Logging: structlog events, one JSON object a line in log_dir/gateway.log.

On a terminal the same events are shown readable. Every text field is made
printable first (names.printable: a file name with an escape sequence, a newline
or bytes that are not UTF-8 is shown escaped, never raw), and every rendered line
passes through redact() last, so a registered secret (the API key) cannot reach a
log line, whatever field, message or traceback carried it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import sys
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

from gateway.core.names import printable

LOG_FILE_NAME = "gateway.log"
REDACTED = "[redacted]"
REOPEN_SECONDS = 30.0  # a log file that cannot be opened or written is tried again this often

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
    return {
        key: value if key == "exc_info" else _printable(value, keep_newlines=key in _MULTILINE_FIELDS)
        for key, value in event_dict.items()
    }


_stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)

_SHARED: list[structlog.typing.Processor] = [  # for events of other libraries' loggers (urllib3, ...)
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    _stamp,
]


class _RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """Renders one line per handler. The gateway's own events arrive as fields already made
    printable once (by Log), so each handler only renders them; other loggers' records take
    structlog's full chain."""

    def __init__(self, renderer: structlog.typing.Processor, copy: bool):
        super().__init__(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _printable_fields, renderer],
            foreign_pre_chain=_SHARED,
        )
        self._render = renderer
        self._copy = copy  # the renderer changes the fields it is given (the console's)

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS, None)
        if fields is None:
            return redact(super().format(record))
        rendered = self._render(None, "", dict(fields) if self._copy else fields)
        return redact(rendered if isinstance(rendered, str) else str(rendered))


_LOGFMT_FIRST = ("timestamp", "level", "event")


class _Logfmt:
    """structlog's LogfmtRenderer(key_order=_LOGFMT_FIRST, drop_missing=True), line for line, without
    changing the fields it is given and with each key's check done once."""

    def __init__(self) -> None:
        self._keys: set[str] = set()  # keys known to be valid

    def __call__(self, _logger: object, _name: str, fields: MutableMapping[str, Any]) -> str:
        parts = [self._pair(key, fields[key]) for key in _LOGFMT_FIRST if fields.get(key) is not None]
        parts += [self._pair(key, value) for key, value in fields.items() if key not in _LOGFMT_FIRST]
        return " ".join(parts)

    def _pair(self, key: str, value: object) -> str:
        if key not in self._keys:
            if any(char <= " " for char in key):
                raise ValueError(f'Invalid key: "{key}"')
            self._keys.add(key)
        if value is None:
            return f"{key}="
        if value is True:
            return key
        text = "false" if value is False else str(value)
        quoted = " " in text or "=" in text or '"' in text
        if quoted and "\\" in text:
            text = text.replace("\\", "\\\\")
        text = text.replace('"', '\\"').replace("\n", "\\n")
        return f'{key}="{text}"' if quoted else f"{key}={text}"


_set_up = False  # setup() was called: events go to the standard logging handlers
_FIELDS = "gateway_fields"  # the LogRecord attribute that carries a Log event's fields


class Log:
    """A logger for the gateway's events: log.info("file.queued", file=..., size=...).

    The line is the one structlog's standard chain gave (the fields in the order given, then
    event, level, timestamp, and an exception's traceback), but each event is made into
    fields once, not once per handler, and an event below the level costs one check.
    """

    __slots__ = ("_bound", "_logger")

    def __init__(self, name: str, bound: dict[str, Any] | None = None):
        self._logger = logging.getLogger(name)
        self._bound = bound or {}

    def bound(self, **fields: Any) -> Log:
        """The same logger, every line of which carries these fields too (after its own)."""
        return Log(self._logger.name, {**self._bound, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        fields.setdefault("exc_info", True)
        self._log(logging.ERROR, "error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log(logging.CRITICAL, "critical", event, fields)

    def _log(self, level: int, level_name: str, event: str, fields: dict[str, Any]) -> None:
        fields.update(self._bound)
        if not _set_up:  # before setup() (a command that logs nowhere, a test): structlog's default, on stdout
            getattr(structlog.get_logger(self._logger.name), level_name)(event, **fields)
            return
        logger = self._logger
        if not logger.isEnabledFor(level):
            return
        fields["event"] = event
        fields["level"] = level_name
        _stamp(None, level_name, fields)
        if "exc_info" in fields:
            structlog.processors.format_exc_info(None, level_name, fields)
        record = logger.makeRecord(
            logger.name,
            level,
            "(gateway)",
            0,
            event,
            (),
            None,
            extra={_FIELDS: _printable_fields(None, level_name, fields)},
        )
        logger.handle(record)


class LogFile(logging.handlers.WatchedFileHandler):
    """gateway.log, reopened when logrotate moved it, that never takes the service down.

    The standard handler raises from the log call itself when the file cannot be
    opened again (log_dir made unwritable, a wrong `create` owner in logrotate, a
    folder where the file was), which ends whatever thread logged. Here such a fault
    is said once on stderr (the journal, which gets every event anyway), events skip
    the file meanwhile, and the file is tried again every REOPEN_SECONDS.
    """

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8", delay=True)
        self.problem: str | None = None
        self._retry_at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if self.problem is not None and time.monotonic() < self._retry_at:
            return
        try:
            self.reopenIfNeeded()
            if self.stream is None:
                self.stream = self._open()
                self._statstream()
        except OSError as error:
            self._fault(error)
            return
        if self.problem is not None:
            self.problem = None
            print(f"caiasoft-gateway: {self.baseFilename} is written again", file=sys.stderr, flush=True)
        logging.FileHandler.emit(self, record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # e.g. the log's disk is full
            self._fault(error)
        else:
            super().handleError(record)

    def _fault(self, error: OSError) -> None:
        if self.stream is not None:
            with contextlib.suppress(OSError):
                self.stream.close()
            self.stream = None
        self._retry_at = time.monotonic() + REOPEN_SECONDS
        described = f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
        if described != self.problem:
            self.problem = described
            print(
                f"caiasoft-gateway: cannot write the log {self.baseFilename} ({described}); events go to stderr "
                f"(the journal) only, tried again every {REOPEN_SECONDS:.0f} s",
                file=sys.stderr,
                flush=True,
            )


def setup(log_dir: Path | None, *, console: bool = True, level: int = logging.INFO) -> None:
    """Send events to log_dir/gateway.log (JSON lines) and, if console, to stderr.

    The file handler notices when logrotate has moved the file and reopens it.
    Calling setup() again replaces the handlers (used on SIGHUP and in tests).
    """
    global _set_up
    _set_up = True
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)

    if log_dir is not None:
        with contextlib.suppress(OSError):  # if it fails, the file handler says why at the first event
            log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = LogFile(log_dir / LOG_FILE_NAME)
        file_handler.setFormatter(
            _RedactingFormatter(structlog.processors.JSONRenderer(ensure_ascii=False), copy=False)
        )
        root.addHandler(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        tty = sys.stderr.isatty()
        renderer: structlog.typing.Processor = structlog.dev.ConsoleRenderer(colors=True) if tty else _Logfmt()
        stream.setFormatter(_RedactingFormatter(renderer, copy=tty))
        root.addHandler(stream)


def get(name: str) -> Log:
    return Log(name)
