"""Several CaiaSoft connections in one gateway: [caiasoft.NAME] tables, sources that name theirs, workers and
gates per connection, and a backlog on one connection that never holds up another's new file."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from conftest import KEY, LAW_KEY, wait_for

from gateway.cli import demo
from gateway.config import loader as config_module
from gateway.core.errors import ConfigError
from gateway.core.states import FileState
from gateway.runtime.parts import Parts
from gateway.simulators.caiasoft import CaiaSoftSimulator
from gateway.sources.base import Entry
from gateway.state.ledger import Ledger, work_name

BARCODES = b"31234005580001\n31234005580002\n"


def write_two(root: Path, default_url: str, law_url: str, extra: str = "", law_key: str = LAW_KEY) -> Path:
    """A gateway with two CaiaSoft connections (default and law), a source for each (print, lawprint), quick
    timeouts and backoffs, and extra TOML after them."""
    law_key_file = root / "api-key-law"
    law_key_file.write_text(law_key + "\n")
    law_key_file.chmod(0o600)
    law_source = root / "aleph" / "law"
    law_source.mkdir(parents=True, exist_ok=True)
    timing = "timeout_seconds = 5\nbackoff_initial_seconds = 0.05\nbackoff_max_seconds = 0.5\nauth_pause_seconds = 0.5"
    return demo.write_config(
        root,
        default_url,
        KEY,
        0.2,
        extra=f"""
[caiasoft.law]
base_url = "{law_url}"
api_key_file = "{law_key_file}"
{timing}

[[sources]]
name = "lawprint"
path = "{law_source}"
settle_seconds = 0.2
rescan_seconds = 1
poll_seconds = 0.2
caiasoft = "law"
{extra}""",
        caiasoft_extra=timing,
        source_extra="rescan_seconds = 1\npoll_seconds = 0.2",
    )


def problems_of(config_file: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_module.load(config_file, environ=environ or {})
    return [str(problem) for problem in caught.value.problems]


# -- the config --------------------------------------------------------------------------------------------------


def test_named_connections_load_with_their_own_keys_and_sources(tmp_path):
    config = config_module.load(write_two(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2"), environ={})
    assert [c.name for c in config.connections] == ["default", "law"]
    assert config.several
    law = config.connection("law")
    assert law is not None and law.base_url == "http://127.0.0.1:2" and law.table == "caiasoft.law"
    assert law.credential == "caiasoft-api-key-law"
    assert config.key_of("law").value == LAW_KEY and config.key_of("default").value == KEY
    assert {s.name: s.caiasoft for s in config.sources} == {"print": "default", "lawprint": "law"}
    assert LAW_KEY not in repr(config) and KEY not in repr(config)


def test_a_single_connection_config_is_not_several(tmp_path):
    config = config_module.load(demo.write_config(tmp_path, "http://127.0.0.1:1", KEY), environ={})
    assert [c.name for c in config.connections] == ["default"] and not config.several
    assert config.sources[0].caiasoft == "default"


def test_a_named_table_takes_nothing_from_caiasoft(tmp_path):
    """A named table is whole on its own: a key it does not set is the schema's default, not [caiasoft]'s."""
    config_file = write_two(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2")
    config_file.write_text(config_file.read_text().replace("[caiasoft]\n", "[caiasoft]\nupload_workers = 9\n", 1))
    config = config_module.load(config_file, environ={})
    assert config.caiasoft.upload_workers == 9
    assert config.connection("law").upload_workers == 4


def test_a_named_key_may_come_from_its_systemd_credential(tmp_path):
    config_file = write_two(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2")
    config_file.write_text(config_file.read_text().replace(f'api_key_file = "{tmp_path}/api-key-law"\n', ""))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "caiasoft-api-key-law").write_text("from-credential-77\n")
    config = config_module.load(config_file, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.key_of("law").value == "from-credential-77"
    assert problems_of(config_file) == [
        f"{config_file}: caiasoft.law.api_key_file: no API key: set api_key_file or api_key_env, or pass a "
        "systemd credential named caiasoft-api-key-law"
    ]


def test_every_problem_of_the_named_tables_is_named_by_its_key(tmp_path):
    config_file = write_two(
        tmp_path,
        "http://127.0.0.1:1",
        "ftp://example.edu",
        extra='\n[caiasoft.default]\nbase_url = "https://x.example.edu"\napi_key_env = "K"\n'
        '\n[caiasoft."a b"]\nbase_url = "https://y.example.edu"\napi_key_env = "K"\n'
        '\n[[sources]]\nname = "third"\npath = "/srv/third"\ncaiasoft = "lw"\n',
    )
    found = problems_of(config_file, {"K": "k-123456"})
    assert (
        f"{config_file}: caiasoft.law.base_url: must be an http(s) URL such as https://SITE.caiasoft.com, "
        "got 'ftp://example.edu'" in found
    )
    assert f'{config_file}: caiasoft.default: "default" is the name of [caiasoft] itself: choose another' in found
    assert any(p.startswith(f"{config_file}: caiasoft.a b: a connection's name is letters") for p in found)
    assert f"{config_file}: sources[2].caiasoft: no CaiaSoft connection 'lw' (there are: default, law, a b)" in found


def test_an_unknown_key_in_a_named_table_is_an_error(tmp_path):
    config_file = write_two(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2")
    config_file.write_text(config_file.read_text().replace("[caiasoft.law]\n", "[caiasoft.law]\nbase_ulr = 1\n"))
    (found,) = problems_of(config_file)
    assert found.startswith(f"{config_file}: caiasoft.law.base_ulr: unknown key")


NCIP = """
[ncip]
url = "http://127.0.0.1:3/ncip"
from_agency = "CAIA"
to_agency = "ALEPH"
user_id = "CAIASOFT"
journal = "{root}/state/ncip.jsonl"
"""


def test_named_ncip_servers_have_journals_of_their_own(tmp_path):
    extra = NCIP.format(root=tmp_path) + '\n[ncip.law]\nurl = "tcp://127.0.0.1:4"\nfrom_agency = "CAIA"\n'
    extra += 'to_agency = "LAW"\nuser_id = "CAIASOFT"\n[ncip.law.feed]\ncollection = "LAWANX"\n'
    config = config_module.load(write_two(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2", extra), environ={})
    default, law = config.ncip_servers
    assert (default.name, law.name, law.table) == ("default", "law", "ncip.law")
    assert default.journal == tmp_path / "state" / "ncip.jsonl"
    assert law.journal == tmp_path / "state" / "ncip-law.jsonl"
    assert law.feed is not None and law.feed.caiasoft == "law"  # the connection named like its server
    assert law.to_agency == "LAW" and default.to_agency == "ALEPH"


def test_two_ncip_servers_on_one_journal_are_refused(tmp_path):
    extra = NCIP.format(root=tmp_path) + '\n[ncip.law]\nurl = "tcp://127.0.0.1:4"\nfrom_agency = "CAIA"\n'
    extra += f'to_agency = "LAW"\nuser_id = "CAIASOFT"\njournal = "{tmp_path}/state/ncip.jsonl"\n'
    extra += '[ncip.law.feed]\ncollection = "X"\ncaiasoft = "nope"\n'
    config_file = write_two(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2", extra)
    found = problems_of(config_file)
    assert (
        f"{config_file}: ncip.law.journal: is also ncip.journal ({tmp_path}/state/ncip.jsonl): each NCIP server "
        "needs a journal of its own" in found
    )
    assert f"{config_file}: ncip.law.feed.caiasoft: no CaiaSoft connection 'nope' (there are: default, law)" in found


# -- workers and gates per connection ----------------------------------------------------------------------------


def queue_backlog(ledger: Ledger, work_dir: Path, count: int) -> None:
    """count files queued for the default connection, as an outage would leave them: rows and work files."""
    entries = [
        Entry(f"backlog-{n:05d}.txt", f"/aleph/print/backlog-{n:05d}.txt", len(BARCODES), 0.0) for n in range(count)
    ]
    row_ids = ledger.files.begin_claims("print", entries)
    digest = hashlib.sha256(BARCODES).hexdigest()
    for row_id, entry in zip(row_ids, entries, strict=True):
        (work_dir / work_name(row_id, entry.name)).write_bytes(BARCODES)
    ledger.files.queued_many([(row_id, "text", digest, len(BARCODES), {}) for row_id in row_ids])


def test_a_backlog_on_one_connection_does_not_hold_up_a_new_file_on_another(tmp_path):
    """5,000 files queued for default; one new file for law is sent while almost all of them still wait
    (an ordering, not a time: with one queue for all it would be sent after the 5,000)."""
    backlog = 5000
    with CaiaSoftSimulator(key=KEY) as default_sim, CaiaSoftSimulator(key=LAW_KEY) as law_sim:
        config = config_module.load(write_two(tmp_path, default_sim.url, law_sim.url), environ={})
        ledger = Ledger(config.paths.database)
        config.paths.work_dir.mkdir(parents=True, exist_ok=True)
        queue_backlog(ledger, config.paths.work_dir, backlog)
        parts = Parts(config, ledger)
        parts.start()
        try:
            wait_for(lambda: len(default_sim.received) >= 20, timeout=60, message="the backlog being sent")
            (tmp_path / "aleph" / "law" / "law-slip.txt").write_bytes(b"31234007770001\n")
            wait_for(lambda: law_sim.received, timeout=60, message="the law file at law's CaiaSoft")
            sent_before = len(default_sim.received)
        finally:
            parts.stop(time.monotonic() + 30)
            parts.close()
            ledger.close()
    assert [r.name for r in law_sim.received] == ["law-slip.txt"]
    assert sent_before < backlog // 2, f"the law file waited for {sent_before} of the backlog's files"
    assert all(r.name.startswith("backlog-") for r in default_sim.received)


def test_a_wrong_key_on_one_connection_pauses_only_its_sources(tmp_path):
    with CaiaSoftSimulator(key=KEY) as default_sim, CaiaSoftSimulator(key="the-right-law-key") as law_sim:
        config = config_module.load(write_two(tmp_path, default_sim.url, law_sim.url), environ={})
        ledger = Ledger(config.paths.database)
        parts = Parts(config, ledger)
        parts.start()
        try:
            (tmp_path / "aleph" / "law" / "law-1.txt").write_bytes(b"31234007770001\n")
            wait_for(lambda: parts.gates["law"].paused_reason, timeout=30, message="law paused")
            for n in range(3):
                (tmp_path / "aleph" / "print" / f"main-{n}.txt").write_bytes(b"31234005580001\n")
            wait_for(lambda: len(default_sim.received) == 3, timeout=30, message="default's files sent")
            conditions = parts.conditions()
        finally:
            parts.stop(time.monotonic() + 30)
            parts.close()
        assert parts.gates["default"].paused_reason is None
        assert conditions.connections["law"][0] and conditions.connections["default"][0] is None
        assert ledger.files.by_connection(FileState.QUEUED)["law"][0] == 1  # waiting, unharmed
        assert "law" not in {row.connection for row in ledger.files.recent(FileState.REFUSED, 10)}
        ledger.close()
    assert law_sim.received == []  # a refused key: nothing recorded as received


def test_a_retried_file_goes_back_to_its_own_connection(tmp_path):
    """retry keeps a refused file's connection: from its row, or for a file with no row (put there by hand, or
    its ledger lost) from its sidecar; one for a connection the config lacks is not retried."""
    from gateway.cli.retry import ConnectionGone, put_back
    from gateway.runtime.pipeline import Pipeline
    from gateway.upload.caiasoft import CaiaSoftClient

    with CaiaSoftSimulator(key=LAW_KEY) as law_sim:
        config = config_module.load(write_two(tmp_path, "http://127.0.0.1:1", law_sim.url), environ={})
        client = CaiaSoftClient(config.connection("law"), config.key_of("law"))
        pipeline = Pipeline(config, Ledger(config.paths.database), None, clients={"law": client})
        ledger = pipeline.ledger
        unknown_format = tmp_path / "notes.txt"
        unknown_format.write_text("not a barcode list\n")
        row_id = pipeline.admission.adopt_copy(unknown_format, connection="law")
        pipeline.upload(ledger.files.assign(row_id))
        refused = Path(ledger.files.row(row_id).final_path)
        assert json.loads(refused.with_name(refused.name + ".json").read_text())["connection"] == "law"
        by_hand = refused.with_name("by-hand.txt")
        by_hand.write_bytes(refused.read_bytes())
        by_hand.with_name("by-hand.txt.json").write_text(json.dumps({"connection": "law"}))
        stray = refused.with_name("stray.txt")
        stray.write_bytes(refused.read_bytes())
        stray.with_name("stray.txt.json").write_text(json.dumps({"connection": "gone"}))
        assert put_back(pipeline, refused).connection == "law"
        assert put_back(pipeline, by_hand).connection == "law"
        with pytest.raises(ConnectionGone, match=r"'gone'.*\[caiasoft\.gone\] back first"):
            put_back(pipeline, stray)  # a connection the config lacks: never another library's account
        assert stray.exists()  # left where it was
        client.close()
        ledger.close()


def test_find_tells_what_each_servers_feed_journaled(tmp_path):
    """The status feed of a named NCIP server remembers its items apart (NAME/kind); find reads them all."""
    ledger = Ledger(tmp_path / "gateway.db")
    ledger.ncip.remember_feed("retrieved", "31234007770001", "20261205", connection="law")
    ledger.ncip.remember_feed("refiled", "31234007770001", "20261206")
    assert [kind for kind, _day, _at in ledger.items.feed_updates("31234007770001")] == ["retrieved", "refiled"]
    ledger.close()


def test_send_goes_to_the_connection_named(tmp_path):
    import subprocess
    import sys

    slip = tmp_path / "by-hand.txt"
    slip.write_bytes(b"31234007770001\n")
    with CaiaSoftSimulator(key=KEY) as default_sim, CaiaSoftSimulator(key=LAW_KEY) as law_sim:
        config_file = write_two(tmp_path, default_sim.url, law_sim.url)
        command = [sys.executable, "-m", "gateway", "-c", str(config_file), "send", str(slip)]
        sent = subprocess.run([*command, "--caiasoft", "law"], capture_output=True, text=True, timeout=60)
        unknown = subprocess.run([*command, "--caiasoft", "lw"], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0 and "accepted by CaiaSoft" in sent.stdout, sent.stdout + sent.stderr
    assert [r.name for r in law_sim.received] == ["by-hand.txt"] and default_sim.received == []
    assert unknown.returncode == 2 and "no CaiaSoft connection 'lw'" in unknown.stdout + unknown.stderr
    assert "default, law" in unknown.stdout + unknown.stderr


def test_a_named_ncip_server_without_ncip_is_told_plainly(tmp_path):
    extra = '\n[ncip.law]\nurl = "tcp://127.0.0.1:4"\nfrom_agency = "CAIA"\nto_agency = "LAW"\nuser_id = "U"\n'
    config_file = write_two(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2", extra)
    assert problems_of(config_file) == [
        f"{config_file}: ncip: [ncip.law] adds an NCIP server beside [ncip], the default one, which must be there "
        "too (its url, from_agency, to_agency, user_id)"
    ]
