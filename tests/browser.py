"""A real browser for the tests: Debian's headless Chromium, driven by Debian's chromedriver through Selenium.

Nothing is downloaded at test time: Selenium is told where both programs are and Selenium Manager is kept
offline (SE_OFFLINE). tools/install-test-deps installs them (packages chromium and chromium-driver); without
them the tests that need a browser fail, saying so.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1200, 900)  # the page's area: also the size of the screenshot the docs show
INSTALL_HINT = (
    "the browser tests need Debian's chromium and chromium-driver: run tools/install-test-deps as root "
    "(or: sudo apt-get install chromium chromium-driver)"
)

T = TypeVar("T")


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """One headless Chromium for the session (its window WINDOW), quit at the end. Fails, never skips, without
    the Debian packages."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: {INSTALL_HINT}")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never fetches a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the HTTP status of each page
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    # the page's own area is WINDOW: the window is made larger by what the browser's frame keeps of it
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(condition: Callable[[], T | None], timeout: float = 10.0, message: str = "condition") -> T:
    """Poll condition until it returns something truthy; return that. Fail the test after timeout seconds."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.wait import WebDriverWait

    try:
        return WebDriverWait(None, timeout, poll_frequency=0.05).until(lambda _: condition(), message)
    except TimeoutException:
        pytest.fail(f"timed out after {timeout}s waiting for {message}")


def document_statuses(driver) -> list[tuple[str, int]]:
    """(url, HTTP status) of every page (document) the browser loaded since the last call, from its
    performance log (a 401 shows as an empty page in headless Chromium: the status tells it apart)."""
    statuses = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived" and message["params"]["type"] == "Document":
            response = message["params"]["response"]
            statuses.append((response["url"], int(response["status"])))
    return statuses


# -- PNG, read with the standard library (zlib and the format), to tell a drawn picture from a blank one ----------

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (8-bit, not palette)


def png_rows(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of raw pixel bytes) of an 8-bit, non-interlaced, non-palette PNG (what Chromium's
    screenshots are)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, header, compressed = 8, b"", bytearray()
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in _CHANNELS and interlace == 0, f"PNG depth {depth}, colour type {colour}"
    step = _CHANNELS[colour]
    stride = width * step
    raw = zlib.decompress(bytes(compressed))
    rows: list[bytes] = []
    previous = bytearray(stride)
    for index in range(height):
        start = index * (stride + 1)
        line = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, step)
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def _unfilter(kind: int, line: bytearray, previous: bytearray, step: int) -> bytearray:
    """One scanline with its PNG filter (None, Sub, Up, Average, Paeth) undone."""
    assert 0 <= kind <= 4, f"PNG filter {kind}"
    if kind == 2:  # Up
        return bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
    if kind == 0:
        return line
    for i in range(len(line)):
        left = line[i - step] if i >= step else 0
        if kind == 1:  # Sub
            line[i] = (line[i] + left) & 0xFF
        elif kind == 3:  # Average
            line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        else:  # Paeth
            up, corner = previous[i], previous[i - step] if i >= step else 0
            estimate = left + up - corner
            near_left, near_up, near_corner = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
            if near_left <= near_up and near_left <= near_corner:
                predicted = left
            else:
                predicted = up if near_up <= near_corner else corner
            line[i] = (line[i] + predicted) & 0xFF
    return line


def png_colours(data: bytes) -> dict[bytes, int]:
    """How many pixels of each colour a PNG holds (colour as its raw sample bytes)."""
    width, _, rows = png_rows(data)
    step = len(rows[0]) // width if rows else 1
    counts: dict[bytes, int] = {}
    for row in rows:
        for start in range(0, len(row), step):
            pixel = row[start : start + step]
            counts[pixel] = counts.get(pixel, 0) + 1
    return counts
