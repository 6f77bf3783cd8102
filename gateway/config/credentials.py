"""Secrets and the files they live in, read for the commands that use them.

The CaiaSoft API key comes from caiasoft.api_key_file, caiasoft.api_key_env or the
systemd credential caiasoft-api-key. SFTP sources read their key, passphrase and password
files when they connect; here only their existence is checked, so `check` and the service
name a missing file before the first connection. Commands that use no secret (journal,
status, retry) never come here, so a cron job need not be able to read the API key.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.apikey import KeyProblem, header_problem, read_key_file
from gateway.config.settings import CREDENTIAL_NAME, CaiaSoft, Secret, Settings
from gateway.config.tables import Report

__all__ = ["CREDENTIAL_NAME", "api_key", "check_sftp_files", "secret_file_warnings"]
SFTP_FILES = ("known_hosts_file", "private_key_file", "private_key_passphrase_file", "password_file")


def api_key(
    key_file: Path | None,
    key_env: str | None,
    environ: Mapping[str, str],
    problem: Report,
    table: str = "caiasoft",
    credential_name: str = CREDENTIAL_NAME,
) -> tuple[Secret, list[str]]:
    """Return the API key of one connection (its table: caiasoft or caiasoft.NAME, and the systemd credential
    it may come from) and warnings about its file; report why there is none."""
    if key_file and key_env:  # reported by config_rules.check_caiasoft
        return Secret(""), []
    if key_env:
        from_env = environ.get(key_env, "").strip()
        unusable = header_problem(from_env) if from_env else "is not set or empty"
        if unusable:
            problem(f"{table}.api_key_env", f"environment variable {key_env} {unusable}")
        return Secret(from_env), []
    credential = (
        Path(environ["CREDENTIALS_DIRECTORY"]) / credential_name if environ.get("CREDENTIALS_DIRECTORY") else None
    )
    if key_file is None and credential is not None and credential.exists():
        key_file = credential
    if key_file is None:
        problem(
            f"{table}.api_key_file",
            f"no API key: set api_key_file or api_key_env, or pass a systemd credential named {credential_name}",
        )
        return Secret(""), []
    value, mode = _read_key_file(key_file, lambda key, message: problem(f"{table}.api_key_file", message))
    if value is None or mode is None:
        return Secret(""), []
    return Secret(value), _mode_warnings(f"API key file {key_file}", mode, is_credential=key_file == credential)


def connection_key(connection: CaiaSoft, environ: Mapping[str, str], problem: Report) -> tuple[Secret, list[str]]:
    """api_key() for one connection's settings."""
    return api_key(
        connection.api_key_file, connection.api_key_env, environ, problem, connection.table, connection.credential
    )


def readable_keys(settings: Settings, environ: Mapping[str, str]) -> list[Secret]:
    """Every connection's API key this user can read, quietly (for redaction by commands that send nothing)."""
    return [connection_key(connection, environ, lambda key, message: None)[0] for connection in settings.connections]


def secret_file_warnings(what: str, path: Path) -> list[str]:
    """Warnings about who else may read a file holding a secret (what names it, e.g. its key path); none if
    it cannot be looked at (a missing file is reported as a problem, by the caller)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    return _mode_warnings(f"{what} {path}", mode, is_credential=False)


def _mode_warnings(file: str, mode: int, is_credential: bool) -> list[str]:
    if mode & stat.S_IROTH:
        return [f"{file} is readable by every user: chmod 0600 (or 0640) it"]
    if mode & stat.S_IRGRP and not is_credential:
        return [f"{file} is readable by its group: make sure that group holds no other user than the gateway's"]
    return []


def _read_key_file(key_file: Path, problem: Report) -> tuple[str | None, int | None]:
    """The file's key and mode, or (None, None) after reporting why it cannot be used (see apikey)."""
    try:
        read = read_key_file(key_file)
        return read.value, read.mode
    except FileNotFoundError:
        problem("api_key_file", f"{key_file} does not exist")
    except PermissionError:
        problem("api_key_file", f"{key_file} cannot be read by this user (permission denied)")
    except KeyProblem as error:
        problem("api_key_file", str(error))
    except OSError as error:
        problem("api_key_file", f"{key_file} cannot be read: {error.strerror or error.__class__.__name__}")
    return None, None


def check_sftp_files(source: Mapping[str, Any], where: str, problem: Report) -> None:
    """Report each file an SFTP source names that is not there (it reads them when it connects)."""
    for key in SFTP_FILES:
        path = source.get(key)
        if isinstance(path, Path) and not path.is_file():
            problem(f"{where}.{key}", f"{path} does not exist")
