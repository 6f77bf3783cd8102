"""`demo`: the real pipeline on temp folders, with the CaiaSoft simulator and the sample files.

Starts the simulator, writes a config, starts `caiasoft-gateway run` as a child
process, writes the samples into the watched folder the way ALEPH does (in
several writes): single slips, a cir-12 list of <z30-barcode> lines, a batch
print file of three records (accepted), slips a site's script nested in one
<printout> (accepted, a record a slip), one batch whose third record is broken
(refused, the record named) and a PLAIN printout (refused for what it is), plus
two files CaiaSoft or the gateway must refuse. It waits until every
file has ended somewhere, asks the staff page (`caiasoft-gateway web`, started
beside the service on a loopback port, its URL printed) what it shows, stops
both, shows what went where and asks `find` where one item went. Meanwhile CaiaSoft retrieves an item and refiles
it the same day: the status feed reads that from the simulator as CaiaSoft
says it (retrievalinfo, the refiled list, the status "Item In at Rest"),
journals the two in the order that leaves ALEPH right, and the relay sends
them to the NCIP simulator, a raw socket like ALEPH's NCIP port, framed as
ALEPH's clients frame it (HTTP/1.0, NCIP 1).

`demo --connections 2` runs the same with a second CaiaSoft connection, as a consortium's
gateway has one per library: [caiasoft.law] with its own key (the one simulator accepts
both keys and records which one each upload came with), a second source (law-print,
caiasoft = "law") given a few files of its own, and a second NCIP server ([ncip.law], its
feed reading the LAW collection with law's key), its own NCIP simulator. It ends by saying,
per connection, what CaiaSoft received under that connection's key, what its NCIP server
received, and where to look.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from importlib import resources
from pathlib import Path
from typing import Self

from gateway.config.settings import DEFAULT_CONNECTION
from gateway.core.states import FileState, Verdict
from gateway.simulators.caiasoft import CaiaSoftSimulator
from gateway.simulators.ncip import NcipSimulator
from gateway.simulators.smtp import MailCatcher
from gateway.state.ledger import Ledger

DENIED_BARCODE = "31234009999990"
FIND_BARCODE = DENIED_BARCODE  # in the paging list and in the hold-request batch: `find` shows both
NCIP_BARCODE = "31234001234567"  # retrieved and refiled: checked out, then in again in ALEPH
NCIP_STATUS = "Item In at Rest"  # what CaiaSoft's itemstatus says of it afterwards
FEED_COLLECTION = "ANNEX"
WAIT_SECONDS = 60.0
ALERT_WAIT_SECONDS = 10.0
PAGE_WAIT_SECONDS = 10.0
HIT_ROW = '<tr class="hit">'  # one request file that carried the item, on the staff page's /find
SECOND = "law"  # `demo --connections 2`: the second connection, [caiasoft.law] and [ncip.law]
SECOND_SOURCE = "law-print"
SECOND_COLLECTION = "LAW"
SECOND_NCIP_BARCODE = "31234005550001"  # retrieved and refiled in LAW: through law's feed to law's NCIP server


def samples_folder() -> Path:
    """samples/ of a source checkout, else the copy installed in the package as gateway.samples."""
    checkout = Path(__file__).resolve().parents[2] / "samples"
    return checkout if checkout.is_dir() else Path(str(resources.files("gateway.samples")))


def sample_files() -> list[tuple[str, bytes]]:
    """The sample request files shipped with the gateway, as (name, bytes)."""
    return sorted(
        (entry.name, entry.read_bytes())
        for entry in samples_folder().iterdir()
        if entry.is_file() and not entry.name.endswith((".md", ".py")) and not entry.name.startswith(("_", "."))
    )


def second_files() -> list[tuple[str, bytes]]:
    """What ALEPH prints for the law library (`demo --connections 2`): a paging list and a hold-request slip."""
    slip = (samples_folder() / "hold-request-slip-0002.xml").read_bytes()
    paging = f"{SECOND_NCIP_BARCODE}\n31234005550002\n31234005550003\n".encode()
    return [("law.cir.12.paging_barcode", paging), ("law-hold-request-slip.xml", slip)]


def write_config(
    root: Path,
    base_url: str,
    key: str,
    settle_seconds: float = 0.5,
    source: Path | None = None,
    extra: str = "",
    *,
    caiasoft_extra: str = "backoff_initial_seconds = 0.2",
    source_extra: str = "",
    local_source: bool = True,
) -> Path:
    """A gateway on temp folders under root (demo, benchmark, tests): key file, source folder, config.

    caiasoft_extra and source_extra are TOML lines added to [caiasoft] and to the local
    [[sources]] entry (left out if not local_source); extra is appended to the file.
    """
    key_file = root / "api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    source = source or root / "aleph" / "print"
    source.mkdir(parents=True, exist_ok=True)
    config = root / "gateway.toml"
    text = f"""# Written by `caiasoft-gateway demo`, the benchmark or the tests.
[paths]
state_dir = "{root}/state"
archive_dir = "{root}/archive"
error_dir = "{root}/error"
log_dir = "{root}/log"

[caiasoft]
base_url = "{base_url}"
api_key_file = "{key_file}"
{caiasoft_extra}
"""
    if local_source:
        text += f"""
[[sources]]
name = "print"
path = "{source}"
settle_seconds = {settle_seconds}
{source_extra}
"""
    config.write_text(text + extra)
    return config


def _write_like_aleph(path: Path, data: bytes) -> None:
    """Write in pieces with pauses, as ALEPH's daemons do, through a name the gateway does not take yet."""
    with open(path, "wb") as handle:
        middle = len(data) // 2
        handle.write(data[:middle])
        handle.flush()
        time.sleep(0.3)
        handle.write(data[middle:])


def _wait_until_done(database: Path, expected: int, child: subprocess.Popen[bytes]) -> dict[FileState, int]:
    deadline = time.monotonic() + WAIT_SECONDS
    counts: dict[FileState, int] = {}
    while time.monotonic() < deadline and child.poll() is None:
        if database.exists():
            ledger = Ledger(database)
            counts = ledger.files.counts()
            ledger.close()
            if counts.get(FileState.ARCHIVED, 0) + counts.get(FileState.REFUSED, 0) >= expected:
                return counts
        time.sleep(0.2)
    return counts


def run_demo(keep: bool = False, connections: int = 1) -> int:
    """Run the demo in a temp folder; remove the folder at the end unless keep. connections: 1 or 2."""
    root = Path(tempfile.mkdtemp(prefix="caiasoft-gateway-demo-"))
    try:
        return _demo(root, keep, connections)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _demo(root: Path, keep: bool, connections: int = 1) -> int:
    key = "demo-" + os.urandom(8).hex()
    simulator = CaiaSoftSimulator(key=key, deny={DENIED_BARCODE: "Invalid Stop Code"}).start()
    mail = MailCatcher().start()  # the alerts go here instead of to a real mail server
    ncip = NcipSimulator(transport="tcp", track_loans=True).start()  # ALEPH's NCIP port, as a raw socket
    metrics_port = _free_port()
    web_port = _free_port()
    today = dt.date.today().strftime("%Y%m%d")  # what CaiaSoft's status feed endpoints will answer
    _retrieve_and_refile(simulator, today, FEED_COLLECTION, NCIP_BARCODE, "TN4561")
    second = _Second(root).start(simulator, today) if connections > 1 else None
    # garbled-slip.xml stops mid-document, as if ALEPH had paused: it waits this long unchanged, then is refused.
    config = write_config(
        root,
        simulator.url,
        key,
        extra="incomplete_grace_seconds = 2\n"
        + _monitoring(mail.port, metrics_port)
        + _relay(ncip.url, root / "ncip.jsonl")
        + f'\n[web]\nlisten = "127.0.0.1:{web_port}"\n'
        + (second.config(simulator.url) if second else ""),
    )
    print(
        f"demo folder:         {root}\nCaiaSoft simulator:  {simulator.url}{second.keys if second else ''}\n"
        f"NCIP simulator:      {ncip.url} (ALEPH's NCIP port: HTTP/1.0 framing on a raw socket, NCIP 1)\n"
        + (second.banner if second else "")
        + f"mail catcher:        smtp://127.0.0.1:{mail.port} (stands in for the host's MTA)\n"
        f"metrics:             http://127.0.0.1:{metrics_port}/metrics\n"
        f"staff page:          http://127.0.0.1:{web_port}/ (caiasoft-gateway web, read-only)\n"
    )
    child, page = (
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "-c", str(config), command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for command in ("run", "web")
    )
    try:
        folder = root / "aleph" / "print"
        files = sample_files()
        files.append(("shelf-report.txt", b"Shelf report for Annex room 2\nAll trays checked on 28 Nov.\n"))
        files.append(("garbled-slip.xml", b'## - XML_XSL\n<?xml version="1.0"?>\n<printout><section-01>'))
        writes = [(folder, name, data) for name, data in files] + (second.writes() if second else [])
        _write_files(root, writes, named=second is not None)
        print(f"CaiaSoft            retrieved {NCIP_BARCODE} and refiled it today; its status now: {NCIP_STATUS!r}")
        if second:
            print(f"CaiaSoft            retrieved {SECOND_NCIP_BARCODE} ({SECOND_COLLECTION}) and refiled it today")
        counts = _wait_until_done(root / "state" / "gateway.db", len(writes), child)
        _wait_for_mail(mail, 2)
        _wait_for_ncip(ncip, 2)
        if second:
            _wait_for_ncip(second.ncip, 2)
        figures = _scrape(metrics_port)
        seen = _ask_staff_page(web_port)
    finally:
        _stop([page, child], [simulator, mail, ncip, *([second.ncip] if second else [])])
    print(
        f"\nCaiaSoft received {len(simulator.received)} upload(s); "
        f"{counts.get(FileState.ARCHIVED, 0)} archived, {counts.get(FileState.REFUSED, 0)} refused.\n"
    )
    apart = second.show_connections(simulator, ncip) if second else True
    _show_monitoring(mail, figures, metrics_port)
    relayed = _show_ncip(ncip)
    if second:
        relayed = second.show_ncip() and relayed
    _show_staff_page(web_port, seen)
    _show(root, keep, web_port)
    finished = counts.get(FileState.ARCHIVED, 0) + counts.get(FileState.REFUSED, 0) == len(writes)
    return 0 if finished and relayed and apart and all(code == 200 for code, _ in seen.values()) else 1


def _write_files(root: Path, writes: list[tuple[Path, str, bytes]], named: bool) -> None:
    """Write each file into its folder as ALEPH would; named: say which folder (there are two sources)."""
    for where, name, data in writes:
        print(f"ALEPH writes        {name}" + (f"  (into {where.relative_to(root)})" if named else ""))
        _write_like_aleph(where / name, data)


def _stop(
    processes: list[subprocess.Popen[bytes]], servers: list[CaiaSoftSimulator | MailCatcher | NcipSimulator]
) -> None:
    """Stop the gateway's processes (SIGTERM, then kill after 30 s), then the simulators."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    for server in servers:
        server.stop()


def _retrieve_and_refile(simulator: CaiaSoftSimulator, day: str, collection: str, barcode: str, request: str) -> None:
    """CaiaSoft's status feed, as the simulator will answer it: the item retrieved and refiled on day, now in."""
    simulator.retrievals[(day, collection)] = [{"barcode": barcode, "request_id": request}]
    simulator.status_lists[("refiled", day, collection)] = [barcode]
    simulator.item_statuses[barcode] = NCIP_STATUS


class _Second:
    """`demo --connections 2`: the law library's connection beside the default one.

    [caiasoft.law] is a second key on the one CaiaSoft simulator (one facility, a key per
    library), law-print a second source that names it, [ncip.law] a second NCIP simulator
    (the law library's ALEPH) whose feed reads the LAW collection with law's key.
    """

    def __init__(self, root: Path):
        self.root = root
        self.key = "demo-" + os.urandom(8).hex()
        self.ncip = NcipSimulator(transport="tcp", track_loans=True)
        self.folder = root / "aleph" / SECOND_SOURCE

    def start(self, simulator: CaiaSoftSimulator, today: str) -> Self:
        """Have the simulator accept law's key and answer LAW's status feed; start law's NCIP simulator."""
        simulator.keys[SECOND] = self.key
        _retrieve_and_refile(simulator, today, SECOND_COLLECTION, SECOND_NCIP_BARCODE, "TN4562")
        self.ncip.start()
        return self

    @property
    def keys(self) -> str:
        return f" (two keys: {DEFAULT_CONNECTION} and {SECOND}, a connection each)"

    @property
    def banner(self) -> str:
        return f"NCIP simulator:      {self.ncip.url} ([ncip.{SECOND}], the law library's ALEPH)\n"

    def config(self, base_url: str) -> str:
        """[caiasoft.law] with its own key file, the law-print source that names it, and [ncip.law] with its feed."""
        key_file = self.root / f"api-key-{SECOND}"
        key_file.write_text(self.key + "\n")
        key_file.chmod(0o600)
        self.folder.mkdir(parents=True, exist_ok=True)
        return f"""
[caiasoft.{SECOND}]
base_url = "{base_url}"
api_key_file = "{key_file}"
backoff_initial_seconds = 0.2

[[sources]]
name = "{SECOND_SOURCE}"
path = "{self.folder}"
settle_seconds = 0.5
caiasoft = "{SECOND}"
""" + _relay(self.ncip.url, self.root / f"ncip-{SECOND}.jsonl", f"ncip.{SECOND}", SECOND_COLLECTION)

    def writes(self) -> list[tuple[Path, str, bytes]]:
        return [(self.folder, name, data) for name, data in second_files()]

    def show_ncip(self) -> bool:
        return _show_ncip(self.ncip, SECOND_NCIP_BARCODE, f"[ncip.{SECOND}]'s NCIP port (simulated)")

    def show_connections(self, simulator: CaiaSoftSimulator, ncip: NcipSimulator) -> bool:
        """Per connection: what CaiaSoft received under its key, what its NCIP server received, where to look.

        True if law's uploads were law-print's files, each once, and none of them came under the default's key.
        """
        config = self.root / "gateway.toml"
        print("Per connection (one CaiaSoft simulator with a key for each; an NCIP server each):")
        shown = (
            (DEFAULT_CONNECTION, "caiasoft", "print", ncip),
            (SECOND, f"caiasoft.{SECOND}", SECOND_SOURCE, self.ncip),
        )
        for name, table, source, server in shown:
            received = [item.name or "?" for item in simulator.received_by(name)]
            print(
                f"  {name}  [{table}], source {source} (aleph/{source}):\n"
                f"    CaiaSoft received {len(received)} upload(s) under {name}'s key: {', '.join(sorted(received))}\n"
                f"    its NCIP server {server.url} received {len(server.received)} message(s)"
            )
        print(
            f"  where to look (demo --keep keeps the folder): caiasoft-gateway -c {config} status (per connection),\n"
            "  each sidecar's \"connection\", the log lines' connection field, find (which connection sent an item)"
        )
        own = sorted(name for name, _ in second_files())
        law = sorted(item.name or "?" for item in simulator.received_by(SECOND))
        default = {item.name for item in simulator.received_by(DEFAULT_CONNECTION)}
        return law == own and bool(default) and not default & set(own)


def _ask_staff_page(port: int) -> dict[str, tuple[int, str]]:
    """What the staff page answered (HTTP status, the page) for Today and for a search, asked as a browser would;
    waits for it to listen (it starts beside the service). A page that cannot be had: (0, why)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    seen: dict[str, tuple[int, str]] = {}
    deadline = time.monotonic() + PAGE_WAIT_SECONDS
    for path in ("/", f"/find?barcode={FIND_BARCODE}"):
        while True:
            try:
                with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                    seen[path] = (answer.status, answer.read().decode("utf-8", "replace"))
                break
            except urllib.error.HTTPError as error:
                seen[path] = (error.code, error.read().decode("utf-8", "replace"))
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    seen[path] = (0, str(error))
                    break
                time.sleep(0.2)
    return seen


def _show_staff_page(port: int, seen: dict[str, tuple[int, str]]) -> None:
    print(f"The staff page, http://127.0.0.1:{port}/ (asked while the gateway ran; it stops with the demo):")
    for path, (code, text) in seen.items():
        if code == 0:
            print(f"  {path}  did not answer: {text}")
            continue
        if path == "/":
            figures = dict(re.findall(r'<dd id="count-(\w+)">(\d+)</dd>', text))
            said = ", ".join(f"{figures.get(key, '?')} {key}" for key in ("sent", "refused", "waiting", "denied"))
            said += " today" + ("; nothing needs a person" if 'id="all-well"' in text else "")
        else:
            said = f"{text.count(HIT_ROW)} request file(s) carried it"
        print(f"  {path}  answered {code}: {said}")
    print()


def _relay(url: str, journal: Path, table: str = "ncip", collection: str = FEED_COLLECTION) -> str:
    """[ncip] (or [ncip.NAME]) to an NCIP simulator, with its feed of the collection, for the demo's config."""
    return f"""
[{table}]
url = "{url}"
from_agency = "CAIA"
to_agency = "ALEPH"
application_profile = "CAIAPROFILE"
user_id = "CAIASOFT"
journal = "{journal}"
backoff_initial_seconds = 0.2

[{table}.feed]
collection = "{collection}"
lookback_days = 0
"""


def _wait_for_ncip(ncip: NcipSimulator, count: int) -> None:
    deadline = time.monotonic() + ALERT_WAIT_SECONDS
    while len(ncip.received) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def _show_ncip(ncip: NcipSimulator, barcode: str = NCIP_BARCODE, title: str = "ALEPH's NCIP port (simulated)") -> bool:
    """What ALEPH's NCIP port received, and where the item ended; True if it ended checked in."""
    print(f"\n{title} received {len(ncip.received)} message(s):")
    for message in ncip.received:
        framing = f'"{message.head.splitlines()[0].decode("latin-1")}" + headers' if message.head else "bare"
        print(
            f"  {message.action} {message.item}  (NCIP {message.version}, {framing})"
            + (f", user {message.user}" if message.user else "")
        )
    on_loan = barcode in ncip.loans
    print(f"  {barcode} ends {'on loan' if on_loan else 'checked in'} in ALEPH\n")
    return len(ncip.received) == 2 and not on_loan


def _monitoring(smtp_port: int, metrics_port: int) -> str:
    """[alerts] to the mail catcher and [metrics] on loopback, for the demo's config."""
    return f"""
[alerts]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
from = "caiasoft-gateway@demo.invalid"
to = ["ils-team@demo.invalid"]

[metrics]
listen = "127.0.0.1:{metrics_port}"
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_mail(mail: MailCatcher, count: int) -> None:
    deadline = time.monotonic() + ALERT_WAIT_SECONDS
    while len(mail.messages) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def _scrape(port: int) -> list[str]:
    """The gateway's file and item counters from its /metrics, as Prometheus would read them."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError as error:
        return [f"(could not read /metrics: {error})"]
    return [
        line
        for line in text.splitlines()
        if line.startswith(
            (
                "caiasoft_gateway_files_total",
                "caiasoft_gateway_denied_items_total",
                "caiasoft_gateway_pending_files",
                "caiasoft_gateway_uploads_paused",
            )
        )
    ]


def _show_monitoring(mail: MailCatcher, figures: list[str], metrics_port: int) -> None:
    print(f"\nAlerts mailed (caught by the demo's mail server): {len(mail.messages)}")
    for message in mail.messages:
        print(f"  Subject: {message['Subject']}")
    shown = next(
        (m for m in mail.messages if "denied" in str(m["Subject"])), mail.messages[0] if mail.messages else None
    )
    if shown is not None:
        part = shown.get_body(("plain",))
        text = part.get_content() if isinstance(part, EmailMessage) else ""
        print(
            f"\nOne of them, as the ILS team reads it:\n  To: {shown['To']}\n  Subject: {shown['Subject']}\n\n  "
            + text.strip().replace("\n", "\n  ")
        )
    print(f"\nPrometheus figures from http://127.0.0.1:{metrics_port}/metrics (while the gateway ran):")
    for line in figures:
        print(f"  {line}")


def _show(root: Path, keep: bool, web_port: int) -> None:
    for label, folder in (("accepted by CaiaSoft -> archive", root / "archive"), ("refused -> error", root / "error")):
        print(f"{label}:")
        for sidecar in sorted(folder.rglob("*.json")):
            info = json.loads(sidecar.read_text())
            line = f"  {sidecar.with_suffix('').relative_to(root)}"
            if info["outcome"] == Verdict.ACCEPTED:
                items = (info.get("caiasoft_answer") or {}).get("request_count", "?")
                records = f"{info['record_count']} record(s), " if "record_count" in info else ""
                denied = ", ".join(f"{d['item']} ({d['istatus']})" for d in info["denied_items"])
                line += f"  [{info['kind']}, {records}{items} item(s){'; DENIED ' + denied if denied else ''}]"
            else:
                line += f"\n      reason: {info['reason']}"
            print(line)
    example = next(iter(sorted((root / "archive").rglob("*.hold_req.json"))), None)
    if example:
        print(f"\nEach file has a sidecar beside it, e.g. {example.relative_to(root)}:")
        text = example.read_text().strip()
        print("  " + text[:2400].replace("\n", "\n  ") + ("\n  ..." if len(text) > 2400 else ""))
    config = root / "gateway.toml"
    print(f'\n"Where is my item?"  caiasoft-gateway -c {config} find {FIND_BARCODE}\n')
    answer = subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config), "find", FIND_BARCODE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    print("  " + (answer.stdout.strip() or answer.stderr.strip()).replace("\n", "\n  "))
    if not keep:
        print(f"\nThe demo folder {root} is removed now; `caiasoft-gateway demo --keep` keeps it to look around.")
        return
    print(
        f"\nWhere to look (the demo folder is kept; remove it when done):\n"
        f"  log (one JSON object a line): {root / 'log' / 'gateway.log'}\n"
        f"  status: caiasoft-gateway -c {root / 'gateway.toml'} status\n"
        f"  the staff page again: caiasoft-gateway -c {root / 'gateway.toml'} web, then "
        f"http://127.0.0.1:{web_port}/\n"
        f"  config used: {root / 'gateway.toml'}"
    )
