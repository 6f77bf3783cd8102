"""The staff page in a real browser: Debian's headless Chromium drives `caiasoft-gateway web` (a child process)
while the real service (`caiasoft-gateway run`) uploads to the CaiaSoft simulator.

One site for the module, a day at the desk: the service takes hold slips, two paging lists carrying an item
CaiaSoft denies, a PLAIN printout the gateway refuses and a letter CaiaSoft refuses; two staff pages read its
ledger, one open (loopback) and one behind HTTP basic auth. Files with hostile names go through a site of their
own. Every page the browser loads is checked for an alert dialog, for markup that runs, and for the API key.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import browser
import pytest
from browser import document_statuses, png_colours, png_rows, wait_until
from conftest import KEY, SAMPLES, Daemon, Site, wait_for
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from gateway.simulators.caiasoft import CaiaSoftSimulator
from gateway.state.ledger import Ledger

chromium = browser.chromium  # the session's headless Chromium (a fixture, found here by name)
pytestmark = pytest.mark.e2e

SLIP = "hold-request-slip-0002.xml"  # one hold request each, from samples/
SLIP_BARCODE, SLIP_REQUEST, SLIP_PICKUP = "31234009876543", "000004522", "Law Library"
EARLY_SLIP = "hold-request-slip-0001.xml"
PLAIN = "usm50.hold_req_plain"  # a slip printed as PLAIN text: the gateway refuses it
PLAIN_REASON = "PLAIN"
DENIED, DENIED_REASON = "31234009999990", "Invalid Stop Code"  # the simulator denies this item
PAGING_AM = "anx.cir.12.paging20261201_am_barcode"
PAGING_PM = "anx.cir.12.paging20261201_pm_barcode"
PAGING_AM_ITEMS = ["31234000100001", "31234000100002", DENIED, "31234000100003"]
PAGING_PM_ITEMS = ["31234000200001", DENIED]  # asked again in the afternoon, denied again
LETTER = "letter.txt"  # CaiaSoft refuses it: no registered file format
LETTER_REASON = "File format not registered"
# Names are bytes a writer chose: each one is markup if the page forgets to escape it. ('/' cannot be in a name.)
HOSTILE_REFUSED = "<img src=x onerror=alert(1)>.xml"  # not XML: the gateway refuses it
HOSTILE_LETTER = "<script>alert(2)<%2Fscript>.txt"  # CaiaSoft refuses it
HOSTILE_ARCHIVED = '"><svg onload=alert(3)>_barcode'  # accepted, one of its items denied
HOSTILE_ITEM = "31234000300001"
HOSTILE = (HOSTILE_REFUSED, HOSTILE_LETTER, HOSTILE_ARCHIVED)
NEVER_SEEN = "31234000999999"
USER, PASSWORD = "desk", "correct horse battery staple"
ACTIVE_MARKUP = "script, iframe, object, embed, [onload], [onerror], [onclick], [onmouseover]"  # none on a page


@dataclass
class StaffPage:
    """`caiasoft-gateway web` as a child process."""

    config: Path
    url: str
    process: subprocess.Popen
    console: Path

    def output(self) -> str:
        return self.console.read_text(errors="replace")


@dataclass
class World:
    site: Site
    simulator: CaiaSoftSimulator
    daemon: Daemon
    page: StaffPage  # no login
    guarded: StaffPage  # basic auth, users_file


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _web_table(port: int, users_file: Path | None = None) -> str:
    users = f'users_file = "{users_file}"\n' if users_file else ""
    return f'\n[web]\nlisten = "127.0.0.1:{port}"\n{users}'


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError as error:
        return error.code == 401  # up, and asking for a login
    except OSError:
        return False


def _start_web(config: Path, port: int) -> StaffPage:
    console = config.with_name(f"web-console-{port}.txt")
    with open(console, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "-c", str(config), "web"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    page = StaffPage(config, f"http://127.0.0.1:{port}/", process, console)
    try:
        wait_for(
            lambda: process.poll() is not None or _answers(page.url),
            timeout=20,
            message=f"the staff page on {page.url}",
        )
        assert process.poll() is None, f"caiasoft-gateway web exited {process.returncode}: {page.output()}"
    except BaseException:
        _stop_web(page)
        raise
    return page


def _stop_web(page: StaffPage) -> int:
    if page.process.poll() is None:
        page.process.send_signal(signal.SIGTERM)
    try:
        return page.process.wait(20)
    except subprocess.TimeoutExpired:
        page.process.kill()
        page.process.wait(10)
        return -9


def _closed_rows(site: Site) -> dict[str, int]:
    if not site.state.joinpath("gateway.db").exists():  # the service makes it
        return {}
    ledger = Ledger(site.state / "gateway.db")
    try:
        return {str(state): count for state, count in ledger.files.counts().items()}
    finally:
        ledger.close()


def _wait_closed(site: Site, archived: int, refused: int) -> None:
    wait_for(
        lambda: _closed_rows(site) == {"archived": archived, "refused": refused},
        timeout=30,
        message=f"{archived} files archived and {refused} refused",
    )


def _barcode_list(items: list[str]) -> bytes:
    return "".join(f"{item}\n" for item in items).encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("staff-page")
    simulator = CaiaSoftSimulator(key=KEY, deny={DENIED: DENIED_REASON}).start()
    site = Site(root, simulator.url)
    base = site.config_file.read_text()
    port, guarded_port = _free_port(), _free_port()
    site.config_file.write_text(base + _web_table(port))
    guarded_config = root / "gateway-guarded.toml"  # the same site, its page behind a login
    guarded_config.write_text(base + _web_table(guarded_port, root / "web-users"))
    added = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(guarded_config), "web-user", USER, "--password-stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stdout + added.stderr

    daemon = Daemon(site.config_file).start()
    started: list[StaffPage] = []
    try:
        # The morning's files, then (later, so newer) the afternoon's: `find` lists newest first.
        for name in (EARLY_SLIP, PLAIN):
            (site.source / name).write_bytes((SAMPLES / name).read_bytes())
        (site.source / PAGING_AM).write_bytes(_barcode_list(PAGING_AM_ITEMS))
        (site.source / LETTER).write_bytes(b"Dear storage team, thank you.\n")
        _wait_closed(site, archived=2, refused=2)
        (site.source / SLIP).write_bytes((SAMPLES / SLIP).read_bytes())
        (site.source / PAGING_PM).write_bytes(_barcode_list(PAGING_PM_ITEMS))
        _wait_closed(site, archived=4, refused=2)
        assert daemon.process.poll() is None, daemon.output()
        started.append(_start_web(site.config_file, port))
        started.append(_start_web(guarded_config, guarded_port))
        yield World(site, simulator, daemon, started[0], started[1])
        for page in started:
            assert _stop_web(page) == 0, page.output()
        started.clear()
        assert daemon.stop() == 0, daemon.output()
    finally:
        for page in started:
            _stop_web(page)
        if daemon.process.poll() is None:
            daemon.kill()
        simulator.stop()


# -- what every page load checks ----------------------------------------------------------------------------------


def visit(driver, url: str) -> str:
    """Load url; no dialog opened, no active markup, the key nowhere in it. Returns the page source."""
    driver.get(url)
    return checked(driver)


def checked(driver) -> str:
    """The page now shown: no alert dialog, nothing in the DOM that runs, the API key nowhere."""
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 (the property raises when no dialog is open)
    assert driver.find_elements(By.CSS_SELECTOR, ACTIVE_MARKUP) == [], driver.current_url
    source = driver.page_source
    assert KEY not in source, f"the API key is on {driver.current_url}"
    return source


def by_css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def one(driver, selector: str):
    found = by_css(driver, selector)
    assert len(found) == 1, f"{len(found)} elements match {selector!r} on {driver.current_url}"
    return found[0]


def cells(row) -> dict[str, str]:
    """A table row's cells by class, as the text the reader sees."""
    return {cell.get_attribute("class"): cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td[class]")}


def file_link(row) -> str:
    """The /file/ID path a row links to."""
    href = row.find_element(By.CSS_SELECTOR, "td.file a, td.where a").get_attribute("href")
    path = urlsplit(href).path
    assert re.fullmatch(r"/file/\d+", path), href
    return path


# -- the tests ----------------------------------------------------------------------------------------------------


def test_the_barcode_search_finds_a_files_item_with_caiasofts_answer(chromium, world):
    visit(chromium, world.page.url)
    box = one(chromium, "form#find input#barcode")
    box.clear()
    box.send_keys(SLIP_BARCODE)
    one(chromium, "form#find button, form#find input[type=submit]").click()
    wait_until(lambda: by_css(chromium, "table#found"), message="the search's answer")
    checked(chromium)
    assert chromium.current_url == f"{world.page.url}find?barcode={SLIP_BARCODE}"  # a link staff can keep

    [hit] = by_css(chromium, "table#found tr.hit")
    found = cells(hit)
    assert "requested" in found["answer"].lower() and "denied" not in found["answer"].lower(), found
    assert found["request"] == SLIP_REQUEST and found["pickup"] == SLIP_PICKUP, found
    assert found["written"] and found["sent"] and SLIP in found["where"], found
    visit(chromium, urljoin(world.page.url, file_link(hit)))
    assert one(chromium, "section#file h1").text == SLIP
    assert SLIP_BARCODE in one(chromium, "table#records").text
    assert f"<z37-request-number>{SLIP_REQUEST}</z37-request-number>" in one(chromium, "pre#text").text

    # the denied item was in both paging lists: both listed, newest first, each with CaiaSoft's reason
    visit(chromium, f"{world.page.url}find?barcode={DENIED}")
    hits = [cells(row) for row in by_css(chromium, "table#found tr.hit")]
    assert [(PAGING_PM in hit["where"], PAGING_AM in hit["where"]) for hit in hits] == [(True, False), (False, True)]
    for found in hits:
        assert "denied" in found["answer"].lower() and DENIED_REASON in found["answer"], found

    visit(chromium, f"{world.page.url}find?barcode={NEVER_SEEN}")
    assert by_css(chromium, "table#found tr.hit") == []
    assert "never seen" in one(chromium, "p#none").text.lower()


def test_today_shows_a_refused_file_and_a_denied_item_with_caiasofts_reason(chromium, world):
    visit(chromium, world.page.url)
    refused = {cells(row)["file"]: row for row in by_css(chromium, "table#refused tr") if by_css(row, "td.file")}
    assert set(refused) == {LETTER, PLAIN}, list(refused)
    letter, plain = cells(refused[LETTER]), cells(refused[PLAIN])
    assert LETTER_REASON in letter["reason"] and letter["when"], letter
    assert PLAIN_REASON in plain["reason"] and plain["when"], plain
    file_link(refused[LETTER])

    denied = [cells(row) for row in by_css(chromium, "table#denied tr") if by_css(row, "td.item")]
    assert sorted((row["item"], row["file"]) for row in denied) == [(DENIED, PAGING_AM), (DENIED, PAGING_PM)]
    assert all(DENIED_REASON in row["reason"] for row in denied), denied

    one(chromium, "section#today dl#counts")
    attention = one(chromium, "ul#attention, p#all-well").text
    assert "not running" not in attention, attention  # the service runs: the page sees it
    screenshot = os.environ.get("STAFF_PAGE_SCREENSHOT")
    if screenshot:  # the picture in the docs (docs/images/staff-page.png), made by this test
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        assert chromium.save_screenshot(screenshot), screenshot


def test_the_chart_of_the_last_14_days_is_drawn_and_its_numbers_are_in_a_table(chromium, world):
    visit(chromium, world.page.url)
    chart = one(chromium, "svg#chart")
    assert chart.get_attribute("role") == "img" and chart.get_attribute("aria-label"), chart.get_attribute("outerHTML")
    assert by_css(chromium, "svg#chart [style]") == [], "style attributes are refused by the page's CSP"
    bars = [bar for bar in by_css(chromium, "svg#chart rect") if float(bar.get_attribute("height") or 0) > 0]
    assert len(bars) >= 3, "today's bars: files sent, files refused, items denied"
    assert chart.size["width"] >= 200 and chart.size["height"] >= 100, chart.size

    chromium.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)  # whole in the window
    picture = chart.screenshot_as_png
    width, height, _ = png_rows(picture)
    assert abs(width - chart.size["width"]) <= 1 and abs(height - chart.size["height"]) <= 1, (width, height)
    colours = png_colours(picture)
    assert len(colours) >= 4, f"the chart is blank: {len(colours)} colour(s)"
    assert max(colours.values()) <= 0.98 * width * height, "the chart is nearly all one colour"

    days = by_css(chromium, "table#days tr.day")
    assert len(days) == 14, len(days)
    today = dt.date.today().isoformat()
    rows = {row.find_element(By.CSS_SELECTOR, "td").text: cells(row) for row in days}
    assert today in rows, list(rows)
    numbers = {name: int(text) for name, text in rows.pop(today).items() if name != "date"}
    # files: 4 sent, 2 refused; items: 1 + 4 + 1 + 2 sent, the one item denied twice
    assert numbers == {"sent": 4, "refused": 2, "items-sent": 8, "items-denied": 2}, numbers
    assert all(row[name] == "0" for row in rows.values() for name in numbers), rows  # nothing on other days


def test_a_hostile_file_name_is_shown_as_text_and_runs_nothing(chromium, hostile_page):
    visit(chromium, hostile_page.url)
    refused = [link.text for link in by_css(chromium, "table#refused td.file a")]
    assert sorted(refused) == sorted([HOSTILE_REFUSED, HOSTILE_LETTER]), refused
    denied = [link.text for link in by_css(chromium, "table#denied td.file a")]
    assert denied == [HOSTILE_ARCHIVED], denied
    pages = [
        urljoin(hostile_page.url, link.get_attribute("pathname"))
        for link in by_css(chromium, "table#refused td.file a, table#denied td.file a")
    ]

    visit(chromium, f"{hostile_page.url}find?barcode={HOSTILE_ITEM}")
    [hit] = by_css(chromium, "table#found tr.hit")
    assert HOSTILE_ARCHIVED in cells(hit)["where"]
    pages.append(urljoin(hostile_page.url, file_link(hit)))

    shown = []
    for page in pages:
        visit(chromium, page)
        heading = one(chromium, "section#file h1")
        name = heading.get_attribute("textContent").strip()
        shown.append(name)
        # the markup the name holds is text in the DOM: the DOM's own serialisation escapes it
        escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert heading.get_attribute("innerHTML").strip() == escaped, heading.get_attribute("innerHTML")
    assert sorted(shown) == sorted([*HOSTILE, HOSTILE_ARCHIVED]), shown


def test_basic_auth_refuses_a_wrong_password_and_opens_with_the_right_one(chromium, world):
    guarded = urlsplit(world.guarded.url)
    password = PASSWORD.replace(" ", "%20")
    document_statuses(chromium)  # forget what came before
    visit(chromium, world.guarded.url)
    visit(chromium, f"http://{USER}:wrong-password@{guarded.netloc}/")
    visit(chromium, f"http://nobody:{password}@{guarded.netloc}/find?barcode={DENIED}")
    assert [status for _, status in document_statuses(chromium)] == [401, 401, 401]
    assert by_css(chromium, "#barcode, table#found") == [], "a refused login shows nothing of the page"

    visit(chromium, f"http://{USER}:{password}@{guarded.netloc}/")
    one(chromium, "form#find input#barcode")
    visit(chromium, f"{world.guarded.url}find?barcode={DENIED}")  # the browser keeps the login for the site
    assert len(by_css(chromium, "table#found tr.hit")) == 2
    assert [status for _, status in document_statuses(chromium)] == [200, 200]

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(world.guarded.url, timeout=10)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Basic realm="caiasoft-gateway", charset="UTF-8"'


def test_the_api_key_appears_on_no_page(chromium, world):
    """Every page the today page links to (and theirs), the searches, the stylesheet, the metrics, errors."""
    start = world.page.url
    queue = [
        start,
        f"{start}find?barcode={DENIED}",
        f"{start}find?barcode={SLIP_BARCODE}",
        f"{start}find?barcode={NEVER_SEEN}",
        f"{start}find?barcode=",
        f"{start}find?barcode={'9' * 500}",
        f"{start}style.css",
        f"{start}metrics",
        f"{start}no-such-page",
        f"{start}file/999999",
        f"{start}file/..%2Fapi-key",
    ]
    seen: set[str] = set()
    while queue and len(seen) < 100:
        url = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        visit(chromium, url)  # asserts the key is not there
        for link in by_css(chromium, "a[href]"):
            target = link.get_attribute("href").split("#")[0]
            if urlsplit(target).netloc == urlsplit(start).netloc and target not in seen:
                queue.append(target)
    assert not queue, f"more than {len(seen)} pages"
    assert len([url for url in seen if re.search(r"/file/\d+$", url)]) >= 6, sorted(seen)  # every file's page


@pytest.fixture
def hostile_page(site, simulator, daemon_factory):
    """A site of its own whose writer chose hostile names, with its staff page."""
    port = _free_port()
    site.write(simulator.url, extra=_web_table(port))
    daemon = daemon_factory(site.config_file)
    (site.source / HOSTILE_REFUSED).write_bytes(b"Dear reader,\n")
    (site.source / HOSTILE_LETTER).write_bytes(b"Not a request either.\n")
    (site.source / HOSTILE_ARCHIVED).write_bytes(_barcode_list([HOSTILE_ITEM, DENIED]))
    _wait_closed(site, archived=1, refused=2)
    page = _start_web(site.config_file, port)
    yield page
    assert _stop_web(page) == 0, page.output()
    assert daemon.stop() == 0, daemon.output()
