"""Config: every problem at once, with key path and file; unknown keys refused; key sources."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from conftest import KEY, REPO

from gateway.config import loader as config_module
from gateway.config.loader import SCHEMA, load, load_settings
from gateway.config.settings import (
    Alerts,
    Archive,
    CaiaSoft,
    Feed,
    Intake,
    LocalSourceSettings,
    Metrics,
    Ncip,
    Paths,
    SftpSourceSettings,
    Web,
)
from gateway.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def minimal(tmp_path: Path, caiasoft_extra: str = "", source_extra: str = "") -> str:
    key = tmp_path / "key"
    key.write_text(KEY)
    key.chmod(0o600)
    (tmp_path / "in").mkdir(exist_ok=True)
    return f"""
[paths]
state_dir = "{tmp_path}/state"
archive_dir = "{tmp_path}/archive"
error_dir = "{tmp_path}/error"
log_dir = "{tmp_path}/log"
[caiasoft]
base_url = "https://site.caiasoft.com"
api_key_file = "{key}"
{caiasoft_extra}
[[sources]]
name = "print"
path = "{tmp_path}/in"
{source_extra}
"""


def problems_of(path: Path, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, environ=environ or {})
    return [str(problem) for problem in caught.value.problems]


def test_minimal_config_gets_defaults(tmp_path):
    config = load(write(tmp_path, minimal(tmp_path)), environ={})
    assert config.caiasoft.requestfile_url == "https://site.caiasoft.com/api/requestfile/v1"
    assert config.caiasoft.upload_field == "file"
    assert config.caiasoft.timeout_seconds == 30.0
    assert config.intake.max_file_bytes == 50 * 1024 * 1024
    assert config.sources[0].include == ("*",)
    assert config.sources[0].watch == "auto"
    assert config.api_key.value == KEY
    assert config.warnings == ()


def test_every_problem_is_reported_at_once_with_key_and_file(tmp_path):
    path = write(
        tmp_path,
        minimal(tmp_path, 'timeout_seconds = "fast"\nverfy_tls = false', 'watch = "sometimes"\nsettle_seconds = -1'),
    )
    problems = problems_of(path)
    assert len(problems) == 4, problems
    assert all(p.startswith(f"{path}: ") for p in problems)
    joined = "\n".join(problems)
    assert "caiasoft.timeout_seconds: must be a number" in joined
    assert "caiasoft.verfy_tls: unknown key" in joined
    assert "sources[0].watch: must be one of auto, inotify, polling" in joined
    assert "sources[0].settle_seconds: must be at least 0" in joined


def test_missing_required_keys_and_unknown_section(tmp_path):
    path = write(tmp_path, '[caiasoft]\napi_key_env = "K"\n[[sources]]\nname = "a"\n[ncipp]\nurl = "x"\n')
    problems = "\n".join(problems_of(path, {"K": "secret-value"}))
    assert "caiasoft.base_url: required key is missing" in problems
    assert "sources[0].path: set either path (a local or mounted folder) or url (sftp://...), not both" in problems
    assert "ncipp: unknown section" in problems


def test_not_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in problems_of(write(tmp_path, "[paths\n"))[0]
    assert problems_of(tmp_path / "absent.toml") == [f"{tmp_path / 'absent.toml'}: file not found"]


def test_duplicate_source_names_and_overlapping_folders(tmp_path):
    text = minimal(tmp_path) + f'[[sources]]\nname = "print"\npath = "{tmp_path}/archive/x"\n'
    problems = "\n".join(problems_of(write(tmp_path, text)))
    assert "sources[1].name: 'print' is already the name of sources[0]" in problems
    assert "sources[1].path: overlaps the gateway's own folder" in problems


def test_log_dir_in_a_source_folder_is_refused(tmp_path):
    text = minimal(tmp_path).replace(f'log_dir = "{tmp_path}/log"', f'log_dir = "{tmp_path}/in"')
    problems = problems_of(write(tmp_path, text))
    assert problems == [
        f"{tmp_path / 'gateway.toml'}: sources[0].path: overlaps the gateway's own folder log_dir = {tmp_path}/in"
    ]


def test_overlaps_are_seen_through_dot_dot(tmp_path):
    text = minimal(tmp_path).replace(f'path = "{tmp_path}/in"', f'path = "{tmp_path}/in/../archive"')
    problems = "\n".join(problems_of(write(tmp_path, text)))
    assert "sources[0].path: overlaps the gateway's own folder" in problems


@pytest.mark.parametrize(
    "source, why",
    [
        ("{root}/link-to-archive", "is a symlink"),
        ("{root}/link-to-log/day", "inside the gateway's own folder"),
        ("{root}/link-to-root", "is a symlink"),
    ],
)
def test_a_source_path_that_leads_into_the_gateways_folders_loads_and_is_never_read(tmp_path, source, why):
    """ALEPH's user owns the folders on a source's path: where its links point must not keep the service (or
    `status`) from starting; the source is paused when it is opened instead, and `check` says why."""
    from gateway.cli.checks import run_checks
    from gateway.sources import build
    from gateway.sources.folder import FolderReplaced

    for folder in ("archive", "log/day", "in"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "link-to-archive").symlink_to(tmp_path / "archive")
    (tmp_path / "link-to-log").symlink_to(tmp_path / "log")
    (tmp_path / "link-to-root").symlink_to(tmp_path)  # the folder of gateway.toml and the key file
    text = minimal(tmp_path).replace(f'path = "{tmp_path}/in"', f'path = "{source.format(root=tmp_path)}"')
    config = load(write(tmp_path, text), environ={})
    with pytest.raises(FolderReplaced, match=why):
        build(config.sources[0], config).scan()
    [failed] = [
        result
        for result in run_checks(config, offline=True)
        if result.what.startswith("sources[0] print:") and result.mark == "FAIL"
    ]
    assert why in failed.detail


def test_a_source_that_is_the_folder_of_the_config_or_a_key_file_is_refused(tmp_path):
    (tmp_path / "keys").mkdir()
    key = tmp_path / "keys" / "api-key"
    key.write_text(KEY)
    text = minimal(tmp_path).replace(f'path = "{tmp_path}/in"', f'path = "{tmp_path}/keys"')
    text = re.sub(r'api_key_file = "[^"]*"', f'api_key_file = "{key}"', text)
    problems = "\n".join(problems_of(write(tmp_path, text)))
    assert f"sources[0].path: is the folder of caiasoft.api_key_file ({key})" in problems
    text = minimal(tmp_path).replace(f'path = "{tmp_path}/in"', f'path = "{tmp_path}/."')
    problems = "\n".join(problems_of(write(tmp_path, text)))
    assert "sources[0].path: is the folder of the config file" in problems


def test_archive_dir_and_error_dir_must_differ(tmp_path):
    (tmp_path / "archive").mkdir()
    (tmp_path / "errors-link").symlink_to(tmp_path / "archive")
    text = minimal(tmp_path).replace(f'error_dir = "{tmp_path}/error"', f'error_dir = "{tmp_path}/errors-link"')
    problems = "\n".join(problems_of(write(tmp_path, text)))
    assert f"paths.error_dir: is the same folder as archive_dir ({tmp_path}/archive)" in problems


def test_a_journal_in_a_source_folder_is_refused(tmp_path):
    text = minimal(tmp_path) + f'[ncip]\nurl = "http://127.0.0.1:8991/ncip"\njournal = "{tmp_path}/in/ncip.jsonl"\n'
    problems = "\n".join(problems_of(write(tmp_path, text)))
    assert "ncip.journal: is inside the folder of sources[0]" in problems


def test_relative_paths_and_plain_http_are_refused(tmp_path):
    text = minimal(tmp_path).replace(f'"{tmp_path}/log"', '"log"').replace("https://site", "http://site")
    problems = "\n".join(problems_of(write(tmp_path, text)))
    assert "paths.log_dir: must be an absolute path" in problems
    assert "caiasoft.base_url: must use https" in problems


def test_no_sources_is_an_error(tmp_path):
    text = minimal(tmp_path).split("[[sources]]")[0]
    assert any("no [[sources]] configured" in p for p in problems_of(write(tmp_path, text)))


def test_api_key_from_environment(tmp_path):
    text = minimal(tmp_path).replace(f'api_key_file = "{tmp_path}/key"', 'api_key_env = "CAIA_KEY"')
    path = write(tmp_path, text)
    assert load(path, environ={"CAIA_KEY": "from-env-123"}).api_key.value == "from-env-123"
    assert "environment variable CAIA_KEY is not set" in problems_of(path, {})[0]


def test_api_key_from_systemd_credentials_directory(tmp_path):
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "caiasoft-api-key").write_text("from-credential-456\n")
    text = minimal(tmp_path).replace(f'api_key_file = "{tmp_path}/key"', "")
    path = write(tmp_path, text)
    config = load(path, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.api_key.value == "from-credential-456"
    assert "no API key" in problems_of(path, {})[0]


def test_world_readable_key_file_warns_and_key_never_shows(tmp_path):
    path = write(tmp_path, minimal(tmp_path))
    os.chmod(tmp_path / "key", 0o644)
    config = load(path, environ={})
    assert any("readable by every user" in warning for warning in config.warnings)
    assert KEY not in repr(config) and KEY not in str(config.api_key)


def test_missing_or_empty_key_file(tmp_path):
    path = write(tmp_path, minimal(tmp_path))
    (tmp_path / "key").write_text("\n")
    assert "is empty" in problems_of(path)[0]
    (tmp_path / "key").unlink()
    assert "does not exist" in problems_of(path)[0]


def test_config_path_precedence(monkeypatch):
    monkeypatch.delenv(config_module.CONFIG_ENV, raising=False)
    assert config_module.config_path(None) == config_module.DEFAULT_CONFIG
    monkeypatch.setenv(config_module.CONFIG_ENV, "/srv/g.toml")
    assert config_module.config_path(None) == Path("/srv/g.toml")
    assert config_module.config_path("/x.toml") == Path("/x.toml")


def test_sample_config_loads_and_documents_every_key(tmp_path):
    """conf/gateway.toml is valid, names every key of the schema, and so does docs/configuration.md."""
    sample = (REPO / "conf" / "gateway.toml").read_text()
    key = tmp_path / "api-key"
    key.write_text(KEY)
    key.chmod(0o600)
    folder = tmp_path / "print"
    text = sample.replace("/etc/caiasoft-gateway/api-key", str(key)).replace(
        "/exlibris/aleph/u23_1/usm50/print/caiasoft", str(folder)
    )
    config = load(write(tmp_path, text), environ={})
    assert config.sources[0].path == folder
    reference = (REPO / "docs" / "configuration.md").read_text()
    for table, keys in SCHEMA.items():
        for key_spec in keys:
            written = rf"^#?\s*(?:{key_spec.name}\s*=|\[{re.escape(table)}\.{key_spec.name}\])"
            assert re.search(written, sample, re.M), f"{table}.{key_spec.name} not in sample"
            assert f"`{key_spec.name}`" in reference, f"{table}.{key_spec.name} not in docs/configuration.md"


def test_settings_without_secrets_load_when_the_key_file_is_gone(tmp_path):
    path = write(tmp_path, minimal(tmp_path))
    (tmp_path / "key").unlink()
    settings = load_settings(path)
    assert settings.sources[0].path == tmp_path / "in"
    assert not hasattr(settings, "api_key")
    assert "does not exist" in problems_of(path)[0]


def test_sftp_key_files_are_checked_by_load_not_by_load_settings(tmp_path):
    source = (
        f'url = "sftp://gw@files.example.edu:22/print"\nknown_hosts_file = "{tmp_path}/known_hosts"\n'
        f'private_key_file = "{tmp_path}/id_ed25519"'
    )
    text = minimal(tmp_path).replace(f'path = "{tmp_path}/in"', source)
    path = write(tmp_path, text)
    settings = load_settings(path).sources[0]
    assert isinstance(settings, SftpSourceSettings) and settings.location == "sftp://gw@files.example.edu:22/print"
    problems = "\n".join(problems_of(path))
    assert f"sources[0].known_hosts_file: {tmp_path}/known_hosts does not exist" in problems
    assert f"sources[0].private_key_file: {tmp_path}/id_ed25519 does not exist" in problems


def test_local_and_sftp_sources_have_their_own_settings(tmp_path):
    source = load(write(tmp_path, minimal(tmp_path)), environ={}).sources[0]
    assert isinstance(source, LocalSourceSettings) and not source.is_sftp
    assert not hasattr(source, "url") and not hasattr(source, "remote_after")
    problems = problems_of(write(tmp_path, minimal(tmp_path, source_extra='remote_after = "move:/done"')))
    assert problems == [
        f'{tmp_path}/gateway.toml: sources[0].remote_after: only applies to SFTP sources (url = "sftp://...")'
    ]


def test_every_schema_key_is_a_settings_field():
    """A key declared in schema.py and missing from its dataclass (or the other way round) fails here."""

    def names(*kinds) -> set[str]:  # a key that is a Python word (from) is a field ending in _ (from_)
        return {f.name.removesuffix("_") for kind in kinds for f in dataclasses.fields(kind) if f.init}

    tables = {
        "paths": names(Paths),
        "caiasoft": names(CaiaSoft),
        "intake": names(Intake),
        "archive": names(Archive),
        "sources": names(LocalSourceSettings, SftpSourceSettings),
        "ncip": names(Ncip),
        "ncip.feed": names(Feed),
        "alerts": names(Alerts),
        "metrics": names(Metrics),
        "web": names(Web),
    }
    assert set(tables) == set(SCHEMA)
    for table, keys in SCHEMA.items():
        assert {key.name for key in keys} == tables[table], table


def test_web_is_off_without_its_table_and_listens_on_loopback_by_default(tmp_path):
    assert load(write(tmp_path, minimal(tmp_path)), environ={}).web is None
    web = load(write(tmp_path, minimal(tmp_path) + "\n[web]\n"), environ={}).web
    assert web == Web("127.0.0.1:9465", None) and web.address == ("127.0.0.1", 9465)
    web = load(write(tmp_path, minimal(tmp_path) + '\n[web]\nlisten = "[::1]:9000"\n'), environ={}).web
    assert web is not None and web.address == ("::1", 9000)


@pytest.mark.parametrize("listen", ["127.0.0.1:9465", "127.8.0.1:9465", "[::1]:9465", "localhost:9465"])
def test_web_on_loopback_needs_no_users_file(tmp_path, listen):
    config = load(write(tmp_path, minimal(tmp_path) + f'\n[web]\nlisten = "{listen}"\n'), environ={})
    assert config.web is not None and config.web.users_file is None


@pytest.mark.parametrize("listen", ["0.0.0.0:9465", "[::]:9465", "192.0.2.10:9465", "aleph.example.edu:9465"])
def test_web_off_loopback_is_refused_without_a_users_file(tmp_path, listen):
    path = write(tmp_path, minimal(tmp_path) + f'\n[web]\nlisten = "{listen}"\n')
    assert problems_of(path) == [
        f"{path}: web.users_file: listen = '{listen}' is not a loopback address: set users_file (caiasoft-gateway "
        "web-user NAME adds one), and put a web server with TLS in front of the page"
    ]
    users = tmp_path / "web-users"
    path = write(tmp_path, minimal(tmp_path) + f'\n[web]\nlisten = "{listen}"\nusers_file = "{users}"\n')
    assert load(path, environ={}).web == Web(listen, users)


@pytest.mark.parametrize("listen", ["9465", ":9465", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "host:http"])
def test_web_listen_must_be_host_and_port(tmp_path, listen):
    path = write(tmp_path, minimal(tmp_path) + f'\n[web]\nlisten = "{listen}"\n')
    assert problems_of(path) == [f"{path}: web.listen: must be HOST:PORT such as 127.0.0.1:9465, got {listen!r}"]
