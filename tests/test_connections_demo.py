"""The CaiaSoft simulator with a key per collection (as a consortium's connections have), from Python and from
`simulate caiasoft --key NAME=KEY`, and `demo --connections 2`: two connections, each source's files under its key."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import requests
from conftest import wait_for

from gateway.simulators.caiasoft import DEFAULT_KEY, CaiaSoftSimulator

K1 = "north-key-3f9a0c71d2"
K2 = "south-key-a81e55b0c4"
REQUESTFILE = "/api/requestfile/v1"


def upload(url: str, key: str, name: str, data: bytes = b"31234000000001\n31234000000002\n") -> requests.Response:
    return requests.post(url + REQUESTFILE, headers={"X-API-Key": key}, files={"file": (name, data)}, timeout=5)


def listed(url: str, key: str, collection: str) -> requests.Response:
    return requests.get(
        f"{url}/api/retrievedlist/v1/20260105/20260105/{collection}", headers={"X-API-Key": key}, timeout=5
    )


def test_each_upload_is_recorded_under_the_collection_of_its_key(tmp_path):
    receipts = tmp_path / "receipts.jsonl"
    with CaiaSoftSimulator(key=None, keys={"north": K1, "south": K2}, receipts=receipts) as sim:
        assert upload(sim.url, K1, "north-1.txt").json()["success"] is True
        assert upload(sim.url, K2, "south-1.txt").status_code == 200
        assert upload(sim.url, K1, "north-2.txt").status_code == 200
        assert upload(sim.url, "no-such-key", "stranger.txt").status_code == 401
        assert upload(sim.url, DEFAULT_KEY, "default.txt").status_code == 401, "key=None: only the named keys"
        assert [(r.name, r.collection) for r in sim.received] == [
            ("north-1.txt", "north"),
            ("south-1.txt", "south"),
            ("north-2.txt", "north"),
        ]
        assert [r.name for r in sim.received_by("south")] == ["south-1.txt"]
        assert sim.received_by("default") == []
    assert [(line["name"], line["collection"]) for line in receipts_of(receipts)] == [
        ("north-1.txt", "north"),
        ("south-1.txt", "south"),
        ("north-2.txt", "north"),
    ]


def test_the_status_lists_answer_per_collection_whichever_key_asks():
    with CaiaSoftSimulator(key=None, keys={"north": K1, "south": K2}) as sim:
        sim.status_lists[("retrieved", "20260105", "NORTH")] = ["31234000000011"]
        sim.status_lists[("retrieved", "20260105", "SOUTH")] = ["31234000000022"]
        assert listed(sim.url, K1, "NORTH").json()["barcodes"] == ["31234000000011"]
        assert listed(sim.url, K2, "SOUTH").json()["barcodes"] == ["31234000000022"]
        assert listed(sim.url, K2, "NORTH").json()["barcodes"] == ["31234000000011"]
        assert listed(sim.url, "no-such-key", "NORTH").status_code == 401


def test_the_one_key_stays_the_default_collection_beside_named_keys(tmp_path):
    receipts = tmp_path / "receipts.jsonl"
    with CaiaSoftSimulator(key="K0-default-key", keys={"law": K2}) as sim:
        upload(sim.url, "K0-default-key", "main.txt")
        upload(sim.url, K2, "law.txt")
        assert [(r.name, r.collection) for r in sim.received] == [("main.txt", "default"), ("law.txt", "law")]
        sim.keys["law"] = "law-key-rotated-0001"  # CaiaSoft's side changed: the old key is refused
        assert upload(sim.url, K2, "law-2.txt").status_code == 401
        assert upload(sim.url, "law-key-rotated-0001", "law-3.txt").status_code == 200
        assert sim.received[-1].collection == "law"
    with CaiaSoftSimulator(key="lone-key", receipts=receipts) as sim:  # one key: receipts as they always were
        upload(sim.url, "lone-key", "alone.txt")
        assert sim.received[0].collection == "default"
    assert sorted(json.loads(receipts.read_text())) == ["at", "bytes", "name"]


def receipts_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_simulate_caiasoft_accepts_each_named_key_and_prints_none_in_full(tmp_path):
    port = free_port()
    receipts = tmp_path / "receipts.jsonl"
    command = [sys.executable, "-m", "gateway", "simulate", "caiasoft", "--port", str(port), "--receipts"]
    process = subprocess.Popen(
        [*command, str(receipts), "--key", f"a={K1}", "--key", f"b={K2}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: listening(port) or process.poll() is not None, message="the simulator's port")
        url = f"http://127.0.0.1:{port}"
        assert upload(url, K1, "from-a.txt").json()["success"] is True
        assert upload(url, K2, "from-b.txt").json()["success"] is True
        assert upload(url, "sim-key-0000", "stranger.txt").status_code == 401
        answer = requests.get(url + "/api/circstoplist/v1/ACTIVE", headers={"X-API-Key": K2}, timeout=5)
        assert answer.status_code == 200 and answer.json()["success"] is True
        wait_for(lambda: len(receipts_of(receipts)) == 2, message="two receipts")
        assert [(line["name"], line["collection"]) for line in receipts_of(receipts)] == [
            ("from-a.txt", "a"),
            ("from-b.txt", "b"),
        ]
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert out.startswith(f"CaiaSoft simulator on http://127.0.0.1:{port}\n"), out + err
    assert "collection a: key nort... (20 characters)" in out and "collection b: key sout..." in out
    assert K1 not in out + err and K2 not in out + err


def test_simulate_caiasoft_refuses_two_keys_for_one_collection():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "simulate",
            "caiasoft",
            "--port",
            "0",
            "--key",
            "one",
            "--key",
            "default=two",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "two keys for the collection 'default'" in result.stderr and "two" not in result.stdout


def test_demo_with_two_connections_sends_each_sources_files_under_its_own_key(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--connections", "2", "--keep"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    [kept] = tmp_path.iterdir()
    assert "CaiaSoft received 8 upload(s); 7 archived, 4 refused." in out, "the one demo's files and law's two"
    assert (
        "  default  [caiasoft], source print (aleph/print):\n"
        "    CaiaSoft received 6 upload(s) under default's key: anx.cir.12.paging20261128_am_barcode, "
        "hold-request-slip-0001.xml, hold-request-slip-0002.xml, shelf-report.txt, usm50.hold_req, "
        "usm50.hold_req_sorted\n"
    ) in out
    assert (
        "  law  [caiasoft.law], source law-print (aleph/law-print):\n"
        "    CaiaSoft received 2 upload(s) under law's key: law-hold-request-slip.xml, law.cir.12.paging_barcode\n"
    ) in out
    assert (
        "[ncip.law]'s NCIP port (simulated) received 2 message(s):\n"
        '  checkout 31234005550001  (NCIP 1, "POST / HTTP/1.0" + headers), user CAIASOFT\n'
        '  checkin 31234005550001  (NCIP 1, "POST / HTTP/1.0" + headers)\n'
        "  31234005550001 ends checked in in ALEPH"
    ) in out, "law's feed read LAW with law's key; law's relay sent to law's NCIP server"
    assert "ALEPH's NCIP port (simulated) received 2 message(s):\n  checkout 31234001234567" in out
    assert f"caiasoft-gateway -c {kept / 'gateway.toml'} status (per connection)" in out

    sidecars = {p.name: json.loads(p.read_text()) for p in (kept / "archive").rglob("*.json")}
    assert {name: info["connection"] for name, info in sidecars.items() if name.startswith("law")} == {
        "law.cir.12.paging_barcode.json": "law",
        "law-hold-request-slip.xml.json": "law",
    }
    assert {info["connection"] for name, info in sidecars.items() if not name.startswith("law")} == {"default"}
    keys = [(kept / name).read_text().strip() for name in ("api-key", "api-key-law")]
    assert len(set(keys)) == 2
    shown = out + result.stderr + (kept / "log" / "gateway.log").read_text()
    assert not [key for key in keys if key in shown], "no key in the output or the log"
    assert (kept / "ncip-law.jsonl").exists() and (kept / "ncip.jsonl").exists(), "a journal per NCIP server"
