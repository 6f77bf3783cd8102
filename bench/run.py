"""Benchmark: the gateway against the limit, in one run on one machine.

Measures, with both simulators in their own processes (and their own ceiling shown):
  the limit     a bare loop (one requests.Session posting each file, then renaming it into an
                archive folder) and a shell loop of curl -F ...; mv
  backlog       N files present when `caiasoft-gateway run` starts: time until all archived,
                files/s, peak RSS of the gateway
  big backlog   a large backlog: time to the first upload, peak RSS over a window
  latency       files written one by one while the gateway runs: writer's close to the
                simulator's receipt, minus settle_seconds (p50, p99)
  NCIP          journal entries relayed to the NCIP simulator against a bare loop posting the
                same messages
  WAN           the same backlog, bare, curl and NCIP comparisons against simulators that answer
                after --wan-delay seconds (50 ms by default: a WAN round trip to CaiaSoft); the
                backlog twice: written just before the gateway starts (its files become ready
                only once settle_seconds old) and aged (every file already older than
                settle_seconds: files that were waiting while the gateway was down)
  web           the staff page under load: the loopback backlog once alone, then once more with
                `caiasoft-gateway web` on the same ledger and --web-clients threads (200) asking it
                for GET / and GET /find?barcode= in turn, back to back, from just before the gateway
                starts until the backlog is archived (200 page requests in flight all along); files/s
                of both, their ratio, and under that load the page's answer times (median, p99,
                worst), the requests that failed, the CPU of the page's process and of the clients
                (--web-nice N runs the page's process at that niceness)
  fair          two CaiaSoft connections (two simulators): --fair-files (5,000) files queued for one,
                then --fair-probes single files written one at a time for the other, each once the
                one before was received; each probe's wait from queued (claimed) to its simulator's
                receipt, against the same probes with nothing else queued and against one upload's
                time on the backlogged connection (the median upload.ok ms of its log)
Prints a table and one JSON line of figures. `--smoke` runs tiny sizes (used by the tests); `--only
backlog,wan` runs some of the scenarios (to compare like with like while changing one thing).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.cli import demo  # noqa: E402  (the checkout's gateway, also when run as a script)

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
KEY = "bench-key-0123456789"
PYTHON = sys.executable
SCENARIOS = ("backlog", "big", "latency", "ncip", "wan", "web", "fair")
WEB_CLIENTS = 200  # page requests in flight at once during the web scenario's loaded backlog
SETTLE = 1.0  # settle_seconds of the backlog runs


def machine() -> dict:
    """What the figures were measured on: CPU model, cores, Python, kernel."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": sys.version.split()[0], "kernel": os.uname().release}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"benchmark gave up waiting for {what} after {timeout:.0f}s")


class Process:
    """A child process (simulator or gateway) with its peak memory."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def peak_rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def cpu_seconds(self) -> float:
        """User and system CPU the process has used so far (from /proc)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_simulator(kind: str, root: Path, receipts: Path | None = None, delay: float = 0.0) -> tuple[Process, str]:
    port = free_port()
    args = [PYTHON, "-m", "gateway", "simulate", kind, "--port", str(port)]
    if delay:
        args += ["--delay", str(delay)]
    if kind == "caiasoft":
        args += ["--key", KEY] + (["--receipts", str(receipts)] if receipts else [])
    else:
        args += ["--no-validate"]  # schema checks are the tests' job; here they would be the bottleneck
    process = Process(args, root / f"simulator-{kind}-{port}.log")
    wait_until(lambda: _listening(port), 15, what=f"the {kind} simulator")
    return process, f"http://127.0.0.1:{port}"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def make_files(folder: Path, count: int) -> int:
    """An ALEPH-like mix: two slips to every barcode list, from samples/. Returns total bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    slips = [(SAMPLES / name).read_bytes() for name in ("hold-request-slip-0001.xml", "hold-request-slip-0002.xml")]
    barcodes = (SAMPLES / "anx.cir.12.paging20261128_am_barcode").read_bytes()
    total = 0
    for number in range(count):
        if number % 3 == 2:
            name, data = f"anx.cir.12.paging{number:06d}_am_barcode", barcodes
        else:
            name, data = f"hold-request-slip-{number:06d}.xml", slips[number % 2]
        (folder / name).write_bytes(data)
        total += len(data)
    return total


def write_config(
    root: Path,
    base_url: str,
    source: Path,
    settle: float,
    ncip_url: str | None = None,
    journal: Path | None = None,
    extra: str = "",
) -> Path:
    ncip = (
        f"""
[ncip]
url = "{ncip_url}"
from_agency = "CAIA"
to_agency = "ALEPH"
user_id = "CAIASOFT"
journal = "{journal}"
"""
        if ncip_url
        else ""
    )
    return demo.write_config(root, base_url, KEY, settle_seconds=settle, source=source, extra=ncip + extra)


def ledger_value(root: Path, sql: str):
    database = root / "state" / "gateway.db"
    if not database.exists():
        return None
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute(sql).fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None


def start_gateway(config: Path, root: Path) -> Process:
    return Process([PYTHON, "-m", "gateway", "-c", str(config), "run"], root / "gateway-console.log")


# -- the measurements -------------------------------------------------------------------


def simulator_ceiling(url: str, seconds: float, threads: int = 4) -> float:
    """Uploads/s the simulator answers with several clients and no file handling."""
    body = (SAMPLES / "hold-request-slip-0001.xml").read_bytes()
    counts = [0] * threads
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                session.post(
                    url + "/api/requestfile/v1",
                    headers={"X-API-Key": KEY},
                    files={"file": ("s.xml", body, "application/xml")},
                    timeout=30,
                )
                counts[index] += 1

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def bare_loop(url: str, folder: Path, archive: Path) -> float:
    archive.mkdir(parents=True, exist_ok=True)
    names = sorted(os.listdir(folder))
    started = time.monotonic()
    with requests.Session() as session:
        for name in names:
            with open(folder / name, "rb") as body:
                session.post(
                    url + "/api/requestfile/v1", headers={"X-API-Key": KEY}, files={"file": (name, body)}, timeout=30
                ).raise_for_status()
            os.rename(folder / name, archive / name)
    return len(names) / (time.monotonic() - started)


def curl_loop(url: str, folder: Path, archive: Path) -> float:
    archive.mkdir(parents=True, exist_ok=True)
    count = len(os.listdir(folder))
    script = 'for f in "$1"/*; do curl -s -o /dev/null -H "X-API-Key: $3" -F "file=@$f" "$2" && mv "$f" "$4"/; done'
    started = time.monotonic()
    subprocess.run(
        ["bash", "-c", script, "bench", str(folder), url + "/api/requestfile/v1", KEY, str(archive)], check=True
    )
    return count / (time.monotonic() - started)


def write_backlog(url: str, root: Path, count: int, aged: bool = False) -> Path:
    """count files waiting for a gateway not yet started, and its config; return the config.

    The files are written just before the start, so they become ready only once settle_seconds
    old; aged, they are dated back beyond settle_seconds, as files that waited for the gateway.
    """
    source = root / "print"
    make_files(source, count)
    if aged:
        before = time.time() - SETTLE - 1
        for path in source.iterdir():
            os.utime(path, (before, before))
    return write_config(root, url, source, settle=SETTLE)


def start_with_backlog(url: str, root: Path, count: int, aged: bool = False) -> tuple[Process, float]:
    """count files already waiting, then the gateway started; return it and when it started."""
    config = write_backlog(url, root, count, aged)
    started = time.monotonic()
    return start_gateway(config, root), started


def backlog(url: str, root: Path, count: int, aged: bool = False) -> dict:
    return drain(root, write_backlog(url, root, count, aged), count)


def drain(root: Path, config: Path, count: int) -> dict:
    """Start the gateway on the backlog of count files written under root; its figures once all are archived."""
    started = time.monotonic()
    gateway = start_gateway(config, root)
    try:
        wait_until(
            lambda: ledger_value(root, "SELECT COUNT(*) FROM files WHERE state = 'archived'") == count,
            timeout=600,
            interval=0.02,
            what="the backlog to drain",
        )
        elapsed = time.monotonic() - started
        rss = gateway.peak_rss_mb()
    finally:
        gateway.stop()
    # from the first upload to the last file archived: the rate once start-up and settle_seconds are behind
    span = ledger_value(root, "SELECT MAX(finished_at) - MIN(uploaded_at) FROM files") or float("nan")
    return {
        "files": count,
        "seconds": round(elapsed, 2),
        "files_per_s": round(count / elapsed, 1),
        "drain_files_per_s": round(count / span, 1),
        "peak_rss_mb": round(rss, 1),
    }


def big_backlog(url: str, root: Path, count: int, window: float) -> dict:
    gateway, started = start_with_backlog(url, root, count)
    try:
        wait_until(
            lambda: ledger_value(root, "SELECT COUNT(*) FROM files WHERE uploaded_at IS NOT NULL"),
            timeout=120,
            interval=0.02,
            what="the first upload",
        )
        first = time.monotonic() - started
        time.sleep(max(window - first, 0))  # let it work through the backlog for a while: peak RSS over the window
        archived = ledger_value(root, "SELECT COUNT(*) FROM files WHERE state = 'archived'")
        rss = gateway.peak_rss_mb()
    finally:
        gateway.stop()
    return {
        "files": count,
        "first_upload_s": round(first, 2),
        "window_s": window,
        "archived_in_window": archived,
        "peak_rss_mb": round(rss, 1),
    }


def latency(url: str, receipts: Path, root: Path, count: int, settle: float) -> dict:
    source = root / "print"
    source.mkdir(parents=True)
    config = write_config(root, url, source, settle=settle)
    gateway = start_gateway(config, root)
    closed: dict[str, float] = {}
    try:
        wait_until(lambda: "service.started" in (root / "gateway-console.log").read_text(), 30, what="start")
        data = (SAMPLES / "hold-request-slip-0001.xml").read_bytes()
        for number in range(count):
            name = f"latency-{number:05d}.xml"
            with open(source / name, "wb") as handle:
                handle.write(data)
            closed[name] = time.time()
            time.sleep(0.02)  # the writer's pace: one file every 20 ms

        def received() -> dict[str, float]:
            lines = receipts.read_text().splitlines() if receipts.exists() else []
            return {entry["name"]: entry["at"] for entry in map(json.loads, lines) if entry["name"] in closed}

        seen = wait_until(lambda: (found := received()) and len(found) == count and found, 120, 0.1, "receipts")
    finally:
        gateway.stop()
    beyond = sorted((seen[name] - closed[name] - settle) * 1000 for name in closed)
    return {
        "files": count,
        "settle_seconds": settle,
        "p50_ms": round(statistics.median(beyond), 1),
        "p99_ms": round(beyond[min(len(beyond) - 1, int(len(beyond) * 0.99))], 1),
    }


def ncip_bench(caiasoft_url: str, ncip_url: str, root: Path, count: int) -> dict:
    from gateway.config.loader import load
    from gateway.ncip import messages
    from gateway.ncip.journal import JournalEntry

    root.mkdir(parents=True)
    journal = root / "ncip.jsonl"
    entries = [JournalEntry("checkout" if n % 2 else "checkin", f"3123400{n:07d}", stop="MAIN") for n in range(count)]
    journal.write_text("".join(json.dumps(e.as_dict()) + "\n" for e in entries))
    source = root / "print"
    source.mkdir()
    config = write_config(root, caiasoft_url, source, settle=1.0, ncip_url=ncip_url, journal=journal)
    settings = load(config).ncip
    size = journal.stat().st_size

    started, cpu_started = time.monotonic(), time.process_time()
    with requests.Session() as session:
        for entry in entries:
            session.post(
                ncip_url,
                data=messages.build(settings, entry),
                timeout=30,
                headers={"Content-Type": "application/xml; charset=utf-8"},
            ).raise_for_status()
    bare, bare_cpu = count / (time.monotonic() - started), time.process_time() - cpu_started

    started = time.monotonic()
    gateway = start_gateway(config, root)
    try:
        wait_until(lambda: relayed_offset(root) == size, timeout=600, interval=0.05, what="the journal to be relayed")
        relayed = count / (time.monotonic() - started)
        cpu = gateway.cpu_seconds()
    finally:
        gateway.stop()
    return {
        "entries": count,
        "bare_loop_per_s": round(bare, 1),
        "gateway_per_s": round(relayed, 1),
        "ratio": round(relayed / bare, 2),
        "bare_cpu_ms_per_entry": round(bare_cpu * 1000 / count, 3),
        "gateway_cpu_ms_per_entry": round(cpu * 1000 / count, 3),
    }


def relayed_offset(root: Path) -> int | None:
    """Where the relay's checkpoint is in the journal (state_dir/ncip-checkpoint), None before it is written."""
    from gateway.state import checkpointfile

    try:
        saved = checkpointfile.read(root / "state" / checkpointfile.FILE_NAME)
    except checkpointfile.CheckpointDamaged:
        return None
    return saved.position["offset"] if saved is not None and saved.position else None


class PageLoad:
    """clients threads asking the staff page on port for GET / and GET /find?barcode= in turn, each request on
    a new connection (the page serves one per connection) and the next as soon as it is answered, until
    stopped: clients page requests in flight all along. Each thread asks at least once."""

    def __init__(self, port: int, clients: int, barcode: str):
        self.port = port
        self.paths = ("/", f"/find?barcode={quote(barcode)}")
        self.times: list[float] = []  # seconds of each request answered 200, from connect to its last byte
        self.failed: Counter[str] = Counter()  # the others: HTTP status or the error's name
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]
        self._started = self._stopped = 0.0

    def start(self) -> PageLoad:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop asking (requests in flight are answered first); the figures of every request made."""
        self._stopping.set()
        self._stopped = time.monotonic()
        for thread in self._threads:
            thread.join(120)
        times = sorted(self.times)
        answered = len(times)
        return {
            "clients": len(self._threads),
            "requests_answered": answered,
            "requests_failed": dict(self.failed),
            "answered_per_s": round(answered / (self._stopped - self._started), 1),
            "median_ms": round(statistics.median(times) * 1000, 1) if times else None,
            "p99_ms": round(times[min(answered - 1, int(answered * 0.99))] * 1000, 1) if times else None,
            "worst_ms": round(times[-1] * 1000, 1) if times else None,
        }

    def _client(self, number: int) -> None:
        times: list[float] = []
        failed: Counter[str] = Counter()
        while True:
            path = self.paths[number % len(self.paths)]
            number += 1
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                connection.request("GET", path)
                answer = connection.getresponse()
                answer.read()
                if answer.status == 200:
                    times.append(time.perf_counter() - started)
                else:
                    failed[str(answer.status)] += 1
            except (OSError, http.client.HTTPException) as error:
                failed[type(error).__name__] += 1
            finally:
                connection.close()
            if self._stopping.is_set():
                break
        with self._lock:
            self.times += times
            self.failed.update(failed)


def web(url: str, work: Path, count: int, clients: int, nice: int = 0) -> dict:
    """The backlog alone, then the same backlog with clients page requests in flight (PageLoad) on a `caiasoft-
    gateway web` process on its ledger: the page and its load start first, then the files are written and the
    gateway started as in the backlog alone; the load stops once the backlog is archived. nice: the page's
    process runs at that niceness (0: started like the gateway)."""
    alone = backlog(url, work / "alone", count)
    # a barcode in the ledger; the backlog repeats three sample files, so about a third of its files carry it
    barcode = ledger_value(work / "alone", "SELECT barcode FROM items ORDER BY file_id, barcode LIMIT 1")
    root = work / "loaded"
    port = free_port()
    source = root / "print"
    source.mkdir(parents=True)
    config = write_config(root, url, source, settle=SETTLE, extra=f'\n[web]\nlisten = "127.0.0.1:{port}"\n')
    niced = ["nice", "-n", str(nice)] if nice else []
    page = Process([*niced, PYTHON, "-m", "gateway", "-c", str(config), "web"], root / "web-console.log")
    try:
        wait_until(lambda: _listening(port), 30, what="the staff page")
        page_cpu, client_cpu = page.cpu_seconds(), time.process_time()
        load = PageLoad(port, clients, barcode).start()
        try:
            make_files(source, count)  # just before the start, as write_backlog does
            loaded = drain(root, config, count)
        finally:
            asked = load.stop()
        page_cpu, client_cpu = page.cpu_seconds() - page_cpu, time.process_time() - client_cpu
        page_rss = page.peak_rss_mb()
    finally:
        page.stop()
    return {
        "files": count,
        "barcode": barcode,
        "alone": alone,
        "loaded": loaded,
        "ratio": round(loaded["files_per_s"] / alone["files_per_s"], 2),
        "drain_ratio": round(loaded["drain_files_per_s"] / alone["drain_files_per_s"], 2),
        "page": asked
        | {
            "nice": nice,
            "cpu_s": round(page_cpu, 2),
            "clients_cpu_s": round(client_cpu, 2),  # this process: the client threads (and the wait for the drain)
            "peak_rss_mb": round(page_rss, 1),
        },
    }


def wan(work: Path, delay: float, files: int, curl_files: int, ncip_entries: int) -> dict:
    """Backlog, bare and curl loops and the NCIP relay against simulators delay seconds away."""
    work.mkdir(parents=True)
    caiasoft, caiasoft_url = start_simulator("caiasoft", work, delay=delay)
    ncip, ncip_url = start_simulator("ncip", work, delay=delay)
    try:
        make_files(work / "bare" / "in", files)
        bare = bare_loop(caiasoft_url, work / "bare" / "in", work / "bare" / "out")
        make_files(work / "curl" / "in", curl_files)
        curl = curl_loop(caiasoft_url, work / "curl" / "in", work / "curl" / "out")
        gateway = backlog(caiasoft_url, work / "backlog", files)
        aged = backlog(caiasoft_url, work / "backlog-aged", files, aged=True)
        relay = ncip_bench(caiasoft_url, ncip_url, work / "ncip", ncip_entries)
    finally:
        caiasoft.stop()
        ncip.stop()
    return {
        "delay_ms": round(delay * 1000),
        "bare_loop_per_s": round(bare, 1),
        "curl_loop_per_s": round(curl, 1),
        "backlog": gateway,
        "backlog_aged": aged,
        "ncip": relay,
        "ratios": {
            "backlog_vs_bare": round(gateway["files_per_s"] / bare, 2),
            "backlog_vs_curl": round(gateway["files_per_s"] / curl, 2),
            "drain_vs_bare": round(gateway["drain_files_per_s"] / bare, 2),
            "aged_vs_bare": round(aged["files_per_s"] / bare, 2),
            "aged_drain_vs_bare": round(aged["drain_files_per_s"] / bare, 2),
        },
    }


def write_two(root: Path, default_url: str, law_url: str) -> Path:
    """A gateway with two connections (default, law), each a source of its own (print, law)."""
    law = root / "law"
    law.mkdir(parents=True, exist_ok=True)
    extra = f"""
[caiasoft.law]
base_url = "{law_url}"
api_key_file = "{root / "api-key"}"

[[sources]]
name = "law"
path = "{law}"
settle_seconds = {SETTLE}
caiasoft = "law"
"""
    return write_config(root, default_url, root / "print", settle=SETTLE, extra=extra)


def probe_waits(root: Path, receipts: Path, count: int) -> list[float]:
    """count single files written one at a time into the law source; each one's ms from claimed to received."""
    waits = []
    for number in range(count):
        name = f"probe-{number:03d}.txt"
        (root / "law" / name).write_bytes(b"31234007770001\n")

        def received(name: str = name) -> float | None:
            lines = receipts.read_text().splitlines() if receipts.exists() else []
            return next((entry["at"] for entry in map(json.loads, lines) if entry["name"] == name), None)

        at = wait_until(received, 60, 0.005, f"the probe {name}")
        claimed = wait_until(
            lambda name=name: ledger_value(root, f"SELECT claimed_at FROM files WHERE name = '{name}'"), 30, 0.01
        )
        waits.append((at - claimed) * 1000)
    return waits


def fair(work: Path, files: int, probes: int, delay: float = 0.0) -> dict:
    """A backlog on one connection, single files on the other: does the backlog delay them? (delay: seconds
    both simulators wait before each answer, as a WAN round trip)"""
    results: dict[str, Any] = {"files": files, "probes": probes, "delay_ms": round(delay * 1000)}
    results["alone"], _ = fair_run(work / "alone", 0, probes, delay)
    results["with_backlog"], backlog = fair_run(work / "with_backlog", files, probes, delay)
    results.update(backlog)
    results["extra_ms"] = round(results["with_backlog"]["median_ms"] - results["alone"]["median_ms"], 1)
    return results


def fair_both(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The fair scenario on loopback and, unless --wan-delay 0, with WAN-like answers."""
    found = {"fair": fair(work / "fair", args.fair_files, args.fair_probes)}
    if args.wan_delay > 0:
        found["fair_wan"] = fair(work / "fair-wan", args.fair_files, args.fair_probes, args.wan_delay)
    return found


def fair_run(root: Path, backlog_files: int, probes: int, delay: float) -> tuple[dict, dict]:
    """The probes' waits (median, worst) with backlog_files queued for the other connection; and, with a
    backlog, one upload's time on it and what was left of it after the probes."""
    root.mkdir(parents=True)
    receipts = root / "receipts-law.jsonl"
    default_sim, default_url = start_simulator("caiasoft", root, delay=delay)
    law_sim, law_url = start_simulator("caiasoft", root, receipts, delay=delay)
    make_files(root / "print", backlog_files)
    if backlog_files:  # aged: waiting since before the start, all of it ready at once
        before = time.time() - SETTLE - 1
        for path in (root / "print").iterdir():
            os.utime(path, (before, before))
    gateway = start_gateway(write_two(root, default_url, law_url), root)
    try:
        wait_until(lambda: "service.started" in (root / "gateway-console.log").read_text(), 30, what="start")
        if backlog_files:
            wait_until(
                lambda: (
                    (ledger_value(root, "SELECT COUNT(*) FROM files WHERE state = 'archived'") or 0)
                    >= min(50, backlog_files // 3)
                ),
                120,
                what="the backlog being sent",
            )
        waits = probe_waits(root, receipts, probes)
        left = ledger_value(root, "SELECT COUNT(*) FROM files WHERE state IN ('queued', 'uploading')")
    finally:
        gateway.stop()
        default_sim.stop()
        law_sim.stop()
    figures = {"median_ms": round(statistics.median(waits), 1), "worst_ms": round(max(waits), 1)}
    if not backlog_files:
        return figures, {}
    lines = (root / "log" / "gateway.log").read_text().splitlines()
    upload_ms = [e["ms"] for e in map(json.loads, lines) if e.get("event") == "upload.ok" and e["source"] == "print"]
    return figures, {"one_upload_ms": round(statistics.median(upload_ms), 1), "backlog_left_after_probes": left}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="backlog size (default 2000)")
    parser.add_argument("--big", type=int, default=50000, help="big backlog size (default 50000)")
    parser.add_argument("--curl-files", type=int, default=300, help="files for the curl loop (default 300)")
    parser.add_argument("--latency-files", type=int, default=200)
    parser.add_argument("--ncip-entries", type=int, default=10000)
    parser.add_argument(
        "--wan-delay",
        type=float,
        default=0.05,
        help="seconds the WAN simulators wait before each answer (default 0.05; 0 = no WAN run)",
    )
    parser.add_argument("--wan-files", type=int, default=600, help="WAN backlog and bare loop size (default 600)")
    parser.add_argument("--wan-curl-files", type=int, default=100)
    parser.add_argument("--wan-ncip-entries", type=int, default=300)
    parser.add_argument(
        "--web-clients",
        type=int,
        default=WEB_CLIENTS,
        help=f"page requests in flight during the web scenario's loaded backlog (default {WEB_CLIENTS})",
    )
    parser.add_argument(
        "--web-nice",
        type=int,
        default=0,
        help="run the web scenario's page process at this niceness (default 0: as the gateway; "
        "what a Nice= in its unit would give)",
    )
    parser.add_argument("--fair-files", type=int, default=5000, help="the fair scenario's backlog (default 5000)")
    parser.add_argument("--fair-probes", type=int, default=20, help="the fair scenario's single files (default 20)")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        default=set(SCENARIOS),
        metavar="NAME[,NAME]",
        help=f"run only these scenarios, of {', '.join(SCENARIOS)} "
        "(backlog includes the simulator ceiling and the bare and curl loops)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script works")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder with every run's files")
    args = parser.parse_args()
    if not args.only <= set(SCENARIOS):
        parser.error(f"--only: unknown scenario {', '.join(sorted(args.only - set(SCENARIOS)))}")
    if args.smoke:
        args.files, args.big, args.curl_files, args.latency_files, args.ncip_entries = 30, 300, 10, 10, 50
        args.wan_files, args.wan_curl_files, args.wan_ncip_entries = 20, 5, 10
        args.web_clients = 20
        args.fair_files, args.fair_probes = 30, 3
    if not shutil.which("curl"):
        print("the curl loop needs curl (apt-get install curl)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="caiasoft-gateway-bench-"))
    try:
        figures = run_all(args, work)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(figures)
    print(json.dumps(figures, sort_keys=True))
    return 0


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every measurement, with its files under work; the figures."""
    receipts = work / "receipts.jsonl"
    caiasoft, caiasoft_url = start_simulator("caiasoft", work, receipts)
    ncip, ncip_url = start_simulator("ncip", work)
    figures: dict[str, Any] = {"machine": machine()}
    try:
        if "backlog" in args.only:
            figures["simulator_ceiling_per_s"] = round(simulator_ceiling(caiasoft_url, 1.0 if args.smoke else 3.0), 1)
            make_files(work / "bare" / "in", args.files)
            figures["bare_loop_per_s"] = round(bare_loop(caiasoft_url, work / "bare" / "in", work / "bare" / "out"), 1)
            make_files(work / "curl" / "in", args.curl_files)
            figures["curl_loop_per_s"] = round(curl_loop(caiasoft_url, work / "curl" / "in", work / "curl" / "out"), 1)
            figures["backlog"] = backlog(caiasoft_url, work / "backlog", args.files)
        if "big" in args.only:
            figures["big_backlog"] = big_backlog(caiasoft_url, work / "big", args.big, 3.0 if args.smoke else 20.0)
        if "latency" in args.only:
            figures["latency"] = latency(caiasoft_url, receipts, work / "latency", args.latency_files, 0.5)
        if "ncip" in args.only:
            figures["ncip"] = ncip_bench(caiasoft_url, ncip_url, work / "ncip", args.ncip_entries)
        if "web" in args.only:
            figures["web"] = web(caiasoft_url, work / "web", args.files, args.web_clients, args.web_nice)
    finally:
        caiasoft.stop()
        ncip.stop()
    if args.wan_delay > 0 and "wan" in args.only:
        figures["wan"] = wan(work / "wan", args.wan_delay, args.wan_files, args.wan_curl_files, args.wan_ncip_entries)
    if "fair" in args.only:
        figures.update(fair_both(args, work))
    if "backlog" in figures and "big_backlog" in figures:  # memory growth per extra pending file
        small, big = figures["backlog"], figures["big_backlog"]
        big["rss_growth_bytes_per_file"] = round(
            (big["peak_rss_mb"] - small["peak_rss_mb"]) * 1024 * 1024 / max(big["files"] - small["files"], 1)
        )
    if "backlog" in figures:
        backlog_rate = figures["backlog"]["files_per_s"]
        figures["ratios"] = {
            "backlog_vs_bare": round(backlog_rate / figures["bare_loop_per_s"], 2),
            "backlog_vs_curl": round(backlog_rate / figures["curl_loop_per_s"], 2),
        }
    return figures


def print_table(f: dict) -> None:
    rows = []
    if "backlog" in f:
        rows += [
            ("simulator ceiling (4 clients)", f"{f['simulator_ceiling_per_s']} uploads/s", ""),
            ("bare loop (requests + rename)", f"{f['bare_loop_per_s']} files/s", "the limit"),
            ("curl loop (curl -F; mv)", f"{f['curl_loop_per_s']} files/s", ""),
            (
                f"gateway backlog of {f['backlog']['files']}",
                f"{f['backlog']['files_per_s']} files/s",
                f"{f['ratios']['backlog_vs_bare']} x bare (target 0.8), "
                f"{f['ratios']['backlog_vs_curl']} x curl (target 5)",
            ),
            ("  peak RSS", f"{f['backlog']['peak_rss_mb']} MB", ""),
        ]
    if "big_backlog" in f:
        growth = f["big_backlog"].get("rss_growth_bytes_per_file")
        rows += [
            (
                f"backlog of {f['big_backlog']['files']}: first upload",
                f"{f['big_backlog']['first_upload_s']} s",
                "target 3 s",
            ),
            (
                "  peak RSS",
                f"{f['big_backlog']['peak_rss_mb']} MB",
                "target 150 MB" + (f"; grows {growth} bytes per pending file" if growth is not None else ""),
            ),
        ]
    if "latency" in f:
        rows += [
            ("latency beyond settle, p50", f"{f['latency']['p50_ms']} ms", "target 100 ms"),
            ("latency beyond settle, p99", f"{f['latency']['p99_ms']} ms", "target 50 ms"),
        ]
    if "ncip" in f:
        rows += [
            ("NCIP bare loop", f"{f['ncip']['bare_loop_per_s']} entries/s", ""),
            ("NCIP relay", f"{f['ncip']['gateway_per_s']} entries/s", f"{f['ncip']['ratio']} x bare (target 0.8)"),
            (
                "NCIP CPU per entry: bare loop / relay",
                f"{f['ncip']['bare_cpu_ms_per_entry']} / {f['ncip']['gateway_cpu_ms_per_entry']} ms",
                "relay: the whole gateway process",
            ),
        ]
    if "wan" in f:
        w = f["wan"]
        rows += [
            (f"WAN ({w['delay_ms']} ms per answer): bare loop", f"{w['bare_loop_per_s']} files/s", "sequential"),
            ("  curl loop", f"{w['curl_loop_per_s']} files/s", ""),
            (
                f"  gateway backlog of {w['backlog']['files']}, written at start",
                f"{w['backlog']['files_per_s']} files/s",
                f"{w['ratios']['backlog_vs_bare']} x bare (target 3.8, limit = upload_workers), "
                f"{w['ratios']['backlog_vs_curl']} x curl; files ready once settle_seconds old",
            ),
            (
                "    from the first upload on",
                f"{w['backlog']['drain_files_per_s']} files/s",
                f"{w['ratios']['drain_vs_bare']} x bare (start-up and settle_seconds left out)",
            ),
            (
                f"  gateway backlog of {w['backlog_aged']['files']}, aged",
                f"{w['backlog_aged']['files_per_s']} files/s",
                f"{w['ratios']['aged_vs_bare']} x bare (every file older than settle_seconds at start)",
            ),
            (
                "    from the first upload on",
                f"{w['backlog_aged']['drain_files_per_s']} files/s",
                f"{w['ratios']['aged_drain_vs_bare']} x bare",
            ),
            ("  NCIP bare loop", f"{w['ncip']['bare_loop_per_s']} entries/s", ""),
            ("  NCIP relay", f"{w['ncip']['gateway_per_s']} entries/s", f"{w['ncip']['ratio']} x bare (in order)"),
        ]
    if "web" in f:
        w, page = f["web"], f["web"]["page"]
        failed = ", ".join(f"{count} x {what}" for what, count in sorted(page["requests_failed"].items())) or "none"
        rows += [
            (f"web: gateway backlog of {w['files']}, alone", f"{w['alone']['files_per_s']} files/s", ""),
            (
                f"  with {page['clients']} page requests in flight",
                f"{w['loaded']['files_per_s']} files/s",
                f"{w['ratio']} x alone (target: within noise); from the first upload on {w['drain_ratio']} x",
            ),
            (
                "  page under that load, median / worst",
                f"{page['median_ms']} / {page['worst_ms']} ms",
                f"GET / and /find; {page['requests_answered']} answered ({page['answered_per_s']}/s), "
                f"failed: {failed}; CPU: the page's process {page['cpu_s']} s"
                + (f" (nice {page['nice']})" if page["nice"] else "")
                + f", the clients {page['clients_cpu_s']} s",
            ),
        ]
    for key in ("fair", "fair_wan"):
        if key not in f:
            continue
        fa = f[key]
        where = f"WAN ({fa['delay_ms']} ms per answer)" if fa["delay_ms"] else "loopback"
        rows += [
            (
                f"fair, {where}: a new file on connection B, nothing else queued ({fa['probes']} files)",
                f"{fa['alone']['median_ms']} / {fa['alone']['worst_ms']} ms",
                "median / worst, from claimed to received",
            ),
            (
                f"  with {fa['files']} files queued for connection A",
                f"{fa['with_backlog']['median_ms']} / {fa['with_backlog']['worst_ms']} ms",
                f"{fa['extra_ms']} ms more (target: at most one upload, {fa['one_upload_ms']} ms on A); "
                f"{fa['backlog_left_after_probes']} of A's files still queued after the probes",
            ),
        ]
    machine = f["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, Linux {machine['kernel']}")
    width = max((len(row[0]) for row in rows), default=0)
    for label, value, note in rows:
        print(f"{label:<{width}}  {value:>22}  {note}")


if __name__ == "__main__":
    raise SystemExit(main())
