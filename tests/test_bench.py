"""A short smoke run of the benchmark script, so it cannot rot (speed itself is not tested)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.e2e


def test_bench_smoke_run_prints_the_table_and_the_figures(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == [], "the benchmark removes its temp folder"
    *table, last = result.stdout.strip().splitlines()
    figures = json.loads(last)
    assert figures["backlog"]["files"] == 30 and figures["big_backlog"]["first_upload_s"] > 0
    assert figures["latency"]["files"] == 10 and figures["ncip"]["entries"] == 50
    for key in ("bare_loop_per_s", "curl_loop_per_s", "simulator_ceiling_per_s"):
        assert figures[key] > 0
    assert any(line.startswith("gateway backlog of 30") for line in table)
    wan = figures["wan"]
    assert wan["delay_ms"] == 50 and wan["backlog"]["files"] == 20 and wan["ncip"]["entries"] == 10
    assert wan["backlog_aged"]["files"] == 20 and wan["ratios"]["aged_vs_bare"] > 0, "fresh and aged, both"
    assert 0 < wan["bare_loop_per_s"] < 21  # each answer waits 50 ms: a sequential loop cannot beat 20/s
    assert any(line.startswith("WAN (50 ms per answer)") for line in table)
    web = figures["web"]  # the staff page under load: in the default set, so in make bench
    assert web["alone"]["files"] == web["loaded"]["files"] == 30 and web["ratio"] > 0
    page = web["page"]
    asked = page["requests_answered"] + sum(page["requests_failed"].values())
    assert page["clients"] == 20 and asked >= 20, "every client asks at least once"
    assert page["requests_answered"] > 0 and 0 < page["median_ms"] <= page["worst_ms"]
    assert any(line.startswith("  with 20 page requests in flight") for line in table)


def test_bench_runs_only_the_scenarios_asked_for(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--only", "latency"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    *table, last = result.stdout.strip().splitlines()
    assert set(json.loads(last)) == {"machine", "latency"}
    assert [line.split("  ")[0] for line in table[1:]] == ["latency beyond settle, p50", "latency beyond settle, p99"]


def test_print_file_bench_smoke_run_validates_and_finds():
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "print_files.py"), "--smoke"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["validate"]["records"] > 1000 and figures["validate"]["peak_rss_mb"] > 0
    assert figures["find"]["items"] == 6000 and figures["find"]["lookup_ms"] > 0


def test_history_bench_smoke_run_measures_both_ledgers(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "history.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == [], "the benchmark removes its temp folder"
    *table, last = result.stdout.strip().splitlines()
    small, large = json.loads(last)["history"]
    assert (small["rows"], large["rows"]) == (30, 300)
    for figures in (small, large):
        assert figures["status_s"] > 0 and figures["find_s"] > 0 and figures["first_archived_s"] > 0
        assert figures["idle_cpu_percent"] >= 0 and figures["rss_mb"] > 0
        for page in ("today", "find", "file"):  # each page answered 200 with what it shows (else the run fails)
            assert 0 < figures[f"page_{page}_median_ms"] <= figures[f"page_{page}_worst_ms"]
    assert table[0].split() == ["figure", "30", "rows", "300", "rows"]
    assert [line.split(",")[0] for line in table if line.startswith("page")] == [
        "page: first request (opens ledger)",
        "page GET / (Today",
        "page GET /find?barcode=",
        "page GET /file/ID",
    ]
