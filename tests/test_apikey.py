"""The API key file: what cannot go into an HTTP header is a config error naming the file,
and a file that is not a small regular file never hangs `check` or `run`."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

import pytest
from conftest import KEY, Site

from gateway.config import loader as config_module
from gateway.core.errors import ConfigError


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path, "http://127.0.0.1:9")


def problems_within(site: Site, seconds: float = 10.0, environ: dict | None = None) -> str:
    """The config problems load() reports, as text; fail if load() does not return within seconds."""
    result: list[str] = []

    def load() -> None:
        try:
            config_module.load(site.config_file, environ=environ or {})
            result.append("")
        except ConfigError as error:
            result.append(str(error))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"loading the config did not return within {seconds} s"
    return result[0]


@pytest.mark.parametrize(
    "content,words",
    [
        (b"\xef\xbb\xbf" + KEY.encode() + b"\n", "byte-order mark"),
        (KEY[:6].encode() + "\u200b".encode() + KEY[6:].encode() + b"\n", "U+200B (ZERO WIDTH SPACE) at character 7"),
        (KEY.encode() + b"\x07\n", "U+0007"),
        (KEY.encode() + "\u00e9".encode() + b"\n", "U+00E9"),
        (b"\xff\xfe" + KEY.encode("utf-16-le"), "not UTF-8"),
    ],
)
def test_a_key_that_cannot_go_into_a_header_is_a_config_error_naming_the_file(site, content, words):
    site.key_file.write_bytes(content)
    problems = problems_within(site)
    assert f"caiasoft.api_key_file: {site.key_file}" in problems
    assert words in problems
    assert KEY not in problems and KEY[6:] not in problems  # the key itself is never shown


def test_a_key_file_that_is_a_fifo_is_refused_at_once(site):
    site.key_file.unlink()
    os.mkfifo(site.key_file, 0o600)
    try:
        problems = problems_within(site)
    finally:
        _release_a_blocked_reader(site.key_file)
    assert f"{site.key_file} is not a regular file (it is a FIFO (named pipe))" in problems


def _release_a_blocked_reader(fifo) -> None:
    """If a reader hangs in open() on the FIFO (the old behaviour), open and close its other end."""
    with contextlib.suppress(OSError):  # nobody is waiting on it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_key_file_that_is_dev_zero_is_refused_at_once(site):
    site.write("http://127.0.0.1:9", extra_caiasoft="")
    site.config_file.write_text(site.config_file.read_text().replace(str(site.key_file), "/dev/zero"))
    problems = problems_within(site)
    assert "/dev/zero is not a regular file (it is a character device)" in problems


def test_a_huge_key_file_is_refused_without_reading_it(site):
    with open(site.key_file, "wb") as handle:
        handle.truncate(1024 * 1024 * 1024)  # sparse: 1 GB that costs nothing on disk
    problems = problems_within(site)
    assert f"{site.key_file} is 1073741824 bytes" in problems


def test_a_key_in_the_environment_with_a_zero_width_space_is_a_config_error(site):
    site.config_file.write_text(
        site.config_file.read_text().replace(f'api_key_file = "{site.key_file}"', 'api_key_env = "CAIA_KEY"')
    )
    problems = problems_within(site, environ={"CAIA_KEY": KEY + "\u200b"})
    assert "caiasoft.api_key_env: environment variable CAIA_KEY holds a character" in problems
    assert "U+200B" in problems


def test_a_plain_key_with_a_trailing_newline_is_fine(site):
    site.key_file.write_text(KEY + "\r\n")
    assert problems_within(site) == ""
    assert config_module.load(site.config_file, environ={}).api_key.value == KEY


@pytest.mark.parametrize("command", [["check"], ["run"]])
def test_check_and_run_exit_2_naming_the_file_for_a_bom_or_a_fifo(site, command):
    site.key_file.write_bytes(b"\xef\xbb\xbf" + KEY.encode())
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{site.key_file} starts with a byte-order mark" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    site.key_file.unlink()
    os.mkfifo(site.key_file, 0o600)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(site.config_file), *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "FIFO" in result.stdout + result.stderr
