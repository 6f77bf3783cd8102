"""Logging: one JSON object a line, never the key, reopened after logrotate."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.core import logs


@pytest.fixture
def log_dir(tmp_path):
    logs.setup(tmp_path, console=False)
    yield tmp_path
    logs.setup(None, console=False)


def lines(folder):
    return [json.loads(line) for line in (folder / "gateway.log").read_text().splitlines()]


def test_events_are_json_lines_with_their_fields(log_dir):
    logs.get("test").info("upload.ok", file="slip.xml", sha256="ab12", ms=7)
    [event] = lines(log_dir)
    assert event["event"] == "upload.ok" and event["file"] == "slip.xml" and event["ms"] == 7
    assert event["level"] == "info" and event["timestamp"].endswith("Z")


def test_the_key_cannot_be_logged_in_a_field_a_message_or_a_traceback(log_dir):
    secret = "k3y-abcdef-123456"
    logs.add_secret(secret)
    log = logs.get("test")
    log.info("oops", header={"X-API-Key": secret})
    log.warning(f"message with {secret} inside")
    try:
        raise RuntimeError(f"failure mentioning {secret}")
    except RuntimeError:
        log.exception("with.traceback")
    logging.getLogger("urllib3").warning("foreign logger says %s", secret)
    text = (log_dir / "gateway.log").read_text()
    assert secret not in text
    assert text.count(logs.REDACTED) == 4


def test_the_log_is_reopened_after_logrotate_moves_it(log_dir):
    log = logs.get("test")
    log.info("before")
    (log_dir / "gateway.log").rename(log_dir / "gateway.log.1")
    log.info("after")
    assert [e["event"] for e in lines(log_dir)] == ["after"]
    assert "before" in (log_dir / "gateway.log.1").read_text()


def test_a_log_file_that_cannot_be_opened_again_never_fails_the_caller(log_dir, monkeypatch, capsys):
    monkeypatch.setattr(logs, "REOPEN_SECONDS", 0.0)  # tried again at every event
    log = logs.get("test")
    log.info("before")
    (log_dir / "gateway.log").rename(log_dir / "gateway.log.1")
    (log_dir / "gateway.log").mkdir()  # rotated, and something else now holds the name (root is never denied)
    log.error("while.broken")  # the standard handler raises IsADirectoryError here, in the worker's thread
    log.error("still.broken")
    said = capsys.readouterr().err
    assert said.count("cannot write the log") == 1 and "gateway.log" in said
    (log_dir / "gateway.log").rmdir()
    log.info("after")
    assert [e["event"] for e in lines(log_dir)] == ["after"]
    assert "is written again" in capsys.readouterr().err


def test_the_console_line_is_logfmt_with_time_level_and_event_first(tmp_path, monkeypatch, capsys):
    logs.setup(None, console=True)
    try:
        logs.get("test").warning(
            "upload.retry",
            file="a b.xml",
            reason='said "no"=x',
            path="c:\\x y",
            ok=True,
            denied=False,
            ms=None,
            status=503,
        )
    finally:
        logs.setup(None, console=False)
    line = capsys.readouterr().err.strip()
    assert line.startswith("timestamp=") and " level=warning event=upload.retry " in line
    assert (
        line.split(" event=upload.retry ")[1]
        == 'file="a b.xml" reason="said \\"no\\"=x" path="c:\\\\\\\\x y" ok denied=false ms= status=503'
    )
